"""The colour jitter of training: brightness, contrast, saturation and hue as one affine RGB
transform, applied in a single pass (yolov3.data.augment's TrainTransform draws it per sample)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np


# ITU-R BT.601 luma weights (R, G, B): the grey that contrast and saturation blend towards,
# as in torchvision's and albumentations' ColorJitter.
LUMA = np.array([0.299, 0.587, 0.114])
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def colour_jitter_matrix(factors: dict[str, float], order: Sequence[str], mean_rgb: np.ndarray) -> np.ndarray:
    """One (3, 4) affine colour transform equal to the jitter steps applied one after another.

    Each step is affine in RGB, so their product is one matrix applied in a single pass:
      brightness b:  x -> b x                              (blend with black)
      contrast c:    x -> c x + (1 - c) m                  (m: mean luma of the image so far)
      saturation s:  x -> s x + (1 - s) luma(x)            (blend with the pixel's grey)
      hue h:         rotation by 2 pi h about the grey axis (1, 1, 1)
    The first three are torchvision's and albumentations' ColorJitter definitions. Hue is a
    rotation in RGB rather than a shift of HSV hue: close to it for the small shifts used
    in training (default +-0.015 of the circle), without the HSV round trip that cost most
    of the jitter's time. Unlike those, intermediate steps are not clipped to [0, 255]; only
    the result is. The image's mean luma after each step is
    known in closed form (the mean of an affine image is the affine image of the mean), so
    `mean_rgb` of the input is all the statistics needed.

    Args:
        factors: {"brightness", "contrast", "saturation", "hue"} -> factor (hue in turns);
            an op missing from `factors` is skipped.
        order: the ops in the order they are applied.
        mean_rgb: (3,) mean R, G, B of the input image.
    Returns:
        (3, 4) float64 matrix M: out = M[:, :3] @ rgb + M[:, 3].
    """
    total = np.eye(4)
    mean = np.append(np.asarray(mean_rgb, dtype=np.float64), 1.0)
    for op in order:
        if op not in factors:
            continue
        f = factors[op]
        step = np.eye(4)
        if op == "brightness":
            step[:3, :3] *= f
        elif op == "contrast":
            step[:3, :3] *= f
            step[:3, 3] = (1.0 - f) * (LUMA @ mean[:3])
        elif op == "saturation":
            step[:3, :3] = f * np.eye(3) + (1.0 - f) * np.outer(np.ones(3), LUMA)
        elif op == "hue":
            k = np.ones(3) / math.sqrt(3.0)
            theta = 2.0 * math.pi * f
            cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
            step[:3, :3] = math.cos(theta) * np.eye(3) + math.sin(theta) * cross + (1 - math.cos(theta)) * np.outer(k, k)
        else:
            raise ValueError(f"unknown colour jitter op {op!r}; expected one of {JITTER_OPS}")
        total = step @ total
        mean = step @ mean
    return total[:3]


def colour_jitter(image: np.ndarray, rng: np.random.Generator, config) -> np.ndarray:
    """Random brightness, contrast, saturation and hue (the strengths of `config`, an
    augment.AugmentConfig or anything with those four attributes; ops in random order, as
    ColorJitter draws them), applied to an (H, W, 3) uint8 RGB image in one pass
    of cv2.transform (rounded and saturated to uint8). The colour stage of
    bench/data_pipeline.py (416 px, 2-core AMD EPYC) went from 1.3 ms a sample with
    albumentations' ColorJitter, whose hue is an HSV round trip, to 0.3 ms."""
    c = config
    factors = {}
    for op, strength in (("brightness", c.brightness), ("contrast", c.contrast), ("saturation", c.saturation)):
        if strength > 0:
            factors[op] = float(rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength))
    if c.hue > 0:
        factors["hue"] = float(rng.uniform(-c.hue, c.hue))
    if not factors:
        return image
    order = [JITTER_OPS[i] for i in rng.permutation(len(JITTER_OPS))]
    mean_rgb = np.array(cv2.mean(image)[:3])
    return cv2.transform(image, colour_jitter_matrix(factors, order, mean_rgb).astype(np.float32))
