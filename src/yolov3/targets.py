"""Training targets for the three heads, built on the training device in one batched pass.

The assignment rule is the course's, stated exactly so that a slow reference can check it:

1. Shape IoU (centres aligned) between each box and the 3 anchors of each scale.
2. At every scale, each box claims a slot (anchor, cell containing its centre), trying its
   anchors from best to worst shape IoU; the first slot not already taken becomes its
   positive at that scale. Claims go in rounds (every box's best anchor first, then the
   second best of the boxes that lost, then the third); within a round, the box that comes
   first in the batch wins a contested slot. (The course went box by box instead; the two
   differ only when three or more boxes crowd one cell.)
3. Every other anchor of that scale, at the box's cell, whose shape IoU with the box is
   above `ignore_threshold` is marked ignore (-1): neither object nor no-object. A positive
   always wins over an ignore.

A box whose centre lies on the right or bottom border falls in the last cell (no index out
of range; its cell offset is then 1.0).
"""

from __future__ import annotations

import torch

from yolov3.boxes import shape_iou


def build_targets(
    targets: torch.Tensor,
    batch_size: int,
    grid_sizes: list[tuple[int, int]],
    anchors: torch.Tensor,
    ignore_threshold: float = 0.5,
) -> list[torch.Tensor]:
    """Turn a batch of boxes into the three target tensors.

    Args:
        targets: (M, 6) float rows (image index in batch, class, cx, cy, w, h) with the box in
            fractions of the image width/height; every w and h must be > 0.
        batch_size: B, number of images in the batch.
        grid_sizes: [(gh, gw)] for each scale, in the order of the model's outputs.
        anchors: (num_scales, A, 2) anchor (w, h) in fractions of the image size.
        ignore_threshold: shape IoU above which non-assigned anchors are ignored.

    Returns:
        A list with one (B, A, gh, gw, 6) float tensor per scale, on targets' device; the last
        axis is (objectness 1/0/-1, x offset in cell, y offset in cell, w in cells, h in cells,
        class).
    """
    device = targets.device
    num_scales, num_anchors = anchors.shape[:2]
    if len(grid_sizes) != num_scales:
        raise ValueError(f"{len(grid_sizes)} grid sizes for {num_scales} anchor scales")
    anchors = anchors.to(device=device, dtype=torch.float32)
    targets = targets.to(torch.float32)
    m = targets.shape[0]
    img = targets[:, 0].long()
    cls = targets[:, 1]
    cxcy = targets[:, 2:4]
    wh = targets[:, 4:6]
    box_ids = torch.arange(m, device=device)

    out: list[torch.Tensor] = []
    for s, (gh, gw) in enumerate(grid_sizes):
        t = torch.zeros(batch_size, num_anchors, gh, gw, 6, device=device)
        if m == 0:
            out.append(t)
            continue
        flat = t.view(-1, 6)
        ious = shape_iou(wh, anchors[s])  # (M, A)
        order = ious.argsort(dim=1, descending=True, stable=True)  # (M, A)
        gi = (cxcy[:, 0] * gw).floor().long().clamp_(0, gw - 1)
        gj = (cxcy[:, 1] * gh).floor().long().clamp_(0, gh - 1)
        cell = gj * gw + gi  # (M,)

        def slot(anchor: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return (img[ids] * num_anchors + anchor) * (gh * gw) + cell[ids]

        taken = torch.zeros(flat.shape[0], dtype=torch.bool, device=device)
        assigned_anchor = torch.full((m,), -1, dtype=torch.long, device=device)
        for r in range(num_anchors):
            pending = box_ids[assigned_anchor < 0]
            if pending.numel() == 0:
                break
            anchor = order[pending, r]
            slots = slot(anchor, pending)
            free = ~taken[slots]
            pending, anchor, slots = pending[free], anchor[free], slots[free]
            if pending.numel() == 0:
                continue
            # First claimant per slot wins: sort by (slot, box id); keep each slot's first entry.
            key = slots * m + pending
            idx = key.argsort()
            slots_sorted = slots[idx]
            first = torch.ones_like(slots_sorted, dtype=torch.bool)
            first[1:] = slots_sorted[1:] != slots_sorted[:-1]
            win = idx[first]
            taken[slots[win]] = True
            assigned_anchor[pending[win]] = anchor[win]

        # Ignore marks: other anchors at the box's cell that fit it well.
        anchor_grid = torch.arange(num_anchors, device=device).expand(m, num_anchors)
        ignore = (ious > ignore_threshold) & (anchor_grid != assigned_anchor[:, None])
        ib, ia = ignore.nonzero(as_tuple=True)
        ignore_slots = slot(ia, ib)
        ignore_slots = ignore_slots[~taken[ignore_slots]]
        flat[ignore_slots, 0] = -1.0

        pos = box_ids[assigned_anchor >= 0]
        pos_slots = slot(assigned_anchor[pos], pos)
        values = torch.stack(
            (
                torch.ones_like(cls[pos]),
                cxcy[pos, 0] * gw - gi[pos],
                cxcy[pos, 1] * gh - gj[pos],
                wh[pos, 0] * gw,
                wh[pos, 1] * gh,
                cls[pos],
            ),
            dim=1,
        )
        flat[pos_slots] = values
        out.append(t)
    return out
