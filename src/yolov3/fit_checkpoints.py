"""Which checkpoints a fit writes: said plainly at its start, and at its end the one that exists.

ModelCheckpoint(filename="best", monitor="val/loss") (src/yolov3/commands/defaults.yaml)
writes best.ckpt only when a validation logs val/loss. A fit in which no validation runs (no
validation split, trainer.limit_val_batches 0, check_val_every_n_epoch past the last epoch,
max_steps ending before the first validation, max_time stopping it first) writes last.ckpt
alone, with nothing but a Lightning warning in the log. Here:

- check_monitors: before a fit, a monitor the model never logs, or logs at only some
  validations (a val/map_* with model.evaluation.map_every_n_epochs != 1), is an error
  naming the callback and the field; Lightning would otherwise stop at the end of the
  first validation without it (or never choose a best).
- CheckpointNotice: a callback that, as training starts, says (a warning) when no best
  checkpoint will be written and why, and what will be (last.ckpt); it also records how
  many validations ran and why the fit stopped.
- fit_checkpoints: after the fit, the checkpoints that exist (best, else last) and, without
  a best, why: what `yolov3 fit` prints at its end and `yolov3 demo` tests.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer

from yolov3.loss import LOSS_TERMS

log = logging.getLogger("yolov3")

# What YoloLitModule (yolov3.lit) logs, hence what a ModelCheckpoint can monitor
# (tests/test_fit_checkpoints.py checks this against a real fit's logged names).
VAL_METRICS = ("val/loss", "val/class_acc", "val/obj_acc", "val/noobj_acc")  # every validation
VAL_MAP_METRICS = ("val/map_07", "val/map_2010")  # validations that compute the mAP
TRAIN_METRICS = ("train/loss", *(f"train/loss_{k}" for k in LOSS_TERMS), "train/class_acc", "train/obj_acc",
                 "train/noobj_acc")
OTHER_METRICS = ("epoch", "step")  # Lightning adds these to what a checkpoint can monitor


def best_writers(trainer) -> list[ModelCheckpoint]:
    """The checkpoint callbacks that choose a best checkpoint by a monitored metric."""
    return [cb for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and cb.monitor and cb.save_top_k != 0]


def describe(cb: ModelCheckpoint) -> str:
    return f"ModelCheckpoint(filename={cb.filename!r}, monitor={cb.monitor!r})"


def _file(cb: ModelCheckpoint, name: str | None) -> Path | None:
    """The file a callback writes under a fixed name (its folder is known once the fit set it up)."""
    if not cb.dirpath or not name or "{" in name:
        return None
    return Path(cb.dirpath) / f"{name}{cb.FILE_EXTENSION}"


def check_monitors(trainer, map_every_n_epochs: int) -> None:
    """ValueError naming the checkpoint callback and the setting when its monitor is not a
    metric the model logs, or is an mAP that not every validation computes
    (`map_every_n_epochs`, the model's evaluation.map_every_n_epochs)."""
    known = (*VAL_METRICS, *VAL_MAP_METRICS, *TRAIN_METRICS, *OTHER_METRICS)
    for cb in best_writers(trainer):
        where = f"trainer.callbacks: {describe(cb)}"
        if cb.monitor not in known:
            raise ValueError(f"{where}: the model logs no metric {cb.monitor!r}, so no best checkpoint could be "
                             f"chosen (and Lightning stops at the first validation); validation logs "
                             f"{', '.join(VAL_METRICS + VAL_MAP_METRICS)}, training {', '.join(TRAIN_METRICS)}")
        epoch = _epoch_without_map(trainer, map_every_n_epochs) if cb.monitor in VAL_MAP_METRICS else None
        if epoch is not None:
            n = map_every_n_epochs
            when = "never" if n <= 0 else f"only every {n} epochs and at the last"
            after = f"after epoch {epoch}" if epoch else "of some epoch"
            raise ValueError(f"{where}: validation computes {cb.monitor} {when} (model.evaluation.map_every_n_epochs "
                             f"{n}), so the validation {after} (trainer.check_val_every_n_epoch "
                             f"{trainer.check_val_every_n_epoch}) would have none and stop the fit; set "
                             f"map_every_n_epochs 1 or monitor val/loss")


def _epoch_without_map(trainer, n: int) -> int | None:
    """The first epoch (1-based) whose validation computes no mAP (yolov3.lit's _map_now: every
    n-th epoch and the last), 0 when some unknown one does (no epoch limit), None when none does."""
    if n == 1:
        return None
    if n <= 0:
        return 1
    every, last = trainer.check_val_every_n_epoch, trainer.max_epochs
    if last in (None, -1):
        return None if every is not None and every % n == 0 else 0
    for epoch in range(1, last + 1):
        validates = every is None or epoch % every == 0
        if validates and epoch % n != 0 and epoch < last:
            return epoch
    return None


def no_validation_reason(trainer) -> str | None:
    """Why no validation will run in this fit, or None (validation runs, or cannot be known
    ahead: a time-based val_check_interval, a stop by max_time or a callback). Call it once
    training starts (the training data is set up then); it sets up the validation data early
    (Lightning's own setup_data, which the first validation would call anyway)."""
    if trainer.limit_val_batches == 0:
        return "trainer.limit_val_batches is 0"
    if not trainer.enable_validation:
        return "there is no validation data or validation_step"
    trainer.fit_loop.epoch_loop.val_loop.setup_data()
    if sum(trainer.num_val_batches) == 0:
        dm = trainer.datamodule
        if dm is not None and getattr(dm, "val_split", "") is None and getattr(dm, "val_fraction", None) == 0:
            return "there is no validation split: data.val_fraction is 0 and data.val_split is not set"
        return "the validation data has no batches"
    return _schedule_reason(trainer)


def _schedule_reason(trainer) -> str | None:
    """No validation because the fit ends before the first one the schedule places."""
    batches = trainer.num_training_batches  # an epoch's, after limit_train_batches
    if not isinstance(trainer.val_check_interval, (int, float)) or not batches or not math.isfinite(batches):
        return None  # time-based validation, or no / endless epochs
    every_epochs, vcb, accum = trainer.check_val_every_n_epoch, trainer.val_check_batch, trainer.accumulate_grad_batches
    epoch = trainer.current_epoch
    now = epoch * batches + trainer.fit_loop.epoch_loop.batch_progress.current.ready  # batches since the run began
    # where the fit ends, in batches since the run began
    end, end_by = math.inf, ""
    if trainer.max_epochs not in (None, -1):
        end, end_by = trainer.max_epochs * batches, f"trainer.max_epochs {trainer.max_epochs} of {batches} batches"
    if trainer.max_steps not in (None, -1):
        per_epoch = math.ceil(batches / accum)  # optimizer steps an epoch (the last one steps on a partial batch)
        full, rest = divmod(trainer.max_steps, per_epoch)
        by_steps = full * batches + rest * accum
        if by_steps < end:
            end, end_by = by_steps, f"trainer.max_steps {trainer.max_steps}"
    # the first validation: after batch k * val_check_batch of an epoch whose number + 1 is a
    # multiple of check_val_every_n_epoch (Lightning's _should_check_val_fx), or after every
    # val_check_batch batches counted over epochs when check_val_every_n_epoch is None
    if every_epochs is None:
        first = (now // vcb + 1) * vcb
        first_by = f"{first} batches (trainer.val_check_interval {trainer.val_check_interval})"
    else:
        e = epoch + (-(epoch + 1)) % every_epochs  # the first epoch >= `epoch` that validates
        k = max(1, (now - e * batches) // vcb + 1)
        if k * vcb > batches:  # this epoch's validations are behind us: the next validating epoch's first
            e, k = e + every_epochs, 1
        first = e * batches + k * vcb
        first_by = f"epoch {e + 1} (trainer.check_val_every_n_epoch {every_epochs})"
        if vcb < batches:
            first_by = f"batch {k * vcb} of epoch {e + 1} (trainer.check_val_every_n_epoch {every_epochs}, " \
                       f"val_check_interval {trainer.val_check_interval})"
    if first <= end:
        return None
    return (f"the fit ends after {end} training batches ({end_by}), before its first validation, which would "
            f"come after {first_by}")


def stop_cause(trainer) -> str | None:
    """Why training stopped, in the trainer's words, or None when it is not known."""
    if trainer.interrupted:
        return "the fit was interrupted"
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    remaining = timer.time_remaining() if timer is not None else None
    if remaining is not None and remaining <= 0:
        limit = getattr(timer, "_duration", None)  # Timer keeps the limit in seconds (no public name)
        return f"trainer.max_time{f' ({limit:g} s)' if limit else ''} reached after {timer.time_elapsed():.0f} s"
    if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps:
        return f"trainer.max_steps {trainer.max_steps} reached"
    if trainer.max_epochs not in (None, -1) and trainer.current_epoch >= trainer.max_epochs:
        return f"trainer.max_epochs {trainer.max_epochs} reached"
    if trainer.should_stop:
        return "stopped early (trainer.should_stop, e.g. by EarlyStopping)"
    return None


class CheckpointNotice(Callback):
    """At the start of training, a warning when no best checkpoint will be written, why, and
    what will be; records the validations that ran and why the fit stopped (fit_checkpoints)."""

    def __init__(self) -> None:
        self.reason: str | None = None  # why no validation runs, when known at the start
        self.validations = 0
        self.stop: str | None = None
        self.started = 0.0  # time.time() as training started: older checkpoint files are an earlier fit's
        self._filters: list | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.reason, self.validations, self.stop, self.started = None, 0, None, time.time()
        waiting = [cb for cb in best_writers(trainer) if cb.monitor.startswith("val/")]
        if not waiting:
            return
        self.reason = no_validation_reason(trainer)
        if not self.reason:
            return
        if trainer.is_global_zero:
            log.warning("%s", self.start_message(trainer, waiting))
        # Lightning's own warning at each epoch's end ("could not find the monitored key ... HINT: Did
        # you call log('val/loss')") would send the user to the model: the reason is said above.
        self._filters = warnings.filters[:]
        for cb in waiting:
            warnings.filterwarnings("ignore", message=re.escape(f"`ModelCheckpoint(monitor={cb.monitor!r})` could "
                                                                "not find the monitored key"))

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._filters is not None:
            warnings.filters[:] = self._filters
            self._filters = None

    def start_message(self, trainer, waiting: list[ModelCheckpoint]) -> str:
        cb = waiting[0]
        best = _file(cb, cb.filename)
        text = (f"no {best.name if best else 'best checkpoint'} will be written: {describe(cb)} keeps the best "
                f"{cb.monitor}, which only a validation logs, and no validation runs in this fit "
                f"({self.reason}). ")
        lasts = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.save_last]
        if lasts:
            last = _file(lasts[0], lasts[0].CHECKPOINT_NAME_LAST)
            text += f"It writes {last or 'last.ckpt'} (the weights as training leaves them) instead."
        else:
            text += "No checkpoint callback saves the last weights (save_last), so it writes no checkpoint at all."
        if best is not None and best.is_file():
            text += f" The {best.name} already in {best.parent} is from before this fit and stays as it is."
        return text

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.validations += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.stop = stop_cause(trainer)


@dataclass
class FitCheckpoints:
    """The checkpoints a fit left: `best` (the monitored best, if this fit has one), `last`
    (the latest weights otherwise written), `why_no_best` (when a best was expected and is
    missing), `stale_best` (a best file in the folder from before this fit), `score` (the
    best's "val/loss 4.213"), `disabled` (trainer.enable_checkpointing false)."""

    best: str | None = None
    last: str | None = None
    why_no_best: str | None = None
    stale_best: str | None = None
    score: str | None = None
    disabled: bool = False

    @property
    def path(self) -> str | None:
        """The checkpoint to use: the best, else the last."""
        return self.best or self.last

    def summary(self, run_folder: str | None) -> list[str]:
        """What `yolov3 fit` prints at its end: the run folder and the checkpoint that exists,
        and the `yolov3 test` line for it."""
        head = f"run folder {run_folder}"
        if self.disabled:
            return [f"{head}; no checkpoint was written (trainer.enable_checkpointing is false)"]
        if self.best:
            line = f"{head}; best checkpoint {self.best}" + (f" ({self.score})" if self.score else "")
        else:
            line = head + (f"; no best checkpoint: {self.why_no_best}" if self.why_no_best else "")
            line += f"; last checkpoint {self.last}" if self.last else "; no checkpoint was written"
        lines = [line]
        if self.stale_best:
            lines.append(f"note: {self.stale_best} is from before this fit, not its best")
        if self.path:
            lines.append(f"test it with: yolov3 test --config <this config> --ckpt_path {self.path}")
        return lines


def fit_checkpoints(trainer) -> FitCheckpoints:
    """The checkpoints that exist after `trainer.fit` (see FitCheckpoints)."""
    callbacks = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
    if not callbacks:
        return FitCheckpoints(disabled=not trainer.checkpoint_callbacks)
    out = FitCheckpoints()
    writers = best_writers(trainer)
    for cb in writers:
        if cb.best_model_path and Path(cb.best_model_path).is_file():
            out.best = cb.best_model_path
            if cb.best_model_score is not None:
                out.score = f"{cb.monitor} {float(cb.best_model_score):.4g}"
            break
    # the latest of the other files the callbacks wrote (last.ckpt; a callback without a monitor)
    others = [p for cb in callbacks for p in (cb.last_model_path, "" if cb.monitor else cb.best_model_path)
              if p and Path(p).is_file()]
    if others:
        out.last = max(others, key=lambda p: Path(p).stat().st_mtime)
    if writers and out.best is None:
        notice = next((cb for cb in trainer.callbacks if isinstance(cb, CheckpointNotice)), None)
        monitor = writers[0].monitor
        if notice is not None and notice.reason:
            out.why_no_best = f"no validation ran ({notice.reason})"
        elif notice is not None and notice.validations == 0:
            out.why_no_best = f"the fit ended ({notice.stop or 'stopped'}) before its first validation"
        else:
            out.why_no_best = f"no validation logged {monitor}"
        stale = _file(writers[0], writers[0].filename)
        started = notice.started if notice is not None else math.inf
        if stale is not None and stale.is_file() and stale.stat().st_mtime < started:
            out.stale_best = str(stale)
    return out
