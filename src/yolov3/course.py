"""The course's checkpoint files, recognised from their content and read into this project's
model, with the settings the course decoded them with.

The course (ERA V1 session 13's YOLOv3, github.com/jyanivaddi/dl_hub YOLO_V3) writes:

* save_checkpoint (yolo_v3_utils/utils.py), often named `*.pth.tar`:
  {"state_dict": <the YOLOv3's state_dict, keys "layers.N...">, "optimizer": <Adam's state_dict>}.
  Tensors and plain values only: torch.load(weights_only=True) reads it.
* Lightning's checkpoint of its LitYOLOv3 (PL_model.py; trainer.save_checkpoint):
  "state_dict" with the same keys under "model.", and under "hyper_parameters" the module's
  arguments as objects: the loss (a class of the course's code), the scaled anchors, the
  confidence threshold, the optimiser and the scheduler. weights_only refuses it; it is read
  with stand-ins for those classes (checkpoint_io.load_foreign_checkpoint: no code runs).
* and, from people's notebooks, a bare state_dict (torch.save(model.state_dict())).

The course's model is this project's YOLOv3 to the bit (same layer list, same state_dict
names), so the weights load strictly. None of these files records the anchors the model
was trained with, nor how it scores boxes: a course model gets the course's (COURSE_SETTINGS),
and a caller's value wins (`--anchors`, `--iou`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from yolov3.anchors import anchor_set_name
from yolov3.constants import COURSE_ANCHORS, DATA_KEY

# How the course feeds and decodes its models (config.py): anchors COCO / 416 rounded to two
# decimals, boxes ranked by objectness alone (utils.cells_to_bboxes scores = sigmoid(obj)), NMS at
# IoU 0.45 (NMS_IOU_THRESH), 416 x 416 inputs (IMAGE_SIZE) letterboxed as its test_transforms do
# (black padding, bilinear: yolov3.letterbox.LETTERBOX_STYLES["course"]).
COURSE_SETTINGS = {"anchors": COURSE_ANCHORS, "score_mode": "obj", "iou_threshold": 0.45, "image_size": 416,
                   "letterbox": "course"}
# The grid sizes the course's scaled_anchors were made with (S at IMAGE_SIZE 416).
_COURSE_GRIDS = (13, 26, 52)
_FIRST_CONV = "layers.0.conv.weight"  # (32 * width, 3, 3, 3)


class CourseFormatError(ValueError):
    """A file that looks like a course checkpoint but cannot be one; names the file."""


@dataclass(frozen=True)
class CourseWeights:
    """A course checkpoint's model, read.

    state: the YOLOv3 state_dict (keys "layers.N...", as YOLOv3 names them).
    num_classes, width: the model they fit (the course's is width 1.0).
    kind: what the file was recognised as, in words; notes: what else it says (stand-ins,
        its scaled anchors), each a sentence for the load's message.
    """

    state: dict[str, torch.Tensor]
    num_classes: int
    width: float
    kind: str
    notes: tuple[str, ...] = ()


def is_project_checkpoint(ckpt: dict) -> bool:
    """A checkpoint of this project's training: it records its data settings (DATA_KEY), or
    its module's anchors buffer, or the module's `width` argument (the course's has none)."""
    state = ckpt.get("state_dict")
    hparams = ckpt.get("hyper_parameters")
    return (DATA_KEY in ckpt or (isinstance(state, dict) and "anchors" in state)
            or (isinstance(hparams, dict) and "width" in hparams))


def read_course_checkpoint(ckpt: dict, path: str | Path, stand_ins: tuple[str, ...] = ()) -> CourseWeights | None:
    """`ckpt` (a loaded checkpoint file's dict) as a course checkpoint, or None when it is not
    one (this project's own, or no YOLOv3 in it).

    stand_ins: the classes the file held that were read as inert stand-ins (they are named
    in the notes). Raises CourseFormatError naming the file when the YOLOv3 keys are there
    but their shapes fit no YOLOv3.
    """
    if is_project_checkpoint(ckpt):
        return None
    state = ckpt.get("state_dict")
    if isinstance(state, dict) and _has_model(state, ""):
        kind = "the course's save_checkpoint file (state_dict" + (" + optimizer)" if "optimizer" in ckpt else ")")
        weights = state
    elif isinstance(state, dict) and _has_model(state, "model."):
        kind = "the course's Lightning checkpoint (LitYOLOv3)"
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    elif _has_model(ckpt, ""):
        kind = "a bare YOLOv3 state_dict (the course's layer names)"
        weights = ckpt
    else:
        return None
    weights = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    num_classes, width = model_shape(weights, path)
    notes = []
    if stand_ins:
        notes.append(f"its {len(stand_ins)} pickled objects of other classes ({', '.join(stand_ins)}) were "
                     "read as inert stand-ins: none of their code ran")
    scaled = (ckpt.get("hyper_parameters") or {}).get("scaled_anchors") if isinstance(
        ckpt.get("hyper_parameters"), dict) else None
    if isinstance(scaled, torch.Tensor) and scaled.numel() == 18:
        grids = torch.tensor(_COURSE_GRIDS, dtype=torch.float32).view(3, 1, 1)
        at_416 = scaled.detach().float().cpu().reshape(3, 3, 2) / grids
        if anchor_set_name(at_416) != "course":
            notes.append("its scaled_anchors are not the course's anchors at 416: if it was trained with "
                         "others, pass them with --anchors")
    return CourseWeights(weights, num_classes, width, kind, tuple(notes))


def _has_model(state: dict, prefix: str) -> bool:
    return isinstance(state.get(prefix + _FIRST_CONV), torch.Tensor)


def model_shape(state: dict[str, torch.Tensor], path: str | Path) -> tuple[int, float]:
    """(num_classes, width) of the YOLOv3 whose state_dict this is: the classes from the output
    convolutions (3 anchors x (5 + classes) channels), the width from the widest convolution
    (1024 x width channels; narrower layers are rounded to multiples of 8, model.scale_channels,
    so they cannot tell 0.125 from 0.25). Raises CourseFormatError naming the file."""
    first = state[_FIRST_CONV]
    outputs = sorted(k for k in state if k.endswith("pred.1.conv.bias"))
    if first.ndim != 4 or first.shape[1] != 3 or not outputs:
        raise CourseFormatError(f"{path}: its {_FIRST_CONV} has shape {tuple(first.shape)} and it has "
                                f"{len(outputs)} output convolutions: not a YOLOv3 of the course's layout")
    channels = {int(state[k].shape[0]) for k in outputs}
    out = next(iter(channels))
    if len(channels) != 1 or out % 3 or out // 3 < 6:
        raise CourseFormatError(f"{path}: output convolutions of {sorted(channels)} channels; a YOLOv3 head has "
                                "3 x (5 + classes)")
    widest = max(int(v.shape[0]) for k, v in state.items() if k.endswith("conv.weight") and v.ndim == 4)
    return out // 3 - 5, widest / 1024
