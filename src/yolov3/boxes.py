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


# exp(t) of the width / height offsets is taken of min(t, MAX_LOG_WH): e^10 = 22,026 anchors
# wide is far beyond any image, and an untrained head's large t would otherwise overflow float32
# (inf boxes, then NaN IoUs). The loss clips the same way where it decodes boxes for the IoU.
MAX_LOG_WH = 10.0


def decode_cells(rows: torch.Tensor, anchor_index: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                 grid: tuple[int, int], anchors_px: torch.Tensor,
                 image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The one decode: raw head values of K cells of one scale -> their boxes and probabilities.

    Args:
        rows: (K, 5+C) raw values (objectness, tx, ty, tw, th, class logits).
        anchor_index, row, col: (K,) long, where each cell sits (anchor, grid row, grid column).
        grid: (gh, gw) of the scale.
        anchors_px: (A, 2) the scale's anchors (w, h) in input pixels.
        image_size: (height, width) of the network input in pixels.

    Returns boxes (K, 4) float32 xyxy input pixels, objectness (K,), class probabilities (K, C):
    cx = (sigmoid(tx) + col) * stride_x, w = anchor_w * exp(min(tw, MAX_LOG_WH)), likewise y, h.
    """
    rows = rows.float()
    h, w = image_size
    gh, gw = grid
    cx = (torch.sigmoid(rows[:, 1]) + col) * (w / gw)
    cy = (torch.sigmoid(rows[:, 2]) + row) * (h / gh)
    bw = torch.exp(rows[:, 3].clamp(max=MAX_LOG_WH)) * anchors_px[anchor_index, 0]
    bh = torch.exp(rows[:, 4].clamp(max=MAX_LOG_WH)) * anchors_px[anchor_index, 1]
    boxes = cxcywh_to_xyxy(torch.stack((cx, cy, bw, bh), -1))
    return boxes, torch.sigmoid(rows[:, 0]), torch.softmax(rows[:, 5:], -1)


def anchors_px(anchor: torch.Tensor, image_size: tuple[int, int], device) -> torch.Tensor:
    """(A, 2) anchors as fractions of the image -> input pixels, float32 on `device`."""
    h, w = image_size
    return anchor.to(device).float() * torch.tensor([w, h], dtype=torch.float32, device=device)


def decode_heads(
    outputs: list[torch.Tensor], anchors: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Head outputs of every scale -> boxes in input pixels, objectness, class probabilities,
    for every cell (decode_cells over all of them).

    Args:
        outputs: per scale (B, A, gh, gw, 5+C) raw head tensors.
        anchors: (scales, A, 2) anchor (w, h) as fractions of the image.
        image_size: (height, width) of the network input in pixels.

    Returns:
        boxes (B, N, 4) xyxy pixels, objectness (B, N), class_probs (B, N, C), where N sums
        A*gh*gw over the scales (scale-major, then anchor, row, column).
    """
    all_boxes, all_obj, all_cls = [], [], []
    for pred, anchor in zip(outputs, anchors):
        b, a, gh, gw, _ = pred.shape
        ai, yi, xi = (i.reshape(-1) for i in torch.meshgrid(
            torch.arange(a, device=pred.device), torch.arange(gh, device=pred.device),
            torch.arange(gw, device=pred.device), indexing="ij"))
        rows = pred.reshape(b * a * gh * gw, -1)
        boxes, obj, cls = decode_cells(rows, ai.repeat(b), yi.repeat(b), xi.repeat(b), (gh, gw),
                                       anchors_px(anchor, image_size, pred.device), image_size)
        all_boxes.append(boxes.reshape(b, -1, 4))
        all_obj.append(obj.reshape(b, -1))
        all_cls.append(cls.reshape(b, a * gh * gw, -1))
    return torch.cat(all_boxes, 1), torch.cat(all_obj, 1), torch.cat(all_cls, 1)
