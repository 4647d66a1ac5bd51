"""Fine-tuning: pretrained weights loaded into a model with a report of what was taken, and
the backbone held fixed for the first epochs of a fit.

Files (load_pretrained):
    Darknet `.weights` (yolov3.darknet): darknet53.conv.74, the backbone's 52 convolutions;
        yolov3.weights (COCO), every convolution but the three output ones, which are left
        to the model's own initialisation (COCO's 80 classes are not the model's).
    this project's checkpoints (.ckpt) and safetensors exports, and the course's checkpoints
        (yolov3.course), read as Detector.load reads them (no code runs): everything, except
        the output convolutions when the class count differs. The width must be the model's.
        Their anchors are reported: a fit with other anchors starts its boxes afresh.

"Re-initialised" layers are those the file gives nothing for: they keep the values the
model was built with, so load into a freshly built model (YoloLitModule does, at the start
of a fresh fit: its initialisation includes loss.objectness_prior).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from yolov3.darknet import conv_specs, is_darknet, read_darknet
from yolov3.detector import Detector, weights_format
from yolov3.model import YOLOv3

# How many names a summary lists before it counts them by part instead.
_LISTED = 3


class PretrainedError(ValueError):
    """Pretrained weights that cannot be used; the message names the file (and the layer)."""


@dataclass
class PretrainedReport:
    """What load_pretrained did, by convolution (CNNBlock module path, e.g. "layers.15.pred.1").

    loaded: the model's layers set from the file. reinitialised: the model's layers left at
    their initialisation. skipped: the file's layers not used. kind: "darknet",
    "checkpoint" or "safetensors"; note: what the file says about itself (a checkpoint:
    what it was recognised as, this project's or the course's). anchors: the (3, 3, 2)
    anchors the weights were trained with, when the file says (a course file: the course's).
    """

    source: str
    kind: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    note: str = ""
    parts: dict[str, str] = field(default_factory=dict, repr=False)  # layer path -> part name
    anchors: torch.Tensor | None = field(default=None, repr=False)

    def summary(self) -> str:
        """One line for the log: counts by part (backbone, neck, head32...), names when few."""
        def describe(names: list[str]) -> str:
            if not names:
                return "0"
            if len(names) <= _LISTED:
                return f"{len(names)} ({', '.join(names)})"
            counts: dict[str, int] = {}
            for name in names:
                part = self.parts.get(".".join(name.split(".")[:2]), "other")
                counts[part] = counts.get(part, 0) + 1
            return f"{len(names)} ({', '.join(f'{p} {n}' for p, n in counts.items())})"

        return (f"pretrained weights {self.source} ({self.kind}{'; ' + self.note if self.note else ''}): "
                f"convolutions loaded {describe(self.loaded)}, re-initialised {describe(self.reinitialised)}, "
                f"skipped from the file {describe(self.skipped)}")


def load_pretrained(model: YOLOv3, path: str | os.PathLike) -> PretrainedReport:
    """Load what fits from a Darknet `.weights` file, a checkpoint or a safetensors export
    into `model` (in place, keeping each tensor's device and memory layout) and report it.

    Raises a ValueError naming the file (and the layer, where one is to blame):
    PretrainedError for a missing file, an ONNX export (no trainable weights) or a layer
    whose shape differs other than by the class count (another width); darknet.DarknetError
    for a Darknet file of the wrong size, truncated or with trailing bytes;
    checkpoint_io.CheckpointError for an unreadable or unsafe checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: pretrained weights file not found")
    if is_darknet(path):
        weights = read_darknet(path, model)
        h = weights.header
        note = f"Darknet {h.major}.{h.minor}.{h.revision}, seen {h.seen:,}"
        if weights.num_classes is None:
            note += ", backbone only"
        else:
            note += f", output convolutions for {weights.num_classes} classes not used"
        # the output convolutions are always left out: they are trained for the file's classes
        # with Darknet's per-class sigmoid, not the course's softmax over the model's classes
        outputs = {s.name for s in weights.convs if not s.batch_norm}
        state = {k: v for k, v in weights.state.items() if _layer(k) not in outputs}
        report = _load(model, state, path, "darknet", note)
        report.skipped = sorted(outputs, key=_order(model))
        return report
    kind = weights_format(path)
    if kind == "onnx":
        raise PretrainedError(f"{path}: an ONNX export holds no trainable weights; start from the .ckpt or "
                              ".safetensors file it was exported from")
    detector = Detector.load(path)  # CheckpointError / ValueError name the file
    source = detector.model
    note = f"{detector.origin}; width {source.width}, {source.num_classes} classes"
    report = _load(model, source.state_dict(), path, kind, note, other_width=source.width)
    report.anchors = detector.anchors.cpu()
    return report


def _layer(key: str) -> str:
    """The CNNBlock a state_dict key belongs to ("layers.3.layers.0.1.bn.weight" -> "layers.3.layers.0.1")."""
    return key.rsplit(".", 2)[0]


def _order(model: YOLOv3):
    """Sort key putting layer names in module order."""
    index = {s.name: i for i, s in enumerate(conv_specs(model))}
    return lambda name: index.get(name, len(index))


def _load(model: YOLOv3, state: dict[str, torch.Tensor], path: Path, kind: str, note: str,
          other_width: float | None = None) -> PretrainedReport:
    """Copy the layers of `state` whose shapes are the model's; output convolutions of
    another class count are skipped and re-initialised; any other difference raises."""
    own = model.state_dict()
    outputs = {s.name for s in conv_specs(model) if not s.batch_norm}
    by_layer: dict[str, list[str]] = {}
    for key in state:
        by_layer.setdefault(_layer(key), []).append(key)
    report = PretrainedReport(str(path), kind, note=note, parts=_part_names(model))
    take: dict[str, torch.Tensor] = {}
    for spec in conv_specs(model):
        keys = by_layer.pop(spec.name, [])
        if not keys:
            report.reinitialised.append(spec.name)
            continue
        wrong = [k for k in keys if k not in own or tuple(state[k].shape) != tuple(own[k].shape)]
        if wrong and spec.name in outputs:  # another class count
            report.reinitialised.append(spec.name)
            report.skipped.append(spec.name)
            continue
        if wrong:
            key = wrong[0]
            mine = tuple(own[key].shape) if key in own else "absent"
            hint = f" (the file's width is {other_width}, the model's {model.width})" if other_width else ""
            raise PretrainedError(f"{path}: layer {spec.name}: {key} has shape {tuple(state[key].shape)} in the file "
                                  f"and {mine} in the model{hint}")
        take.update({k: state[k] for k in keys})
        report.loaded.append(spec.name)
    report.skipped += list(by_layer)  # the file's layers the model has no place for
    with torch.no_grad():
        model.load_state_dict(take, strict=False)
    return report


def _part_names(model: YOLOv3) -> dict[str, str]:
    """"layers.N" -> its part: backbone, neck, head32, head16 or head8."""
    parts = model.parts()
    names = ["backbone", "neck", *(f"head{s}" for s in model.strides)]
    return {f"layers.{i}": name for name in names for i in parts[name]}


class BackboneFreeze:
    """Holds the backbone (layers 0-10, Darknet-53) fixed for the first `epochs` epochs of a
    fit, then lets it train.

    While frozen its BatchNorms are in eval mode (running statistics neither used from the
    batch nor updated) and its parameters get no gradient: requires_grad is False, which
    also spares the backward pass through the backbone. The optimiser keeps every
    parameter; Adam skips one without a gradient entirely, so neither its weight decay
    nor its moments move a frozen weight. Under torch.distributed, where DDP must see
    every parameter it was built with produce a gradient, requires_grad stays True and
    the gradients are dropped before the optimiser step instead (before_step).
    """

    def __init__(self, model: YOLOv3, epochs: int) -> None:
        if epochs < 0:
            raise ValueError(f"freeze_backbone_epochs must be >= 0, got {epochs}")
        self.epochs = epochs
        layers = [model.layers[i] for i in model.parts()["backbone"]]
        self.params = [p for layer in layers for p in layer.parameters()]
        self.norms = [m for layer in layers for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._frozen = False

    def before_batch(self, epoch: int) -> None:
        """Freeze or thaw for this epoch; called before every training batch, since the
        trainer puts the whole model back in train mode after each validation."""
        frozen = epoch < self.epochs
        if not frozen and not self._frozen:
            return
        keep_graph = torch.distributed.is_available() and torch.distributed.is_initialized()
        for norm in self.norms:
            norm.train(not frozen)
        for p in self.params:
            p.requires_grad_(not frozen or keep_graph)
        self._frozen = frozen

    def before_step(self) -> None:
        """While frozen, drop the backbone's gradients (there are some only under DDP)."""
        if self._frozen:
            for p in self.params:
                p.grad = None
