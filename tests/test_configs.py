"""`yolov3 fit` for a few steps on every config in configs/, on CPU with tiny overrides."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

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
