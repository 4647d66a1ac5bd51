"""COCO-style mAP@[.5:.95], mAP@.5 and mAP@.75 of a split's EvalArrays, through
faster_coco_eval, built in memory (no files)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolov3.evaluation import EvalArrays, image_ranks


def _quiet(*_args, **_kwargs) -> None:
    pass


def _coco_inputs(arrays: EvalArrays) -> tuple[list[dict], list[dict], list[dict]]:
    """COCO images, ground-truth annotations and results of the arrays.

    Images are numbered by ascending image id (from 1) and rows listed image by image, each
    image's rows in their order: COCOeval breaks score ties by that order, so the numbers do
    not depend on how the arrays' images were split or interleaved.
    """
    det_rank, gt_rank = image_ranks(arrays)
    images = [{"id": i + 1, "height": 0, "width": 0} for i in range(arrays.images.shape[0])]
    annotations = []
    g = np.argsort(gt_rank, kind="stable")
    for image, box, label, difficult in zip(gt_rank[g].tolist(), arrays.gt_boxes[g].tolist(),
                                            arrays.gt_classes[g].tolist(), arrays.gt_difficult[g].tolist()):
        bw, bh = box[2] - box[0], box[3] - box[1]
        # annotation ids start at 1: COCOeval uses 0 as "unmatched"
        annotations.append({"id": len(annotations) + 1, "image_id": image + 1, "category_id": label + 1,
                            "bbox": [box[0], box[1], bw, bh], "area": bw * bh,
                            "iscrowd": int(difficult), "ignore": int(difficult)})
    d = np.argsort(det_rank, kind="stable")
    results = [{"image_id": image + 1, "category_id": int(cls) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
               for image, (x1, y1, x2, y2), score, cls in zip(det_rank[d].tolist(), arrays.det_boxes[d].tolist(),
                                                              arrays.det_scores[d].tolist(), arrays.det_classes[d].tolist())]
    return images, annotations, results


def coco_map(arrays: EvalArrays, num_classes: int, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@.5 and mAP@.75 of boxes.

    Difficult ground truths become COCO ``iscrowd`` regions, the only ignore mechanism COCOeval
    honours (it overwrites any ``ignore`` field with ``iscrowd``): they are not counted as
    positives, and a detection matched to one is neither TP nor FP. Two COCO rules differ from
    VOC here: a detection is matched to a crowd region by intersection over the *detection's*
    area, and one region may absorb several detections; and a match needs IoU >= threshold
    (COCO), not > (VOC). Detections beyond 100 per image (by score) are ignored (COCO maxDets).
    Boxes are continuous xyxy (COCO's bbox IoU has no +1 either).

    Args:
        arrays: the split (evaluation.EvalArrays).
        num_classes: C; class indices are 0..C-1.
        class_names: optional C names (COCO category names; they do not change the numbers).

    Returns:
        {"map_50_95", "map_50", "map_75", "mar_100": float (NaN when undefined),
         "ap_50_95", "ap_50": (C,) float64 per class (NaN for classes without positives)}.

    Raises:
        ValueError: an image id problem (evaluation.image_ranks).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    images, annotations, results = _coco_inputs(arrays)
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
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
