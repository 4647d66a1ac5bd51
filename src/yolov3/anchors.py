"""Anchors given by name or by value: `--anchors course`, `--anchors coco`, 18 numbers, or
the (3, 3, 2) nested lists of a config. The two named sets are defined in yolov3.constants
(ANCHOR_SETS, with their source); this module only reads and names them."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from yolov3.constants import ANCHOR_SETS

# Two anchor sets are "the same" when no value differs by more than this: the course's are
# given to two decimals, so a copy read back from float32 or text still matches its name.
_SAME = 1e-4


class AnchorError(ValueError):
    """Anchors that cannot be used; the message says what was given and what is expected."""


def as_anchors(value: str | Sequence | torch.Tensor, what: str = "anchors") -> torch.Tensor:
    """Anchors as a (3 scales, 3 anchors, (w, h)) float32 tensor, in fractions of the image
    side, scales in the model's output order (stride 32, 16, 8).

    value: a name of yolov3.constants.ANCHOR_SETS ("coco": COCO / 416, this project's
        default; "course": the course's rounded copy), 18 numbers as one string (commas
        and/or spaces: w h of the stride-32 head's three anchors, then stride 16's, then
        stride 8's), or nested lists / a tensor of that shape.
    what: the option's name for messages (e.g. "--anchors").

    Raises AnchorError (a ValueError) for an unknown name, a wrong count or shape, or a value
    that is not positive and finite.
    """
    if isinstance(value, str):
        name = value.strip().lower()
        if name in ANCHOR_SETS:
            value = ANCHOR_SETS[name]
        else:
            try:
                value = [float(v) for v in re.split(r"[,\s]+", name) if v]
            except ValueError:
                raise AnchorError(f"{what}: {value!r} is neither a named set ({', '.join(ANCHOR_SETS)}) nor 18 "
                                  "numbers (w h of 9 anchors, fractions of the image side)") from None
            if len(value) != 18:
                raise AnchorError(f"{what}: {len(value)} numbers given; 18 are needed (w h of 3 anchors for each "
                                  "of the stride-32, 16 and 8 heads, fractions of the image side)")
    try:
        tensor = torch.as_tensor(value, dtype=torch.float32).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AnchorError(f"{what}: not numbers ({exc})") from None
    if tensor.numel() != 18:
        raise AnchorError(f"{what}: {tensor.numel()} values; 3 scales x 3 anchors x (w, h) = 18 are needed")
    if not (torch.isfinite(tensor).all() and (tensor > 0).all()):
        raise AnchorError(f"{what}: every width and height must be a positive fraction of the image side")
    return tensor.reshape(3, 3, 2).clone()


def anchor_set_name(anchors: torch.Tensor | Sequence) -> str | None:
    """The name of the set these anchors are ("coco", "course"), or None for others."""
    tensor = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu()
    for name, values in ANCHOR_SETS.items():
        known = torch.tensor(values, dtype=torch.float32)
        if tensor.shape == known.shape and float((tensor - known).abs().max()) <= _SAME:
            return name
    return None


def describe_anchors(anchors: torch.Tensor | Sequence) -> str:
    """For messages: "the course's anchors", "the COCO anchors / 416" or the 18 values."""
    name = anchor_set_name(anchors)
    if name == "course":
        return "the course's anchors (COCO / 416 rounded to 2 decimals)"
    if name == "coco":
        return "the COCO anchors / 416"
    values = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1).tolist()
    return "anchors " + " ".join(f"{v:.4g}" for v in values)
