"""PlainProgressBar: the trainer's progress as plain lines, for a stdout that is not a terminal.

Lightning's RichProgressBar redraws in place; written to a file or a pipe it shows nothing
until the stage ends. yolov3.commands.lightning_cli puts this bar in its place when stdout
is not a terminal (and the trainer's progress bar is enabled): one line every `every`
seconds, flushed (yolov3.progress, the same lines as synth and detect):

    epoch 3/20 step 410/1000 (41%) 52.3 img/s loss 4.213 eta 3m12s
    validating 120/200 images (60%) 40.1 img/s eta 2s
    validation after epoch 3/20: 200 images in 5s, val/loss 4.102 val/class_acc 61.204 ...
    testing 120/200 images (60%) 40.1 img/s eta 2s

plus a training line at each epoch's end and a line when each evaluation ends. img/s and
loss are over the steps since the previous line (loss: their mean, non-finite ones left out
and counted); eta = steps left x the seconds per step since the fit started.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

from yolov3.progress import format_duration, progress_every, write_line

# Lightning's stage names -> the words of a line
_DOING = {"validate": "validating", "test": "testing", "predict": "predicting"}
_DONE = {"validate": "validated", "test": "tested", "predict": "predicted"}


def batch_images(batch: Any) -> int | None:
    """The number of images in a batch: len of batch["images"] (this project's batches),
    else the first dimension of the first tensor found; None when there is none."""
    if isinstance(batch, Mapping):
        if "images" in batch:
            return batch_images(batch["images"])
        batch = list(batch.values())
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else None
    if isinstance(batch, (list, tuple)):
        for item in batch:
            n = batch_images(item)
            if n is not None:
                return n
    return None


def _loss(outputs: Any) -> Any:
    """The training step's loss from what on_train_batch_end receives (a tensor or {"loss": ...}),
    detached and left where it is: reading it (a GPU sync) waits for the line (_mean_loss)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if hasattr(outputs, "detach"):
        return outputs.detach() if outputs.numel() == 1 else None
    return outputs if isinstance(outputs, (int, float)) else None


def _mean_loss(losses: list) -> tuple[float | None, int]:
    """(mean of the finite losses or None, how many were not finite)."""
    values = [float(v) for v in losses]
    finite = [v for v in values if math.isfinite(v)]
    return (sum(finite) / len(finite) if finite else None), len(values) - len(finite)


class PlainProgressBar(ProgressBar):
    """Lightning progress bar that prints plain lines (see the module docstring).

    every: seconds between two lines (None: yolov3.progress.progress_every, i.e.
        $YOLOV3_PROGRESS_EVERY or 30); 0: a line for every step and evaluation batch.
    stream: where the lines go (None: sys.stdout as it is when each line is printed).
    clock: seconds, for the intervals and rates (time.monotonic).
    """

    def __init__(self, every: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = progress_every(every)
        self.stream, self.clock = stream, clock
        self._enabled = True
        self._last = clock()
        self._fit_start, self._fit_step0 = 0.0, 0
        self._window_start = 0.0
        self._window_images, self._losses, self._window_steps = 0, [], 0
        self._eval_start, self._eval_batches, self._eval_images = 0.0, 0, 0
        self._eval_total: tuple[float, int | None] = (0, None)

    # Lightning's ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        write_line(sep.join(map(str, args)), self.stream)

    def _write(self, line: str) -> None:
        if self._enabled:
            write_line(line, self.stream)
        self._last = self.clock()

    def _due(self) -> bool:
        return self.clock() - self._last >= self.every

    # training
    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = self._window_start = self._last = self.clock()
        self._fit_step0 = trainer.global_step
        self._reset_window()
        total, batches = trainer.estimated_stepping_batches, trainer.num_training_batches
        epochs = "" if trainer.max_epochs in (None, -1) else f"{trainer.max_epochs} epochs, "
        steps = f"{total} steps" if math.isfinite(total) else "no step limit"
        every = "every step" if self.every == 0 else f"every {format_duration(self.every)}"
        self._write(f"fit: {epochs}{steps}, {batches} batches an epoch; a progress line {every} and at "
                    "each epoch's end (stdout is not a terminal, so no progress bar)")

    def _reset_window(self) -> None:
        self._window_start = self.clock()
        self._window_images, self._losses, self._window_steps = 0, [], 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._window_steps += 1
        self._window_images += batch_images(batch) or 0
        loss = _loss(outputs)
        if loss is not None:
            self._losses.append(loss)
        if self._due():
            self._write(self.train_line(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._window_steps:  # the steps since the last line; none when it was printed at the last step
            self._write(self.train_line(trainer))

    def train_line(self, trainer) -> str:
        """`epoch e/E step s/S (p%) r img/s loss l eta t` for the steps since the previous
        line (then starts a new window)."""
        now = self.clock()
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs not in (None, -1) else ""
        parts = [f"epoch {trainer.current_epoch + 1}{epochs}"]
        if math.isfinite(total) and total > 0:
            parts.append(f"step {step}/{total} ({100 * step / total:.0f}%)")
        else:
            parts.append(f"step {step}")
        seconds = now - self._window_start
        if self._window_images and seconds > 0:
            parts.append(f"{self._window_images / seconds:.1f} img/s")
        loss, nonfinite = _mean_loss(self._losses)
        if loss is not None:
            parts.append(f"loss {loss:.3f}")
        if nonfinite:
            parts.append(f"({nonfinite} non-finite)")
        done = step - self._fit_step0
        if math.isfinite(total) and 0 < done and step < total:
            parts.append(f"eta {format_duration((total - step) * (now - self._fit_start) / done)}")
        self._reset_window()
        return " ".join(parts)

    # evaluation: validation (in a fit or `validate`), test, predict
    def _eval_begin(self, trainer, stage: str) -> None:
        self._eval_start, self._eval_batches, self._eval_images = self.clock(), 0, 0
        self._eval_total = (0, None)
        self.reset_dataloader_idx_tracker()

    def _eval_batch(self, trainer, stage: str, batch: Any, dataloader_idx: int) -> None:
        if self.has_dataloader_changed(dataloader_idx) or not self._eval_total[0]:
            self._eval_total = self._totals(trainer, stage, dataloader_idx)
        self._eval_batches += 1
        self._eval_images += batch_images(batch) or 0
        if self._due():
            self._write(self.eval_line(stage))

    def _totals(self, trainer, stage: str, idx: int) -> tuple[float, int | None]:
        """(batches, images) of this evaluation's dataloader `idx`; images None when unknown
        (a limit on the batches, several processes, a dataset without a length)."""
        batches = {"validate": lambda: self.total_val_batches_current_dataloader,
                   "test": lambda: self.total_test_batches_current_dataloader,
                   "predict": lambda: self.total_predict_batches_current_dataloader}[stage]()
        loaders = {"validate": trainer.val_dataloaders, "test": trainer.test_dataloaders,
                   "predict": trainer.predict_dataloaders}[stage]
        loader = loaders[idx] if isinstance(loaders, (list, tuple)) else loaders
        try:
            if trainer.world_size == 1 and batches == len(loader):
                return batches, len(loader.dataset)
        except (TypeError, AttributeError):
            pass
        return batches, None

    def eval_line(self, stage: str) -> str:
        """`testing 120/200 images (60%) 40.1 img/s eta 2s` (or `testing batch 15/25 (60%) ...`
        when the number of images is not known)."""
        batches, images = self._eval_total
        elapsed = self.clock() - self._eval_start
        frac = self._eval_batches / batches if batches and math.isfinite(batches) else None
        if images:
            frac = self._eval_images / images
            text = f"{_DOING[stage]} {self._eval_images}/{images} images ({100 * frac:.0f}%)"
        elif frac is not None:
            text = (f"{_DOING[stage]} batch {self._eval_batches}/{batches} ({100 * frac:.0f}%), "
                    f"{self._eval_images} images")
        else:
            text = f"{_DOING[stage]} batch {self._eval_batches}, {self._eval_images} images"
        if elapsed > 0 and self._eval_images:
            text += f" {self._eval_images / elapsed:.1f} img/s"
        if frac is not None and 0 < frac < 1:
            text += f" eta {format_duration(elapsed * (1 - frac) / frac)}"
        return text

    def _eval_end(self, trainer, stage: str) -> None:
        elapsed = format_duration(self.clock() - self._eval_start)
        metrics = " ".join(f"{k} {float(v):.3f}" for k, v in trainer.progress_bar_metrics.items()
                           if k.startswith("val/")) if stage == "validate" else ""
        if trainer.state.fn == "fit":
            epochs = f"/{trainer.max_epochs}" if trainer.max_epochs not in (None, -1) else ""
            head = f"validation after epoch {trainer.current_epoch + 1}{epochs}"
            self._write(f"{head}: {self._eval_images} images in {elapsed}" + (f", {metrics}" if metrics else ""))
        else:
            self._write(f"{_DONE[stage]} {self._eval_images} images in {elapsed}" + (f": {metrics}" if metrics else ""))

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._eval_begin(trainer, "validate")

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._eval_batch(trainer, "validate", batch, dataloader_idx)

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._eval_end(trainer, "validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._eval_begin(trainer, "test")

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "test", batch, dataloader_idx)

    def on_test_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._eval_begin(trainer, "predict")

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._eval_batch(trainer, "predict", batch, dataloader_idx)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._eval_end(trainer, "predict")
