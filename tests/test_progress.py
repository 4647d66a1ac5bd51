"""Plain progress lines when stdout is not a terminal (issue 20, item 8): synth, detect, cam,
fit / validate / test print `... k/N ... img/s ... eta ...` lines off a terminal; on a
terminal nothing changes, and trainer.enable_progress_bar false is still silence."""

from __future__ import annotations

import csv
import io
import re
import sys
from pathlib import Path

import pytest

from yolov3.commands.cli import main
from yolov3.progress import PROGRESS_ENV, ProgressLines, counting, format_duration, is_terminal, progress_every

ROOT = Path(__file__).parent.parent
DEMO = ROOT / "configs" / "demo.yaml"


class FakeTTY(io.StringIO):
    """A stdout that says it is a terminal (what a pseudo-terminal's isatty answers)."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_durations_read_as_a_person_would_write_them():
    assert [format_duration(s) for s in (0, 0.4, 45, 59.6, 60, 192, 3599, 3600, 7500, 86400 + 4 * 3600)] == \
        ["0s", "0s", "45s", "1m00s", "1m00s", "3m12s", "59m59s", "1h00m", "2h05m", "1d04h"]
    assert format_duration(float("inf")) == "?"


def test_the_interval_comes_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_every() == 30.0
    monkeypatch.setenv(PROGRESS_ENV, "2.5")
    assert progress_every() == 2.5 and progress_every(0) == 0.0
    monkeypatch.setenv(PROGRESS_ENV, "soon")
    with pytest.raises(ValueError, match=r"\$YOLOV3_PROGRESS_EVERY='soon' is not a number of seconds"):
        progress_every()
    with pytest.raises(ValueError, match="--progress_every must be a number of seconds >= 0"):
        progress_every(-1, "--progress_every")


def test_a_terminal_is_told_from_a_file_or_pipe(tmp_path):
    assert is_terminal(FakeTTY()) and not is_terminal(io.StringIO())
    with open(tmp_path / "log.txt", "w") as f:
        assert not is_terminal(f)
    f = open(tmp_path / "log.txt", "w")
    f.close()
    assert not is_terminal(f)  # a closed file: no terminal, no error


def test_lines_come_every_interval_with_rate_and_eta():
    """100 images at one a second, a line every 10 s: rate 1.0 img/s, eta = the images left in seconds."""
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines("synth", 100, every=10, stream=out, clock=clock)
    for _ in range(100):
        clock.now += 1.0
        lines.advance()
    lines.finish()
    printed = out.getvalue().splitlines()
    assert len(printed) == 10
    assert printed[0] == "synth 10/100 images (10%) 1.0 img/s eta 1m30s"
    assert printed[3] == "synth 40/100 images (40%) 1.0 img/s eta 1m00s"
    assert printed[-1] == "synth 100/100 images (100%) 1.0 img/s in 1m40s"


def test_a_short_job_prints_nothing_and_every_zero_prints_each_step():
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines("detecting", 5, every=30, stream=out, clock=clock)
    for _ in range(5):
        clock.now += 2.0
        lines.advance()
    lines.finish()
    assert out.getvalue() == ""  # 10 s of work, no line: the command's own summary follows
    lines = ProgressLines("detecting", 5, every=0, stream=out, clock=clock)
    for n in (2, 2, 1):
        clock.now += 1.0
        lines.advance(n)
    lines.finish()
    assert out.getvalue().splitlines() == ["detecting 2/5 images (40%) 2.0 img/s eta 2s",
                                           "detecting 4/5 images (80%) 2.0 img/s eta 0s",
                                           "detecting 5/5 images (100%) 1.7 img/s in 3s"]


def test_counting_on_a_terminal_prints_no_plain_line():
    tty = FakeTTY()
    with counting("synth", 3, bar=False, every=0, stream=tty) as advance:
        for _ in range(3):
            advance(1)
    assert tty.getvalue() == ""
    pipe = io.StringIO()
    with counting("synth", 3, bar=False, every=0, stream=pipe) as advance:
        for _ in range(3):
            advance(1)
    assert [line.split(" (")[0] for line in pipe.getvalue().splitlines()] == ["synth 1/3 images", "synth 2/3 images",
                                                                              "synth 3/3 images"]


def _plain(text: str, label: str) -> list[str]:
    return re.findall(rf"^{label} (\d+)/(\d+) images \((\d+)%\)", text, re.M)


def test_synth_prints_plain_lines_off_a_terminal(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    main(["synth", "--out", str(tmp_path / "a"), "--train", "4", "--test", "2"])
    out = capsys.readouterr().out
    assert _plain(out, "synth") == [(str(k), "6", str(round(100 * k / 6))) for k in range(1, 7)]
    assert re.search(r"^synth 3/6 images \(50%\) [\d.]+ img/s eta \d+s$", out, re.M)
    assert "wrote 4 training images" in out

    tty = FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    main(["synth", "--out", str(tmp_path / "b"), "--train", "4", "--test", "2"])
    assert not _plain(tty.getvalue(), "synth") and "wrote 4 training images" in tty.getvalue()


def test_synth_with_worker_processes_counts_in_order(tmp_path, monkeypatch, capsys):
    from yolov3.data.synthetic import generate

    monkeypatch.setenv(PROGRESS_ENV, "0")
    generate(tmp_path / "s", 8, 2, workers=2, min_side=64, max_side=96)
    assert [int(k) for k, _, _ in _plain(capsys.readouterr().out, "synth")] == list(range(1, 11))
    generate(tmp_path / "s", 8, 2, workers=1, min_side=64, max_side=96, progress=False)
    assert capsys.readouterr().out == ""


def test_detect_over_a_folder_prints_plain_lines_off_a_terminal(tmp_path, monkeypatch, capsys, tiny_checkpoint,
                                                                shape_images):
    monkeypatch.setenv(PROGRESS_ENV, "0")
    folder = shape_images[0].parent
    main(["detect", str(folder), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "d"), "--batch", "3"])
    out = capsys.readouterr().out
    assert _plain(out, "detecting") == [("3", "4", "75"), ("4", "4", "100")]
    assert re.search(r"^detecting 4/4 images \(100%\) [\d.]+ img/s in \d+s$", out, re.M)

    tty = FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    main(["detect", str(folder), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "e"), "--batch", "3"])
    assert not _plain(tty.getvalue(), "detecting") and "detections in 4 images" in tty.getvalue()


def test_cam_prints_plain_lines_off_a_terminal(tmp_path, monkeypatch, capsys, tiny_checkpoint, shape_images):
    from yolov3.commands.cam import run_cam

    monkeypatch.setenv(PROGRESS_ENV, "0")
    run_cam([str(p) for p in shape_images[:3]], str(tiny_checkpoint), str(tmp_path / "c"), batch_size=2,
            conf=0.99, max_detections=1)
    assert _plain(capsys.readouterr().out, "explaining") == [("2", "3", "67"), ("3", "3", "100")]


def test_the_training_line_counts_the_steps_since_the_last_line():
    """PlainProgressBar on a stand-in trainer and a hand clock: img/s = images / seconds of the
    window, loss = mean of its finite step losses, eta = steps left x seconds per step so far."""
    import torch
    from types import SimpleNamespace

    from yolov3.train_progress import PlainProgressBar, batch_images

    clock, out = Clock(), io.StringIO()
    bar = PlainProgressBar(every=10, stream=out, clock=clock)
    trainer = SimpleNamespace(global_step=0, estimated_stepping_batches=1000, num_training_batches=100,
                              max_epochs=10, current_epoch=0)
    bar.on_train_start(trainer, None)
    assert out.getvalue() == ("fit: 10 epochs, 1000 steps, 100 batches an epoch; a progress line every 10s and at "
                              "each epoch's end (stdout is not a terminal, so no progress bar)\n")
    losses = [4.0, 2.0, float("nan"), 3.0, 6.0]
    for step, loss in enumerate(losses, 1):  # 3 s a step, 8 images a step
        clock.now += 3.0
        trainer.global_step = step
        bar.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, {"images": torch.zeros(8, 3, 4, 4)}, step)
    lines = out.getvalue().splitlines()[1:]
    # the 4th step is 12 s after the start: the first line, over steps 1-4 (32 images in 12 s)
    assert lines == [f"epoch 1/10 step 4/1000 (0%) {32 / 12:.1f} img/s loss {(4 + 2 + 3) / 3:.3f} (1 non-finite) "
                     f"eta {format_duration(996 * 3.0)}"]
    trainer.current_epoch, trainer.global_step = 0, 5
    bar.on_train_epoch_end(trainer, None)  # the rest of the epoch: step 5 alone
    assert out.getvalue().splitlines()[-1] == f"epoch 1/10 step 5/1000 (0%) {8 / 3:.1f} img/s loss 6.000 eta 49m45s"
    bar.on_train_epoch_end(trainer, None)  # nothing new since: no line
    assert len(out.getvalue().splitlines()) == 3
    assert [batch_images(b) for b in ({"images": torch.zeros(5, 3)}, torch.zeros(2, 1), [torch.zeros(3)], "x")] == \
        [5, 2, 3, None]


# --- the trainer (LightningCLI): which progress bar, and the lines of a real fit / validate / test

def _tiny(root: Path, *extra: str) -> list[str]:
    """demo.yaml cut down to a few CPU steps at 64 px on the session's synthetic set (24 + 8 images)."""
    return ["--config", str(DEMO), "--data.root", str(root), "--data.image_size", "64", "--data.train_sizes", "[64]",
            "--data.batch_size", "4", "--data.val_fraction", "0.25", "--data.cache_images", "false",
            "--model.width", "0.0625", "--trainer.log_every_n_steps", "1", *extra]


def _bar(cli):
    return type(cli.trainer.progress_bar_callback).__name__ if cli.trainer.progress_bar_callback else None


def test_the_trainer_bar_off_and_on_a_terminal(synth_root, tmp_path, monkeypatch):
    """Off a terminal: PlainProgressBar in place of RichProgressBar; on one: RichProgressBar as
    before; enable_progress_bar false: no bar at all; a bar the config names: kept."""
    from yolov3.commands.lightning_cli import load_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert _bar(load_cli(str(DEMO), _tiny(synth_root)[2:])) == "PlainProgressBar"
    cli = load_cli(str(DEMO), _tiny(synth_root, "--progress_every", "7")[2:])
    assert cli.trainer.progress_bar_callback.every == 7
    assert _bar(load_cli(str(DEMO), _tiny(synth_root, "--trainer.enable_progress_bar", "false")[2:])) is None
    own = _tiny(synth_root, "--trainer.callbacks+=lightning.pytorch.callbacks.TQDMProgressBar")
    assert _bar(load_cli(str(DEMO), own[2:])) == "TQDMProgressBar"
    with pytest.raises(SystemExit, match="--progress_every must be a number of seconds >= 0"):
        load_cli(str(DEMO), _tiny(synth_root, "--progress_every", "-5")[2:])
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    assert _bar(load_cli(str(DEMO), _tiny(synth_root)[2:])) == "RichProgressBar"


@pytest.mark.slow
def test_fit_validate_and_test_print_plain_lines(synth_root, tmp_path, monkeypatch, capsys):
    """A fit of 2 epochs x 4 steps (18 training images, full batches of 4) with a line for every step;
    each line's loss is the step's train/loss that metrics.csv records."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    monkeypatch.setenv(PROGRESS_ENV, "0")
    args = _tiny(synth_root, "--trainer.max_epochs", "2")
    main(["fit", *args])
    out = capsys.readouterr().out
    assert "fit: 2 epochs, 8 steps, 4 batches an epoch; a progress line every step" in out
    steps = re.findall(r"^epoch (\d)/2 step (\d+)/8 \((\d+)%\) ([\d.]+) img/s loss ([\d.]+)(?: eta (\S+))?$", out, re.M)
    assert [(int(e), int(s), int(p)) for e, s, p, *_ in steps] == \
        [(1 + (s - 1) // 4, s, round(100 * s / 8)) for s in range(1, 9)]
    assert all(float(r) > 0 for _, _, _, r, _, _ in steps)
    assert [bool(eta) for *_, eta in steps] == [True] * 7 + [False]  # no eta on the last step
    logged = {}
    with open(tmp_path / "runs" / "demo" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("train/loss"):
                logged[int(row["step"]) + 1] = float(row["train/loss"])
    assert len(logged) == 8
    for _, s, _, _, loss, _ in steps:
        assert abs(float(loss) - logged[int(s)]) <= 0.0006, s
    # validation: 6 images in batches of 4
    assert re.findall(r"^validating (\d)/6 images \((\d+)%\)", out, re.M) == [("4", "67"), ("6", "100")] * 2
    assert re.search(r"^validation after epoch 1/2: 6 images in \d+s, val/loss [\d.]+ ", out, re.M)
    best = tmp_path / "runs" / "demo" / "checkpoints" / "best.ckpt"
    assert f"best checkpoint {best.relative_to(tmp_path)}" in out

    main(["test", *args, "--ckpt_path", str(best)])
    out = capsys.readouterr().out
    assert re.findall(r"^testing (\d)/8 images \((\d+)%\) [\d.]+ img/s", out, re.M) == [("4", "50"), ("8", "100")]
    assert re.search(r"^tested 8 images in \d+s$", out, re.M)
    main(["validate", *args, "--ckpt_path", str(best)])
    assert re.search(r"^validated 6 images in \d+s: val/loss [\d.]+ val/class_acc", capsys.readouterr().out, re.M)


@pytest.mark.slow
def test_a_fit_on_a_terminal_or_without_a_bar_prints_no_plain_line(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    args = _tiny(synth_root, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                 "--trainer.limit_val_batches", "1", "--progress_every", "0")
    main(["fit", *args, "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "step 1/2" not in out and "validat" not in out and "run folder" in out
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stdout", tty)
    main(["fit", *args])
    assert not re.search(r"^epoch \d+/1 step", tty.getvalue(), re.M) and "fit: " not in tty.getvalue()
