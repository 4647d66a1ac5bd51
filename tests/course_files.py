"""Files in the course's checkpoint formats, written by the tests from a model of ours (the
course's YOLOv3 has the same state_dict names): what its save_checkpoint writes, and what
Lightning writes for its LitYOLOv3, with hyper-parameters holding objects of a class the
loader cannot import (the class's module is deleted before anything is read)."""

from __future__ import annotations

import copy
import importlib
import shutil
import sys
import textwrap
from pathlib import Path

import torch

from yolov3.model import YOLOv3

# The course's scaled anchors: its ANCHORS times S = (13, 26, 52) (416 / stride).
COURSE_SCALED = torch.tensor([[[0.28, 0.22], [0.38, 0.48], [0.9, 0.78]],
                              [[0.07, 0.15], [0.15, 0.11], [0.14, 0.29]],
                              [[0.02, 0.03], [0.04, 0.07], [0.08, 0.06]]]) * torch.tensor([13.0, 26, 52]).view(3, 1, 1)

COURSE = "YOLO_V3"  # the course's package name; its loss lives in YOLO_V3.yolo_v3_utils.loss
LOSS = f"{COURSE}.yolo_v3_utils.loss"

COURSE_LOSS_SOURCE = '''
from torch import nn


class YoloLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.mse = nn.MSELoss()
        self.bce = nn.BCEWithLogitsLoss()
        self.entropy = nn.CrossEntropyLoss()
        self.sigmoid = nn.Sigmoid()
        self.lambda_class, self.lambda_noobj, self.lambda_obj, self.lambda_box = 1, 10, 1, 10


class OldOneCycle:
    """As torch < 2.2's OneCycleLR: a bound method among its attributes (pickled as getattr)."""

    def __init__(self):
        self.total_steps = 10
        self.anneal_func = self._annealing_cos

    def _annealing_cos(self, start, end, pct):
        return end


class Holder:
    """Any object of the course's code, carrying what a test gives it."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)
'''


class CourseCode:
    """The course's package, importable while a test makes its objects; remove() takes it out of
    sys.modules and off the disk, so a loader that tried to import it would fail."""

    def __init__(self, root: Path) -> None:
        self.root = root
        package = root / COURSE / "yolo_v3_utils"
        package.mkdir(parents=True)
        (root / COURSE / "__init__.py").write_text("")
        (package / "__init__.py").write_text("")
        (package / "loss.py").write_text(textwrap.dedent(COURSE_LOSS_SOURCE))
        sys.path.insert(0, str(root))
        self.loss = importlib.import_module(LOSS)

    def remove(self) -> None:
        for name in [m for m in sys.modules if m == COURSE or m.startswith(COURSE + ".")]:
            del sys.modules[name]
        if str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        sys.path_importer_cache.pop(str(self.root), None)
        shutil.rmtree(self.root / COURSE, ignore_errors=True)
        importlib.invalidate_caches()


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
    code = CourseCode(scratch)
    try:
        loss = code.loss.YoloLoss()
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
        code.remove()
    return path
