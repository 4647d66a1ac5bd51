"""The learning-rate schedule: OneCycleLR for every run length, and a resumed run's length.

OneCycle is torch's OneCycleLR (stepped once per optimiser step) with the same LRs and Adam
betas at every step wherever torch's phases are well formed, which is every schedule of
normal length (the course's recipe: 40 x 1,035 steps, pct_start 0.125). Where they are not,
OneCycleLR divides by zero or starts past its peak; OneCycle instead:

- a warm-up of one step or less (pct_start x total_steps <= 1, float rounding included:
  0.1 x 10, (0.3 / 3) x 10) is none: OneCycleLR's warm-up spans steps 0 .. pct_start x
  total_steps - 1 with the peak at its end, so one step of it is the peak. Two-phase: step 0
  at max_lr, annealed to min_lr at the last step; three_phase (whose way back down is as long
  as the warm-up): annealed from max_lr / div_factor to min_lr;
- an anneal of no length (pct_start 1.0; three_phase's third phase when pct_start is about
  0.5 or more) ends the run at the LR its last step has;
- after the last step (Lightning steps the schedule once more) the LR stays at the last
  step's, instead of OneCycleLR's extrapolation (negative for the linear anneal).

A phase shorter than PHASE_EPSILON steps counts as none. A one-step run trains at max_lr
(two-phase) or max_lr / div_factor (three_phase).

A fit resumed from a checkpoint gets the checkpoint's schedule back from Lightning, over
the one built for this run. refit_schedule, called at the start of training, checks it
against this run's length (planned_steps: the steps done plus those this run's epochs,
max_steps, batches and accumulation leave) and its optimiser settings, and rebuilds it where
they differ: for the new total, at the step training has reached, so the LR continues from
that point of the new schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import OneCycleLR

from yolov3.hparams import OptimConfig

PHASE_EPSILON = 1e-6  # steps; float rounding of pct_start x total_steps is far below it

UNBOUNDED = ("the learning-rate schedule (OneCycleLR) needs the run's length, and this run has none: set "
             "trainer.max_epochs or trainer.max_steps (max_time alone stops a run at a time, which a schedule "
             "cannot be planned for; with max_epochs or max_steps as well it still stops the run early)")


class ScheduleError(ValueError):
    """A run whose schedule cannot be planned; the message says what to set."""


def torch_phase_ends(total_steps: int, pct_start: float, three_phase: bool) -> list[float]:
    """The steps at which OneCycleLR's phases end, computed as it computes them."""
    if three_phase:
        return [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, total_steps - 1]
    return [float(pct_start * total_steps) - 1, total_steps - 1]


def well_formed(ends: list[float]) -> bool:
    """Whether phases ending at `ends` (torch_phase_ends) all last more than PHASE_EPSILON
    steps: then OneCycleLR gives every step of the run an LR within [min_lr, max_lr] and
    never divides by zero."""
    return all(b - a > PHASE_EPSILON for a, b in zip([0.0, *ends], ends))


def safe_phase_ends(ends: list[float]) -> list[float]:
    """OneCycle's phase ends: OneCycleLR's, with a warm-up of one step or less made none
    (and three_phase's way back down, as long as the warm-up, with it)."""
    ends = list(ends)
    if ends[0] <= PHASE_EPSILON:
        ends[0] = 0.0
        if len(ends) == 3:
            ends[1] = 0.0
    return ends


class OneCycle(OneCycleLR):
    """OneCycleLR with the course's settings (an OptimConfig) that every length survives.

    Args:
        optimizer: the optimiser (Adam: its beta1 cycles as OneCycleLR's momentum).
        total_steps: optimiser steps of the whole run (>= 1).
        optim: max_lr, pct_start, div_factor, final_div_factor, three_phase, anneal_strategy.
        start_step: the step training has reached (a resumed run); the optimiser's LRs are
            then set to this schedule's at that step. 0 builds it as OneCycleLR does.

    It keeps no state of its own: everything is OneCycleLR's (its state_dict, the
    optimiser's LRs), so a checkpoint of either restores into the other.

    Raises ValueError (OneCycleLR's) for total_steps < 1, pct_start outside [0, 1] or an
    unknown anneal_strategy.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, optim: OptimConfig,
                 start_step: int = 0) -> None:
        if start_step > 0:
            # OneCycleLR sets these only for a schedule that starts at step 0
            for group in optimizer.param_groups:
                group["initial_lr"] = optim.max_lr / optim.div_factor
                group["max_lr"] = optim.max_lr
                group["min_lr"] = group["initial_lr"] / optim.final_div_factor
        super().__init__(optimizer, max_lr=optim.max_lr, total_steps=int(total_steps),
                         pct_start=float(optim.pct_start), div_factor=optim.div_factor,
                         final_div_factor=optim.final_div_factor, three_phase=optim.three_phase,
                         anneal_strategy=optim.anneal_strategy, last_epoch=start_step - 1)

    def get_lr(self) -> list[float]:
        ends = [phase["end_step"] for phase in self._schedule_phases]
        if well_formed(ends):
            return super().get_lr()
        ends = safe_phase_ends(ends)
        step = min(self.last_epoch, self.total_steps - 1)  # after the last step: the last step's LR
        phase, pct = self._phase_at(step, ends)
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct))
            if self.cycle_momentum:
                momentum = self._anneal_func(group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                if self.use_beta1:
                    group["betas"] = (momentum, *group["betas"][1:])
                else:
                    group["momentum"] = momentum
        return lrs

    def _phase_at(self, step: int, ends: list[float]) -> tuple[dict, float]:
        """The phase (OneCycleLR's dict of LR and momentum names) `step` lies in, and how far
        into it (0..1): the first phase of some length that holds it; phases of no length are
        passed over; where none is left, the start of the last one."""
        start = 0.0
        for phase, end in zip(self._schedule_phases, ends):
            if end - start > PHASE_EPSILON and start <= step <= end:
                return phase, (step - start) / (end - start)
            start = max(start, end)
        return self._schedule_phases[-1], 0.0


def build_schedule(optimizer: torch.optim.Optimizer, optim: OptimConfig, total_steps: float) -> OneCycle:
    """The run's schedule for `total_steps` (Trainer.estimated_stepping_batches). Raises
    ScheduleError where the length is not known (no max_epochs and no max_steps)."""
    if not math.isfinite(total_steps):
        raise ScheduleError(UNBOUNDED)
    return OneCycle(optimizer, max(int(total_steps), 1), optim)


def unbounded(max_epochs: int | None, max_steps: int | None, max_time) -> bool:
    """Whether a Trainer with these settings runs with no epoch or step limit (Lightning's
    rule: max_epochs None means 1000 unless max_steps or max_time is set, then -1)."""
    no_steps = max_steps is None or max_steps == -1
    if max_epochs is None:
        max_epochs = 1000 if no_steps and not max_time else -1
    return max_epochs == -1 and no_steps


def steps_in_batches(done: int, batches: int, accumulate: int) -> int:
    """Optimiser steps that batches done+1 .. batches of an epoch make: one every `accumulate`
    batches, and one at the epoch's end for a remainder (Lightning's rule)."""
    return batches // accumulate - done // accumulate + (1 if batches % accumulate else 0)


def planned_steps(trainer, position: int) -> float:
    """Optimiser steps of this run when it has made `position` of them (the schedule's step):
    those plus what the rest of the current epoch, the epochs up to max_epochs and max_steps
    leave. Call at the start of training, once Lightning has put back a checkpoint's loops
    (batches done in the epoch: the fit loop's batch progress). Inf without a bound."""
    batches = trainer.num_training_batches
    accumulate = trainer.accumulate_grad_batches
    left = math.inf
    if trainer.max_epochs is not None and trainer.max_epochs != -1 and math.isfinite(batches):
        batches = int(batches)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        done = done if done < batches else 0  # a finished epoch: the loop starts the next one
        epoch = trainer.current_epoch
        left = 0
        if epoch < trainer.max_epochs:
            left = (steps_in_batches(done, batches, accumulate)
                    + (trainer.max_epochs - epoch - 1) * steps_in_batches(0, batches, accumulate))
    if trainer.max_steps is not None and trainer.max_steps != -1:
        left = min(left, max(trainer.max_steps - trainer.global_step, 0))
    return position + left


def schedule_settings(scheduler: OneCycleLR) -> dict:
    """The settings a (restored) OneCycleLR was built with, read back from its phases and the
    optimiser's first parameter group, where OneCycleLR keeps its LRs."""
    group = scheduler.optimizer.param_groups[0]
    ends = [phase["end_step"] for phase in scheduler._schedule_phases]
    return {"total_steps": int(scheduler.total_steps), "max_lr": group["max_lr"],
            "div_factor": group["max_lr"] / group["initial_lr"],
            "final_div_factor": group["initial_lr"] / group["min_lr"],
            "pct_start": (ends[0] + 1) / scheduler.total_steps, "three_phase": len(ends) == 3,
            "anneal_strategy": scheduler._anneal_func_type}


def _differs(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return not math.isclose(a, b, rel_tol=1e-9)
    return a != b


@dataclass(frozen=True)
class Refit:
    """What refit_schedule did: the settings that differed (name -> (the checkpoint's, this
    run's)), whether the schedule was rebuilt, for how many steps, at which step, and the LR
    training continues at."""

    changed: dict
    rebuilt: bool
    total: int
    step: int
    lr: float

    def message(self) -> str:
        what = "; ".join(f"{name} {old:g} -> {new:g}" if isinstance(new, float) else f"{name} {old} -> {new}"
                         for name, (old, new) in self.changed.items())
        if not self.rebuilt:
            return f"optimiser: this run's settings replace the checkpoint's ({what})"
        return (f"learning-rate schedule: the checkpoint's differs from this run's ({what}): rebuilt for "
                f"{self.total} steps at step {self.step}, where the learning rate continues at {self.lr:.4g}")


def refit_schedule(trainer, optim: OptimConfig) -> Refit | None:
    """At the start of training: the schedule and optimiser settings that a resumed fit got
    back from its checkpoint (Lightning restores them over this run's), made this run's.
    Weight decay is set back; the schedule is rebuilt for this run's length and settings, at
    the step reached, where either differs. None when nothing did. Raises ScheduleError for
    a run with no length."""
    configs = trainer.lr_scheduler_configs
    if not configs or not isinstance(configs[0].scheduler, OneCycleLR):
        return None  # not the schedule configure_optimizers builds: someone else's to keep
    old = configs[0].scheduler
    optimizer = old.optimizer
    changed = {}
    for group in optimizer.param_groups:
        if group["weight_decay"] != optim.weight_decay:
            changed["weight_decay"] = (group["weight_decay"], optim.weight_decay)
            group["weight_decay"] = optim.weight_decay
    step = int(old.last_epoch)
    total = planned_steps(trainer, step)
    if not math.isfinite(total):
        raise ScheduleError(UNBOUNDED)
    want = {"total_steps": int(total), "max_lr": optim.max_lr, "div_factor": optim.div_factor,
            "final_div_factor": optim.final_div_factor, "pct_start": float(optim.pct_start),
            "three_phase": optim.three_phase, "anneal_strategy": optim.anneal_strategy}
    have = schedule_settings(old)
    schedule = {name: (have[name], value) for name, value in want.items() if _differs(have[name], value)}
    total = want["total_steps"]
    if not schedule or total <= step:  # the same; or nothing left to train (Lightning stops before a step)
        return Refit(changed, False, total, step, optimizer.param_groups[0]["lr"]) if changed else None
    configs[0].scheduler = OneCycle(optimizer, total, optim, start_step=step)
    return Refit({**schedule, **changed}, True, total, step, optimizer.param_groups[0]["lr"])
