"""Box formats and overlaps: pure, batched tensor functions.

Formats: "xyxy" is (x1, y1, x2, y2); "cxcywh" is (centre x, centre y, width, height).
Every function broadcasts over leading dimensions and never modifies its inputs.
"""

from __future__ import annotations

import torch


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def elementwise_iou(a: torch.Tensor, b: torch.Tensor, fmt: str = "cxcywh", eps: float = 1e-9) -> torch.Tensor:
    """IoU of corresponding boxes: a, b (..., 4) in `fmt` -> (...,)."""
    if fmt == "cxcywh":
        a, b = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
    elif fmt != "xyxy":
        raise ValueError(f"unknown box format {fmt!r}")
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + eps)


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of every pair: a (N, 4) xyxy, b (M, 4) xyxy -> (N, M)."""
    return elementwise_iou(a[:, None, :], b[None, :, :], fmt="xyxy", eps=eps)


def shape_iou(wh_a: torch.Tensor, wh_b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes that share a centre (anchor matching): wh_a (N, 2), wh_b (M, 2) -> (N, M)."""
    inter = torch.minimum(wh_a[:, None, :], wh_b[None, :, :]).prod(-1)
    return inter / (wh_a.prod(-1)[:, None] + wh_b.prod(-1)[None, :] - inter)


def decode_heads(
    outputs: list[torch.Tensor], anchors: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head outputs of every scale -> boxes in input pixels, objectness, class probabilities.

    Args:
        outputs: per scale (B, A, gh, gw, 5+C) raw head tensors.
        anchors: (scales, A, 2) anchor (w, h) as fractions of the image.
        image_size: (height, width) of the network input in pixels.

    Returns:
        boxes (B, N, 4) xyxy pixels, objectness (B, N), class_probs (B, N, C), where N sums
        A*gh*gw over the scales (scale-major, then anchor, row, column).
    """
    h, w = image_size
    all_boxes, all_obj, all_cls = [], [], []
    for pred, anchor in zip(outputs, anchors):
        pred = pred.float()
        b, a, gh, gw, _ = pred.shape
        ys, xs = torch.meshgrid(
            torch.arange(gh, device=pred.device), torch.arange(gw, device=pred.device), indexing="ij"
        )
        cx = (torch.sigmoid(pred[..., 1]) + xs) * (w / gw)
        cy = (torch.sigmoid(pred[..., 2]) + ys) * (h / gh)
        anchor_px = anchor.to(pred.device).float() * anchor.new_tensor([w, h]).float()
        bw = torch.exp(pred[..., 3].clamp(max=10.0)) * anchor_px[:, 0].view(1, a, 1, 1)
        bh = torch.exp(pred[..., 4].clamp(max=10.0)) * anchor_px[:, 1].view(1, a, 1, 1)
        all_boxes.append(cxcywh_to_xyxy(torch.stack((cx, cy, bw, bh), -1)).reshape(b, -1, 4))
        all_obj.append(torch.sigmoid(pred[..., 0]).reshape(b, -1))
        all_cls.append(torch.softmax(pred[..., 5:], -1).reshape(b, a * gh * gw, -1))
    return torch.cat(all_boxes, 1), torch.cat(all_obj, 1), torch.cat(all_cls, 1)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Exact greedy NMS: boxes (N, 4) xyxy, scores (N,) -> kept indices (K,), by falling score.

    Ties in score keep the lower index first (stable sort).
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    iou = pairwise_iou(boxes[order], boxes[order])
    n = order.numel()
    overlaps = (iou > iou_threshold).triu(diagonal=1).cpu()
    keep_mask = torch.zeros(n, dtype=torch.bool)
    suppressed = torch.zeros(n, dtype=torch.bool)
    for i in range(n):  # the loop runs on a precomputed boolean matrix: cheap for N of a few thousand
        if suppressed[i]:
            continue
        keep_mask[i] = True
        suppressed |= overlaps[i]
    return order[keep_mask.to(boxes.device)]


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Boxes are shifted by class * (max coordinate + 1) so one NMS pass handles all classes.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    offset = classes.to(boxes.dtype)[:, None] * (boxes.max() + 1)
    return nms(boxes + offset, scores, iou_threshold)


def postprocess(
    outputs: list[torch.Tensor],
    anchors: torch.Tensor,
    image_size: tuple[int, int],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
) -> list[torch.Tensor]:
    """Decode, score (objectness x class probability), threshold and NMS each image.

    Returns one (K, 6) tensor per image: x1, y1, x2, y2 (input pixels), score, class.
    """
    boxes, obj, cls_prob = decode_heads(outputs, anchors, image_size)
    cls_score, cls_idx = cls_prob.max(-1)
    scores = obj * cls_score
    results = []
    for b in range(boxes.shape[0]):
        keep = scores[b] > conf_threshold
        bx, sc, cl = boxes[b][keep], scores[b][keep], cls_idx[b][keep]
        idx = batched_nms(bx, sc, cl, iou_threshold)[:max_detections]
        results.append(torch.cat((bx[idx], sc[idx, None], cl[idx, None].float()), 1))
    return results
