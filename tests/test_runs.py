"""Runs that survive: run folders, exact resume after SIGKILL, atomic checkpoint writes,
checkpoints that would run code (issue 12, items 1, 2, 3 and 5)."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from yolov3.checkpoint_io import CheckpointError, load_checkpoint, save_atomic
from yolov3.checkpoint_plugin import SafeCheckpointIO
from yolov3.commands.cli import main
from yolov3.commands.lightning_cli import load_cli
from yolov3.detector import Detector

ROOT = Path(__file__).parent.parent
VOC = ROOT / "configs" / "voc.yaml"
TESTS = Path(__file__).parent


def tiny(synth_root, epochs: int = 1, workers: int = 0, config: Path = VOC) -> list[str]:
    """voc.yaml cut down to a few CPU steps on the session's synthetic set."""
    return ["--config", str(config), "--data.root", str(synth_root), "--data.image_size", "64",
            "--data.train_sizes", "[64, 96]", "--data.batch_size", "4", "--data.num_workers", str(workers),
            "--data.val_fraction", "0.25", "--model.width", "0.0625", "--trainer.accelerator", "cpu",
            "--trainer.precision", "32-true", "--trainer.max_epochs", str(epochs), "--trainer.limit_val_batches", "1",
            "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fit_then_test_keeps_the_training_history(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    args = tiny(synth_root, epochs=3)  # 12 steps (8 would trip OneCycleLR: pct_start 0.125 x 8 = 1 step)
    main(["fit", *args])
    run = tmp_path / "runs" / "voc" / "version_0"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    history = (run / "metrics.csv").read_text()
    assert history.count("\n") >= 1 + 3 * 4 and "train/loss" in history and "val/loss" in history
    before = snapshot(run)

    main(["test", *args, "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    main(["validate", *args, "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    main(["test", *args, "--ckpt_path", str(run / "checkpoints" / "best.ckpt")])
    after = snapshot(run)
    # every file of the training run is byte for byte what fit left; the others are new
    assert {k: v for k, v in after.items() if k in before} == before
    assert (run / "test" / "version_0" / "results.json").is_file()
    assert (run / "test" / "version_1" / "results.json").is_file()  # a second test does not replace the first
    assert (run / "validate" / "version_0" / "metrics.csv").is_file()

    main(["fit", *args])  # a second training run gets its own folder
    assert (tmp_path / "runs" / "voc" / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert {k: v for k, v in snapshot(run).items() if k in before} == before


def _fit_process(cwd: Path, config: Path, args: list[str], kill_at: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    if kill_at is not None:
        env["YOLOV3_KILL_AT_STEP"] = str(kill_at)
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "yolov3", "fit", "--config", str(config), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _val_history(run: Path) -> list[tuple[str, str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [(r["epoch"], r["step"], r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(synth_root, tmp_path):
    """SIGKILL at a random mid-epoch step, resume from last.ckpt: weights, their EMA, Adam
    moments and schedule equal an uninterrupted run's, bit for bit (CPU, deterministic), and
    metrics.csv holds one unbroken history. Two DataLoader workers make the batches, as on a
    GPU machine. The EMA is on (with a short ramp), whatever voc.yaml says."""
    config = yaml.safe_load(VOC.read_text())
    step_ckpt = [c for c in config["trainer"]["callbacks"] if c["init_args"].get("every_n_train_steps")]
    assert len(step_ckpt) == 1, "voc.yaml should save last.ckpt every N steps"
    step_ckpt[0]["init_args"]["every_n_train_steps"] = 1
    config["trainer"]["callbacks"].append({"class_path": "run_helpers.KillAtStep"})
    cfg = tmp_path / "voc_every_step.yaml"
    cfg.write_text(yaml.safe_dump(config))
    args = [*tiny(synth_root, epochs=3, workers=2)[2:],  # without --config; _fit_process adds it
            "--model.optim.ema", "true", "--model.optim.ema_tau", "4"]
    steps_per_epoch, total = 4, 12  # 18 training images, batch 4
    kill_at = random.choice([s for s in range(1, total) if s % steps_per_epoch])

    whole = _fit_process(tmp_path / "whole", cfg, args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = _fit_process(tmp_path / "killed", cfg, args, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-3000:])
    run = tmp_path / "killed" / "runs" / "voc" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] in (kill_at - 1, kill_at)  # written in the background
    resumed = _fit_process(tmp_path / "killed", cfg, [*args, "--ckpt_path", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not (tmp_path / "killed" / "runs" / "voc" / "version_1").exists()  # resumed in its own folder

    a = load_checkpoint(tmp_path / "whole" / "runs" / "voc" / "version_0" / "checkpoints" / "last.ckpt")
    b = load_checkpoint(last)
    assert a["global_step"] == b["global_step"] == total, kill_at
    assert a["ema"]["updates"] == b["ema"]["updates"] == total, kill_at
    for state_a, state_b in ((a["state_dict"], b["state_dict"]),  # "model.*": the EMA
                             (a["ema"]["training_state_dict"], b["ema"]["training_state_dict"])):
        assert state_a.keys() == state_b.keys()
        for key, value in state_a.items():
            assert torch.equal(value, state_b[key]), (kill_at, key)
    for pa, pb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"]) and torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"]), kill_at
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    # one validation row per epoch, the same values: nothing lost, nothing logged twice
    assert _val_history(run) == _val_history(tmp_path / "whole" / "runs" / "voc" / "version_0"), kill_at
    assert (run / "config.yaml").is_file() and (run / "config.resume-1.yaml").is_file()


def test_the_cli_trainer_writes_and_reads_through_safe_checkpoint_io(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = load_cli(str(VOC), tiny(synth_root)[2:])
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_a_writer_killed_mid_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomic({"marker": "v1", "weights": torch.zeros(3)}, path)
    partial = path.with_name(path.name + ".partial")
    writer = subprocess.Popen([sys.executable, str(TESTS / "run_helpers.py"), str(path), "v2"])
    try:
        deadline = time.monotonic() + 60
        while not (partial.exists() and partial.stat().st_size > 100_000):
            assert writer.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline, "the writer never started writing"
            time.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    finally:
        writer.kill()
    assert 0 < partial.stat().st_size < 2_000_000  # it really was killed half way
    assert load_checkpoint(path)["marker"] == "v1"
    save_atomic({"marker": "v3"}, path)  # the next write replaces the leftover
    assert load_checkpoint(path)["marker"] == "v3" and not partial.exists()


class _CreatesAFile:
    """Unpickling this runs open(marker, "w"): a stand-in for any code a file could carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def booby_trapped(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ckpts" / "evil.ckpt"
    path.parent.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": _CreatesAFile(marker)}, path)
    return path, marker


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_lightning_commands_refuse_a_checkpoint_that_would_run_code(command, booby_trapped, synth_root, tmp_path,
                                                                    monkeypatch):
    path, marker = booby_trapped
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    with pytest.raises(SystemExit) as exc:
        main([command, *tiny(synth_root), "--ckpt_path", str(path)])
    message = str(exc.value.code)
    assert str(path) in message and "refused" in message, message
    assert "weights_only=False" not in message
    assert not marker.exists()


@pytest.mark.parametrize("command", ["detect", "cam", "export", "app"])
def test_own_commands_refuse_a_checkpoint_that_would_run_code(command, booby_trapped, shape_images, tmp_path):
    path, marker = booby_trapped
    argv = {"detect": ["detect", str(shape_images[0]), "--out", str(tmp_path / "d")],
            "cam": ["cam", str(shape_images[0]), "--out", str(tmp_path / "c")],
            "export": ["export", "--out", str(tmp_path / "w.safetensors")],
            "app": ["app"]}[command]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--weights", str(path)])
    message = str(exc.value.code)
    assert str(path) in message and "weights_only=False" not in message, message
    assert not marker.exists()
    with pytest.raises(CheckpointError):
        Detector.load(path)


def test_a_background_write_saves_the_state_of_the_moment(tmp_path):
    io = SafeCheckpointIO(background=True)
    weights = torch.zeros(1_000_000)
    io.save_checkpoint({"state_dict": {"w": weights}, "step": 1}, tmp_path / "last.ckpt")
    weights += 1  # training goes on while the file is written
    io.save_checkpoint({"state_dict": {"w": weights}, "step": 2}, tmp_path / "other.ckpt")
    weights += 1
    io.teardown()
    assert torch.equal(load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.zeros(1_000_000))
    assert torch.equal(load_checkpoint(tmp_path / "other.ckpt")["state_dict"]["w"], torch.ones(1_000_000))
    io.save_checkpoint({"x": 1}, tmp_path / "missing_dir_is_made" / "a.ckpt")
    assert io.load_checkpoint(tmp_path / "missing_dir_is_made" / "a.ckpt") == {"x": 1}  # waits for the write
