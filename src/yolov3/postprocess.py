"""Post-processing: head outputs -> detections.

Only the cells whose score can pass the threshold are decoded (boxes.decode_cells, the one
decode), then one class-aware NMS call (yolov3.nms) serves the whole batch: a group is one
(image, class).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from yolov3.boxes import anchors_px, decode_cells
from yolov3.nms import batched_nms

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
                                          anchors_px(anchor, image_size, pred.device), image_size)
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


def inside_regions(cand: Candidates, regions: torch.Tensor) -> Candidates:
    """The candidates whose box overlaps its image's region (B, 4) with positive width and
    height (the rule of letterbox.Letterbox.on_image, in input pixels)."""
    r = regions.to(device=cand.boxes.device, dtype=cand.boxes.dtype)[cand.image]
    b = cand.boxes
    keep = ((torch.minimum(b[:, 2], r[:, 2]) > torch.maximum(b[:, 0], r[:, 0]))
            & (torch.minimum(b[:, 3], r[:, 3]) > torch.maximum(b[:, 1], r[:, 1])))
    return Candidates(*(t[keep] for t in cand))


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


def postprocess(
    outputs: list[torch.Tensor],
    anchors: torch.Tensor,
    image_size: tuple[int, int],
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_detections: int | None = 100,
    score_mode: str = "obj_cls",
    max_candidates: int | None = None,
    return_cells: bool = False,
    regions: torch.Tensor | None = None,
) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
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
        return_cells: also return where each detection came from in the head outputs
            (explanations, yolov3.cam, rebuild its score from the raw outputs with the
            autograd graph kept).
        regions: (B, 4) xyxy input pixels, the part of each input that is image (a letterbox's
            region, letterbox.stack_regions): candidates that do not overlap it with positive
            width and height lie wholly in the padding and are dropped before NMS and before
            max_candidates / max_detections count (None: keep all).

    Returns:
        dets: one (K, 6) float32 tensor per image: x1, y1, x2, y2 (input pixels), score,
            class; rows by falling score, ties by cell index (see decode_heads for the order).
        cells (only with return_cells): one (K, 4) long tensor per image: scale (index into
            outputs), anchor, row, column of the head cell each detection was decoded from.
    """
    batch, num_classes = outputs[0].shape[0], outputs[0].shape[-1] - 5
    cand = select_candidates(outputs, anchors, image_size, conf_threshold, score_mode)
    if regions is not None:
        cand = inside_regions(cand, regions)
    if max_candidates is not None:
        cand = top_candidates(cand, batch, max_candidates)
    keep, counts = _kept_candidates(cand, batch, num_classes, iou_threshold, max_detections)
    dets = list(_detections(cand, keep).split(counts.tolist()))
    if not return_cells:
        return dets
    cells = flat_cell_to_index(cand.cell[keep], [tuple(o.shape[1:4]) for o in outputs])
    return dets, list(cells.split(counts.tolist()))


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
