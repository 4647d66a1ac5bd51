"""Metrics: the course's three cell accuracies, accumulated as counts (exact under DDP)."""

from __future__ import annotations

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
