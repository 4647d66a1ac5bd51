"""A fit that writes no best checkpoint says so at its start and why, and names the checkpoint
that exists at its end; the demo tests last.ckpt with a note (issue 20, item 7b)."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from yolov3.commands.cli import main
from yolov3.fit_checkpoints import (OTHER_METRICS, TRAIN_METRICS, VAL_MAP_METRICS, VAL_METRICS, CheckpointNotice,
                                    FitCheckpoints, check_monitors)

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "configs" / "demo.yaml"


# --- a monitor the model does not log is refused before training

def _trainer(*monitors: str, every: int | None = 1, epochs: int | None = 10) -> SimpleNamespace:
    return SimpleNamespace(checkpoint_callbacks=[ModelCheckpoint(filename="best", monitor=m) for m in monitors],
                           check_val_every_n_epoch=every, max_epochs=epochs)


def test_monitors_the_model_logs_pass():
    for name in (*VAL_METRICS, *VAL_MAP_METRICS, *TRAIN_METRICS, *OTHER_METRICS):
        check_monitors(_trainer(name), map_every_n_epochs=1)
    # every validation computes the mAP: it runs every n-th epoch (lit._map_now) and at the last
    check_monitors(_trainer("val/map_07", every=4), map_every_n_epochs=2)
    check_monitors(_trainer("val/map_07", every=4, epochs=None), map_every_n_epochs=2)
    check_monitors(_trainer("val/map_07", every=1, epochs=1), map_every_n_epochs=25)
    check_monitors(_trainer("val/map_07", every=3, epochs=3), map_every_n_epochs=2)  # epoch 3 validates: the last
    check_monitors(_trainer(None), map_every_n_epochs=0)


def test_a_monitor_the_model_never_logs_is_refused():
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(filename='best', monitor='val/los'\): the model logs no "
                                         r"metric 'val/los'.*validation logs val/loss, val/class_acc"):
        check_monitors(_trainer("val/loss", "val/los"), map_every_n_epochs=1)


@pytest.mark.parametrize("n, every, epochs, when, after", [
    (2, 1, 3, "only every 2 epochs and at the last", "after epoch 1"),
    (0, 1, 3, "never", "after epoch 1"),
    (3, 2, 10, "only every 3 epochs and at the last", "after epoch 2"),
    (4, 2, 5, "only every 4 epochs and at the last", "after epoch 2"),
    (2, None, 10, "only every 2 epochs and at the last", "after epoch 1"),
    (2, 3, -1, "only every 2 epochs and at the last", "of some epoch"),
])
def test_an_map_monitor_needs_the_map_at_every_validation(n, every, epochs, when, after):
    with pytest.raises(ValueError, match=rf"monitor='val/map_2010'\): validation computes val/map_2010 {when} "
                                         rf"\(model.evaluation.map_every_n_epochs {n}\), so the validation {after} "
                                         rf"\(trainer.check_val_every_n_epoch {every}\) would have none"):
        check_monitors(_trainer("val/map_2010", every=every, epochs=epochs), map_every_n_epochs=n)


# --- the end-of-fit lines

def test_the_summary_names_only_a_checkpoint_that_exists():
    best = FitCheckpoints(best="r/checkpoints/best.ckpt", last="r/checkpoints/last.ckpt", score="val/loss 4.213")
    assert best.summary("r") == ["run folder r; best checkpoint r/checkpoints/best.ckpt (val/loss 4.213)",
                                 "test it with: yolov3 test --config <this config> --ckpt_path r/checkpoints/best.ckpt"]
    last = FitCheckpoints(last="r/checkpoints/last.ckpt", why_no_best="no validation ran (x)",
                          stale_best="r/checkpoints/best.ckpt")
    assert last.path == "r/checkpoints/last.ckpt"
    assert last.summary("r") == [
        "run folder r; no best checkpoint: no validation ran (x); last checkpoint r/checkpoints/last.ckpt",
        "note: r/checkpoints/best.ckpt is from before this fit, not its best",
        "test it with: yolov3 test --config <this config> --ckpt_path r/checkpoints/last.ckpt"]
    assert FitCheckpoints(why_no_best="w").summary("r") == ["run folder r; no best checkpoint: w; no checkpoint was "
                                                           "written"]
    assert FitCheckpoints(disabled=True).summary("r") == [
        "run folder r; no checkpoint was written (trainer.enable_checkpointing is false)"]


# --- the start-of-fit prediction against what Lightning does

class Toy(L.LightningModule):
    """A one-layer model on random data: `batches` training batches an epoch, `val` validation batches."""

    def __init__(self, batches: int = 4, val: int = 2) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.batches, self.val = batches, val

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/x", self.layer(batch).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(torch.randn(self.batches, 2), batch_size=1)

    def val_dataloader(self):
        return DataLoader(torch.randn(self.val, 2), batch_size=1)


SCHEDULES = [  # trainer settings; batches an epoch; validation batches
    (dict(max_epochs=2, check_val_every_n_epoch=3), 4, 2),
    (dict(max_epochs=3, check_val_every_n_epoch=3), 4, 2),
    (dict(max_epochs=4, check_val_every_n_epoch=2), 4, 2),
    (dict(max_epochs=5, max_steps=2), 4, 2),
    (dict(max_epochs=5, max_steps=4), 4, 2),
    (dict(max_epochs=-1, max_steps=3), 4, 2),
    (dict(max_epochs=2, max_steps=2, val_check_interval=0.5), 4, 2),
    (dict(max_epochs=2, max_steps=1, val_check_interval=0.5), 4, 2),
    (dict(max_epochs=2, max_steps=1, val_check_interval=0.25), 4, 2),
    (dict(max_epochs=2, max_steps=5, val_check_interval=0.75), 8, 2),
    (dict(max_epochs=2, max_steps=6, val_check_interval=0.75), 8, 2),
    (dict(max_epochs=2, check_val_every_n_epoch=None, val_check_interval=3), 2, 2),
    (dict(max_epochs=1, check_val_every_n_epoch=None, val_check_interval=3), 2, 2),
    (dict(max_epochs=3, max_steps=2, accumulate_grad_batches=2), 4, 2),
    (dict(max_epochs=3, max_steps=1, accumulate_grad_batches=2), 4, 2),
    (dict(max_epochs=3, max_steps=2, accumulate_grad_batches=3), 4, 2),
    (dict(max_epochs=3, max_steps=1, accumulate_grad_batches=3), 4, 2),
    (dict(max_epochs=3, limit_train_batches=2, max_steps=2), 4, 2),
    (dict(max_epochs=3, limit_train_batches=2, max_steps=1), 4, 2),
    (dict(max_epochs=2, limit_val_batches=0), 4, 2),
    (dict(max_epochs=2), 4, 0),
]


@pytest.mark.slow
@pytest.mark.parametrize("settings, batches, val", SCHEDULES)
def test_the_notice_predicts_whether_lightning_validates(settings, batches, val, tmp_path, caplog):
    """CheckpointNotice's reason (given as training starts) is there exactly when Lightning then
    runs no validation, and then no best checkpoint is written; the warning says why."""
    notice = CheckpointNotice()
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/x", save_last=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, default_root_dir=tmp_path, callbacks=[notice, best], **settings)
    with caplog.at_level(logging.WARNING, logger="yolov3"):
        trainer.fit(Toy(batches, val))
    assert (notice.reason is None) == (notice.validations > 0), (notice.reason, notice.validations)
    assert (tmp_path / "best.ckpt").is_file() == (notice.validations > 0)
    warned = [r.getMessage() for r in caplog.records if "will be written" in r.getMessage()]
    if notice.reason:
        assert warned == [f"no best.ckpt will be written: ModelCheckpoint(filename='best', monitor='val/x') keeps the "
                          f"best val/x, which only a validation logs, and no validation runs in this fit "
                          f"({notice.reason}). It writes {tmp_path / 'last.ckpt'} (the weights as training leaves "
                          f"them) instead."]
        assert (tmp_path / "last.ckpt").is_file()
    else:
        assert not warned


# --- real fits through the command line

def _tiny(root: Path, *extra: str) -> list[str]:
    """demo.yaml (runs/demo, not versioned) cut down to a few CPU steps at 64 px on the session's synthetic set."""
    return ["--config", str(DEMO), "--data.root", str(root), "--data.image_size", "64", "--data.train_sizes", "[64]",
            "--data.batch_size", "4", "--data.val_fraction", "0.25", "--data.cache_images", "false",
            "--model.width", "0.0625", "--trainer.log_every_n_steps", "1", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false", *extra]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    return tmp_path


def _names(csv_path: Path) -> set[str]:
    return {c for c in csv_path.read_text().splitlines()[0].split(",") if c.startswith(("val/", "train/"))}


@pytest.mark.slow
def test_a_fit_without_a_validation_split_says_so_and_names_last_ckpt(synth_root, in_tmp, capsys, caplog):
    main(["fit", *_tiny(synth_root)])
    ckpts = in_tmp / "runs" / "demo" / "checkpoints"
    assert "best checkpoint runs/demo/checkpoints/best.ckpt (val/loss " in capsys.readouterr().out
    # every name the model logs, and no other, is what check_monitors knows
    assert _names(in_tmp / "runs" / "demo" / "metrics.csv") == {*VAL_METRICS, *VAL_MAP_METRICS, *TRAIN_METRICS}

    with caplog.at_level(logging.WARNING, logger="yolov3"):
        main(["fit", *_tiny(synth_root, "--data.val_fraction", "0")])
    out = capsys.readouterr().out
    warning = " ".join(r.getMessage() for r in caplog.records if r.name == "yolov3")
    assert ("no best.ckpt will be written: ModelCheckpoint(filename='best', monitor='val/loss') keeps the best "
            "val/loss, which only a validation logs, and no validation runs in this fit (there is no validation "
            "split: data.val_fraction is 0 and data.val_split is not set). It writes runs/demo/checkpoints/last.ckpt "
            "(the weights as training leaves them) instead. The best.ckpt already in runs/demo/checkpoints is from "
            "before this fit and stays as it is.") in warning
    assert out.splitlines()[-3:] == [
        "run folder runs/demo/; no best checkpoint: no validation ran (there is no validation split: "
        "data.val_fraction is 0 and data.val_split is not set); last checkpoint runs/demo/checkpoints/last.ckpt",
        "note: runs/demo/checkpoints/best.ckpt is from before this fit, not its best",
        "test it with: yolov3 test --config <this config> --ckpt_path runs/demo/checkpoints/last.ckpt"]
    assert (ckpts / "last.ckpt").stat().st_mtime > (ckpts / "best.ckpt").stat().st_mtime


@pytest.mark.slow
@pytest.mark.parametrize("extra, why", [
    (["--trainer.max_steps", "1"], "no validation ran (the fit ends after 1 training batches (trainer.max_steps 1), "
                                   "before its first validation, which would come after epoch 1"),
    (["--trainer.limit_val_batches", "0"], "no validation ran (trainer.limit_val_batches is 0)"),
    (["--trainer.check_val_every_n_epoch", "2"], "no validation ran (the fit ends after 2 training batches "
                                                "(trainer.max_epochs 1 of 2 batches), before its first validation, "
                                                "which would come after epoch 2 (trainer.check_val_every_n_epoch 2))"),
    # stopped by the clock before the 50th epoch, the first that validates
    (["--trainer.max_epochs", "50", "--trainer.check_val_every_n_epoch", "50", "--trainer.max_time", "00:00:00:01"],
     "the fit ended (trainer.max_time (1 s) reached after "),
])
def test_a_fit_that_never_validates_names_last_ckpt(extra, why, synth_root, in_tmp, capsys):
    main(["fit", *_tiny(synth_root, *extra)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith(f"run folder runs/demo/; no best checkpoint: {why}")
    assert lines[-2].endswith("; last checkpoint runs/demo/checkpoints/last.ckpt")
    assert lines[-1] == "test it with: yolov3 test --config <this config> --ckpt_path runs/demo/checkpoints/last.ckpt"
    assert sorted(p.name for p in (in_tmp / "runs" / "demo" / "checkpoints").iterdir()) == ["last.ckpt"]


@pytest.mark.slow
def test_a_bad_monitor_stops_the_fit_before_training(synth_root, in_tmp):
    """A monitored mAP missing from the validation after epoch 1: today the fit stops there with
    Lightning's MisconfigurationException (and a traceback); now before any training."""
    args = _tiny(synth_root, "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                 "--trainer.callbacks.monitor", "val/map_07", "--trainer.callbacks.mode", "max",
                 "--model.evaluation.map_every_n_epochs", "2", "--trainer.max_epochs", "2")
    with pytest.raises(SystemExit, match=r"yolov3 fit: trainer.callbacks: ModelCheckpoint\(filename=None, "
                                         r"monitor='val/map_07'\): validation computes val/map_07 only every 2 "
                                         r"epochs and at the last \(model.evaluation.map_every_n_epochs 2\), so the "
                                         r"validation after epoch 1"):
        main(["fit", *args])
    assert not (in_tmp / "runs" / "demo" / "checkpoints").exists()
    with pytest.raises(SystemExit, match=r"monitor='val/los'\): the model logs no metric 'val/los'"):
        main(["fit", *_tiny(synth_root, "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                            "--trainer.callbacks.monitor", "val/los")])
    assert not (in_tmp / "runs" / "demo" / "checkpoints").exists()


@pytest.mark.slow
def test_a_fit_without_checkpointing_says_it_wrote_none(synth_root, in_tmp, capsys):
    main(["fit", *_tiny(synth_root, "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false")])
    assert capsys.readouterr().out.splitlines()[-1] == \
        "run folder runs/demo/; no checkpoint was written (trainer.enable_checkpointing is false)"


@pytest.mark.slow
def test_the_demo_without_a_validation_split_tests_last_ckpt(in_tmp, capsys):
    args = ["demo", "--config", str(DEMO), "--data-dir", "data/synthetic", "--train", "16", "--test", "4",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--data.image_size", "64",
            "--data.train_sizes", "[64]", "--model.width", "0.0625", "--data.val_fraction", "0", "--out", "report"]
    main(args)
    out = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert ("no best checkpoint (no validation ran (there is no validation split: data.val_fraction is 0 and "
            "data.val_split is not set)): testing the last one, runs/demo/checkpoints/last.ckpt") in out
    assert "last checkpoint runs/demo/checkpoints/last.ckpt" in out
    assert "testing the best" not in out and not re.search(r"(?<!no )best checkpoint", out)
    metrics = json.loads((in_tmp / "report" / "metrics.json").read_text())
    assert metrics["checkpoint"] == "runs/demo/checkpoints/last.ckpt" and metrics["checkpoint_kind"] == "last"
    assert metrics["checkpoint_note"].startswith("no best checkpoint: no validation ran (there is no validation split")
    assert metrics["test_images"] == 4 and (in_tmp / "report" / "predictions.png").is_file()
