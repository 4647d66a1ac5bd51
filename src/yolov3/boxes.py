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
