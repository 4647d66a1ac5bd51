"""Training targets for the three heads, built on the training device in one batched pass.

The assignment rule, stated exactly so that slow references can check it (tests/test_targets.py):

1. Shape IoU (centres aligned) between each box and the 3 anchors of each scale; equal IoUs
   rank the lower anchor index first.
2. A box's cell on a gh x gw grid is (floor(cy * gh), floor(cx * gw)), computed in float32
   and clamped to the grid.
3. At every scale, each box claims a slot (anchor, its cell), trying its anchors from best to
   worst shape IoU; the first slot that is no box's positive yet becomes its positive at that
   scale. Claims go in rounds (every box's best anchor first, then the second best of the
   boxes that lost, then the third); within a round, the box that comes first in the batch
   wins a contested slot.
4. Every other anchor of that scale, at the box's cell, whose shape IoU with the box is
   above `ignore_threshold` is marked ignore (-1): neither object nor no-object, unless it is
   some box's positive: a positive always wins over an ignore.

Where this differs from the course's code, and why (the course: ERA V1 session 13,
github.com/jyanivaddi/dl_hub YOLO_V3/yolo_v3_utils/pascal_voc_dataset.py (and _mosaic.py),
__getitem__; it walks the boxes one by one, each through its anchors from best to worst):

a. An ignore mark never blocks a claim. The course tests a slot with `not value`, so an
   earlier box's -1 counts as taken: a later box whose best anchor (even a perfect fit) got
   that mark loses it and falls back to a worse anchor or none, depending on the order of the
   boxes in the label file. An ignore only excuses an anchor from the no-object loss; it is
   no reason to deny another box its positive.
b. Claims go in rounds, the course box by box. Apart from (a) the two agree when at most two
   boxes share a cell, and can differ when three or more do (box 3 may win in round 1 the
   anchor that box 2 would have taken second). Rounds make one vectorised claim per anchor
   rank instead of a Python loop over the boxes.
c. A centre on the right or bottom edge (cx or cy = 1.0) falls in the last cell, with cell
   offset 1.0; the course's int(S * 1.0) = S indexes out of range (IndexError).
d. A centre exactly on a cell border (cx = k / S) lands where float32 puts it: cx is rounded
   to float32 and floor(cx * S) in float32 is k for every k in 1..S-1 on the grids 10/20/40,
   13/26/52 and 19, but k - 1 (offset just under 1) for S = 38, k = 27 and S = 76, k = 27 and
   54. The course's int(S * x), in float64 from a float64 x, is k - 1 instead for S = 26,
   k = 15; S = 52, k = 15 and 30; S = 76, k = 53. Both cells touch such a centre; float32 is
   the dtype the batch is on, and a float64 pass would buy nothing.
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
