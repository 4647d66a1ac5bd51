"""The learning-rate schedule at every length (yolov3.schedule, YoloLitModule.configure_optimizers):
torch's OneCycleLR bit for bit where its phases are well formed, the course's recipe included;
every step of every other length finite and within [min_lr, max_lr], never a step past the end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from yolov3.hparams import OptimConfig
from yolov3.lit import YoloLitModule


# The schedules are stepped without optimiser steps (nothing to train here).
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")


@pytest.fixture(scope="module")
def module():
    return YoloLitModule(width=0.0625)


def schedule_of(module: YoloLitModule, optim: OptimConfig, total_steps: float):
    """What YoloLitModule.configure_optimizers builds for a run of `total_steps` steps."""
    module.optim = optim
    module._trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    try:
        out = module.configure_optimizers()
    finally:
        module._trainer = None
    return out["optimizer"], out["lr_scheduler"]["scheduler"]


def run(optimizer, scheduler, steps: int) -> tuple[list[float], list[float]]:
    """LR and Adam beta1 of each of `steps` optimiser steps, stepping the schedule after each
    as Lightning does (once more after the last)."""
    lrs, betas = [], []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        betas.append(optimizer.param_groups[0]["betas"][0])
        scheduler.step()
    return lrs, betas


def torch_run(optim: OptimConfig, total_steps: int) -> tuple[list[float], list[float]]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=optim.max_lr / optim.div_factor)
    scheduler = OneCycleLR(optimizer, max_lr=optim.max_lr, total_steps=total_steps, pct_start=optim.pct_start,
                           div_factor=optim.div_factor, final_div_factor=optim.final_div_factor,
                           three_phase=optim.three_phase, anneal_strategy=optim.anneal_strategy)
    return run(optimizer, scheduler, total_steps)


COURSE = OptimConfig()  # max_lr 8e-4, pct_start 0.125, div 100 / 100, linear, two-phase
NORMAL = [(COURSE, 40 * 1035), (COURSE, 20 * 7), (COURSE, 16), (COURSE, 12),
          (OptimConfig(max_lr=0.01), 20 * 23), (OptimConfig(pct_start=0.3, anneal_strategy="cos"), 500),
          (OptimConfig(pct_start=0.2, three_phase=True), 300), (OptimConfig(pct_start=0.45, three_phase=True), 20),
          (OptimConfig(pct_start=0.05, div_factor=25.0, final_div_factor=1e4, anneal_strategy="cos"), 1000)]


@pytest.mark.parametrize("optim,total", NORMAL, ids=[f"{o.pct_start}x{t}{'-3' if o.three_phase else ''}"
                                                     for o, t in NORMAL])
def test_normal_lengths_are_torch_onecycle_bit_for_bit(module, optim, total):
    """Same code path as torch for these: every LR and beta1 equal to the last bit."""
    optimizer, scheduler = schedule_of(module, optim, total)
    assert run(optimizer, scheduler, total) == torch_run(optim, total)


def reference_lr(optim: OptimConfig, total: int, step: int) -> float:
    """The schedule OneCycle documents, written out: piecewise between (step, LR) knots. A
    warm-up of <= 1 step is none; after the last step the last step's LR."""
    initial = optim.max_lr / optim.div_factor
    final = initial / optim.final_div_factor
    warm = optim.pct_start * total - 1
    if warm <= 1e-6:
        # two-phase: from the peak; three_phase: the bump is gone, from initial
        knots = [(0.0, optim.max_lr if not optim.three_phase else initial), (total - 1, final)]
    elif optim.three_phase:
        knots = [(0.0, initial), (warm, optim.max_lr), (2 * warm, initial), (total - 1, final)]
    else:
        knots = [(0.0, initial), (warm, optim.max_lr), (total - 1, final)]
    step = min(step, total - 1)
    for (s0, v0), (s1, v1) in zip(knots, knots[1:]):
        if s0 <= step <= s1 and s1 - s0 > 1e-6:
            pct = (step - s0) / (s1 - s0)
            if optim.anneal_strategy == "cos":
                return v1 + (v0 - v1) / 2 * (math.cos(math.pi * pct) + 1)
            return v0 + (v1 - v0) * pct
    return knots[-2][1]  # no phase of some length holds it (a one-step run): where the last one starts


FATAL = [  # (pct_start, total, three_phase): each kills or degrades torch's OneCycleLR
    (0.125, 8, False),         # warm-up of exactly one step: 0 / 0 at step 0
    (0.1, 10, False),          # the same, 0.1 x 10 == 1.0
    (0.3 / 3, 10, False),      # 0.9999999999999999: step 0 already past the peak
    (0.125, 4, False),         # half a step of warm-up
    (0.0, 10, False),          # no warm-up at all
    (1.0, 10, False),          # no anneal: 1 / 0 after the last step
    (0.125, 1, False), (0.125, 2, False), (1.0, 1, False), (0.5, 2, False),
    (0.125, 8, True), (0.1, 10, True), (0.3 / 3, 10, True),
    (0.55, 10, True),          # three_phase's third phase of no length: 1 / 0 after the last step
    (0.6, 10, True),           # its third phase negative
    (0.5, 1, True), (0.25, 3, True), (1.0, 5, True),
]


def check_run(module, optim: OptimConfig, total: int) -> list[float]:
    optimizer, scheduler = schedule_of(module, optim, total)
    initial = optim.max_lr / optim.div_factor
    low, high = min(initial / optim.final_div_factor, initial), max(optim.max_lr, initial)
    lrs, betas = run(optimizer, scheduler, total)  # the run's steps, and the step Lightning makes after the last
    assert scheduler.last_epoch == total
    for k, lr in enumerate(lrs):
        assert math.isfinite(lr) and low * (1 - 1e-9) <= lr <= high * (1 + 1e-9), (optim, total, k, lr)
    assert all(0.85 - 1e-9 <= b <= 0.95 + 1e-9 for b in betas), (optim, total, betas)
    assert math.isfinite(optimizer.param_groups[0]["lr"])  # after the last step
    return lrs


@pytest.mark.parametrize("pct,total,three_phase", FATAL)
def test_fatal_and_degenerate_lengths_run_to_the_end(module, pct, total, three_phase):
    for anneal in ("linear", "cos"):
        optim = OptimConfig(pct_start=pct, three_phase=three_phase, anneal_strategy=anneal)
        lrs = check_run(module, optim, total)
        want = [reference_lr(optim, total, k) for k in range(total)]
        assert lrs == pytest.approx(want, rel=1e-9, abs=1e-15), (pct, total, three_phase, anneal)
        _, scheduler = schedule_of(module, optim, total)
        for _ in range(total):
            scheduler.step()
        # after the last step the LR stays the last step's (OneCycleLR's would extrapolate, or divide by zero)
        assert scheduler.optimizer.param_groups[0]["lr"] == pytest.approx(want[-1], rel=1e-9)


def test_a_warm_up_of_one_step_or_less_starts_at_the_peak(module):
    optim = OptimConfig()  # pct_start 0.125: 8 steps give one warm-up step
    lrs = check_run(module, optim, 8)
    assert lrs[0] == pytest.approx(optim.max_lr, rel=1e-12)
    assert lrs[-1] == pytest.approx(optim.max_lr / 100 / 100, rel=1e-9)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # annealed at every step
    assert check_run(module, optim, 9)[0] == pytest.approx(optim.max_lr / 100)  # 1.125 steps: torch's warm-up


def test_every_length_every_pct_start(module):
    """A property over many (pct_start, total, three_phase, anneal): each step finite and within
    [min_lr, max_lr], as many steps as planned, and the same as the written-out schedule."""
    rng = np.random.default_rng(0)
    cases = [(p, t) for p in (0.0, 0.01, 0.05, 0.1, 0.3 / 3, 0.125, 1 / 3, 0.5, 0.55, 0.7, 0.99, 1.0)
             for t in (1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 16, 20, 33)]
    cases += [(float(rng.uniform(0, 1)), int(rng.integers(1, 60))) for _ in range(60)]
    for pct, total in cases:
        for three_phase in (False, True):
            for anneal in ("linear", "cos"):
                optim = OptimConfig(pct_start=pct, three_phase=three_phase, anneal_strategy=anneal)
                lrs = check_run(module, optim, total)
                want = [reference_lr(optim, total, k) for k in range(total)]
                assert lrs == pytest.approx(want, rel=1e-9, abs=1e-15), (pct, total, three_phase, anneal)


def test_a_run_without_a_length_is_refused(module):
    from yolov3.schedule import ScheduleError

    with pytest.raises(ScheduleError, match="set trainer.max_epochs or trainer.max_steps"):
        schedule_of(module, COURSE, float("inf"))


def test_planned_steps_count_what_is_left(module):
    """Steps of a run resumed at (epoch, batches done): Lightning's count of optimiser steps,
    one every `accumulate` batches and one at each epoch's end for a remainder."""
    from yolov3.schedule import planned_steps

    def trainer(epoch, done, batches, accumulate=1, max_epochs=3, max_steps=-1, global_step=0):
        progress = SimpleNamespace(current=SimpleNamespace(ready=done))
        return SimpleNamespace(num_training_batches=batches, accumulate_grad_batches=accumulate,
                               max_epochs=max_epochs, max_steps=max_steps, current_epoch=epoch,
                               global_step=global_step,
                               fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))

    def slow(epoch, done, batches, accumulate, max_epochs):
        steps = 0
        for e in range(epoch, max_epochs):
            for b in range(done if e == epoch else 0, batches):
                steps += (b + 1) % accumulate == 0 or b + 1 == batches
        return steps

    for batches in (1, 4, 5, 7):
        for accumulate in (1, 2, 3):
            for epoch in range(3):
                for done in range(batches + 1):
                    got = planned_steps(trainer(epoch, done, batches, accumulate), 100)
                    # done == batches: the batch progress of the epoch before, which Lightning has
                    # already counted in current_epoch (what a checkpoint at an epoch's end resumes to)
                    want = 100 + slow(epoch, done % batches, batches, accumulate, 3)
                    assert got == want, (batches, accumulate, epoch, done)
    assert planned_steps(trainer(1, 0, 4, max_steps=10, global_step=6), 6) == 10
    assert planned_steps(trainer(1, 0, 4, max_epochs=-1, max_steps=10, global_step=6), 6) == 10
    assert planned_steps(trainer(1, 0, 4, max_epochs=-1), 6) == math.inf
