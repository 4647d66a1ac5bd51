"""Runs that survive: run folders, exact resume after SIGKILL, atomic checkpoint writes,
checkpoints that would run code (issue 12, items 1, 2, 3 and 5)."""

from __future__ import annotations

import csv
import math
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
from lightning.pytorch.callbacks import Callback

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


# --- the learning-rate schedule of resumed and tiny runs (yolov3.schedule) ---------------------------------------


class _StepLRs(Callback):
    """The LR of each optimiser step (read as its first batch starts)."""

    def __init__(self) -> None:
        self.lrs: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.setdefault(trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"])


def _fit_steps(synth_root, out: Path, ckpt_path=None, val_fraction: float = 0.25, optim=None, save: bool = False,
               **trainer_args):
    """A width-0.0625 fit on the session's synthetic set (18 training images: 4 batches of 4
    at val_fraction 0.25, 5 at 0.1); with `save`, a checkpoint after every step (out/step=<k>.ckpt)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from yolov3.data.datamodule import YoloDataModule
    from yolov3.lit import YoloLitModule

    torch.manual_seed(0)
    module = YoloLitModule(width=0.0625, optim=optim, evaluation={"map_every_n_epochs": 0})
    dm = YoloDataModule(root=str(synth_root), image_size=64, train_sizes=[64], batch_size=4, num_workers=0,
                        val_fraction=val_fraction)
    lrs = _StepLRs()
    every_step = [ModelCheckpoint(dirpath=out, filename="{step}", every_n_train_steps=1, save_top_k=-1)] if save else []
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                        enable_checkpointing=save, plugins=[SafeCheckpointIO(background=False)],
                        callbacks=[*every_step, lrs], default_root_dir=out, **trainer_args)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, lrs.lrs


def _one_cycle_lrs(total: int, optim=None) -> list[float]:
    """Each step's LR of a fresh schedule of `total` steps with the module's settings
    (yolov3.schedule.OneCycle: torch's OneCycleLR for a well-formed length, tests/test_schedule.py)."""
    from yolov3.hparams import OptimConfig
    from yolov3.schedule import OneCycle

    o = OptimConfig(**(optim or {}))
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=o.max_lr / o.div_factor)
    schedule = OneCycle(optimizer, total, o)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


@pytest.fixture(scope="module")
def two_epochs(synth_root, tmp_path_factory):
    """A fit of 2 epochs x 4 steps (8 steps: pct_start 0.125 gives one warm-up step) and its
    checkpoints after each step."""
    out = tmp_path_factory.mktemp("two_epochs")
    trainer, lrs = _fit_steps(synth_root, out, save=True, max_epochs=2)
    assert trainer.global_step == 8 and sorted(lrs) == list(range(8))
    return out, lrs


RESUMES = {  # name: (checkpoint step, fit arguments, total steps of the resumed run)
    "extend max_epochs 2 -> 3": (8, {"max_epochs": 3}, 12),
    "larger training set mid-epoch": (6, {"max_epochs": 2, "val_fraction": 0.1}, 9),
    "shorten max_epochs 2 -> 1": (2, {"max_epochs": 1}, 4),
    "accumulate 3, limit_train_batches 3": (4, {"max_epochs": 3, "accumulate_grad_batches": 3,
                                                "limit_train_batches": 3}, 6),
    "max_steps, no max_epochs; max_lr, pct_start, weight_decay changed": (
        8, {"max_epochs": -1, "max_steps": 11, "optim": {"max_lr": 0.002, "pct_start": 0.25, "weight_decay": 0.001}},
        11),
}


@pytest.mark.parametrize("name", list(RESUMES))
def test_a_resumed_fit_of_another_length_or_settings_finishes_its_schedule(name, two_epochs, synth_root, tmp_path,
                                                                          caplog):
    """Lightning puts the checkpoint's OneCycleLR (8 steps) back over the new run's: each of
    these crashed with 'Tried to step N times' (the larger set after a step at a negative LR)
    or ended its anneal short of min_lr. Now the schedule is rebuilt for the new total at the
    step reached: every later step has the LR of a fresh schedule of that length."""
    step, args, total = RESUMES[name]
    optim = args.pop("optim", None)
    with caplog.at_level("INFO", logger="yolov3"):
        trainer, lrs = _fit_steps(synth_root, tmp_path, ckpt_path=two_epochs[0] / f"step={step}.ckpt", optim=optim,
                                  **args)
    assert trainer.global_step == total and sorted(lrs) == list(range(step, total))
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.total_steps == total and schedule.last_epoch == total  # as many steps as it was planned for
    fresh = _one_cycle_lrs(total, optim)
    assert [lrs[k] for k in range(step, total)] == pytest.approx(fresh[step:], rel=1e-9)
    assert f"rebuilt for {total} steps at step {step}" in caplog.text
    if optim:
        assert trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.001
        assert "max_lr 0.0008 -> 0.002" in caplog.text and "weight_decay 0.0001 -> 0.001" in caplog.text


def test_a_resumed_fit_of_the_same_length_keeps_its_schedule(two_epochs, synth_root, tmp_path, caplog):
    out, whole = two_epochs
    with caplog.at_level("INFO", logger="yolov3"):
        trainer, lrs = _fit_steps(synth_root, tmp_path, ckpt_path=out / "step=5.ckpt", max_epochs=2)
    assert trainer.global_step == 8 and "schedule" not in caplog.text
    assert [lrs[k] for k in range(5, 8)] == [whole[k] for k in range(5, 8)]


@pytest.mark.parametrize("args,total", [({"max_epochs": 1, "max_steps": 1}, 1),
                                        ({"max_epochs": 1, "limit_train_batches": 3, "optim": {"pct_start": 1.0}}, 3)])
def test_tiny_runs_train_to_the_end(args, total, synth_root, tmp_path):
    """pct_start 1.0 died after its last step (1 / 0); the other lengths: tests/test_schedule.py."""
    from yolov3.hparams import OptimConfig

    optim = args.pop("optim", None)
    trainer, lrs = _fit_steps(synth_root, tmp_path, optim=optim, **args)
    o = OptimConfig(**(optim or {}))
    assert trainer.global_step == total and sorted(lrs) == list(range(total))
    low = o.max_lr / o.div_factor / o.final_div_factor
    assert all(math.isfinite(v) and low * (1 - 1e-9) <= v <= o.max_lr * (1 + 1e-9) for v in lrs.values()), lrs


def test_a_fit_without_a_length_is_refused_before_a_step(synth_root, tmp_path, monkeypatch):
    from yolov3.schedule import ScheduleError

    with pytest.raises(ScheduleError, match="set trainer.max_epochs or trainer.max_steps"):
        _fit_steps(synth_root, tmp_path, max_epochs=-1, max_time="00:00:01:00")
    assert not list(tmp_path.glob("*.ckpt"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    for bound in (["--trainer.max_epochs", "-1"],
                  ["--trainer.max_epochs", "null", "--trainer.max_time", "00:00:10:00"]):
        with pytest.raises(SystemExit) as exc:
            main(["fit", *tiny(synth_root), *bound])
        assert "set trainer.max_epochs or trainer.max_steps" in str(exc.value.code)
    assert not (tmp_path / "runs").exists()  # refused while parsing: no run folder
