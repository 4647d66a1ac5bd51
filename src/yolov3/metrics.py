"""Metrics over a split, exact under DDP: the course's three cell accuracies (counts) and
detection mAP (the flat evaluation arrays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from yolov3.coco_eval import coco_map
from yolov3.evaluation import EvalArrays, evaluate_voc


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
    """VOC07 11-point and VOC2010+ all-point mAP@0.5, the ERA V1 course's "mAP" (trapezoid over
    the raw PR curve, difficult boxes counted: evaluation.course_ap) and optionally COCO mAP,
    over a split.

    update() takes each image's detections and ground truth in original image pixels with
    the image's dataset index as its id. The states are the fields of evaluation.EvalArrays,
    one flat tensor each, concatenated across processes by torchmetrics (uneven sizes are
    fine); compute() hands them to evaluate_voc (and coco_map) as they are. Results depend on
    the image ids, not on the order or the process images came in, so a DDP run gives exactly
    the figures of a single-process run over the same images; an id seen twice (an image
    counted twice, e.g. by a padding sampler) makes compute() raise ValueError.

    Args:
        num_classes: C; class indices are 0..C-1.
        iou_threshold: a VOC match needs IoU > this (strictly).
        coco: also compute COCO mAP@[.5:.95] and mAP@.5 (faster_coco_eval; slower).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_classes: int, iou_threshold: float = 0.5, coco: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.iou_threshold, self.coco = num_classes, iou_threshold, coco
        for name in EvalArrays._fields:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, detections: Sequence, boxes: Sequence, labels: Sequence, difficult: Sequence,
               image_ids: torch.Tensor | Sequence[int]) -> None:
        """Add a batch of B images (tensors on any device, or arrays).

        Args:
            detections: per image (K, 6) [x1, y1, x2, y2, score, class], ranked by the detector.
            boxes: per image (G, 4) xyxy ground truth, in the same pixel frame.
            labels: per image (G,) class indices.
            difficult: per image (G,) bool.
            image_ids: (B,) unique ints (dataset indices).

        Raises:
            ValueError: lists of different lengths, detections not (K, 6), or an image whose
                boxes, labels and difficult differ in length.
        """
        ids = torch.as_tensor(image_ids).to(self.device, torch.long).reshape(-1)
        if not len(detections) == len(boxes) == len(labels) == len(difficult) == len(ids):
            raise ValueError("detections, boxes, labels, difficult and image_ids must have one entry per image")
        if len(ids) == 0:
            return

        def flat(per_image: Sequence, dtype: torch.dtype, tail: tuple[int, ...] = ()) -> list[torch.Tensor]:
            out = [torch.as_tensor(x).to(self.device, dtype) for x in per_image]
            return [x.reshape(0, *tail) if x.numel() == 0 else x for x in out]

        det = flat(detections, torch.float64, (6,))
        if any(d.ndim != 2 or d.shape[1] != 6 for d in det):
            raise ValueError(f"detections must be (K, 6), got {[tuple(d.shape) for d in det]}")
        gt = (flat(boxes, torch.float64, (4,)), flat(labels, torch.long), flat(difficult, torch.bool))
        gt_counts = [len(b) for b in gt[0]]
        if gt_counts != [len(x) for x in gt[1]] or gt_counts != [len(x) for x in gt[2]]:
            raise ValueError("ground truth boxes, labels and difficult must have the same length per image")
        det_counts = [len(d) for d in det]
        det = torch.cat(det)
        self.images.append(ids)
        self.det_image.append(ids.repeat_interleave(torch.tensor(det_counts, device=self.device)))
        self.det_boxes.append(det[:, :4])
        self.det_scores.append(det[:, 4])
        self.det_classes.append(det[:, 5].long())
        self.gt_image.append(ids.repeat_interleave(torch.tensor(gt_counts, device=self.device)))
        self.gt_boxes.append(torch.cat(gt[0]))
        self.gt_classes.append(torch.cat(gt[1]))
        self.gt_difficult.append(torch.cat(gt[2]))

    def arrays(self) -> EvalArrays:
        """The states as numpy EvalArrays: this process's alone, except inside compute(),
        which gathers every process's first."""

        def flat(name: str, dtype, tail: tuple[int, ...] = ()) -> np.ndarray:
            state = getattr(self, name)
            if isinstance(state, list):  # before a sync (gathered states are one tensor)
                state = torch.cat(state) if state else torch.zeros(0)
            return state.detach().cpu().numpy().astype(dtype).reshape(-1, *tail)

        return EvalArrays(images=flat("images", np.int64), det_image=flat("det_image", np.int64),
                          det_boxes=flat("det_boxes", np.float64, (4,)), det_scores=flat("det_scores", np.float64),
                          det_classes=flat("det_classes", np.int64), gt_image=flat("gt_image", np.int64),
                          gt_boxes=flat("gt_boxes", np.float64, (4,)), gt_classes=flat("gt_classes", np.int64),
                          gt_difficult=flat("gt_difficult", bool))

    def compute(self) -> dict:
        """{"map_07", "map_2010", "map_course"} (and "coco_map", "coco_map_50" when coco) as floats,
        "num_images", "voc" (evaluate_voc's result: per-class AP and PR curves) and, when
        coco, "coco" (coco_map's result)."""
        arrays = self.arrays()
        voc = evaluate_voc(arrays, self.num_classes, self.iou_threshold)
        out = {"map_07": float(voc["map_07"]), "map_2010": float(voc["map_2010"]),
               "map_course": float(voc["map_course"]), "voc": voc, "num_images": voc["num_images"]}
        if self.coco:
            coco = coco_map(arrays, self.num_classes)
            out.update(coco_map=float(coco["map_50_95"]), coco_map_50=float(coco["map_50"]), coco=coco)
        return out
