"""Which settings a run takes from a checkpoint, and which from its config and command line.

`fit`, `validate`, `test` and `predict --ckpt_path` (yolov3.commands.lightning_cli) build
the model from the checkpoint's hyper-parameters, except where a config file or the command
line sets a value: what those set wins, field by field, nested groups included
(`--model.evaluation.conf_threshold`). The exceptions are what the weights' shapes come
from, the model's width and its class count (data.class_names): a value given there that
differs from the checkpoint's stops the run before anything is built, naming both. The
class names come from the checkpoint's data record when no config sets them.

Settings written with the flat names of older versions (`--model.eval_conf_threshold`,
`model: {max_lr: ...}` in a config) are refused with their grouped name
(yolov3.hparams.LEGACY_NAMES); checkpoints that hold them are read as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolov3.constants import VOC_CLASSES
from yolov3.hparams import LEGACY_NAMES

# Lightning's bookkeeping in a checkpoint's hyper-parameters, not model arguments
BOOKKEEPING = ("_instantiator", "_class_path")
# The model settings its weights' shapes come from (the class count: through data.class_names)
SHAPE_SETTINGS = ("width",)


class SettingsConflict(ValueError):
    """A setting given by a config or the command line that the checkpoint's weights cannot take."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings (dicts, jsonargparse Namespaces) as {"a.b.c": leaf}; lists, tuples
    and scalars are leaves (tuples as lists)."""
    if hasattr(tree, "as_dict"):
        tree = tree.as_dict()
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: _plain(tree)}


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _show(value: Any, limit: int = 60) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Merged:
    """The settings to parse over the config (model, data), and what differed: each
    {"model.x.y": (the value given up, the value used)}."""

    model: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)
    from_checkpoint: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    from_given: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def message(self, source: str) -> str | None:
        """One line: the values taken from the checkpoint where the config's defaults differ,
        and those the config or command line set over the checkpoint's. None if none differ."""
        parts = []
        if self.from_checkpoint:
            parts.append(f"from {source}: " + ", ".join(
                f"{k} {_show(new)} (default {_show(old)})" for k, (old, new) in self.from_checkpoint.items()))
        if self.from_given:
            parts.append("from the config / command line, over the checkpoint's: " + ", ".join(
                f"{k} {_show(new)} (checkpoint {_show(old)})" for k, (old, new) in self.from_given.items()))
        return "settings " + "; ".join(parts) if parts else None


def check_shapes(given_model: Any, width: float, source: str) -> None:
    """Raise SettingsConflict if the config or command line (`given_model`: what they set
    under model) sets a width other than the weights' in `source`."""
    given = flatten(given_model or {})
    if "width" in given and not _same(given["width"], width):
        raise SettingsConflict(
            f"model.width {_show(given['width'])} (set by the config or the command line) differs from the "
            f"{_show(width)} of {source}, whose weights have that width: leave model.width out (the "
            f"checkpoint's is taken) or set it to {_show(width)}")


def merge(hparams: Mapping[str, Any], data_record: Mapping[str, Any] | None, given_model: Any, given_data: Any,
          current_model: Any, current_names: Sequence[str] | None, source: str) -> Merged:
    """The model settings of a run from a checkpoint: its hyper-parameters (`hparams`,
    grouped: yolov3.hparams.grouped_hparams) with every value the config or command line
    set (`given_model`, `given_data`: parse_args(defaults=False)) over them; the data's
    class names from the checkpoint's record (`data_record`) unless given.
    `current_model`, `current_names`: the parsed config (defaults and given values), to
    say where the checkpoint's values differ from the defaults they replace.

    Raises SettingsConflict, naming both values, for a given width or class count that
    differs from the checkpoint's."""
    check_shapes(given_model, hparams.get("width", 1.0), source)
    ckpt = {k: v for k, v in flatten({k: v for k, v in hparams.items() if k not in BOOKKEEPING}).items()}
    given = flatten(given_model or {})
    current = flatten(current_model or {})
    out = Merged(model={})
    for key, value in ckpt.items():
        if key in given:
            if not _same(given[key], value):
                out.from_given[f"model.{key}"] = (value, given[key])
        elif key in current and not _same(current[key], value) and key != "num_classes":
            out.from_checkpoint[f"model.{key}"] = (current[key], value)
    out.model = unflatten({**ckpt, **given})

    classes = int(hparams.get("num_classes", len(VOC_CLASSES)))
    names = get_path(given_data, "class_names")
    recorded = list((data_record or {}).get("class_names") or [])
    if names:
        if len(names) != classes:
            raise SettingsConflict(
                f"data.class_names (set by the config or the command line) lists {len(names)} classes and the "
                f"model of {source} has {classes}: its output layers are made for {classes}; set "
                f"data.class_names to its {classes} names" + (f" ({_show(recorded, 80)})" if recorded else ""))
        if recorded and list(names) != recorded:
            out.from_given["data.class_names"] = (recorded, list(names))
        return out
    current_names = list(current_names) if current_names else list(VOC_CLASSES)
    if len(recorded) == classes:
        if recorded != current_names:
            out.data["class_names"] = recorded
            out.from_checkpoint["data.class_names"] = (current_names, recorded)
    elif classes != len(current_names):
        raise SettingsConflict(
            f"the model of {source} has {classes} classes and the checkpoint records no class names, while the "
            f"data has {len(current_names)} (data.class_names not set: the VOC classes); set data.class_names "
            f"to the checkpoint's {classes} class names")
    return out


def get_path(namespace: Any, *keys: str) -> Any:
    """namespace[k1][k2]... (dicts or jsonargparse Namespaces), or None where a level is missing."""
    for key in keys:
        if namespace is None:
            return None
        namespace = namespace.get(key) if hasattr(namespace, "get") else None
    return namespace


def _legacy_hint(name: str) -> str:
    group, field_ = LEGACY_NAMES[name]
    hint = f"model.{group}.{field_}"
    if name == "conf_threshold":
        hint += " (the course accuracies' threshold; the mAP's detection threshold is model.evaluation.conf_threshold)"
    return hint


def legacy_name_error(args: Sequence[str]) -> str | None:
    """A message if the command line (`args`) or a config file it names (--config / -c) sets
    a model setting by the flat name of older versions; None if none does."""
    args = list(args)
    for i, token in enumerate(args):
        name = token.split("=", 1)[0]
        if name.startswith("--model.") and name[len("--model."):] in LEGACY_NAMES:
            return (f"{name}: the model's settings are grouped now; this one is --{_legacy_hint(name[8:])} "
                    "(docs/training.md)")
        path = None
        if name in ("--config", "-c") and "=" in token:
            path = token.split("=", 1)[1]
        elif token in ("--config", "-c") and i + 1 < len(args):
            path = args[i + 1]
        if path and Path(path).is_file():
            try:
                content = yaml.safe_load(Path(path).read_text())
            except (yaml.YAMLError, OSError, UnicodeDecodeError):
                continue  # the config parser reports it
            model = content.get("model") if isinstance(content, dict) else None
            for key in model if isinstance(model, dict) else ():
                if key in LEGACY_NAMES:
                    return (f"{path}: model.{key}: the model's settings are grouped now; this one is "
                            f"{_legacy_hint(key)} (docs/training.md)")
    return None
