"""An exponential moving average (EMA) of the model's weights, as later YOLOs keep one.

After each optimizer step that changed the weights (the t-th such step, t = 1, 2, ...):

    ema <- d(t) * ema + (1 - d(t)) * weights,    d(t) = decay * (1 - exp(-t / tau))

d ramps up from about 0, so the average follows the weights while they still move fast
(and its random start is forgotten after a step), to `decay` once t >> tau, when it averages
over about 1 / (1 - decay) steps. Evaluating the average instead of the last weights smooths
out the noise of the last steps.

Every floating-point tensor of the state is averaged: the parameters and the BatchNorm
running mean and variance. The statistics are averaged rather than copied because they must
describe the features of the averaged weights, which lag behind the training weights; the
latest statistics describe the latest weights (YOLOv5 and YOLOX average them too). Integer
buffers (BatchNorm's num_batches_tracked) are copied.

A step that changed no weight does not count: one dropped by NonFiniteGuard, or skipped by
an fp16 GradScaler that found inf/NaN gradients (before_step / after_step tell them apart).

In a checkpoint (write_checkpoint), "model.*" holds the EMA weights, so every reader of a
checkpoint's weights (Detector, export, `yolov3 test`) gets them with no change of its own;
the training weights and the update count are under the checkpoint's "ema" key, for an
exact resume (read_checkpoint).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

CHECKPOINT_KEY = "ema"  # {"updates": int, "training_state_dict": the training weights, "model.*" keys}


class ModelEMA(nn.Module):
    """The EMA of `model`'s state, held as a copy of the model (`module`, without gradients).
    Its train/eval mode follows its parent's, as Lightning expects; run it in eval mode only
    (in training mode its BatchNorm layers would update the averaged statistics).

    Args:
        model: the network being trained; the average starts as a copy of it.
        decay: the decay reached once the ramp is over, in [0, 1).
        tau: the ramp's time constant, in optimizer updates (> 0).

    Raises ValueError for a decay outside [0, 1) or tau <= 0.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if tau <= 0:
            raise ValueError(f"EMA tau must be > 0 (optimizer updates), got {tau}")
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.tau = float(decay), float(tau)
        self.updates = 0  # optimizer steps averaged in so far
        self._pending = False
        self._scale: float | None = None

    def decay_at(self, updates: int) -> float:
        """d(t) of the t-th update: decay * (1 - exp(-t / tau))."""
        return self.decay * (1.0 - math.exp(-updates / self.tau))

    @torch.no_grad()
    def reset(self, model: nn.Module) -> None:
        """Start over from `model`'s state (update count 0)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average in `model`'s current state (same architecture; raises KeyError otherwise)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        new = model.state_dict()
        averaged, latest, copied, sources = [], [], [], []
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                averaged.append(value)
                latest.append(new[name].detach())
            else:
                copied.append(value)
                sources.append(new[name])
        if averaged:
            torch._foreach_lerp_(averaged, latest, 1.0 - d)  # ema + (1 - d)(w - ema) = d ema + (1 - d) w
        if copied:
            torch._foreach_copy_(copied, sources)

    def before_step(self, dropped: bool, scaler=None) -> None:
        """Call once the gradients are there and before the optimizer steps (Lightning's
        on_before_optimizer_step). dropped: the step will change no weight (NonFiniteGuard).
        scaler: the fp16 GradScaler, if any: its scale now tells after_step whether it
        skipped the step."""
        self._pending = not dropped
        enabled = scaler is not None and scaler.is_enabled()
        self._scale = float(scaler.get_scale()) if enabled and not dropped else None

    def after_step(self, model: nn.Module, scaler=None) -> bool:
        """Call after the optimizer step: average in `model` if the step changed its weights.
        A GradScaler that found inf/NaN gradients skipped optimizer.step and lowered its
        scale (it lowers it for nothing else): no update then. Returns whether it updated."""
        applied, self._pending = self._pending, False
        if applied and self._scale is not None and float(scaler.get_scale()) < self._scale:
            applied = False
        self._scale = None
        if applied:
            self.update(model)
        return applied

    def write_checkpoint(self, checkpoint: dict, model_prefix: str = "model.", own_prefix: str = "ema.module.") -> None:
        """Rearrange a Lightning checkpoint of the module holding this EMA (its state_dict has
        the training weights under `model_prefix` and the average under `own_prefix`): the
        average goes to `model_prefix`, the training weights and the update count to
        checkpoint[CHECKPOINT_KEY]."""
        state = checkpoint["state_dict"]
        training = {k: state.pop(k) for k in [k for k in state if k.startswith(model_prefix)]}
        for key in [k for k in state if k.startswith(own_prefix)]:
            state[model_prefix + key.removeprefix(own_prefix)] = state.pop(key)
        checkpoint[CHECKPOINT_KEY] = {"updates": self.updates, "training_state_dict": training}

    def read_checkpoint(self, checkpoint: dict, model_prefix: str = "model.", own_prefix: str = "ema.module.") -> None:
        """The reverse of write_checkpoint, in place, before Lightning loads the state_dict:
        the average back under `own_prefix`, the training weights under `model_prefix`, the
        update count here. A checkpoint without an EMA (written before it, or with it off)
        gives an average equal to its weights, update count 0. A state_dict already in the
        module's layout is left as it is."""
        state = checkpoint["state_dict"]
        if any(k.startswith(own_prefix) for k in state):
            return
        stored = checkpoint.get(CHECKPOINT_KEY) or {}
        for key in [k for k in state if k.startswith(model_prefix)]:
            state[own_prefix + key.removeprefix(model_prefix)] = state[key]
        state.update(stored.get("training_state_dict") or {})
        self.updates = int(stored.get("updates", 0))
