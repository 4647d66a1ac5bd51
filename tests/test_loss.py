import pytest
import torch

from yolov3.constants import DEFAULT_ANCHORS
from yolov3.loss import YoloLoss
from yolov3.model import YOLOv3
from yolov3.targets import build_targets

ANCHORS = torch.tensor(DEFAULT_ANCHORS)


def batch(size=64):
    targets = torch.tensor(
        [[0, 1, 0.3, 0.4, 0.3, 0.5], [0, 5, 0.7, 0.7, 0.2, 0.2], [1, 2, 0.5, 0.5, 0.8, 0.6]]
    )
    grids = [(size // s, size // s) for s in (32, 16, 8)]
    return build_targets(targets, 2, grids, ANCHORS)


def test_loss_is_finite_and_has_parts():
    torch.manual_seed(0)
    m = YOLOv3(width=0.125)
    total, parts = YoloLoss()(m(torch.rand(2, 3, 64, 64)), batch(), ANCHORS)
    assert torch.isfinite(total)
    assert set(parts) == {"box", "obj", "noobj", "cls"}
    torch.testing.assert_close(total, sum(parts.values()))


@pytest.mark.slow  # 200 training steps
def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    m = YOLOv3(width=0.125)
    x = torch.rand(2, 3, 64, 64)
    t = batch()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loss_fn = YoloLoss()
    losses = []
    for _ in range(40):
        total, _ = loss_fn(m(x), t, ANCHORS)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.3 * losses[0]


def test_no_object_cells_gives_finite_loss():
    m = YOLOv3(width=0.125)
    t = build_targets(torch.zeros(0, 6), 1, [(2, 2), (4, 4), (8, 8)], ANCHORS)
    total, parts = YoloLoss()(m(torch.rand(1, 3, 64, 64)), t, ANCHORS)
    assert torch.isfinite(total) and parts["cls"] == 0 and parts["box"] == 0
    total.backward()


def test_float32_under_autocast_and_inputs_untouched():
    m = YOLOv3(width=0.125)
    t = batch()
    t_copy = [x.clone() for x in t]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.rand(2, 3, 64, 64))
        assert out[0].dtype == torch.bfloat16
        out_copy = [o.detach().clone() for o in out]
        total, parts = YoloLoss()(out, t, ANCHORS)
    assert total.dtype == torch.float32
    total.backward()  # would fail on an in-place modification of a saved tensor
    for a, b in zip(out, out_copy):
        assert torch.equal(a.detach(), b)
    for a, b in zip(t, t_copy):
        assert torch.equal(a, b)


def test_perfect_prediction_has_small_box_and_class_loss():
    t = batch()
    anchors_cells = [ANCHORS[s] * torch.tensor([g.shape[3], g.shape[2]]) for s, g in enumerate(t)]
    preds = []
    for s, tt in enumerate(t):
        p = torch.zeros(*tt.shape[:4], 25)
        obj = tt[..., 0] == 1
        p[..., 0] = torch.where(obj, torch.tensor(12.0), torch.tensor(-12.0))
        off = tt[..., 1:3].clamp(1e-4, 1 - 1e-4)
        p[..., 1:3] = torch.log(off / (1 - off))
        p[..., 3:5] = torch.log(1e-16 + tt[..., 3:5] / anchors_cells[s].view(1, 3, 1, 1, 2))
        p[..., 5:] = -10.0
        p[..., 5:] = p[..., 5:].scatter(-1, tt[..., 5:6].long(), 10.0)
        preds.append(p)
    total, parts = YoloLoss()(preds, t, ANCHORS)
    assert parts["box"] < 1e-3 and parts["cls"] < 1e-3 and parts["noobj"] < 1e-3 and parts["obj"] < 1e-3


def _obj_term_reference(outputs, targets, anchors, form):
    """The objectness term by a loop over object cells: IoU of the decoded box (centre from
    sigmoid, size from exp times the anchor, in cells) with the target box, then MSE of the
    sigmoid or BCE of the logit against it; mean per scale, summed over scales."""
    import math

    total = 0.0
    for pred, target, anchor in zip(outputs, targets, anchors):
        gh, gw = pred.shape[2:4]
        values = []
        for b, a, y, x in (target[..., 0] == 1).nonzero().tolist():
            p, t = pred[b, a, y, x].double(), target[b, a, y, x].double()
            px, py = torch.sigmoid(p[1]).item(), torch.sigmoid(p[2]).item()
            pw = math.exp(min(p[3].item(), 10.0)) * anchor[a, 0].item() * gw
            ph = math.exp(min(p[4].item(), 10.0)) * anchor[a, 1].item() * gh
            tx, ty, tw, th = t[1:5].tolist()
            iw = max(0.0, min(px + pw / 2, tx + tw / 2) - max(px - pw / 2, tx - tw / 2))
            ih = max(0.0, min(py + ph / 2, ty + th / 2) - max(py - ph / 2, ty - th / 2))
            iou = iw * ih / (pw * ph + tw * th - iw * ih + 1e-9)
            s = 1 / (1 + math.exp(-p[0].item()))
            values.append((s - iou) ** 2 if form == "mse_iou" else -(iou * math.log(s) + (1 - iou) * math.log(1 - s)))
        total += sum(values) / len(values) if values else 0.0
    return total


def test_objectness_forms_match_a_loop_reference():
    torch.manual_seed(0)
    anchors = ANCHORS
    with torch.no_grad():
        outputs = [o * 3 for o in YOLOv3(width=0.0625)(torch.rand(2, 3, 64, 64))]  # spread the scores
    targets = batch()
    for form in ("mse_iou", "bce_iou"):
        _, parts = YoloLoss(objectness_loss=form)(outputs, targets, anchors)
        ref = _obj_term_reference(outputs, targets, anchors, form)
        assert abs(parts["obj"].item() - ref) <= 1e-4 * max(1.0, abs(ref)), (form, parts["obj"].item(), ref)
    with pytest.raises(ValueError, match="objectness_loss must be one of"):
        YoloLoss(objectness_loss="focal")


def test_bce_objectness_still_pulls_up_a_collapsed_object_cell():
    """At sigmoid(o) = 0.001 on an object cell whose IoU target is 0.6 the course's MSE term
    has a gradient of 2 (s - iou) s (1 - s), about 1.2e-3 in the logit; BCE's is s - iou,
    about 0.6: 500 times stronger, and pointing the same way (up)."""
    pred = torch.zeros(1, 3, 1, 1, 25)
    pred[..., 0] = torch.logit(torch.tensor(0.001))
    anchors = torch.tensor(DEFAULT_ANCHORS)
    # a target box equal to the first anchor's predicted box (tw = th = 0) shifted so IoU = 0.6
    target = torch.zeros(1, 3, 1, 1, 6)
    target[0, 0, 0, 0, :5] = torch.tensor([1.0, 0.5, 0.5, 0.0, 0.0])
    aw, ah = (anchors[0, 0] * 1).tolist()
    target[0, 0, 0, 0, 3:5] = torch.tensor([aw * 0.6, ah])  # same centre, 0.6 of the width: IoU 0.6
    target[0, 0, 0, 0, 1:3] = 0.5
    grads = {}
    for form in ("mse_iou", "bce_iou"):
        p = pred.clone().requires_grad_(True)
        loss = YoloLoss(objectness_loss=form)._scale(p, target, anchors[0])["obj"]
        (g,) = torch.autograd.grad(loss, p)
        grads[form] = g[0, 0, 0, 0, 0].item()
    assert grads["mse_iou"] < 0 and grads["bce_iou"] < 0  # descent raises the logit
    assert abs(grads["bce_iou"]) > 300 * abs(grads["mse_iou"]), grads


def test_objectness_prior_sets_the_starting_score():
    from yolov3.lit import YoloLitModule
    from yolov3.model import ScalePrediction

    torch.manual_seed(0)
    plain = YoloLitModule(width=0.0625)
    torch.manual_seed(0)
    prior = YoloLitModule(width=0.0625, loss={"objectness_prior": 0.01})
    heads = [(a, b) for a, b in zip(plain.model.modules(), prior.model.modules()) if isinstance(a, ScalePrediction)]
    assert len(heads) == 3
    for a, b in heads:
        ba, bb = (h.pred[-1].conv.bias.detach().view(3, 25) for h in (a, b))
        torch.testing.assert_close(torch.sigmoid(bb[:, 0]), torch.full((3,), 0.01))
        torch.testing.assert_close(ba[:, 1:], bb[:, 1:], rtol=0, atol=0)  # box and class biases untouched
    with torch.no_grad():
        out = prior(torch.rand(2, 3, 64, 64))
    # every cell starts near the prior (the weights add a little spread), not near 0.5
    assert all(torch.sigmoid(o[..., 0]).median() < 0.05 for o in out)
    with pytest.raises(ValueError, match=r"prior must be in \(0, 1\)"):
        heads[0][0].init_objectness_bias(1.0)
