"""Rendering one synthetic image: a muted cluttered background, then 1-5 objects placed with
bounded occlusion and painted in their class's look, then sensor noise.

Every image is made from its own RNG, ``np.random.default_rng([seed, split_id, index])``,
so images can be rendered in any order, in any number of processes, and the pixels depend
only on the seed and the image's (split, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from yolov3.constants import VOC_CLASSES
from yolov3.data.synthetic.design import (
    BG_MAX_SAT,
    CLASS_DESIGN,
    COLOUR_HUES,
    HUE_JITTER_DEG,
    OBJ_SAT,
    OBJ_VAL,
    hsv_rgb,
    texture_pattern,
    unit_polygon,
)

SPLITS: dict[str, int] = {"train": 0, "test": 1}

SIZE_FRAC = (0.10, 0.65)  # longer side of the (unrotated) object as a share of min(W, H)
ASPECT = (0.6, 1.7)  # width / height of the unrotated object
MAX_ROT_DEG = 15.0
N_OBJ_P = np.array([0.25, 0.30, 0.25, 0.12, 0.08])  # P(1..5 objects): mostly 1-3
MIN_VISIBLE = 0.60  # an earlier object must keep >= 60% of its pixels after occlusion
MIN_IN_IMAGE = 0.65  # share of a (border-truncated) object that must stay inside the image
MAX_OVERHANG = 0.20  # how far past the border (share of the object's extent) a centre may go
PLACE_TRIES = 12
# Objects whose visible pixels amount to a square of side < DIFFICULT_SIDE * min(W, H) are
# marked difficult in the XML; calibrated so that about 5% of all objects are.
DIFFICULT_SIDE = 0.0757


@dataclass
class SyntheticObject:
    """One drawn object.

    box:       (x1, y1, x2, y2) inclusive integer pixels, the tight box of the full shape
               (clipped to the image), not just of its visible part.
    mask:      (y2-y1+1, x2-x1+1) bool, the full shape inside `box`.
    visible:   pixels of the object left visible after later objects were drawn over it.
    """

    label: int
    box: tuple[int, int, int, int]
    mask: np.ndarray
    visible: int = 0
    truncated: bool = False
    difficult: bool = False


@dataclass
class RenderedImage:
    """One synthetic image and its objects, in drawing order (later ones on top).

    image: (H, W, 3) uint8 RGB, before JPEG compression.
    """

    image: np.ndarray
    objects: list[SyntheticObject]
    jpeg_quality: int
    labelmap: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) int64 x1, y1, x2, y2, inclusive 0-based pixels."""
        return np.array([o.box for o in self.objects], dtype=np.int64).reshape(-1, 4)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class indices."""
        return np.array([o.label for o in self.objects], dtype=np.int64)

    @property
    def difficult(self) -> np.ndarray:
        """(N,) bool difficult flags (as written to the XML)."""
        return np.array([o.difficult for o in self.objects], dtype=bool)

    def full_masks(self) -> np.ndarray:
        """(N, H, W) bool: each object's whole shape, occluded parts included."""
        h, w = self.image.shape[:2]
        out = np.zeros((len(self.objects), h, w), dtype=bool)
        for i, o in enumerate(self.objects):
            x1, y1, x2, y2 = o.box
            out[i, y1:y2 + 1, x1:x2 + 1] = o.mask
        return out

    def visible_masks(self) -> np.ndarray:
        """(N, H, W) bool: the pixels of each object that are visible in the image."""
        return self.labelmap[None] == np.arange(len(self.objects))[:, None, None]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(H, W, 3) float32 muted, low-saturation clutter: smooth noise, soft blobs, thin lines.

    Built as luminance x tint: a grey field L (H, W) carrying all the structure, times a
    smooth blend of two tints of value 1 and saturation <= BG_MAX_SAT. Scaling an RGB colour
    keeps its saturation, so no background pixel is more saturated than the tints, whatever
    the structure; and nothing in L has a hard-edged filled area. Both keep the background
    from passing for one of the saturated, solid shapes.
    """
    # Low-frequency luminance: a tiny random grid blown up with cubic interpolation.
    sh, sw = max(h // 8, 4), max(w // 8, 4)
    gh, gw = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    grid = (rng.uniform(0.35, 0.85) * 255.0 + rng.normal(0.0, 30.0, size=(gh, gw)))
    small = cv2.resize(grid.astype(np.float32), (sw, sh), interpolation=cv2.INTER_CUBIC)
    # Faint blobs, drawn at 1/8 resolution and blurred, so they are soft and shapeless.
    for _ in range(int(rng.integers(0, 4))):
        blob = np.zeros((sh, sw), dtype=np.float32)
        cv2.ellipse(blob, (int(rng.integers(0, sw)), int(rng.integers(0, sh))),
                    (int(rng.integers(2, max(3, sw // 4))), int(rng.integers(2, max(3, sh // 4)))),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        small += cv2.GaussianBlur(blob, (0, 0), 1.5) * np.float32(rng.normal(0.0, 30.0))
    lum = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    # A few thin lines, lighter or darker than the scene: clutter with edges but no area.
    mean = float(small.mean())
    for _ in range(int(rng.integers(0, 5))):
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(lum, p1, p2, mean + float(rng.normal(0.0, 50.0)), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    # Kept off black: near black the sensor noise added later would make saturation jump.
    np.clip(lum, 70.0, 240.0, out=lum)
    hue = rng.uniform(0, 360)
    t1 = hsv_rgb(hue, rng.uniform(0.0, BG_MAX_SAT), 1.0) / 255.0
    t2 = hsv_rgb(hue + rng.normal(0.0, 60.0), rng.uniform(0.0, BG_MAX_SAT), 1.0) / 255.0
    # Blend the tints on a 3 x 3 grid and let the (linear) resize spread it: the same smooth
    # blend as blending at full size, for a fraction of the cost.
    alpha = rng.uniform(0.0, 1.0, size=(3, 3, 1))
    tint = cv2.resize((alpha * t1 + (1.0 - alpha) * t2).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_LINEAR)
    return cv2.multiply(tint, cv2.merge([lum, lum, lum]))


def _try_place(rng: np.random.Generator, label: int, h: int, w: int):
    """Draw a random pose for one object of class `label` and rasterise it.

    Returns (ox, oy, mask, params) with mask (mh, mw) bool the in-image part of the shape
    whose top-left pixel is (ox, oy), or None when too much of it would fall off the image.
    """
    d = CLASS_DESIGN[label]
    side = min(h, w)
    longer = side * math.exp(rng.uniform(math.log(SIZE_FRAC[0]), math.log(SIZE_FRAC[1])))
    aspect = math.exp(rng.uniform(math.log(ASPECT[0]), math.log(ASPECT[1])))
    ow, oh = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    theta = math.radians(rng.uniform(-MAX_ROT_DEG, MAX_ROT_DEG))
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    pts = (unit_polygon(d.shape, rng) * np.array([ow / 2, oh / 2])) @ rot.T  # centred, rotated
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    ext = hi - lo
    # Centre range: the shape fits inside, give or take MAX_OVERHANG of its extent per side.
    cx = rng.uniform(-lo[0] - MAX_OVERHANG * ext[0], (w - 1) - hi[0] + MAX_OVERHANG * ext[0])
    cy = rng.uniform(-lo[1] - MAX_OVERHANG * ext[1], (h - 1) - hi[1] + MAX_OVERHANG * ext[1])
    pts = pts + np.array([cx, cy])
    x0 = max(int(math.floor(pts[:, 0].min())), 0)
    y0 = max(int(math.floor(pts[:, 1].min())), 0)
    x1 = min(int(math.ceil(pts[:, 0].max())), w - 1)
    y1 = min(int(math.ceil(pts[:, 1].max())), h - 1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    # Fixed-point vertices (4 fractional bits) keep small shapes' silhouettes accurate.
    fixed = np.round((pts - np.array([x0, y0])) * 16.0).astype(np.int32)
    cv2.fillPoly(crop, [fixed], 1, lineType=cv2.LINE_8, shift=4)
    area = abs(cv2.contourArea(pts.astype(np.float32)))
    n_in = int(crop.sum())
    if area <= 0 or n_in < MIN_IN_IMAGE * area or n_in < 16:
        return None
    mask = crop.astype(bool)
    # The box is the tight box of the pixels actually drawn (clipping included).
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if cols[-1] - cols[0] < 1 or rows[-1] - rows[0] < 1:
        return None
    mask = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    truncated = bool(
        pts[:, 0].min() < -0.5 or pts[:, 1].min() < -0.5
        or pts[:, 0].max() > w - 0.5 or pts[:, 1].max() > h - 0.5)
    params = dict(cx=cx, cy=cy, c=c, s=s, longer=longer, truncated=truncated)
    return x0 + int(cols[0]), y0 + int(rows[0]), mask, params


def _paint(rng: np.random.Generator, canvas: np.ndarray, label: int, ox: int, oy: int,
           mask: np.ndarray, p: dict) -> None:
    """Fill `mask` (placed at ox, oy on the (H, W, 3) float32 canvas) with the class's look."""
    d = CLASS_DESIGN[label]
    hue = COLOUR_HUES[d.colour] + rng.uniform(-HUE_JITTER_DEG, HUE_JITTER_DEG)
    sat, val = rng.uniform(*OBJ_SAT), rng.uniform(*OBJ_VAL)
    base = hsv_rgb(hue, sat, val)
    # The pattern uses a darker (or, for dark objects, lighter) tone of the same hue, so the
    # colour family stays readable on textured objects.
    if val >= 0.75:
        alt = hsv_rgb(hue, sat * rng.uniform(0.85, 1.0), val * rng.uniform(0.45, 0.62))
    else:
        alt = hsv_rgb(hue, sat * rng.uniform(0.65, 0.80), min(1.0, val * rng.uniform(1.4, 1.6)))
    mh, mw = mask.shape
    # Pixel coordinates relative to the centre, rotated into the object's own axes.
    xs = (np.arange(mw, dtype=np.float32) + ox - p["cx"])[None, :]
    ys = (np.arange(mh, dtype=np.float32) + oy - p["cy"])[:, None]
    u = xs * p["c"] + ys * p["s"]
    v = -xs * p["s"] + ys * p["c"]
    # Texture period scales with object size so the pattern reads the same at every scale.
    period = max(4.0, p["longer"] * rng.uniform(0.13, 0.22))
    pat = texture_pattern(d.texture, u, v, period, rng.uniform(0.0, math.pi))
    # Gentle linear shading along a random direction: colour is never one flat value.
    g_ang = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + rng.uniform(0.0, 0.15) * (u * math.cos(g_ang) + v * math.sin(g_ang)) / (
        0.5 * p["longer"])
    colour = np.where(pat[..., None], alt, base) if pat is not None else np.broadcast_to(
        base, (mh, mw, 3))
    colour = colour * shade[..., None]
    region = canvas[oy:oy + mh, ox:ox + mw]
    region[mask] = colour[mask]


def render_image(seed: int, split: str, index: int, min_side: int = 256,
                 max_side: int = 448) -> RenderedImage:
    """Render image `index` of `split` ("train" / "test") for `seed`, exactly as generate() does.

    Returns a RenderedImage: image (H, W, 3) uint8 RGB with H, W in [min_side, max_side],
    its objects (boxes, labels, masks, difficult flags) and the JPEG quality to save it with.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    w = int(rng.integers(min_side, max_side + 1))
    h = int(rng.integers(min_side, max_side + 1))
    quality = int(rng.integers(80, 96))
    canvas = _background(rng, h, w)
    labelmap = np.full((h, w), -1, dtype=np.int16)  # top-most object per pixel
    objects: list[SyntheticObject] = []
    n_obj = int(rng.choice(len(N_OBJ_P), p=N_OBJ_P)) + 1
    for _ in range(n_obj):
        label = int(rng.integers(0, len(VOC_CLASSES)))  # uniform: classes balance over a split
        for _try in range(PLACE_TRIES):
            placed = _try_place(rng, label, h, w)
            if placed is None:
                continue
            ox, oy, mask, params = placed
            mh, mw = mask.shape
            under = labelmap[oy:oy + mh, ox:ox + mw][mask]
            if len(objects):
                hidden = np.bincount(under[under >= 0], minlength=len(objects))
                left = np.array([o.visible for o in objects]) - hidden
                full = np.array([o.mask.sum() for o in objects])
                # Occlusion is allowed, but every earlier object keeps most of itself.
                if np.any(left < MIN_VISIBLE * full):
                    continue
                for o, k in zip(objects, hidden):
                    o.visible -= int(k)
            k = len(objects)
            labelmap[oy:oy + mh, ox:ox + mw][mask] = k
            _paint(rng, canvas, label, ox, oy, mask, params)
            objects.append(SyntheticObject(
                label=label, box=(ox, oy, ox + mw - 1, oy + mh - 1), mask=mask,
                visible=int(mask.sum()), truncated=params["truncated"]))
            break
        # An object that found no place after PLACE_TRIES is dropped; if that leaves the
        # image empty the next attempt below still guarantees one object.
    if not objects:  # practically unreachable (a first object never conflicts), but be sure
        return render_image(seed, split, index + 10_000_019, min_side, max_side)
    # Sensor-ish noise over everything, then quantise.
    canvas += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(1.5, 4.0))
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    side = min(h, w)
    for o in objects:
        o.difficult = bool(math.sqrt(o.visible) < DIFFICULT_SIDE * side)
    return RenderedImage(image=image, objects=objects, jpeg_quality=quality, labelmap=labelmap)
