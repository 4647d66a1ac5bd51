"""Metrics: the course's three cell accuracies, accumulated as counts (exact under DDP)."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric


class CourseAccuracy(Metric):
    """The course's class, object and no-object accuracies over all cells of a split.

    Over every scale: class accuracy is the share of object cells (target objectness 1)
    whose argmax class is right; object accuracy the share of object cells with
    sigmoid(objectness) > threshold; no-object accuracy the share of no-object cells
    (target 0; ignored cells are in neither) with sigmoid(objectness) <= threshold.
    States are integer counts summed across processes, so a DDP run gives exactly the
    figures of a single-process run over the same images.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        for name in ("class_correct", "obj_cells", "obj_correct", "noobj_cells", "noobj_correct"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, outputs: list[torch.Tensor], targets: list[torch.Tensor]) -> None:
        """outputs: per scale (B, A, gh, gw, 5+C) raw heads; targets: per scale (B, A, gh, gw, 6)."""
        for pred, target in zip(outputs, targets):
            obj = target[..., 0] == 1
            noobj = target[..., 0] == 0
            positive = torch.sigmoid(pred[..., 0].float()) > self.threshold
            self.class_correct += (pred[..., 5:][obj].argmax(-1) == target[..., 5][obj].long()).sum()
            self.obj_cells += obj.sum()
            self.obj_correct += (positive & obj).sum()
            self.noobj_cells += noobj.sum()
            self.noobj_correct += (~positive & noobj).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """{"class_acc", "obj_acc", "noobj_acc"} in percent (NaN where there were no such cells)."""

        def pct(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
            return 100.0 * num.double() / den.double() if den > 0 else torch.tensor(float("nan"))

        return {
            "class_acc": pct(self.class_correct, self.obj_cells).float(),
            "obj_acc": pct(self.obj_correct, self.obj_cells).float(),
            "noobj_acc": pct(self.noobj_correct, self.noobj_cells).float(),
        }


class DetectionMAP(Metric):
    """VOC07 11-point and VOC2010+ all-point mAP@0.5 (and optionally COCO mAP) over a split.

    update() takes each image's detections and ground truth in original image pixels with
    the image's dataset index as its id. States are flat tensors gathered across processes
    by torchmetrics (uneven sizes are fine), and compute() hands them, regrouped per image
    and sorted by id, to evaluation.VOCEvaluator: a DDP run gives exactly the figures of a
    single-process run over the same images.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, coco: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.iou_threshold, self.coco = num_classes, iou_threshold, coco
        # detections: (K, 7) image id, x1, y1, x2, y2, score, class; ground truth: (G, 7)
        # image id, x1, y1, x2, y2, class, difficult; images: (N,) ids of every image seen
        self.add_state("detections", default=[], dist_reduce_fx="cat")
        self.add_state("ground_truth", default=[], dist_reduce_fx="cat")
        self.add_state("images", default=[], dist_reduce_fx="cat")

    def update(self, detections: list[torch.Tensor], boxes: list[torch.Tensor], labels: list[torch.Tensor],
               difficult: list[torch.Tensor], image_ids: torch.Tensor) -> None:
        """Per image: detections (K, 6) [x1, y1, x2, y2, score, class], boxes (G, 4), labels
        (G,), difficult (G,) bool; image_ids (B,) unique ints (dataset indices)."""
        for det, b, lab, dif, i in zip(detections, boxes, labels, difficult, image_ids.tolist(), strict=True):
            det = det.to(self.device, torch.float64)
            self.detections.append(torch.cat((torch.full((len(det), 1), i, dtype=torch.float64, device=self.device),
                                              det), 1))
            gt = torch.cat((b.to(self.device, torch.float64).reshape(-1, 4), lab.to(self.device, torch.float64)[:, None],
                            dif.to(self.device, torch.float64)[:, None]), 1)
            self.ground_truth.append(torch.cat((torch.full((len(gt), 1), i, dtype=torch.float64, device=self.device),
                                                gt), 1))
        self.images.append(image_ids.to(self.device, torch.long).reshape(-1))

    def compute(self) -> dict:
        """{"map_07", "map_2010"} (and "coco_map", "coco_map_50" when coco) as floats, plus
        "voc" (the VOCEvaluator result: per-class AP and PR curves) and "coco" details."""
        from yolov3.evaluation import VOCEvaluator

        def cat(state, width):
            if isinstance(state, torch.Tensor):
                return state.reshape(-1, width).cpu().numpy()
            return torch.cat(state).reshape(-1, width).cpu().numpy() if state else torch.zeros(0, width).numpy()

        det, gt = cat(self.detections, 7), cat(self.ground_truth, 7)
        ids = sorted(set(cat(self.images, 1)[:, 0].astype(int).tolist()))
        evaluator = VOCEvaluator(self.num_classes, self.iou_threshold)
        det_by_id = _split_by_id(det, ids)
        gt_by_id = _split_by_id(gt, ids)
        evaluator.update([det_by_id[i][:, 1:] for i in ids],
                         [{"boxes": gt_by_id[i][:, 1:5], "labels": gt_by_id[i][:, 5].astype(int),
                           "difficult": gt_by_id[i][:, 6] > 0} for i in ids], image_ids=ids)
        voc = evaluator.compute()
        out = {"map_07": float(voc["map_07"]), "map_2010": float(voc["map_2010"]), "voc": voc,
               "num_images": len(ids)}
        if self.coco:
            coco = evaluator.compute_coco()
            out.update(coco_map=float(coco["map_50_95"]), coco_map_50=float(coco["map_50"]), coco=coco)
        return out


def _split_by_id(rows, ids: list[int]) -> dict:
    """Rows (R, 7) whose first column is an image id -> {id: its rows, in their order}."""
    order = np.argsort(rows[:, 0], kind="stable")
    rows = rows[order]
    keys = rows[:, 0].astype(int)
    starts = np.searchsorted(keys, ids, side="left")
    ends = np.searchsorted(keys, ids, side="right")
    return {i: rows[s:e] for i, s, e in zip(ids, starts, ends)}
