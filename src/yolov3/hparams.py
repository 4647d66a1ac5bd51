"""YoloLitModule's settings, grouped by concern, and the reading of older checkpoints.

The groups are dataclasses, so LightningCLI reads them as nested YAML:

    model:
      width: 0.125
      optim: {max_lr: 0.01}
      loss: {objectness: bce_iou, objectness_prior: 0.01}
      evaluation: {map_every_n_epochs: 25}

A checkpoint stores them as plain dicts (dataclasses.asdict), so it still loads with
torch.load(weights_only=True). Checkpoints written before the grouping hold the same
settings as flat hyper-parameters (max_lr, eval_iou_threshold, ...); grouped_hparams maps
them onto the groups (LEGACY_NAMES), and every reader of checkpoint hyper-parameters
(YoloLitModule.load_from_checkpoint, `--ckpt_path` of the CLI, Detector.from_checkpoint)
goes through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from yolov3.loss import LossWeights

T = TypeVar("T")


@dataclass(frozen=True)
class OptimConfig:
    """Adam with OneCycleLR stepped every batch; the defaults are the course's.

    max_lr: the peak learning rate; the schedule starts at max_lr / div_factor and ends at
    max_lr / div_factor / final_div_factor. pct_start: the share of steps spent warming up
    (a warm-up of one step or less is none: the run starts at max_lr; yolov3.schedule).
    three_phase, anneal_strategy: as torch.optim.lr_scheduler.OneCycleLR.
    weight_decay: Adam's (L2) weight decay.
    ema: evaluate, test and save an exponential moving average of the weights (yolov3.ema),
        updated after every optimizer step that changed them, with the decay
        ema_decay * (1 - exp(-t / ema_tau)) at the t-th (ema_tau in optimizer steps).
    """

    max_lr: float = 8e-4
    weight_decay: float = 1e-4
    pct_start: float = 0.125
    div_factor: float = 100.0
    final_div_factor: float = 100.0
    three_phase: bool = False
    anneal_strategy: str = "linear"
    ema: bool = False
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0


@dataclass(frozen=True)
class LossConfig:
    """The training loss and the start it gives the objectness.

    weights: the four terms' lambdas (box 10, obj 1, noobj 10, cls 1: the course's).
    ignore_threshold: anchors whose shape IoU with a box is above it, but which are not
        assigned to it, are ignored (neither object nor no-object).
    objectness: "mse_iou" (the course's) or "bce_iou"; see yolov3.loss.YoloLoss.
    objectness_prior: if set, every head starts with sigmoid(objectness) = this (e.g.
        0.01) instead of about 0.5; None keeps PyTorch's default initialisation.
    """

    weights: LossWeights = field(default_factory=LossWeights)
    ignore_threshold: float = 0.5
    objectness: str = "mse_iou"
    objectness_prior: float | None = None

    def __post_init__(self) -> None:
        # checkpoints hold the weights as a plain dict
        object.__setattr__(self, "weights", as_config(LossWeights, self.weights))


@dataclass(frozen=True)
class EvalConfig:
    """How training is scored.

    accuracy_threshold: the objectness threshold of the course's accuracies (logged in
        training, validation and test).
    map_every_n_epochs: compute the VOC mAP in validation every n epochs (and at the last
        epoch); 0 never. Test always computes it, with COCO mAP as well.
    conf_threshold, iou_threshold, max_detections, max_candidates, score_mode: the
        detection settings of that mAP (a low threshold, as the VOC protocol integrates
        over every score; score_mode "obj_cls" or "obj"). Detector.load takes score_mode,
        iou_threshold and max_detections from here (yolov3.detector.EVAL_SETTINGS).
    """

    accuracy_threshold: float = 0.05
    map_every_n_epochs: int = 1
    conf_threshold: float = 0.005
    iou_threshold: float = 0.45
    max_detections: int = 100
    max_candidates: int = 1000
    score_mode: str = "obj_cls"


GROUPS = {"optim": OptimConfig, "loss": LossConfig, "evaluation": EvalConfig}

# The flat hyper-parameter names of checkpoints written before the grouping -> (group, field).
LEGACY_NAMES = {
    **{name: ("optim", name) for name in ("max_lr", "weight_decay", "pct_start", "div_factor", "final_div_factor",
                                          "three_phase", "anneal_strategy")},
    "loss_weights": ("loss", "weights"),
    "ignore_threshold": ("loss", "ignore_threshold"),
    "objectness_loss": ("loss", "objectness"),
    "objectness_prior": ("loss", "objectness_prior"),
    "conf_threshold": ("evaluation", "accuracy_threshold"),
    "map_every_n_epochs": ("evaluation", "map_every_n_epochs"),
    "eval_conf_threshold": ("evaluation", "conf_threshold"),
    "eval_iou_threshold": ("evaluation", "iou_threshold"),
    "eval_max_detections": ("evaluation", "max_detections"),
    "eval_max_candidates": ("evaluation", "max_candidates"),
    "score_mode": ("evaluation", "score_mode"),
}


def as_config(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """`value` as a `cls` dataclass: None -> the defaults, a mapping -> cls(**value) (how a
    checkpoint stores it), an instance -> itself. Raises TypeError for an unknown field."""
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return cls(**value)
    if not isinstance(value, cls):
        raise TypeError(f"expected {cls.__name__} or a dict of its fields, got {type(value).__name__}")
    return value


def as_plain(config: Any) -> dict[str, Any]:
    """A settings dataclass as nested plain dicts (what checkpoints and hparams.yaml hold)."""
    return dataclasses.asdict(config)


def grouped_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Checkpoint hyper-parameters with the flat names of older checkpoints (LEGACY_NAMES)
    moved into their groups; other keys are kept as they are.

    A flat value of None is dropped: in the old signature None meant the default (no
    loss_weights, no objectness_prior), which the group's default is too. A group given both
    ways takes the grouped value.
    """
    out: dict[str, Any] = {}
    moved: dict[str, dict[str, Any]] = {}
    for key, value in hparams.items():
        if key in LEGACY_NAMES:
            if value is not None:
                group, name = LEGACY_NAMES[key]
                moved.setdefault(group, {})[name] = value
        else:
            out[key] = value
    for group, values in moved.items():
        given = out.get(group)
        out[group] = {**values, **(as_plain(given) if dataclasses.is_dataclass(given) else dict(given or {}))}
    return out
