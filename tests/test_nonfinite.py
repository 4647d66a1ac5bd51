"""Non-finite training steps change nothing, are counted with their images, and stop a run
that keeps producing them (issue 12, item 4)."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from yolov3.checkpoint_io import load_checkpoint
from yolov3.checkpoint_plugin import SafeCheckpointIO
from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from yolov3.lit import YoloLitModule
from yolov3.nonfinite import TrainingDiverged


class Poisoned(YoloLitModule):
    """Makes the loss (nan_loss_steps) or one gradient (inf_grad_steps) non-finite at given
    global steps: a batch gone bad on purpose."""

    def __init__(self, nan_loss_steps=(), inf_grad_steps=(), **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_loss_steps, self.inf_grad_steps = set(nan_loss_steps), set(inf_grad_steps)
        first = next(self.model.parameters())
        first.register_hook(lambda g: g * float("inf") if self.global_step in self.inf_grad_steps else g)

    def _step(self, batch):
        outputs, targets, total, parts = super()._step(batch)
        if self.training and self.global_step in self.nan_loss_steps:
            total = total * float("nan")
        return outputs, targets, total, parts


class Recorder(Callback):
    """The full trainable state (weights, BatchNorm buffers, Adam state) around every step."""

    def __init__(self) -> None:
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    @staticmethod
    def _state(trainer, module) -> dict:
        return copy.deepcopy({"model": module.model.state_dict(), "adam": trainer.optimizers[0].state_dict()["state"]})

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = self._state(trainer, module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = self._state(trainer, module)


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def _train(synth_root, tmp_path, precision: str, max_steps: int, **poison):
    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25,
                        augment=AugmentConfig(mosaic_prob=0.0))
    module = Poisoned(width=0.0625, max_nonfinite_steps=3, evaluation={"map_every_n_epochs": 0}, **poison)
    recorder = Recorder()
    trainer = L.Trainer(accelerator="cpu", precision=precision, max_steps=max_steps, max_epochs=10,
                        limit_val_batches=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        plugins=[SafeCheckpointIO()], default_root_dir=tmp_path,
                        callbacks=[recorder, ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last",
                                                             every_n_train_steps=1, enable_version_counter=False)])
    return trainer, module, dm, recorder


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_non_finite_step_changes_nothing_and_is_reported(synth_root, tmp_path, precision, caplog):
    trainer, module, dm, rec = _train(synth_root, tmp_path, precision, max_steps=6,
                                      nan_loss_steps={2}, inf_grad_steps={4})
    with caplog.at_level("WARNING", logger="yolov3"):
        trainer.fit(module, datamodule=dm)
    for step in (2, 4):  # dropped: weights, BatchNorm statistics and Adam moments as they were
        assert _same(rec.before[step], rec.after[step]), step
    for step in (1, 3, 5):  # the other steps do train
        assert not _same(rec.before[step]["model"], rec.after[step]["model"]), step
    assert module._guard.total == 2
    assert "step 2: non-finite loss" in caplog.text and "step 4: non-finite gradients" in caplog.text
    # the warning names the images of the batch
    assert ".jpg" in caplog.text.split("step 2: non-finite loss")[1].splitlines()[0]
    after = module.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def test_too_many_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(synth_root, tmp_path):
    trainer, module, dm, rec = _train(synth_root, tmp_path, "32-true", max_steps=12, nan_loss_steps={3, 4, 5, 6})
    with pytest.raises(TrainingDiverged) as exc:
        trainer.fit(module, datamodule=dm)
    message = str(exc.value)
    assert "3 training steps in a row" in message and "steps 3, 4, 5" in message and ".jpg" in message
    last = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    good = rec.after[2]["model"]  # the weights after the last good step
    assert all(torch.equal(last["state_dict"][f"model.{k}"], v) for k, v in good.items())


def test_a_streak_is_broken_by_one_good_step(synth_root, tmp_path):
    trainer, module, dm, _ = _train(synth_root, tmp_path, "32-true", max_steps=8, nan_loss_steps={1, 2, 4, 5})
    trainer.fit(module, datamodule=dm)  # 2 + 2 dropped, never 3 in a row: no error
    assert module._guard.total == 4 and trainer.global_step == 8
