"""Detection evaluation: PASCAL VOC average precision (VOC2007 11-point and VOC2010+ all-point)
and COCO-style mAP@[.5:.95] through faster_coco_eval.

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
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Sequence


def _np(x: ArrayLike, dtype, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    """Any tensor / array / list -> numpy array of dtype (on CPU), empty inputs shaped (0, *tail)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=dtype)
    return a.reshape(0, *shape_tail) if a.size == 0 else a


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


def score_order(scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Evaluation order (D,): by class, then falling score, then input position.

    Detections are concatenated image by image (ascending image id) keeping each image's rows
    in order, so "input position" is the documented tie rule (image order, then row).
    """
    return np.lexsort((np.arange(scores.shape[0]), -scores, classes))


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


def evaluate_voc(det_image: np.ndarray, det_boxes: np.ndarray, det_scores: np.ndarray,
                 det_classes: np.ndarray, gt_image: np.ndarray, gt_boxes: np.ndarray,
                 gt_classes: np.ndarray, gt_difficult: np.ndarray, num_classes: int,
                 iou_threshold: float = 0.5) -> dict[str, Any]:
    """VOC evaluation of flat arrays. Images are integer ranks 0..I-1; detections must be
    concatenated in image-rank order (their position breaks score ties).

    Args:
        det_image (D,) int, det_boxes (D, 4), det_scores (D,), det_classes (D,) int;
        gt_image (G,) int, gt_boxes (G, 4), gt_classes (G,) int, gt_difficult (G,) bool.

    Returns:
        see VOCEvaluator.compute.
    """
    for name, cls in (("detection", det_classes), ("ground-truth", gt_classes)):
        if cls.size and (cls.min() < 0 or cls.max() >= num_classes):
            raise ValueError(f"{name} class indices must lie in [0, {num_classes})")
    num_images = int(max(det_image.max(initial=-1), gt_image.max(initial=-1))) + 1
    num_keys = max(num_images, 1) * num_classes
    best_iou, best_gt = best_ground_truth(det_image * num_classes + det_classes, det_boxes,
                                          gt_image * num_classes + gt_classes, gt_boxes, num_keys)
    order = score_order(det_scores, det_classes)
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
    defined = ~np.isnan(out["ap_07"])
    out["map_07"] = float(out["ap_07"][defined].mean()) if defined.any() else float("nan")
    out["map_2010"] = float(out["ap_2010"][defined].mean()) if defined.any() else float("nan")
    out["num_images"] = num_images
    return out


# --------------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------------


def image_record(image_id: int, detections: ArrayLike, ground_truth: dict) -> dict[str, Any]:
    """One image's evaluation input as plain numpy (picklable, device-free).

    Args:
        detections: (K, 6) x1, y1, x2, y2, score, class.
        ground_truth: {"boxes": (N, 4) xyxy, "labels": (N,), "difficult": (N,) bool, optional}.
    """
    det = _np(detections, np.float64, (6,))
    boxes = _np(ground_truth["boxes"], np.float64, (4,))
    labels = _np(ground_truth["labels"], np.int64)
    difficult = ground_truth.get("difficult")
    difficult = np.zeros(labels.shape[0], bool) if difficult is None else _np(difficult, bool)
    if det.ndim != 2 or det.shape[1] != 6:
        raise ValueError(f"detections must be (K, 6), got {det.shape}")
    if not (boxes.shape[0] == labels.shape[0] == difficult.shape[0]):
        raise ValueError("ground truth boxes, labels and difficult must have the same length")
    return {"image_id": int(image_id), "detections": det, "boxes": boxes, "labels": labels,
            "difficult": difficult}


def flatten_records(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Records sorted by image id -> the flat arrays evaluate_voc takes (images as ranks)."""
    ids = [r["image_id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate image ids")
    records = sorted(records, key=lambda r: r["image_id"])
    det_counts = [r["detections"].shape[0] for r in records]
    gt_counts = [r["labels"].shape[0] for r in records]
    det = np.concatenate([r["detections"] for r in records]) if records else np.zeros((0, 6))
    ranks = np.arange(len(records))
    return {
        "det_image": np.repeat(ranks, det_counts), "det_boxes": det[:, :4], "det_scores": det[:, 4],
        "det_classes": det[:, 5].astype(np.int64),
        "gt_image": np.repeat(ranks, gt_counts),
        "gt_boxes": np.concatenate([r["boxes"] for r in records]) if records else np.zeros((0, 4)),
        "gt_classes": np.concatenate([r["labels"] for r in records]) if records else np.zeros(0, np.int64),
        "gt_difficult": np.concatenate([r["difficult"] for r in records]) if records else np.zeros(0, bool),
    }


class VOCEvaluator:
    """Accumulates detections and ground truths over a split; computes VOC and COCO metrics.

    Plain Python (no Lightning). Each image is stored as a numpy record keyed by its image id;
    compute() sorts by id, so gathering the records of several processes (state() on each,
    merge() on one) gives exactly the single-process result whatever the split.

    Args:
        num_classes: C; class indices are 0..C-1.
        iou_threshold: a detection matches when IoU > this (strictly).
        class_names: optional names, used by compute_coco.
    """

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, class_names: Sequence[str] | None = None) -> None:
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.class_names = tuple(class_names) if class_names is not None else tuple(map(str, range(num_classes)))
        self.reset()

    def reset(self) -> None:
        self._records: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._records)

    def update(self, detections: Sequence[ArrayLike], ground_truths: Sequence[dict],
               image_ids: Sequence[int] | None = None) -> None:
        """Add a batch of images.

        Args:
            detections: per image (K, 6) [x1, y1, x2, y2, score, class] (tensor or array).
            ground_truths: per image {"boxes": (N, 4) xyxy, "labels": (N,), "difficult": (N,)
                bool (optional, default all False)}, in the same pixel frame as the detections.
            image_ids: per image a unique int (e.g. the dataset index); needed for results
                that do not depend on the process split. Default: a running counter.
        """
        if len(detections) != len(ground_truths):
            raise ValueError("detections and ground_truths must have one entry per image")
        if image_ids is None:
            image_ids = range(self._next_id, self._next_id + len(detections))
        image_ids = [int(i) for i in image_ids]
        records = [image_record(i, d, g) for i, d, g in zip(image_ids, detections, ground_truths, strict=True)]
        self.merge(records)

    def state(self) -> list[dict[str, Any]]:
        """The per-image records (plain numpy dicts), sorted by image id, for gathering."""
        return [self._records[k] for k in sorted(self._records)]

    def merge(self, records: Sequence[dict[str, Any]]) -> None:
        """Add records from state() of another evaluator (e.g. gathered from other ranks)."""
        for r in records:
            if r["image_id"] in self._records:
                raise ValueError(f"image id {r['image_id']} added twice")
            self._records[r["image_id"]] = r
            self._next_id = max(self._next_id, r["image_id"] + 1)

    def compute(self) -> dict[str, Any]:
        """VOC metrics over every image added.

        Returns:
            dict with
              "map_07", "map_2010": float, mean over classes with positives (NaN if none);
              "ap_07", "ap_2010": (C,) float64, NaN for classes without non-difficult GT;
              "precision", "recall", "scores": lists of C arrays (D_c,), the PR curve of each
                  class after each non-ignored detection in falling score order (recall NaN
                  for classes without positives);
              "num_positives" (non-difficult GT), "num_detections" (detections that are TP
                  or FP, i.e. not ignored on a difficult box), "num_tp": (C,) int64;
              "num_images": int.
        """
        flat = flatten_records(self.state())
        out = evaluate_voc(**flat, num_classes=self.num_classes, iou_threshold=self.iou_threshold)
        out["num_images"] = len(self._records)
        return out

    def compute_coco(self) -> dict[str, Any]:
        """COCO-style metrics (see coco_map) over every image added."""
        records = self.state()
        return coco_map([r["detections"] for r in records],
                        [{"boxes": r["boxes"], "labels": r["labels"], "difficult": r["difficult"]} for r in records],
                        class_names=self.class_names, num_classes=self.num_classes)


# --------------------------------------------------------------------------------------------
# COCO-style metrics through faster_coco_eval
# --------------------------------------------------------------------------------------------


def _quiet(*_args, **_kwargs) -> None:
    pass


def coco_map(detections: Sequence[ArrayLike], ground_truths: Sequence[dict],
             image_sizes: Sequence[tuple[int, int]] | None = None, class_names: Sequence[str] | None = None,
             *, num_classes: int | None = None) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@.5 and mAP@.75 of boxes, built in memory (no files).

    Difficult ground truths become COCO ``iscrowd`` regions, the only ignore mechanism COCOeval
    honours (it overwrites any ``ignore`` field with ``iscrowd``): they are not counted as
    positives, and a detection matched to one is neither TP nor FP. Two COCO rules differ from
    VOC here: a detection is matched to a crowd region by intersection over the *detection's*
    area, and one region may absorb several detections; and a match needs IoU >= threshold
    (COCO), not > (VOC). Detections beyond 100 per image (by score) are ignored (COCO maxDets).
    Boxes are continuous xyxy (COCO's bbox IoU has no +1 either).

    Args:
        detections: per image (K, 6) [x1, y1, x2, y2, score, class].
        ground_truths: per image {"boxes": (N, 4), "labels": (N,), "difficult": (N,) optional}.
        num_classes: C.
        image_sizes: optional per image (height, width), stored in the COCO image records
            (bbox evaluation does not use them).
        class_names: optional C names.
        num_classes: C; default len(class_names), else 1 + the largest class index seen.

    Returns:
        {"map_50_95", "map_50", "map_75", "mar_100": float (NaN when undefined),
         "ap_50_95", "ap_50": (C,) float64 per class (NaN for classes without positives)}.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    records = [image_record(i, d, g) for i, (d, g) in enumerate(zip(detections, ground_truths, strict=True))]
    if num_classes is None:
        seen = [r["labels"].max(initial=-1) for r in records] + [r["detections"][:, 5].max(initial=-1) for r in records]
        num_classes = len(class_names) if class_names is not None else int(max(seen, default=-1)) + 1
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    images, annotations, results = [], [], []
    for i, r in enumerate(records):
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, label, difficult in zip(r["boxes"].tolist(), r["labels"].tolist(), r["difficult"].tolist()):
            bw, bh = box[2] - box[0], box[3] - box[1]
            # annotation ids start at 1: COCOeval uses 0 as "unmatched"
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                                "bbox": [box[0], box[1], bw, bh], "area": bw * bh,
                                "iscrowd": int(difficult), "ignore": int(difficult)})
        for x1, y1, x2, y2, score, cls in r["detections"].tolist():
            results.append({"image_id": i + 1, "category_id": int(cls) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    categories = [{"id": c + 1, "name": names[c]} for c in range(num_classes)]
    gt_api = COCO({"images": images, "annotations": annotations, "categories": categories}, print_function=_quiet)
    dt_api = gt_api.loadRes(results)
    ev = COCOeval_faster(gt_api, dt_api, "bbox", print_function=_quiet)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = ev.stats_as_dict

    def defined(v: float) -> float:
        return float("nan") if v < 0 else float(v)  # COCOeval reports -1 for "no data"

    # precision: (T iou thresholds, R recall points, K classes, A areas, M maxDets); area "all",
    # maxDets 100; -1 marks classes without positives
    prec = ev.eval["precision"][:, :, :, 0, -1]
    ap_50_95, ap_50 = np.full(num_classes, np.nan), np.full(num_classes, np.nan)
    iou50 = int(np.flatnonzero(np.isclose(ev.params.iouThrs, 0.5))[0])
    for k, cat in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        if (p > -1).any():
            ap_50_95[cat - 1] = p[p > -1].mean()
            ap_50[cat - 1] = p[iou50][p[iou50] > -1].mean()
    return {"map_50_95": defined(stats["AP_all"]), "map_50": defined(stats["AP_50"]),
            "map_75": defined(stats["AP_75"]), "mar_100": defined(stats["AR_third"]),
            "ap_50_95": ap_50_95, "ap_50": ap_50}
