"""`yolov3 fit` for a few steps on every config in configs/, on CPU with tiny overrides; what each config resolves to;
what a run takes from --ckpt_path and what from its config and command line."""

import json
import logging
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from yolov3.commands.cli import main

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_fit_a_few_steps(config, synth_root, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # configs write runs/<name>/ relative to the working directory
    monkeypatch.setattr(sys, "argv", ["yolov3"])  # LightningCLI compares args with sys.argv
    caplog.set_level(logging.WARNING, logger="yolov3")
    main([
        "fit", "--config", str(config),
        "--data.root", str(synth_root), "--data.train_split", "train.csv", "--data.test_split", "test.csv",
        "--data.image_size", "64", "--data.batch_size", "4", "--data.num_workers", "0", "--data.val_fraction", "0.25",
        "--model.width", "0.0625", "--data.cache_dir", str(tmp_path / "cache"),  # voc.yaml caches on disk
        "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", "--trainer.log_every_n_steps", "1",
        "--trainer.check_val_every_n_epoch", "1",
    ])
    ckpts = list(tmp_path.glob("runs/**/checkpoints/last.ckpt"))  # voc: runs/voc/version_0/...
    assert len(ckpts) == 1
    metrics = (ckpts[0].parent.parent / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/class_acc" in metrics
    if "cache_images: disk" in config.read_text():
        assert list((tmp_path / "cache").glob("images-608-*/pixels-*.u8"))  # shrunk to the largest train size
    if "16-mixed" in config.read_text():
        assert "bf16-mixed instead" in caplog.text


def test_summary_command(capsys):
    main(["summary", "--width", "0.125", "--size", "320", "--depth", "1"])
    out = capsys.readouterr().out
    assert "Total params: 984,531" in out and "mult-adds" in out


def test_synth_command(tmp_path, capsys):
    main(["synth", "--out", str(tmp_path / "s"), "--train", "3", "--test", "2", "--seed", "1"])
    assert len(list((tmp_path / "s" / "images").glob("*.jpg"))) == 5


def test_show_batch_command(synth_root, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    out = tmp_path / "pics" / "batch.png"
    main(["show-batch", "--config", str(CONFIGS[0].parent / "demo.yaml"), "--out", str(out), "--batches", "2",
          "--cols", "4", "--cell", "100", "--data.root", str(synth_root), "--data.val_fraction", "0.25",
          "--data.train_sizes", "[64, 96]", "--data.batch_size", "4"])
    printed = capsys.readouterr().out
    assert "wrote 8 train samples from 2 batches" in printed
    with Image.open(out) as im:
        assert im.size == (400, 200)
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 10  # pictures were drawn, not an empty canvas


def test_commands_without_a_config_reject_config_options():
    with pytest.raises(SystemExit):
        main(["summary", "--data.root", "x"])


# The trainer blocks of the configs before the shared part moved to
# src/yolov3/commands/defaults.yaml and the run got its one `run:` name: what the configs must
# still resolve to.
BEFORE = {
    "demo": """
        accelerator: cpu
        devices: 1
        precision: 32-true
        max_epochs: 20
        log_every_n_steps: 20
        num_sanity_val_steps: 0
        check_val_every_n_epoch: 1
        enable_model_summary: false
        default_root_dir: runs/demo
        logger:
          - class_path: yolov3.run_dirs.RunCSVLogger
            init_args: {save_dir: runs, name: demo, version: ""}
          - class_path: lightning.pytorch.loggers.TensorBoardLogger
            init_args: {save_dir: runs, name: demo, version: ""}
        callbacks:
          - class_path: lightning.pytorch.callbacks.ModelCheckpoint
            init_args: {dirpath: runs/demo/checkpoints, filename: best, monitor: val/loss, mode: min, save_last: true,
                        enable_version_counter: false}
          - class_path: lightning.pytorch.callbacks.LearningRateMonitor
            init_args: {logging_interval: step}
    """,
    "voc": """
        accelerator: auto
        devices: 1
        precision: 16-mixed
        max_epochs: 40
        log_every_n_steps: 50
        benchmark: true
        default_root_dir: runs/voc
        logger:
          - class_path: yolov3.run_dirs.RunCSVLogger
            init_args: {save_dir: runs, name: voc}
          - class_path: lightning.pytorch.loggers.TensorBoardLogger
            init_args: {save_dir: runs, name: voc}
        callbacks:
          - class_path: lightning.pytorch.callbacks.ModelCheckpoint
            init_args: {filename: best, monitor: val/loss, mode: min, save_last: true, enable_version_counter: false}
          - class_path: lightning.pytorch.callbacks.ModelCheckpoint
            init_args: {filename: last, every_n_train_steps: 1000, enable_version_counter: false}
          - class_path: lightning.pytorch.callbacks.LearningRateMonitor
            init_args: {logging_interval: step}
    """,
    "real_photos": """
        accelerator: cpu
        devices: 1
        precision: 32-true
        max_epochs: 120
        max_time: "00:00:10:00"
        log_every_n_steps: 7
        num_sanity_val_steps: 0
        check_val_every_n_epoch: 5
        enable_model_summary: false
        default_root_dir: runs/real_photos
        logger:
          - class_path: lightning.pytorch.loggers.CSVLogger
            init_args: {save_dir: runs, name: real_photos, version: ""}
        callbacks:
          - class_path: lightning.pytorch.callbacks.ModelCheckpoint
            init_args: {dirpath: runs/real_photos/checkpoints, filename: last, save_top_k: 0, save_last: true,
                        enable_version_counter: false}
    """,
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_print_config_resolves_the_trainer_as_before(name, capsys, monkeypatch):
    """`yolov3 fit --config configs/<name>.yaml --print_config` shows every trainer, logger and
    callback value the config used to spell out. The one change: a checkpoint folder that was
    spelled out (dirpath) is left to Lightning, which puts it in the first logger's folder:
    <save_dir>/<name>/<version>/checkpoints, the same path."""
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(CONFIGS[0].parent / f"{name}.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    before = yaml.safe_load(textwrap.dedent(BEFORE[name]))
    for key, value in before.items():
        if key not in ("logger", "callbacks"):
            assert trainer[key] == value, key
    assert [lg["class_path"] for lg in trainer["logger"]] == [lg["class_path"] for lg in before["logger"]]
    for now, then in zip(trainer["logger"], before["logger"]):
        assert {k: now["init_args"][k] for k in ("save_dir", "name", "version")} == {"version": None, **then["init_args"]}
    assert [cb["class_path"] for cb in trainer["callbacks"]] == [cb["class_path"] for cb in before["callbacks"]]
    first = trainer["logger"][0]["init_args"]
    for now, then in zip(trainer["callbacks"], before["callbacks"]):
        then = dict(then["init_args"])
        if "dirpath" in then:
            assert now["init_args"]["dirpath"] is None
            assert os.path.join(first["save_dir"], first["name"], first["version"], "checkpoints") == then.pop("dirpath")
        assert {k: now["init_args"][k] for k in then} == then


# --- what a run takes from --ckpt_path, and what from its config and command line (commands/ckpt_settings.py) ---

DEMO = CONFIGS[0].parent / "demo.yaml"


def _checkpoint(path: Path, data_record: dict | None = None, flat: dict | None = None, **module_args) -> Path:
    """A randomly initialised width-0.0625 module saved as Lightning would (no training state)."""
    import lightning
    import torch

    from yolov3.constants import DATA_KEY
    from yolov3.lit import YoloLitModule

    torch.manual_seed(0)
    module = YoloLitModule(width=0.0625, **module_args)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": flat or dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__}
    if data_record:
        ckpt[DATA_KEY] = data_record
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def _print_config(argv: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--print_config"])
    assert exc.value.code in (0, None), exc.value.code
    return yaml.safe_load(capsys.readouterr().out)


def _data_args(synth_root) -> list[str]:
    return ["--data.root", str(synth_root), "--data.image_size", "64", "--data.batch_size", "4",
            "--data.num_workers", "0", "--data.cache_images", "false", "--data.val_fraction", "0.25",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]


def test_test_with_ckpt_path_runs_with_the_command_lines_settings(synth_root, tmp_path, monkeypatch, caplog):
    """The issue: `test --ckpt_path C --model.eval_conf_threshold 1.0` counted the checkpoint's
    detections (LightningCLI merged the checkpoint's hyper-parameters over the command line).
    Here the checkpoint says conf_threshold 1.0 (no detection passes); the command line says
    0, 7 per image, objectness scores, the course's anchors: 8 test images x 7 detections."""
    from yolov3.anchors import anchor_set_name
    from yolov3.commands.lightning_cli import YoloCLI

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    ckpt = _checkpoint(tmp_path / "runs" / "old" / "checkpoints" / "last.ckpt",
                       evaluation={"conf_threshold": 1.0, "iou_threshold": 0.3}, loss={"ignore_threshold": 0.6})
    with caplog.at_level("INFO", logger="yolov3"):
        cli = YoloCLI(args=["test", "--config", str(DEMO), *_data_args(synth_root), "--model.width", "0.0625",
                            "--ckpt_path", str(ckpt), "--model.evaluation.conf_threshold", "0.0",
                            "--model.evaluation.max_detections", "7", "--model.evaluation.score_mode", "obj",
                            "--model.anchors", "course"])
    evaluation = cli.model.evaluation
    assert (evaluation.conf_threshold, evaluation.max_detections, evaluation.score_mode) == (0.0, 7, "obj")
    assert evaluation.iou_threshold == 0.3 and cli.model.loss.ignore_threshold == 0.6  # not given: the checkpoint's
    assert anchor_set_name(cli.model.anchors.cpu()) == "course"  # not the state_dict's buffer
    report = json.loads((tmp_path / "runs" / "old" / "test" / "version_0" / "results.json").read_text())
    assert sum(row["detections"] for row in report["per_class"]) == 8 * 7
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("settings ")]
    assert len(line) == 1, caplog.text
    assert "model.evaluation.conf_threshold 0 (checkpoint 1)" in line[0]
    assert "model.evaluation.iou_threshold 0.3 (default 0.45)" in line[0]
    assert "trained with the COCO anchors" in caplog.text


def test_print_config_shows_what_a_ckpt_path_run_uses(synth_root, tmp_path, monkeypatch, capsys):
    """Field by field: a config file's value and the command line's win over the checkpoint's,
    the checkpoint's win over the defaults, nested groups included; a checkpoint with the old
    flat names likewise. --print_config prints these (it printed the config before the merge)."""
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    ckpt = _checkpoint(tmp_path / "c.ckpt", evaluation={"max_detections": 50, "iou_threshold": 0.3},
                       optim={"max_lr": 0.02, "pct_start": 0.3}, loss={"weights": {"box": 2.0}})
    config = tmp_path / "mine.yaml"
    config.write_text("model:\n  evaluation:\n    max_detections: 9\n  loss:\n    weights:\n      obj: 3.0\n")
    for command in ("test", "validate", "predict", "fit"):
        shown = _print_config([command, "--config", str(DEMO), "--config", str(config), *_data_args(synth_root),
                               "--model.width", "0.0625", "--ckpt_path", str(ckpt),
                               "--model.optim.pct_start", "0.2"], capsys)["model"]
        assert shown["evaluation"]["max_detections"] == 9  # the config file's
        assert shown["evaluation"]["iou_threshold"] == 0.3  # the checkpoint's
        assert shown["optim"]["pct_start"] == 0.2  # the command line's
        assert shown["optim"]["max_lr"] == 0.01  # demo.yaml's
        assert shown["loss"]["weights"] == {"box": 2.0, "obj": 3.0, "noobj": 10.0, "cls": 1.0}, command
        assert shown["width"] == 0.0625

    from test_hparams import FLAT

    old = _checkpoint(tmp_path / "flat.ckpt", flat=FLAT)
    shown = _print_config(["validate", "--config", str(DEMO), *_data_args(synth_root), "--model.width", "0.0625",
                           "--ckpt_path", str(old), "--model.evaluation.max_detections", "3"], capsys)["model"]
    assert shown["evaluation"]["max_detections"] == 3 and shown["evaluation"]["iou_threshold"] == 0.6
    assert shown["evaluation"]["score_mode"] == "obj" and shown["channels_last"] is False


def test_weights_the_checkpoint_needs_are_not_overridden(synth_root, tmp_path, monkeypatch, capsys):
    """Width and class count come from the checkpoint: a config or command line that sets
    other values stops before anything runs (no run folder), naming both values."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    ckpt = _checkpoint(tmp_path / "ckpts" / "c.ckpt")
    cases = [
        (["--ckpt_path", str(ckpt)], ["model.width 0.125", "0.0625"]),  # demo.yaml's width
        (["--ckpt_path", str(ckpt), "--model.width", "0.0625", "--data.class_names", "[a, b, c]"],
         ["data.class_names", "lists 3 classes", "has 20"]),
        (["--weights", str(ckpt)], ["model.width 0.125", "0.0625"]),
    ]
    for extra, words in cases:
        with pytest.raises(SystemExit) as exc:
            main(["test", "--config", str(DEMO), *_data_args(synth_root), *extra])
        message = str(exc.value.code)
        assert all(w in message for w in words) and "\n" not in message, message
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ckpts" / "test").exists()

    names = ["disc", "square", "triangle"]
    three = _checkpoint(tmp_path / "three.ckpt", {"class_names": names, "image_size": 64}, num_classes=3)
    shown = _print_config(["test", "--config", str(DEMO), *_data_args(synth_root), "--model.width", "0.0625",
                           "--ckpt_path", str(three)], capsys)
    assert shown["data"]["class_names"] == names  # recorded in the checkpoint, not the VOC default
    unnamed = _checkpoint(tmp_path / "unnamed.ckpt", num_classes=3)
    with pytest.raises(SystemExit) as exc:
        main(["test", "--config", str(DEMO), *_data_args(synth_root), "--model.width", "0.0625",
              "--ckpt_path", str(unnamed)])
    assert "has 3 classes and the checkpoint records no class names" in str(exc.value.code)


def test_old_flat_setting_names_are_refused_with_their_new_name(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    old = tmp_path / "old.yaml"
    old.write_text("model:\n  max_lr: 0.01\n")
    cases = [(["--model.eval_conf_threshold", "1.0"], "--model.evaluation.conf_threshold"),
             (["--model.score_mode=obj"], "--model.evaluation.score_mode"),
             (["--model.conf_threshold", "0.1"], "--model.evaluation.accuracy_threshold"),
             (["--config", str(old)], "old.yaml: model.max_lr: the model's settings are grouped now; this one is "
                                      "model.optim.max_lr")]
    for extra, words in cases:
        with pytest.raises(SystemExit) as exc:
            main(["test", "--config", str(DEMO), *extra])
        assert words in str(exc.value.code), exc.value.code


def test_fit_extended_with_ckpt_path_and_a_new_max_lr(synth_root, tmp_path, monkeypatch, caplog):
    """The issue's everyday 'train more epochs': fit, then the same with more epochs, a new
    max_lr and --ckpt_path <last>. It died with 'Tried to step 3 times'; the new max_lr was
    dropped twice (the checkpoint's hyper-parameters, then its optimiser and schedule state)."""
    from yolov3.checkpoint_io import load_checkpoint

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    args = ["fit", "--config", str(DEMO), *_data_args(synth_root), "--model.width", "0.0625",
            "--data.train_sizes", "[64]", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    main([*args, "--trainer.max_epochs", "1"])
    last = tmp_path / "runs" / "demo" / "checkpoints" / "last.ckpt"
    assert load_checkpoint(last)["global_step"] == 2
    with caplog.at_level("INFO", logger="yolov3"):
        main([*args, "--trainer.max_epochs", "3", "--ckpt_path", str(last), "--model.optim.max_lr", "0.004"])
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 6 and ckpt["hyper_parameters"]["optim"]["max_lr"] == 0.004
    assert ckpt["lr_schedulers"][0]["total_steps"] == 6 and ckpt["lr_schedulers"][0]["last_epoch"] == 6
    assert ckpt["optimizer_states"][0]["param_groups"][0]["max_lr"] == 0.004
    assert "model.optim.max_lr 0.004 (checkpoint 0.01)" in caplog.text
    assert "total_steps 2 -> 6; max_lr 0.01 -> 0.004" in caplog.text and "rebuilt for 6 steps at step 2" in caplog.text
