"""Box formats and overlaps: pure, batched tensor functions.

Formats: "xyxy" is (x1, y1, x2, y2); "cxcywh" is (centre x, centre y, width, height).
Every function broadcasts over leading dimensions and never modifies its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

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


def _anchors_px(anchor: torch.Tensor, image_size: tuple[int, int], device) -> torch.Tensor:
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
                                       _anchors_px(anchor, image_size, pred.device), image_size)
        all_boxes.append(boxes.reshape(b, -1, 4))
        all_obj.append(obj.reshape(b, -1))
        all_cls.append(cls.reshape(b, a * gh * gw, -1))
    return torch.cat(all_boxes, 1), torch.cat(all_obj, 1), torch.cat(all_cls, 1)


# --------------------------------------------------------------------------------------------
# Non-maximum suppression.
#
# Every NMS here is the exact greedy algorithm: walk the boxes by falling score (ties: lower
# index first) and keep a box unless a box kept before it, of the same group (class), has
# IoU > iou_threshold with it (strictly greater).
#
# Speed: boxes are cut into groups (one per image and class in postprocess) and all groups
# advance together. Groups of similar size are padded into (G, M) planes; each round keeps the
# first still-pending box of every group (its best remaining score) and drops the pending boxes
# it overlaps, with one IoU row per group. The Python loop therefore runs once per *kept* box
# of the largest group, not once per box or per image, and the work is O(kept x M) per group
# instead of the O(M^2) of a full overlap matrix.
#
# IoUs are computed in float64 without an epsilon, as inter / (area_a + area_b - inter), so the
# threshold comparison is the exact one a float64 reference makes. A pair whose union is zero
# (two zero-area boxes) gives NaN and therefore never suppresses.
#
# torchvision: not used by default. torchvision.ops.nms sorts scores without a stable tie
# order, and its batched_nms shifts boxes by class offsets, which changes IoUs in the last bits
# (and mixes classes when coordinates are negative). backend="torchvision" is offered for
# callers that want it; it stays identical to the default by pre-sorting with our stable order,
# handing torchvision strictly falling pseudo-scores (so it cannot reorder ties) and calling its
# nms per group in float64 (its CPU kernel uses the same IoU formula and the same strict test).
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Post-processing: decode only the cells that can pass the threshold, then one NMS call for
# the whole batch.
# --------------------------------------------------------------------------------------------

SCORE_MODES = ("obj_cls", "obj")


class Candidates(NamedTuple):
    """Cells whose score passed the threshold, ordered by (image, cell).

    image (K,) long batch index; cell (K,) long index into the N cells of decode_heads
    (scale-major, then anchor, row, column); boxes (K, 4) float32 xyxy input pixels;
    scores (K,) float32; classes (K,) long argmax class.
    """

    image: torch.Tensor
    cell: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor


def select_candidates(outputs: list[torch.Tensor], anchors: torch.Tensor, image_size: tuple[int, int],
                      conf_threshold: float, score_mode: str = "obj_cls") -> Candidates:
    """Score every cell and decode only those with score > conf_threshold.

    Args:
        outputs: per scale (B, A, gh, gw, 5+C) raw head tensors.
        anchors: (scales, A, 2) anchor (w, h) as fractions of the image.
        image_size: (height, width) of the network input in pixels.
        score_mode: "obj_cls" scores objectness x max class probability; "obj" objectness alone.

    Both scores are at most the objectness, so cells with objectness <= conf_threshold are
    dropped before any box or softmax is computed: with a trained model that is nearly every
    cell. The rest go through decode_cells, as decode_heads' cells do.
    """
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
    parts, offset = [], 0
    for pred, anchor in zip(outputs, anchors):
        _, a, gh, gw, _ = pred.shape
        obj = torch.sigmoid(pred[..., 0].float())
        bi, ai, yi, xi = (obj > conf_threshold).nonzero(as_tuple=True)
        boxes, o, cls_prob = decode_cells(pred[bi, ai, yi, xi], ai, yi, xi, (gh, gw),
                                          _anchors_px(anchor, image_size, pred.device), image_size)
        cls_prob, cls_idx = cls_prob.max(-1)
        score = o * cls_prob if score_mode == "obj_cls" else o
        cell = offset + (ai * gh + yi) * gw + xi
        parts.append((bi, cell, boxes, score, cls_idx))
        offset += a * gh * gw
    image, cell, boxes, scores, classes = (torch.cat(t) for t in zip(*parts))
    keep = scores > conf_threshold
    image, cell, boxes, scores, classes = image[keep], cell[keep], boxes[keep], scores[keep], classes[keep]
    # within a scale nonzero() yields (image, cell) order; a stable sort by image merges scales
    order = image.argsort(stable=True)
    return Candidates(image[order], cell[order], boxes[order], scores[order], classes[order])


def postprocess(
    outputs: list[torch.Tensor],
    anchors: torch.Tensor,
    image_size: tuple[int, int],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int | None = 100,
    score_mode: str = "obj_cls",
    max_candidates: int | None = None,
) -> list[torch.Tensor]:
    """Decode, score, threshold and class-aware NMS every image of a batch.

    Args:
        outputs: per scale (B, A, gh, gw, 5+C) raw head tensors.
        anchors: (scales, A, 2) anchors as fractions of the image.
        image_size: (height, width) of the network input.
        conf_threshold: keep cells with score > this.
        iou_threshold: NMS suppresses same-class boxes with IoU > this.
        max_detections: per image, the highest-scoring kept boxes (None: all).
        score_mode: "obj_cls" (objectness x max class probability) or "obj" (objectness).
        max_candidates: per image, only the highest-scoring candidates enter NMS (None:
            all). Evaluation at a low threshold sets it (an untrained model passes
            thousands of cells per image).

    Returns:
        one (K, 6) float32 tensor per image: x1, y1, x2, y2 (input pixels), score, class;
        rows by falling score, ties by cell index (see decode_heads for the cell order).
    """
    return postprocess_with_cells(outputs, anchors, image_size, conf_threshold, iou_threshold, max_detections,
                                  score_mode, max_candidates)[0]


def top_candidates(cand: Candidates, batch: int, k: int) -> Candidates:
    """Keep each image's k highest-scoring candidates (ties: lower cell first), in (image, cell) order."""
    order = cand.scores.argsort(descending=True, stable=True)
    order = order[cand.image[order].argsort(stable=True)]  # by image, then falling score, then cell
    counts = torch.bincount(cand.image, minlength=batch)
    rank = torch.arange(order.numel(), device=order.device) - (counts.cumsum(0) - counts)[cand.image[order]]
    keep = order[rank < k].sort().values
    return Candidates(*(t[keep] for t in cand))


def nms_per_image(cand: Candidates, batch: int, num_classes: int, iou_threshold: float = 0.45,
                  max_detections: int | None = 100) -> list[torch.Tensor]:
    """Class-aware NMS of the candidates of a batch in one call -> per image (K, 6) tensors.

    Args:
        cand: from select_candidates (ordered by image, then cell).
        batch: B, the number of images (images without candidates get a (0, 6) tensor).
        num_classes: C.
        iou_threshold, max_detections: as in postprocess.
    """
    keep, counts = _kept_candidates(cand, batch, num_classes, iou_threshold, max_detections)
    return list(_detections(cand, keep).split(counts.tolist()))


def _detections(cand: Candidates, keep: torch.Tensor) -> torch.Tensor:
    """(K, 6) x1, y1, x2, y2, score, class of the kept candidates."""
    return torch.cat((cand.boxes[keep], cand.scores[keep, None], cand.classes[keep, None].float()), 1)


def _kept_candidates(cand: Candidates, batch: int, num_classes: int, iou_threshold: float,
                     max_detections: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """NMS survivors: indices into cand (K,), grouped by image, each image's by falling score,
    and the number kept per image (B,)."""
    # a group is one (image, class): a single NMS pass serves every image of the batch
    keep = batched_nms(cand.boxes, cand.scores, cand.image * num_classes + cand.classes, iou_threshold)
    keep = keep[cand.image[keep].argsort(stable=True)]  # per image, still by falling score
    counts = torch.bincount(cand.image[keep], minlength=batch)
    if max_detections is not None:
        rank = torch.arange(keep.numel(), device=keep.device) - (counts.cumsum(0) - counts)[cand.image[keep]]
        keep = keep[rank < max_detections]
        counts = counts.clamp(max=max_detections)
    return keep, counts


def postprocess_with_cells(
    outputs: list[torch.Tensor],
    anchors: torch.Tensor,
    image_size: tuple[int, int],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int | None = 100,
    score_mode: str = "obj_cls",
    max_candidates: int | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """postprocess, plus where each detection came from in the head outputs (postprocess is
    this function without the cells: one path for every caller).

    Same arguments and the same detections as postprocess. Explanations (yolov3.cam) need the
    source of each box to rebuild its score from the raw outputs with the autograd graph kept.

    Returns:
        dets: one (K, 6) float32 tensor per image, exactly as postprocess returns them.
        cells: one (K, 4) long tensor per image: scale (index into outputs), anchor, row,
            column of the head cell each detection was decoded from.
    """
    batch, num_classes = outputs[0].shape[0], outputs[0].shape[-1] - 5
    cand = select_candidates(outputs, anchors, image_size, conf_threshold, score_mode)
    if max_candidates is not None:
        cand = top_candidates(cand, batch, max_candidates)
    keep, counts = _kept_candidates(cand, batch, num_classes, iou_threshold, max_detections)
    det = _detections(cand, keep)
    cells = flat_cell_to_index(cand.cell[keep], [tuple(o.shape[1:4]) for o in outputs])
    return list(det.split(counts.tolist())), list(cells.split(counts.tolist()))


def flat_cell_to_index(cell: torch.Tensor, shapes: list[tuple[int, int, int]]) -> torch.Tensor:
    """Flat cell indices of decode_heads' order -> (K, 4) long (scale, anchor, row, column).

    cell (K,) long; shapes: per scale (A, gh, gw).
    """
    out = torch.zeros(cell.shape[0], 4, dtype=torch.long, device=cell.device)
    offset = 0
    for s, (a, gh, gw) in enumerate(shapes):
        n = a * gh * gw
        here = (cell >= offset) & (cell < offset + n)
        local = cell[here] - offset
        out[here] = torch.stack((torch.full_like(local, s), local // (gh * gw), (local // gw) % gh, local % gw), 1)
        offset += n
    return out
