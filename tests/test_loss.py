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
