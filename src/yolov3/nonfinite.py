"""Training steps whose loss or gradients are not finite: dropped, counted, and fatal in a row.

One NaN batch (a corrupt label, an overflow) would otherwise poison the weights, the Adam
moments and the BatchNorm running statistics for good, and every later step with them. The
guard makes such a step a no-op: its gradients are discarded before the optimiser sees them
(Adam skips parameters without a gradient, so neither weights nor moments move) and the
BatchNorm buffers its forward pass updated are put back. Many in a row mean the run has
diverged: training stops with an error naming the images, and the checkpoints written
before stay as they are.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger("yolov3")


class TrainingDiverged(RuntimeError):
    """Too many non-finite training steps in a row; the message names their images."""


class NonFiniteGuard:
    """Per-step bookkeeping for YoloLitModule (see its `max_nonfinite_steps`).

    Call before_forward() before the forward pass, check_loss() with the loss, and
    before_step() once the gradients are there (Lightning's on_before_optimizer_step).
    """

    def __init__(self, model: nn.Module, max_in_a_row: int) -> None:
        self.model = model
        self.max_in_a_row = max_in_a_row
        self.total = 0  # dropped steps in this run
        self.in_a_row: list[tuple[int, list[str]]] = []  # (step, image paths) of the current streak
        self._buffers: list[torch.Tensor] = []
        self._saved: list[torch.Tensor] = []
        self._step_info: tuple[int, list[str]] = (0, [])
        self._loss_ok = True

    def before_forward(self) -> None:
        """Remember the BatchNorm statistics (a few hundred kB) the forward pass will update."""
        self._buffers = [b for b in self.model.buffers() if b.is_floating_point() or b.dtype == torch.long]
        if len(self._saved) != len(self._buffers):
            self._saved = [b.detach().clone() for b in self._buffers]
        else:
            torch._foreach_copy_(self._saved, [b.detach() for b in self._buffers])

    def check_loss(self, loss: torch.Tensor, paths: list[str], step: int) -> bool:
        """Whether the loss is finite; remembers the batch for the report either way."""
        self._step_info = (step, list(paths))
        self._loss_ok = bool(torch.isfinite(loss.detach()).all())
        return self._loss_ok

    def before_step(self, strategy, check_grads: bool = True) -> bool:
        """Drop this step if its loss or (check_grads) its gradients are not finite on any
        process. Returns whether it was dropped; raises TrainingDiverged after
        `max_in_a_row` dropped steps in a row."""
        bad = not self._loss_ok
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not bad and check_grads and grads:
            # the max-abs norm of each gradient is inf or nan exactly when one of its entries is
            norms = torch._foreach_norm(grads, float("inf"))
            bad = not bool(torch.isfinite(torch.stack(norms)).all())
        bad = bool(strategy.reduce_boolean_decision(bad, all=False))  # the same decision on every process
        if not bad:
            self.in_a_row.clear()
            return False
        for p in self.model.parameters():
            p.grad = None
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._saved)
        self.total += 1
        step, paths = self._step_info
        self.in_a_row.append((step, paths))
        what = "loss" if not self._loss_ok else "gradients"
        log.warning("step %d: non-finite %s; the step is dropped (no weight changed). Its images: %s",
                    step, what, ", ".join(paths))
        if len(self.in_a_row) >= self.max_in_a_row:
            steps = ", ".join(str(s) for s, _ in self.in_a_row)
            images = sorted({p for _, ps in self.in_a_row for p in ps})
            raise TrainingDiverged(
                f"{len(self.in_a_row)} training steps in a row had a non-finite loss or gradients (steps {steps}); "
                f"training stopped, the checkpoints written before are kept. Images of those steps: "
                f"{', '.join(images)}. Look for broken labels among them, or lower the learning rate "
                "(model.optim.max_lr)."
            )
        return True
