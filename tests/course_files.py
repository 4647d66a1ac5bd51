"""Files in the course's checkpoint formats, written by the tests from a model of ours (the
course's YOLOv3 has the same state_dict names): what its save_checkpoint writes, and what
Lightning writes for its LitYOLOv3, with hyper-parameters holding objects of a class the
loader cannot import (the class's module is deleted before anything is read)."""

from __future__ import annotations

import copy
import importlib
import sys
import textwrap
from pathlib import Path

import torch

from yolov3.model import YOLOv3

# The course's scaled anchors: its ANCHORS times S = (13, 26, 52) (416 / stride).
COURSE_SCALED = torch.tensor([[[0.28, 0.22], [0.38, 0.48], [0.9, 0.78]],
                              [[0.07, 0.15], [0.15, 0.11], [0.14, 0.29]],
                              [[0.02, 0.03], [0.04, 0.07], [0.08, 0.06]]]) * torch.tensor([13.0, 26.0, 52.0]).view(3, 1, 1)

LOSS_MODULE = "course_yolo_v3_utils_loss"


def _adam_state(model: YOLOv3) -> dict:
    """An Adam state_dict after one step, as the course's training saves it (the step is
    taken on a copy: the model written keeps its weights)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return optimizer.state_dict()


def write_save_checkpoint(model: YOLOv3, path: Path) -> Path:
    """The course's utils.save_checkpoint: {"state_dict": <bare keys>, "optimizer": ...}."""
    torch.save({"state_dict": model.state_dict(), "optimizer": _adam_state(model)}, path)
    return path


def write_lightning(model: YOLOv3, path: Path, scratch: Path) -> Path:
    """The layout of trainer.save_checkpoint for the course's LitYOLOv3: "model."-prefixed
    weights, and hyper-parameters holding the course's loss object (a class from a module
    that is gone by the time the file is read), the scaled anchors, the optimiser class and
    a scheduler dict with a OneCycleLR."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / f"{LOSS_MODULE}.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        class YoloLoss(nn.Module):
            def __init__(self):
                super().__init__()
                self.mse = nn.MSELoss()
                self.bce = nn.BCEWithLogitsLoss()
                self.entropy = nn.CrossEntropyLoss()
                self.sigmoid = nn.Sigmoid()
                self.lambda_class, self.lambda_noobj, self.lambda_obj, self.lambda_box = 1, 10, 1, 10
        """))
    sys.path.insert(0, str(scratch))
    try:
        loss = importlib.import_module(LOSS_MODULE).YoloLoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=40 * 1035)
        ckpt = {
            "epoch": 39, "global_step": 41400, "pytorch-lightning_version": "2.0.9",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 39}}}},
            "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "logs/",
                                                                "kth_value": torch.tensor(float("inf"))}},
            "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [scheduler.state_dict()],
            "hparams_name": "kwargs",
            "hyper_parameters": {"loss_criterion": loss, "scaled_anchors": COURSE_SCALED.clone(),
                                 "conf_threshold": 0.05, "optimizer": torch.optim.Adam,
                                 "scheduler_dict": {"scheduler": scheduler, "interval": "step"},
                                 "num_classes": model.num_classes, "epochs": 40},
        }
        torch.save(ckpt, path)
    finally:
        sys.path.remove(str(scratch))
        sys.modules.pop(LOSS_MODULE, None)
        (scratch / f"{LOSS_MODULE}.py").unlink()
    return path
