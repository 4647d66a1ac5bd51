"""The course's YOLOv3 loss, computed in float32 even under autocast, with no in-place ops."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yolov3.boxes import MAX_LOG_WH, elementwise_iou

LOSS_TERMS = ("box", "obj", "noobj", "cls")


@dataclass
class LossWeights:
    """The course's weights (lambda_box 10, lambda_obj 1, lambda_noobj 10, lambda_class 1)."""

    box: float = 10.0
    obj: float = 1.0
    noobj: float = 10.0
    cls: float = 1.0


def _mean_or_zero(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # An empty selection (no object cell at this scale) contributes 0, not NaN, and keeps the graph.
    return values.mean() if values.numel() else like.sum() * 0.0


OBJECTNESS_LOSSES = ("mse_iou", "bce_iou")


class YoloLoss(nn.Module):
    """Sum over scales of the course's four terms.

    Per scale, with obj/noobj the cells whose target objectness is 1/0 (ignored cells, -1,
    are in neither):
      noobj: BCE-with-logits of objectness vs 0 over no-object cells;
      obj:   objectness vs the (detached) IoU of the predicted and target box, as
             objectness_loss says: "mse_iou" (the course's) MSE of sigmoid(objectness), or
             "bce_iou" BCE-with-logits against the IoU as a soft target;
      box:   MSE of (sigmoid tx, sigmoid ty, tw, th) vs (cell offsets, log(w / anchor));
      cls:   cross-entropy of the class logits over object cells.
    All means are over the selected cells, as in the course.

    Why "bce_iou" exists: the course's MSE on sigmoid(o) has gradient 2 (s - iou) s (1 - s)
    in the logit o, which vanishes as s -> 0. The no-object term (weight 10, nearly every
    cell) drives s towards 0 everywhere in the first steps, while boxes are still poor and
    the IoU target small; once an object cell's s is near 0 its own term can hardly lift it
    (60 real VOC photos, bench/objectness.py: object accuracy 0.0 % after 400 steps, class
    accuracy 98.5 %; bce_iou: 92.1 %).
    BCE's gradient s - iou does not vanish.
    """

    def __init__(self, weights: LossWeights | None = None, objectness_loss: str = "mse_iou") -> None:
        super().__init__()
        if objectness_loss not in OBJECTNESS_LOSSES:
            raise ValueError(f"objectness_loss must be one of {OBJECTNESS_LOSSES}, got {objectness_loss!r}")
        self.weights = weights or LossWeights()
        self.objectness_loss = objectness_loss

    def forward(
        self, outputs: list[torch.Tensor], targets: list[torch.Tensor], anchors: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """outputs: per scale (B, A, gh, gw, 5+C) raw head tensors; targets: per scale
        (B, A, gh, gw, 6) from build_targets; anchors: (scales, A, 2) as fractions of the image.

        Returns (total, {"box", "obj", "noobj", "cls"}), each term summed over scales and
        weighted; total is the sum of the four.
        """
        parts = {k: outputs[0].new_zeros((), dtype=torch.float32) for k in LOSS_TERMS}
        device_type = outputs[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            for pred, target, anchor in zip(outputs, targets, anchors):
                scale_parts = self._scale(pred.float(), target.float(), anchor.float().to(pred.device))
                parts = {k: parts[k] + scale_parts[k] for k in LOSS_TERMS}
        w = self.weights
        parts = {
            "box": w.box * parts["box"],
            "obj": w.obj * parts["obj"],
            "noobj": w.noobj * parts["noobj"],
            "cls": w.cls * parts["cls"],
        }
        total = parts["box"] + parts["obj"] + parts["noobj"] + parts["cls"]
        return total, parts

    def _scale(self, pred: torch.Tensor, target: torch.Tensor, anchors: torch.Tensor) -> dict[str, torch.Tensor]:
        gh, gw = pred.shape[2:4]
        obj = target[..., 0] == 1
        noobj = target[..., 0] == 0

        noobj_loss = (
            F.binary_cross_entropy_with_logits(pred[..., 0][noobj], target[..., 0][noobj])
            if noobj.any()
            else pred.sum() * 0.0
        )

        p = pred[obj]  # (K, 5+C)
        t = target[obj]  # (K, 6)
        anchor_cells = (anchors * anchors.new_tensor([gw, gh]))[None].expand(pred.shape[0], -1, -1)
        anchor_cells = anchor_cells[:, :, None, None, :].expand(*pred.shape[:4], 2)[obj]  # (K, 2)

        xy = torch.sigmoid(p[:, 1:3])
        # exp is clamped only for the IoU (detached), so an early huge tw cannot make NaNs.
        wh = torch.exp(p[:, 3:5].detach().clamp(max=MAX_LOG_WH)) * anchor_cells
        iou = elementwise_iou(torch.cat((xy.detach(), wh), 1), t[:, 1:5], fmt="cxcywh")
        if self.objectness_loss == "mse_iou":
            obj_values = F.mse_loss(torch.sigmoid(p[:, 0]), iou, reduction="none")
        else:
            obj_values = F.binary_cross_entropy_with_logits(p[:, 0], iou, reduction="none")
        obj_loss = _mean_or_zero(obj_values, pred)

        box_pred = torch.cat((xy, p[:, 3:5]), 1)
        box_target = torch.cat((t[:, 1:3], torch.log(1e-16 + t[:, 3:5] / anchor_cells)), 1)
        box_loss = _mean_or_zero(F.mse_loss(box_pred, box_target, reduction="none"), pred)

        cls_loss = _mean_or_zero(F.cross_entropy(p[:, 5:], t[:, 5].long(), reduction="none"), pred)
        return {"box": box_loss, "obj": obj_loss, "noobj": noobj_loss, "cls": cls_loss}
