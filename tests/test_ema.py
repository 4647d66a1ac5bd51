"""The EMA of the weights (issue 16, item 4): its update and ramp, the steps it skips, the
weights validation runs, what checkpoints hold and who reads them."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_nonfinite import Poisoned  # a NaN loss or inf gradients at given steps
from torch import nn

from yolov3.checkpoint_io import load_checkpoint
from yolov3.checkpoint_plugin import SafeCheckpointIO
from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from yolov3.detector import Detector
from yolov3.ema import CHECKPOINT_KEY, ModelEMA
from yolov3.lit import YoloLitModule


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def change(net: nn.Module, seed: int) -> None:
    """A stand-in for a training step: new weights and BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for value in net.state_dict().values():
            if value.is_floating_point():
                value.add_(torch.randn(value.shape, generator=g))
            else:
                value.add_(1)


def test_the_update_is_the_formula_for_every_tensor():
    net = tiny_net()
    ema = ModelEMA(net, decay=0.9, tau=3.0)
    reference = {k: v.double().clone() for k, v in net.state_dict().items()}
    for t in range(1, 8):
        change(net, t)
        ema.update(net)
        d = 0.9 * (1 - math.exp(-t / 3.0))
        for key, value in net.state_dict().items():
            if value.is_floating_point():  # weights, biases, running mean and variance
                reference[key] = d * reference[key] + (1 - d) * value.double()
            else:  # num_batches_tracked
                reference[key] = value.double().clone()
    assert ema.updates == 7
    state = ema.module.state_dict()
    assert state.keys() == reference.keys()
    for key, expected in reference.items():
        torch.testing.assert_close(state[key].double(), expected, rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.allclose(state["0.weight"], net.state_dict()["0.weight"])  # it really averages


def test_the_decay_ramps_up_from_zero_to_decay():
    ema = ModelEMA(tiny_net(), decay=0.9999, tau=2000)
    assert ema.decay_at(0) == 0.0
    assert ema.decay_at(1) < 1e-3  # the first update takes the weights almost as they are
    assert abs(ema.decay_at(2000) - 0.9999 * (1 - math.exp(-1))) < 1e-12
    values = [ema.decay_at(t) for t in range(0, 40_000, 500)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert 0.9999 - 1e-6 < ema.decay_at(40_000) <= 0.9999
    net = tiny_net()
    start = copy.deepcopy(net)
    change(net, 1)
    ema = ModelEMA(start, decay=0.9999, tau=2000)
    ema.update(net)
    gap = (start[0].weight - net[0].weight).abs().max()
    assert (ema.module[0].weight - net[0].weight).abs().max() < 1e-3 * gap  # d(1) = 5e-4 of the way back


def test_settings_outside_their_range_are_refused():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(tiny_net(), decay=1.0)
    with pytest.raises(ValueError, match="tau"):
        ModelEMA(tiny_net(), tau=0)


def test_dropped_steps_and_gradscaler_skips_do_not_update():
    net = tiny_net()
    ema = ModelEMA(net, decay=0.5, tau=1.0)
    before = copy.deepcopy(ema.module.state_dict())
    change(net, 1)
    ema.before_step(dropped=True)
    assert not ema.after_step(net) and ema.updates == 0
    assert all(torch.equal(v, before[k]) for k, v in ema.module.state_dict().items())
    assert not ema.after_step(net)  # no before_step: no step was expected

    # a real GradScaler: inf gradients -> optimizer.step skipped, scale halved -> no update
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(2, 3, 6, 6)
    for poison, expected in ((float("inf"), False), (1.0, True)):
        opt.zero_grad()
        scaler.scale(net(x).sum() * poison).backward()
        ema.before_step(dropped=False, scaler=scaler)
        weights = net[0].weight.detach().clone()
        scaler.step(opt)
        scaler.update()
        assert (not torch.equal(weights, net[0].weight)) == expected  # the step happened or not
        assert ema.after_step(net, scaler) == expected
    assert ema.updates == 1


# ---- inside Lightning -------------------------------------------------------------------


class EmaRecorder(Callback):
    """The EMA's state and update count after every training batch."""

    def __init__(self) -> None:
        self.after: dict[int, tuple[int, dict]] = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.after[batch_idx] = (module.ema.updates, copy.deepcopy(module.ema.module.state_dict()))


def _fit(synth_root, tmp_path, ema: bool = True, max_steps: int = 4, callbacks=(), module_cls=YoloLitModule,
         **kwargs):
    torch.manual_seed(0)
    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25,
                        augment=AugmentConfig(mosaic_prob=0.0))
    module = module_cls(width=0.0625, evaluation={"map_every_n_epochs": 0}, max_nonfinite_steps=3,
                        optim={"ema": ema, "ema_decay": 0.9, "ema_tau": 2.0}, **kwargs)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=10, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        plugins=[SafeCheckpointIO(background=False)], default_root_dir=tmp_path,
                        callbacks=[checkpoint, *callbacks])
    trainer.fit(module, datamodule=dm)
    return trainer, module, dm


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_step_with_a_non_finite_loss_leaves_the_ema_alone(synth_root, tmp_path):
    recorder = EmaRecorder()
    _, module, _ = _fit(synth_root, tmp_path, max_steps=4, callbacks=[recorder], module_cls=Poisoned,
                        nan_loss_steps={2})
    assert [recorder.after[i][0] for i in range(4)] == [1, 2, 2, 3]
    assert _equal(recorder.after[2][1], recorder.after[1][1])
    assert not _equal(recorder.after[3][1], recorder.after[2][1])
    assert all(torch.isfinite(v).all() for v in module.ema.module.state_dict().values() if v.is_floating_point())


def test_the_ema_does_not_change_training(synth_root, tmp_path):
    """The training weights of a fit with the EMA are those of the same fit without it (which is
    why bench/ema_demo.py can compare both from one run)."""
    _, with_ema, _ = _fit(synth_root, tmp_path / "a", ema=True)
    _, without, _ = _fit(synth_root, tmp_path / "b", ema=False)
    assert _equal(with_ema.model.state_dict(), without.model.state_dict())
    assert not _equal(with_ema.ema.module.state_dict(), with_ema.model.state_dict())


def test_evaluation_runs_the_ema_and_leaves_the_training_weights_alone(synth_root, tmp_path):
    trainer, module, dm = _fit(synth_root, tmp_path)
    training = copy.deepcopy(module.model.state_dict())
    averaged = copy.deepcopy(module.ema.module.state_dict())
    loss = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/loss"]
    assert _equal(module.model.state_dict(), training) and _equal(module.ema.module.state_dict(), averaged)

    # the same validation by a module without EMA whose weights are the average
    plain = YoloLitModule(width=0.0625, evaluation={"map_every_n_epochs": 0})
    plain.model.load_state_dict(averaged)
    assert abs(trainer.validate(plain, datamodule=dm, verbose=False)[0]["val/loss"] - loss) < 1e-5 * max(1, loss)
    plain.model.load_state_dict(training)
    assert abs(trainer.validate(plain, datamodule=dm, verbose=False)[0]["val/loss"] - loss) > 1e-4

    images = torch.rand(2, 3, 64, 64)
    module.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(module(images), module.ema.module(images)))
    module.train()
    assert module._network() is module.model


def test_checkpoints_hold_the_ema_first_and_load_back_exactly(synth_root, tmp_path):
    trainer, module, _ = _fit(synth_root, tmp_path, max_steps=3)
    path = tmp_path / "ckpt" / "step=3.ckpt"
    ckpt = load_checkpoint(path)
    state, stored = ckpt["state_dict"], ckpt[CHECKPOINT_KEY]
    assert not any(k.startswith("ema.") for k in state) and stored["updates"] == 3 == module.ema.updates
    assert _equal({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")},
                  module.ema.module.state_dict())
    assert _equal({k.removeprefix("model."): v for k, v in stored["training_state_dict"].items()},
                  module.model.state_dict())

    loaded = YoloLitModule.load_from_checkpoint(path)
    assert loaded.ema.updates == 3
    assert _equal(loaded.model.state_dict(), module.model.state_dict())
    assert _equal(loaded.ema.module.state_dict(), module.ema.module.state_dict())

    # Detector and export read "model.*": the average
    detector = Detector.from_checkpoint(path)
    assert _equal(detector.model.state_dict(), module.ema.module.state_dict())
    # a module without EMA takes the average as its weights, like any reader
    off = YoloLitModule.load_from_checkpoint(path, optim={"ema": False})
    assert off.ema is None and _equal(off.model.state_dict(), module.ema.module.state_dict())


def test_a_checkpoint_without_ema_starts_the_average_from_its_weights(tmp_path):
    torch.manual_seed(0)
    old = YoloLitModule(width=0.0625)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams),
                "pytorch-lightning_version": L.__version__}, path)
    module = YoloLitModule.load_from_checkpoint(path, optim={"ema": True})
    assert module.ema.updates == 0
    assert _equal(module.ema.module.state_dict(), old.model.state_dict())
    assert _equal(module.model.state_dict(), old.model.state_dict())


@pytest.mark.slow
def test_a_resumed_fit_ends_with_the_same_average(synth_root, tmp_path):
    """In-process resume from a mid-run checkpoint; tests/test_runs.py kills a process."""
    _, whole, _ = _fit(synth_root, tmp_path / "whole", max_steps=6)
    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25,
                        augment=AugmentConfig(mosaic_prob=0.0))
    torch.manual_seed(0)
    module = YoloLitModule(width=0.0625, evaluation={"map_every_n_epochs": 0}, max_nonfinite_steps=3,
                           optim={"ema": True, "ema_decay": 0.9, "ema_tau": 2.0})
    resumed = L.Trainer(accelerator="cpu", max_steps=6, max_epochs=10, limit_val_batches=1, num_sanity_val_steps=0,
                        logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, plugins=[SafeCheckpointIO(background=False)],
                        default_root_dir=tmp_path / "resumed")
    resumed.fit(module, datamodule=dm, ckpt_path=tmp_path / "whole" / "ckpt" / "step=3.ckpt")  # mid-epoch
    assert module.ema.updates == whole.ema.updates == 6
    assert _equal(module.model.state_dict(), whole.model.state_dict())
    assert _equal(module.ema.module.state_dict(), whole.ema.module.state_dict())
