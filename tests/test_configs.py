"""`yolov3 fit` for a few steps on every config in configs/, on CPU with tiny overrides; what each config resolves to."""

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
