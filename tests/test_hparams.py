"""YoloLitModule's grouped settings: what checkpoints store, and how checkpoints written with
the flat names (before the grouping) still load (yolov3.hparams)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from yolov3.commands.cli import main
from yolov3.detector import Detector
from yolov3.hparams import LEGACY_NAMES, EvalConfig, LossConfig, OptimConfig, grouped_hparams
from yolov3.lit import YoloLitModule
from yolov3.loss import LossWeights

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"

# The hyper-parameters as the flat YoloLitModule wrote them through LightningCLI, with values
# other than the defaults where the mapping could hide a mistake.
FLAT = {"width": 0.0625, "anchors": None, "max_lr": 0.01, "weight_decay": 0.0002, "pct_start": 0.2,
        "div_factor": 50.0, "final_div_factor": 20.0, "three_phase": True, "anneal_strategy": "cos",
        "loss_weights": {"box": 5.0, "obj": 2.0, "noobj": 3.0, "cls": 4.0}, "ignore_threshold": 0.6,
        "conf_threshold": 0.1, "channels_last": False, "map_every_n_epochs": 3, "eval_conf_threshold": 0.02,
        "eval_iou_threshold": 0.6, "eval_max_detections": 7, "eval_max_candidates": 500, "score_mode": "obj",
        "objectness_loss": "bce_iou", "objectness_prior": 0.01, "max_nonfinite_steps": 4, "num_classes": 20,
        "_instantiator": "lightning.pytorch.cli.instantiate_module"}
GROUPED = {
    "optim": OptimConfig(max_lr=0.01, weight_decay=0.0002, pct_start=0.2, div_factor=50.0, final_div_factor=20.0,
                         three_phase=True, anneal_strategy="cos"),
    "loss": LossConfig(weights=LossWeights(5.0, 2.0, 3.0, 4.0), ignore_threshold=0.6, objectness="bce_iou",
                       objectness_prior=0.01),
    "evaluation": EvalConfig(accuracy_threshold=0.1, map_every_n_epochs=3, conf_threshold=0.02, iou_threshold=0.6,
                             max_detections=7, max_candidates=500, score_mode="obj"),
}


def settings(module: YoloLitModule) -> dict:
    return {"optim": module.optim, "loss": module.loss, "evaluation": module.evaluation}


def flat_checkpoint(path: Path) -> Path:
    """A checkpoint as the flat module saved it: the weights of a width-0.0625 model."""
    module = YoloLitModule(width=0.0625, channels_last=False)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": FLAT, "pytorch-lightning_version": "2.6.6",
                "global_step": 0, "epoch": 0}, path)
    return path


def test_every_flat_name_maps_into_a_group_field():
    groups = grouped_hparams(FLAT)
    assert not set(LEGACY_NAMES) & set(groups)
    assert {k: groups[k] for k in ("width", "num_classes", "channels_last", "max_nonfinite_steps")} == {
        "width": 0.0625, "num_classes": 20, "channels_last": False, "max_nonfinite_steps": 4}
    built = YoloLitModule(**{k: v for k, v in groups.items() if not k.startswith("_")})
    assert settings(built) == GROUPED
    # None meant "the default" in the flat signature; grouped names pass through as they are
    assert grouped_hparams({"loss_weights": None, "objectness_prior": None}) == {}
    assert grouped_hparams({"optim": {"max_lr": 0.1}}) == {"optim": {"max_lr": 0.1}}


def test_hyperparameters_are_plain_and_round_trip_with_weights_only(tmp_path):
    module = YoloLitModule(width=0.0625, **GROUPED)
    plain = (dict, list, str, int, float, bool, type(None))

    def walk(value):
        assert isinstance(value, plain), type(value)
        for v in value.values() if isinstance(value, dict) else value if isinstance(value, list) else ():
            walk(v)

    walk(dict(module.hparams))
    assert module.hparams["evaluation"]["score_mode"] == "obj" and module.hparams["loss"]["weights"]["box"] == 5.0
    path = tmp_path / "new.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": "2.6.6"}, path)
    assert torch.load(path, weights_only=True)["hyper_parameters"] == dict(module.hparams)
    assert settings(YoloLitModule.load_from_checkpoint(path)) == GROUPED


def test_a_flat_checkpoint_loads_with_its_settings(tmp_path):
    path = flat_checkpoint(tmp_path / "flat.ckpt")
    module = YoloLitModule.load_from_checkpoint(path)
    assert settings(module) == GROUPED
    assert module.hparams["max_nonfinite_steps"] == 4 and "max_lr" not in module.hparams
    # an argument given to load_from_checkpoint still wins over the checkpoint's
    assert YoloLitModule.load_from_checkpoint(path, evaluation={"score_mode": "obj_cls"}).evaluation == EvalConfig()
    detector = Detector.load(path)
    assert (detector.score_mode, detector.iou_threshold, detector.max_detections) == ("obj", 0.6, 7)


@pytest.mark.slow  # a Lightning run
def test_the_cli_reads_a_flat_checkpoint_given_as_ckpt_path(synth_root, tmp_path, monkeypatch):
    """`yolov3 validate --ckpt_path` takes the model's settings from the checkpoint: the flat
    names land in their groups (the config saved in the validate folder shows them)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    ckpt = tmp_path / "runs" / "old" / "checkpoints"
    ckpt.mkdir(parents=True)
    flat_checkpoint(ckpt / "last.ckpt")
    # demo.yaml's width is 0.125, the checkpoint's 0.0625: the width has to be given (or left out)
    main(["validate", "--config", str(DEMO), "--data.root", str(synth_root), "--data.val_fraction", "0.25",
          "--data.image_size", "64", "--data.batch_size", "4", "--data.cache_images", "false",
          "--model.width", "0.0625", "--trainer.limit_val_batches", "1", "--ckpt_path", str(ckpt / "last.ckpt")])
    saved = yaml.safe_load((tmp_path / "runs" / "old" / "validate" / "version_0" / "config.yaml").read_text())
    assert saved["model"]["optim"]["max_lr"] == pytest.approx(0.01)
    assert saved["model"]["loss"]["weights"] == {"box": 5.0, "obj": 2.0, "noobj": 3.0, "cls": 4.0}
    assert saved["model"]["evaluation"]["iou_threshold"] == pytest.approx(0.6)
