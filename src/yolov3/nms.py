"""Non-maximum suppression.

Every NMS here is the exact greedy algorithm: walk the boxes by falling score (ties: lower
index first) and keep a box unless a box kept before it, of the same group (class), has
IoU > iou_threshold with it (strictly greater).

Speed: boxes are cut into groups (one per image and class in postprocess) and all groups
advance together. Groups of similar size are padded into (G, M) planes; each round keeps the
first still-pending box of every group (its best remaining score) and drops the pending boxes
it overlaps, with one IoU row per group. The Python loop therefore runs once per *kept* box
of the largest group, not once per box or per image, and the work is O(kept x M) per group
instead of the O(M^2) of a full overlap matrix.

IoUs are computed in float64 without an epsilon, as inter / (area_a + area_b - inter), so the
threshold comparison is the exact one a float64 reference makes. A pair whose union is zero
(two zero-area boxes) gives NaN and therefore never suppresses.

torchvision: not used by default. torchvision.ops.nms sorts scores without a stable tie
order, and its batched_nms shifts boxes by class offsets, which changes IoUs in the last bits
(and mixes classes when coordinates are negative). backend="torchvision" is offered for
callers that want it; it stays identical to the default by pre-sorting with our stable order,
handing torchvision strictly falling pseudo-scores (so it cannot reorder ties) and calling its
nms per group in float64 (its CPU kernel uses the same IoU formula and the same strict test).
"""

from __future__ import annotations

import torch


def _stable_group_order(scores: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Permutation (N,) sorting by group, then falling score, then lower index first."""
    by_score = scores.argsort(descending=True, stable=True)
    return by_score[groups[by_score].argsort(stable=True)]


def _greedy_rounds(boxes: torch.Tensor, starts: torch.Tensor, sizes: torch.Tensor, size: int,
                   iou_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy NMS of G groups at once, one kept box per group per round.

    Args:
        boxes: (N, 4) float64 xyxy, each group contiguous and sorted by falling score.
        starts, sizes: (G,) first index and length of each group; size: max(sizes) = M.

    Returns:
        index (S,) positions into boxes of the S = sum(sizes) entries, keep (S,) bool.
    """
    pos = torch.arange(size, device=boxes.device)
    valid = pos[None, :] < sizes[:, None]
    index = torch.where(valid, starts[:, None] + pos[None, :], 0)
    b = boxes[index]
    x1, y1, x2, y2 = (b[..., k].contiguous() for k in range(4))  # (G, M) planes broadcast fast
    area = (x2 - x1) * (y2 - y1)
    group = torch.arange(sizes.numel(), device=boxes.device)  # group of each working row
    keep = torch.zeros_like(valid)
    pending = valid.clone()  # neither kept nor suppressed yet
    while True:
        active = pending.any(1)
        num_active = int(active.sum())
        if num_active == 0:
            return index[valid], keep[valid]
        if num_active < group.numel() // 2:  # drop finished groups so later rounds get cheaper
            rows = active.nonzero().squeeze(1)
            group, pending, x1, y1, x2, y2, area, active = (
                t[rows] for t in (group, pending, x1, y1, x2, y2, area, active))
        r = torch.arange(group.numel(), device=boxes.device)
        i = pending.byte().argmax(1)  # first pending box: the best remaining score (0 if none)
        keep[group[active], i[active]] = True
        w = (torch.minimum(x2, x2[r, i, None]) - torch.maximum(x1, x1[r, i, None])).clamp_(min=0)
        h = (torch.minimum(y2, y2[r, i, None]) - torch.maximum(y1, y1[r, i, None])).clamp_(min=0)
        inter = w.mul_(h)
        iou = inter / (area[r, i, None] + area - inter)
        pending &= ~(iou > iou_threshold)  # finished rows have nothing pending: no effect
        pending[r, i] = False


def greedy_nms_grouped(boxes: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Exact greedy NMS inside each group, all groups at once.

    Args:
        boxes: (N, 4) xyxy, sorted by group and, inside a group, by falling score.
        groups: (N,) integer group ids, non-decreasing (each group contiguous).

    Returns:
        keep (N,) bool.
    """
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    if boxes.shape[0] < 2:
        return keep
    boxes = boxes.double()
    _, sizes = torch.unique_consecutive(groups, return_counts=True)
    starts = sizes.cumsum(0) - sizes
    multi = sizes > 1  # a single box is always kept
    sizes, starts = sizes[multi], starts[multi]
    by_size = sizes.argsort(stable=True)
    sizes, starts = sizes[by_size], starts[by_size]
    size_list = sizes.tolist()
    i = 0
    while i < len(size_list):  # buckets of sizes within 2x of each other: padding wastes < half
        j = i + 1
        while j < len(size_list) and size_list[j] <= 2 * size_list[i]:
            j += 1
        index, k = _greedy_rounds(boxes, starts[i:j], sizes[i:j], size_list[j - 1], iou_threshold)
        keep[index] = k
        i = j
    return keep


def _torchvision_grouped(boxes: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Same contract as greedy_nms_grouped, through torchvision.ops.nms (one call per group)."""
    from torchvision.ops import nms as tv_nms

    n = boxes.shape[0]
    keep = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    # strictly falling pseudo-scores: torchvision's own (unstable) sort then cannot reorder ties
    rank = torch.arange(n, 0, -1, dtype=torch.float64, device=boxes.device)
    boxes = boxes.double()
    _, sizes = torch.unique_consecutive(groups, return_counts=True)
    start = 0
    for m in sizes.tolist():
        keep[start + tv_nms(boxes[start:start + m], rank[start:start + m], iou_threshold)] = True
        start += m
    return keep


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, iou_threshold: float,
                *, backend: str = "torch") -> torch.Tensor:
    """Class-aware exact greedy NMS: boxes of different classes never suppress each other.

    Args:
        boxes: (N, 4) xyxy; scores: (N,); classes: (N,) integer group ids (a class, or
            image * num_classes + class to run many images in one call).
        iou_threshold: a box is suppressed when its IoU with a kept box is > this (strictly).
        backend: "torch" (default) or "torchvision" (identical result; needs torchvision).

    Returns:
        kept indices (K,) long, by falling score; ties in score keep the lower index first.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = _stable_group_order(scores, classes)
    if backend == "torch":
        keep = greedy_nms_grouped(boxes[order], classes[order], iou_threshold)
    elif backend == "torchvision":
        keep = _torchvision_grouped(boxes[order], classes[order], iou_threshold)
    else:
        raise ValueError(f"unknown NMS backend {backend!r}")
    kept = order[keep].sort().values
    return kept[scores[kept].argsort(descending=True, stable=True)]


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, *, backend: str = "torch") -> torch.Tensor:
    """Exact greedy NMS: boxes (N, 4) xyxy, scores (N,) -> kept indices (K,), by falling score.

    Ties in score keep the lower index first (stable). Suppression when IoU > iou_threshold.
    """
    groups = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
    return batched_nms(boxes, scores, groups, iou_threshold, backend=backend)
