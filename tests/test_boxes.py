import importlib.util

import numpy as np
import pytest
import torch

from yolov3.boxes import cxcywh_to_xyxy, decode_heads, pairwise_iou, xyxy_to_cxcywh
from yolov3.nms import batched_nms, nms
from yolov3.postprocess import postprocess, select_candidates
from yolov3.constants import DEFAULT_ANCHORS, STRIDES
from yolov3.detector import Detector
from yolov3.model import YOLOv3


def iou_scalar(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def nms_reference(boxes, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if all(iou_scalar(boxes[i], boxes[k]) <= thr for k in keep):
            keep.append(i)
    return keep


def random_boxes(gen, n):
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 40 + 1
    return torch.cat((xy, xy + wh), 1)


def test_format_roundtrip_and_pairwise_iou():
    gen = torch.Generator().manual_seed(0)
    b = random_boxes(gen, 20)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b)
    iou = pairwise_iou(b, b[:5])
    for i in range(20):
        for j in range(5):
            assert abs(iou[i, j].item() - iou_scalar(b[i].tolist(), b[j].tolist())) < 1e-5


def test_nms_matches_reference_with_ties():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        b = random_boxes(gen, 60)
        s = (torch.rand(60, generator=gen) * 5).round() / 5  # many exact ties
        got = nms(b, s, 0.45).tolist()
        assert got == nms_reference(b.tolist(), s.tolist(), 0.45)


def test_batched_nms_never_suppresses_across_classes():
    b = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10.0]])
    s = torch.tensor([0.9, 0.8, 0.7])
    assert sorted(batched_nms(b, s, torch.tensor([0, 1, 0]), 0.5).tolist()) == [0, 1]


def test_decode_places_a_centred_box_where_the_logits_say():
    s = 64
    outputs = [torch.full((1, 3, s // st, s // st, 25), -10.0) for st in (32, 16, 8)]
    # stride 16 head, anchor 0, cell (row 1, col 2): sigmoid(0)=0.5 offset, exp(0)=anchor size
    outputs[1][0, 0, 1, 2, :5] = torch.tensor([10.0, 0, 0, 0, 0])
    boxes, obj, _ = decode_heads(outputs, torch.tensor(DEFAULT_ANCHORS), (s, s))
    k = obj[0].argmax()
    aw, ah = DEFAULT_ANCHORS[1][0][0] * s, DEFAULT_ANCHORS[1][0][1] * s
    torch.testing.assert_close(boxes[0, k], torch.tensor([2.5 * 16 - aw / 2, 1.5 * 16 - ah / 2, 2.5 * 16 + aw / 2, 1.5 * 16 + ah / 2]))


def test_detector_loads_a_checkpoint_with_weights_only(tmp_path):
    model = YOLOv3(width=0.0625)
    ckpt = {"state_dict": {**{f"model.{k}": v for k, v in model.state_dict().items()},
                           "anchors": torch.tensor(DEFAULT_ANCHORS)},
            "hyper_parameters": {"num_classes": 20, "width": 0.0625}}
    torch.save(ckpt, tmp_path / "m.ckpt")
    det = Detector.from_checkpoint(tmp_path / "m.ckpt", size=64, conf_threshold=0.0)
    out = det([np.zeros((50, 90, 3), np.uint8), np.full((120, 40, 3), 200, np.uint8)])
    assert len(out) == 2 and all(o.shape[1] == 6 for o in out)
    assert (out[0][:, [0, 2]] <= 90).all() and (out[1][:, [1, 3]] <= 120).all()


# --------------------------------------------------------------------------------------------
# Exact greedy NMS at speed: against the reference
# --------------------------------------------------------------------------------------------


def batched_reference(boxes, scores, classes, thr):
    """Per class nms_reference, merged by falling score, ties lower index first."""
    kept = []
    for c in sorted(set(classes)):
        idx = [i for i, k in enumerate(classes) if k == c]
        kept += [idx[j] for j in nms_reference([boxes[i] for i in idx], [scores[i] for i in idx], thr)]
    return sorted(kept, key=lambda i: (-scores[i], i))


@pytest.mark.parametrize("seed", range(12))
def test_nms_matches_reference_with_duplicates_ties_and_thresholds(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    for trial in range(10):
        n = int(torch.randint(1, 120, (1,), generator=gen))
        b = random_boxes(gen, n) - 20  # some negative coordinates too
        dup = torch.randint(0, n, (n // 3,), generator=gen)
        b[torch.randint(0, n, (n // 3,), generator=gen)] = b[dup].clone()  # exact duplicate boxes
        s = (torch.rand(n, generator=gen) * 6).round() / 6  # exact score ties
        thr = (0.0, 0.3, 0.45, 0.5, 0.7, 0.95)[trial % 6]
        assert nms(b, s, thr).tolist() == nms_reference(b.tolist(), s.tolist(), thr)
        c = torch.randint(0, 4, (n,), generator=gen)
        assert batched_nms(b, s, c, thr).tolist() == batched_reference(b.tolist(), s.tolist(), c.tolist(), thr)


def test_nms_many_groups_of_very_different_sizes():
    # groups from 1 to ~250 boxes: exercises size buckets, padding and dropping finished groups
    gen = torch.Generator().manual_seed(7)
    sizes = [1, 2, 3, 5, 9, 17, 40, 90, 250]
    groups = torch.cat([torch.full((m,), g) for g, m in enumerate(sizes)])
    n = groups.numel()
    centres = torch.rand(len(sizes), 2, generator=gen)[groups] * 300
    wh = torch.rand(n, 2, generator=gen) * 30 + 10
    b = torch.cat((centres + torch.randn(n, 2, generator=gen) * 8 - wh / 2,
                   centres + torch.randn(n, 2, generator=gen) * 8 + wh / 2), 1)
    s = torch.rand(n, generator=gen)
    perm = torch.randperm(n, generator=gen)  # groups interleaved in the input
    b, s, groups = b[perm], s[perm], groups[perm]
    got = batched_nms(b, s, groups, 0.45).tolist()
    assert got == batched_reference(b.tolist(), s.tolist(), groups.tolist(), 0.45)


def test_class_aware_nms_is_not_fooled_by_negative_coordinates():
    # A coordinate-offset trick (class * (max + 1)) maps the class-1 box onto the class-0 box.
    b = torch.tensor([[380.0, 0, 420, 100], [-41, 0, -1, 100]])
    s = torch.tensor([0.9, 0.8])
    assert batched_nms(b, s, torch.tensor([0, 1]), 0.5).tolist() == [0, 1]
    assert batched_nms(b, s, torch.tensor([0, 0]), 0.5).tolist() == [0, 1]  # no overlap at all
    assert batched_nms(b[[0, 0]], s, torch.tensor([0, 0]), 0.5).tolist() == [0]


def test_nms_strict_threshold_and_empty_input():
    b = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5]])  # IoU exactly 0.5
    s = torch.tensor([0.9, 0.8])
    assert nms(b, s, 0.5).tolist() == [0, 1]
    assert nms(b, s, 0.49).tolist() == [0]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="torchvision not installed")
def test_torchvision_backend_is_identical():
    gen = torch.Generator().manual_seed(3)
    for _ in range(30):
        n = int(torch.randint(1, 150, (1,), generator=gen))
        b = random_boxes(gen, n)
        s = (torch.rand(n, generator=gen) * 5).round() / 5
        c = torch.randint(0, 3, (n,), generator=gen)
        assert batched_nms(b, s, c, 0.45, backend="torchvision").tolist() == batched_nms(b, s, c, 0.45).tolist()


# --------------------------------------------------------------------------------------------
# postprocess: batched decode + threshold + NMS against a per-image reference
# --------------------------------------------------------------------------------------------


def postprocess_reference(outputs, anchors, size, conf, iou, max_det, score_mode):
    boxes, obj, cls_prob = decode_heads(outputs, anchors, (size, size))
    cls_score, cls_idx = cls_prob.max(-1)
    scores = obj * cls_score if score_mode == "obj_cls" else obj
    results = []
    for b in range(boxes.shape[0]):
        cells = [i for i in range(scores.shape[1]) if scores[b, i] > conf]
        kept = batched_reference(boxes[b, cells].tolist(), scores[b, cells].tolist(), cls_idx[b, cells].tolist(), iou)
        kept = [cells[k] for k in kept][:max_det]
        results.append(torch.cat((boxes[b, kept], scores[b, kept, None], cls_idx[b, kept, None].float()), 1))
    return results


@pytest.mark.parametrize("score_mode", ["obj_cls", "obj"])
def test_postprocess_matches_per_image_reference(score_mode):
    gen = torch.Generator().manual_seed(11)
    size = 96
    outputs = [torch.randn(4, 3, size // st, size // st, 8, generator=gen) * 1.5 for st in STRIDES]
    outputs[0][2] = -20  # an image with no candidates on one scale...
    for o in outputs:
        o[3, ..., 0] = -20  # ...and one with none at all
    anchors = torch.tensor(DEFAULT_ANCHORS)
    for max_det in (100, 5):
        got = postprocess(outputs, anchors, (size, size), 0.3, 0.45, max_det, score_mode=score_mode)
        ref = postprocess_reference(outputs, anchors, size, 0.3, 0.45, max_det, score_mode)
        assert len(got) == 4 and got[3].shape == (0, 6)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and g.shape[0] <= max_det
            torch.testing.assert_close(g, r)
    assert max(len(g) for g in got) == 5  # the cap was reached


def test_select_candidates_rejects_unknown_score_mode():
    outputs = [torch.zeros(1, 3, 2, 2, 7)]
    with pytest.raises(ValueError):
        select_candidates(outputs, torch.tensor(DEFAULT_ANCHORS[:1]), (64, 64), 0.1, score_mode="cls")


def test_postprocess_batch_without_any_candidate():
    outputs = [torch.full((2, 3, 64 // st, 64 // st, 25), -20.0) for st in STRIDES]
    got = postprocess(outputs, torch.tensor(DEFAULT_ANCHORS), (64, 64), 0.25)
    assert [tuple(g.shape) for g in got] == [(0, 6), (0, 6)]
