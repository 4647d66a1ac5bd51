import numpy as np
import torch

from yolov3.boxes import batched_nms, cxcywh_to_xyxy, decode_heads, nms, pairwise_iou, xyxy_to_cxcywh
from yolov3.constants import DEFAULT_ANCHORS
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
