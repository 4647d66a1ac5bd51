"""How each synthetic class looks: its (shape, colour family, texture) design, the shapes'
polygons, the colour families' hues and the texture patterns (yolov3.data.synthetic.render
draws with them)."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from yolov3.constants import VOC_CLASSES

SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond", "cross")
# Hue centres in degrees, far enough apart that the +-8 degree jitter never makes two
# families meet (closest pair: red 0 and yellow 55, still 39 degrees apart after jitter).
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOUR_HUES: dict[str, float] = {"red": 0.0, "green": 125.0, "blue": 220.0, "yellow": 55.0}
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")

HUE_JITTER_DEG = 8.0
# Objects are saturated, backgrounds are not: this gap is what lets a detector separate
# objects from clutter, while the colour family alone still never names the class.
OBJ_SAT = (0.60, 1.00)
OBJ_VAL = (0.60, 1.00)
BG_MAX_SAT = 0.18


@dataclass(frozen=True)
class ClassDesign:
    """How one class is drawn: index into VOC_CLASSES, its name and its three attributes."""

    index: int
    name: str
    shape: str
    colour: str
    texture: str


def class_design() -> list[ClassDesign]:
    """The 20 classes: class c is shape c // 4 and colour c % 4, texture (shape + colour) % 4.

    (c // 4, c % 4) runs over all 5 x 4 pairs once, so each (shape, colour) pair is one class,
    each colour is shared by 5 classes and each shape by 4. For each shape the texture formula
    hits every residue mod 4 once over the 4 colours, so each texture is shared by 5 classes.
    """
    out = []
    for c, name in enumerate(VOC_CLASSES):
        s, k = c // 4, c % 4
        out.append(ClassDesign(c, name, SHAPES[s], COLOURS[k], TEXTURES[(s + k) % 4]))
    return out


CLASS_DESIGN: tuple[ClassDesign, ...] = tuple(class_design())


def unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """(P, 2) float64 vertices of a shape filling the box [-1, 1] x [-1, 1] (x right, y down).

    Draws from `rng` only for the triangle (up or down). Raises ValueError for an unknown shape.
    """
    if shape == "ellipse":
        # Drawn as a polygon so its tight box comes from the same vertices as the others'.
        t = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if shape == "rectangle":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if shape == "triangle":
        tri = np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64)
        # Pointing up or down: still one silhouette class, but not a fixed template.
        return tri if rng.random() < 0.5 else tri * np.array([1.0, -1.0])
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.float64)
    if shape == "cross":
        a = 0.34  # half-thickness of the arms: thick enough to survive small sizes and JPEG
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1],
             [-a, a], [-1, a], [-1, -a], [-a, -a]], dtype=np.float64)
    raise ValueError(f"unknown shape {shape!r}")


def hsv_rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 255] for a hue in degrees and saturation/value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0),
                                  min(max(v, 0.0), 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


def texture_pattern(texture: str, u: np.ndarray, v: np.ndarray, period: float,
                    stripe_angle: float) -> np.ndarray | None:
    """(h, w) bool pattern in object coordinates u, v (pixels, along the object's axes).

    True where the pattern takes the alternate tone; None for "solid" (no pattern). `period`
    is in pixels, `stripe_angle` in radians. Raises ValueError for an unknown texture.
    """
    if texture == "solid":
        return None
    if texture == "stripes":
        ca, sa = math.cos(stripe_angle), math.sin(stripe_angle)
        return np.mod((u * ca + v * sa) / period, 1.0) < 0.5
    if texture == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2) == 1
    if texture == "dots":
        fu = np.mod(u / period, 1.0) - 0.5
        fv = np.mod(v / period, 1.0) - 0.5
        return fu * fu + fv * fv < 0.30 ** 2
    raise ValueError(f"unknown texture {texture!r}")
