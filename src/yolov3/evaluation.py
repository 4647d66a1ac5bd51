"""Detection evaluation input as flat arrays (EvalArrays), and PASCAL VOC average precision
(VOC2007 11-point and VOC2010+ all-point) on them, beside the ERA V1 course's own "mAP"
(course_ap: see there how it differs). COCO-style mAP of the same arrays is in coco_eval.py;
metrics.DetectionMAP accumulates them over a split (exactly, under DDP).

VOC protocol, as in the devkit's VOCevaldet / voc_eval, per class:

* The detections of the class over all images are sorted by falling score. Ties keep
  (image order, then the detection's row in its image's array): image order is ascending image
  id, so the result does not depend on how images were split across processes or batches.
* Each detection takes the ground truth of the same image and class with the highest IoU
  (ties: the first such box in the image's annotation order), whether or not that box is
  already matched, exactly as the devkit does. Then:
    - IoU > iou_threshold (strictly; the devkit tests ``ovmax > ovthresh``) and the box is
      ``difficult``: the detection is ignored, neither TP nor FP;
    - IoU > iou_threshold, not difficult, not yet matched: TP, and the box becomes matched;
    - IoU > iou_threshold, not difficult, already matched by a higher detection: FP;
    - otherwise (no box of the class in the image, or IoU <= threshold): FP.
  Note that a detection whose best box is already taken is an FP even when another unmatched
  box also overlaps it by more than the threshold: that is the devkit's rule, not a bug.
* Positives are the non-difficult ground truths of the class.
* A class with no non-difficult ground truth has no defined recall; its AP is NaN and it is
  left out of the mean (the devkit divides by zero there; VOC test sets never hit the case).
  When every class is NaN the mean is NaN.

Pixel convention: boxes are continuous, 0-based xyxy pixel coordinates; widths are x2 - x1,
with no devkit-style ``+ 1`` for inclusive integer pixels. IoUs therefore differ slightly from
the devkit's on small boxes, and match what our model and loss use everywhere else.

Speed: the greedy matching looks sequential, but a detection's best box does not depend on
which boxes are already matched, so the outcome is "TP iff it is the first detection, in the
class's score order, to claim that box". That makes the whole evaluation a few numpy passes:
one IoU per (detection, same-image same-class ground truth) pair, a segmented arg-max, one
global sort and a first-occurrence test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence


class EvalArrays(NamedTuple):
    """A split's evaluation input: one row per image, per detection and per ground truth.

    Images are identified by unique ints (e.g. dataset indices), in any order; rows of
    different images may interleave, but the rows of one image keep their order (detections
    as the detector ranked them, ground truths in annotation order): that order breaks score
    and IoU ties. Boxes are continuous xyxy pixels.

    images (I,) int64: every image evaluated, with or without boxes, each once.
    det_image (D,) int64, det_boxes (D, 4) float64, det_scores (D,) float64, det_classes (D,) int64.
    gt_image (G,) int64, gt_boxes (G, 4) float64, gt_classes (G,) int64, gt_difficult (G,) bool.
    """

    images: np.ndarray
    det_image: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_classes: np.ndarray
    gt_image: np.ndarray
    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    gt_difficult: np.ndarray


def image_ranks(arrays: EvalArrays) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each detection's and each ground truth's image among the sorted image ids.

    Returns:
        (D,) and (G,) int64 in 0..I-1.

    Raises:
        ValueError: an image id listed twice, or rows of an image that is not listed.
    """
    images = np.sort(arrays.images)
    twice = images[1:][images[1:] == images[:-1]]
    if twice.size:
        raise ValueError(f"image id {int(twice[0])} added twice")
    ranks = []
    for name, ids in (("detection", arrays.det_image), ("ground-truth", arrays.gt_image)):
        rank = np.searchsorted(images, ids)
        if ids.size and (rank.max() >= images.size or np.any(images[rank] != ids)):
            raise ValueError(f"{name} rows of an image that is not in images")
        ranks.append(rank)
    return ranks[0], ranks[1]


def _np(x: ArrayLike, dtype) -> np.ndarray:
    """Any tensor / array / list -> numpy array of dtype (on CPU)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Average precision from a PR curve
# --------------------------------------------------------------------------------------------

# The 11 recall thresholds exactly as the Python ports that published VOC07 figures compute
# them (py-faster-rcnn's voc_eval.py, and Detectron2, mmdetection and GluonCV after it):
# np.arange(0., 1.1, 0.1), whose 0.3, 0.6 and 0.7 are 0.30000000000000004, 0.6000000000000001
# and 0.7000000000000001. A class whose recall is exactly 3/10, 6/10 or 7/10 therefore does not
# reach that threshold (exact tenths would count it: up to +9 points of AP on one class).
_VOC07_RECALLS = np.arange(0.0, 1.1, 0.1)


def voc_ap(recall: ArrayLike, precision: ArrayLike, use_07_metric: bool) -> float:
    """Average precision of one class from its PR curve.

    Args:
        recall, precision: (D,) values after each detection in falling score order (recall
            non-decreasing). Empty arrays mean no detections.
        use_07_metric: True for VOC2007's 11-point AP: the mean, over t in {0, 0.1, ..., 1}, of
            the highest precision at recall >= t (0 if recall never reaches t), with t as
            np.arange(0., 1.1, 0.1) gives them, like the Python ports (py-faster-rcnn's
            voc_eval.py, Detectron2, mmdetection, GluonCV): its 0.3, 0.6 and 0.7 lie just above
            the decimals, so a recall of exactly 3/10, 6/10 or 7/10 does not reach them. The
            MATLAB devkit (VOCevaldet.m, `for t=0:0.1:1`) takes its thresholds from MATLAB's
            colon operator, which builds the vector from both ends and so need not give the
            same last bits at those three points; published VOC07 figures of the Python era
            come from the ports, which this matches. False for
            VOC2010+'s all-point AP: the area under the precision envelope (precision made
            non-increasing by taking, at every recall, the best precision at that recall or
            beyond), summed over the recall steps.

    Returns:
        AP in [0, 1].
    """
    rec = _np(recall, np.float64).ravel()
    prec = _np(precision, np.float64).ravel()
    if use_07_metric:
        if rec.size == 0:
            return 0.0
        reached = rec[None, :] >= _VOC07_RECALLS[:, None]  # (11, D)
        best = np.where(reached, prec[None, :], 0.0).max(1)
        return float(best.mean())
    # sentinels: the curve starts at recall 0 and its envelope drops to 0 after the last point
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * envelope[step + 1]))


def course_ap(recall: ArrayLike, precision: ArrayLike) -> float:
    """Average precision of one class as the ERA V1 course (session 13) computes its "mAP".

    Source: mean_average_precision in the course's YOLO_V3/yolo_v3_utils/utils.py (read in the
    jyanivaddi/dl_hub mirror). It prepends the point (recall 0, precision 1) to the raw PR curve
    and integrates it with the trapezoid rule (torch.trapz), so with r_0 = 0, p_0 = 1:
    AP = sum_k (r_k - r_{k-1}) * (p_k + p_{k-1}) / 2.

    Differences from the VOC protocol (voc_ap), for the same points:

    * no precision envelope: the precision is interpolated linearly between consecutive raw
      points, so every dip after false positives lowers the area (VOC2010+ takes, at every
      recall, the best precision at that recall or beyond). A rising segment ends at a TP
      whose precision is >= the previous point's, so for the same curve this is never above
      the VOC2010+ AP, and it is lower whenever a TP follows an FP;
    * all points, no 11-point sampling (VOC07);
    * no area past the last point, like VOC2010+ (whose envelope drops to 0 there).

    The course's epsilons (recall TP / (n + 1e-6), precision TP / (TP + FP + 1e-6)) and its
    float32 arithmetic are not copied: with them its AP is lower by at most 2e-6 (2 * 1e-6 * AP:
    each epsilon scales the points by at least 1 - 1e-6), plus float32 rounding. Its IoU
    (float32, 1e-6 added to the union) can also decide otherwise than ours when an IoU lies
    within rounding of the threshold or two boxes overlap a detection equally; its matching
    rules are otherwise the devkit's (best-IoU box of the image even if taken, IoU > threshold
    strictly), which evaluate_voc shares.

    Args:
        recall, precision: (D,) values after each detection in falling score order, every
            detection included (the course ignores none). Empty arrays mean no detections.

    Returns:
        AP in [0, 1]; 0.0 for an empty curve (the course's trapz over the lone prepended point).
    """
    rec = np.concatenate(([0.0], _np(recall, np.float64).ravel()))
    prec = np.concatenate(([1.0], _np(precision, np.float64).ravel()))
    return float(np.sum(np.diff(rec) * (prec[1:] + prec[:-1]) / 2))


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corresponding boxes, a (P, 4), b (P, 4) continuous xyxy -> (P,) float64.

    No +1 on widths and no epsilon: inter / (area_a + area_b - inter); a zero union gives 0.
    """
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0.0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0.0, None)
    inter = w * h
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def best_ground_truth(det_key: np.ndarray, det_boxes: np.ndarray, gt_key: np.ndarray,
                      gt_boxes: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the ground truth with the same key (image, class) and the highest IoU.

    Args:
        det_key: (D,) int key per detection, e.g. image * num_classes + class.
        det_boxes: (D, 4) xyxy; gt_key: (G,) int; gt_boxes: (G, 4); num_keys: > every key.

    Returns:
        best_iou (D,) float64 (-inf where the key has no ground truth) and best_gt (D,) int64
        index into the ground truths (-1 where none); ties go to the lowest ground-truth index.
    """
    num_det = det_key.shape[0]
    best_iou = np.full(num_det, -np.inf)
    best_gt = np.full(num_det, -1, dtype=np.int64)
    # the ground truths of key k are gt_sorted[start[k] : start[k] + count[k]], in index order
    gt_sorted = np.argsort(gt_key, kind="stable")
    count = np.bincount(gt_key, minlength=num_keys)
    start = np.cumsum(count) - count
    per_det = count[det_key]  # candidate pairs of each detection
    if per_det.sum() == 0:
        return best_iou, best_gt
    # expand to one row per (detection, candidate ground truth) pair, detection-major
    pair_det = np.repeat(np.arange(num_det), per_det)
    seg_start = np.cumsum(per_det) - per_det
    offset = np.arange(pair_det.shape[0]) - np.repeat(seg_start, per_det)
    pair_gt = gt_sorted[np.repeat(start[det_key], per_det) + offset]
    iou = pair_iou(det_boxes[pair_det], gt_boxes[pair_gt])
    has = per_det > 0
    best_iou[has] = np.maximum.reduceat(iou, seg_start[has])
    # first pair reaching the maximum: candidates are in ground-truth index order per detection
    at_max = np.flatnonzero(iou == best_iou[pair_det])
    dets, first = np.unique(pair_det[at_max], return_index=True)
    best_gt[dets] = pair_gt[at_max[first]]
    return best_iou, best_gt


def score_order(scores: np.ndarray, classes: np.ndarray, image_rank: np.ndarray) -> np.ndarray:
    """Evaluation order (D,): by class, then falling score, then image rank, then input position.

    Each image's rows keep their order in the input, so the last two keys are the documented
    tie rule (image order, then the detection's row in its image) however images interleave.
    """
    return np.lexsort((np.arange(scores.shape[0]), image_rank, -scores, classes))


def detection_outcomes(best_iou: np.ndarray, best_gt: np.ndarray, gt_difficult: np.ndarray,
                       order: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """VOC outcome of every detection.

    Args:
        best_iou, best_gt: (D,) from best_ground_truth.
        gt_difficult: (G,) bool.
        order: (D,) evaluation order (score_order).

    Returns:
        tp (D,) bool and ignored (D,) bool; every other detection is an FP.
    """
    hit = best_iou > iou_threshold  # strictly, as the devkit
    ignored = np.zeros_like(hit)
    ignored[hit] = gt_difficult[best_gt[hit]]
    claims = hit & ~ignored
    # TP iff the first detection, in evaluation order, to claim its ground truth
    claiming = order[claims[order]]
    _, first = np.unique(best_gt[claiming], return_index=True)
    tp = np.zeros_like(hit)
    tp[claiming[first]] = True
    return tp, ignored


def evaluate_voc(arrays: EvalArrays, num_classes: int, iou_threshold: float = 0.5) -> dict[str, Any]:
    """VOC evaluation of a split's flat arrays, and the course's "mAP" of the same matching.

    Args:
        arrays: the split (EvalArrays); any order of images gives the same result.
        num_classes: C; class indices are 0..C-1.
        iou_threshold: a detection matches when IoU > this (strictly).

    Returns:
        dict with
          "map_07", "map_2010": float, mean over classes with positives (NaN if none);
          "ap_07", "ap_2010": (C,) float64, NaN for classes without non-difficult GT;
          "precision", "recall", "scores": lists of C arrays (D_c,), the PR curve of each
              class after each non-ignored detection in falling score order (recall NaN
              for classes without positives);
          "num_positives" (non-difficult GT), "num_detections" (detections that are TP
              or FP, i.e. not ignored on a difficult box), "num_tp": (C,) int64;
          "num_images": int, I;
          "ap_course" (C,) float64 and "map_course" float: the course's "mAP" (course_ap) of
              the same matching with every box an ordinary positive: detections on difficult
              boxes are TP or FP like any other (the course's labels carry no difficult flag);
              NaN for classes without any ground truth, left out of the mean like the course
              skips them (NaN if no class has one, where the course would divide by zero).

    The course's "mAP" also differs upstream, in what it is given: it reads its ground truth
    back from its training targets at the 52x52 scale (get_evaluation_bboxes), where a box is
    missing if all three anchors of its cell are taken by other boxes. Given the same boxes and
    detections, map_course is its number (to within course_ap's epsilon note). Ties in score
    follow the same rule as VOC here: the course's stable sort keeps its loader order (image,
    then NMS rank), which is this order when image ids follow the loader's.

    Raises:
        ValueError: a class index outside [0, C), or an image id problem (image_ranks).
    """
    det_scores, det_classes = arrays.det_scores, arrays.det_classes
    gt_classes, gt_difficult = arrays.gt_classes, arrays.gt_difficult
    for name, cls in (("detection", det_classes), ("ground-truth", gt_classes)):
        if cls.size and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"{name} class indices must lie in [0, {num_classes})")
    det_rank, gt_rank = image_ranks(arrays)
    num_images = arrays.images.shape[0]
    num_keys = max(num_images, 1) * num_classes
    best_iou, best_gt = best_ground_truth(det_rank * num_classes + det_classes, arrays.det_boxes,
                                          gt_rank * num_classes + gt_classes, arrays.gt_boxes, num_keys)
    order = score_order(det_scores, det_classes, det_rank)
    tp, ignored = detection_outcomes(best_iou, best_gt, gt_difficult, order, iou_threshold)
    positives = np.bincount(gt_classes[~gt_difficult], minlength=num_classes)[:num_classes]

    ranked = order[~ignored[order]]  # ignored detections leave the PR curve unchanged: drop them
    bounds = np.searchsorted(det_classes[ranked], np.arange(num_classes + 1))
    out: dict[str, Any] = {"ap_07": np.full(num_classes, np.nan), "ap_2010": np.full(num_classes, np.nan),
                           "precision": [], "recall": [], "scores": [],
                           "num_positives": positives, "num_detections": np.diff(bounds),
                           "num_tp": np.zeros(num_classes, dtype=np.int64)}
    for c in range(num_classes):
        rows = ranked[bounds[c]:bounds[c + 1]]
        tp_cum = np.cumsum(tp[rows])
        precision = tp_cum / np.arange(1, rows.shape[0] + 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = tp_cum / positives[c] if positives[c] else np.full(rows.shape[0], np.nan)
        out["precision"].append(precision)
        out["recall"].append(recall)
        out["scores"].append(det_scores[rows])
        out["num_tp"][c] = tp_cum[-1] if rows.shape[0] else 0
        if positives[c]:
            out["ap_07"][c] = voc_ap(recall, precision, True)
            out["ap_2010"][c] = voc_ap(recall, precision, False)
    out["ap_course"] = _course_aps(best_iou, best_gt, order, det_classes, gt_classes, num_classes, iou_threshold)
    for key in ("07", "2010", "course"):
        ap = out[f"ap_{key}"]
        defined = ~np.isnan(ap)
        out[f"map_{key}"] = float(ap[defined].mean()) if defined.any() else float("nan")
    out["num_images"] = num_images
    return out


def _course_aps(best_iou: np.ndarray, best_gt: np.ndarray, order: np.ndarray, det_classes: np.ndarray,
                gt_classes: np.ndarray, num_classes: int, iou_threshold: float) -> np.ndarray:
    """course_ap of every class (C,) from evaluate_voc's matching (best_ground_truth, score_order).

    The course has no difficult flag: every ground truth is a positive, and every detection is
    a TP or an FP (detection_outcomes with no box difficult). NaN for a class without ground truth.
    """
    tp, _ = detection_outcomes(best_iou, best_gt, np.zeros(gt_classes.shape[0], bool), order, iou_threshold)
    positives = np.bincount(gt_classes, minlength=num_classes)[:num_classes]
    bounds = np.searchsorted(det_classes[order], np.arange(num_classes + 1))
    ap = np.full(num_classes, np.nan)
    for c in np.flatnonzero(positives):
        rows = order[bounds[c]:bounds[c + 1]]
        tp_cum = np.cumsum(tp[rows])
        ap[c] = course_ap(tp_cum / positives[c], tp_cum / np.arange(1, rows.shape[0] + 1))
    return ap
