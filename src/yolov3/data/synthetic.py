"""Synthetic VOC-style detection data: 20 classes of textured, coloured shapes.

The point of this dataset is a quick end-to-end check that a detector really learns: each
of the 20 VOC class indices is drawn as a unique (shape, colour family) pair, with a texture
as a third attribute, so no single cue (colour alone, shape alone, texture alone) names the
class. The images go to disk in the two layouts the readers understand:

Kaggle PASCAL_VOC layout::

    out_dir/images/<stem>.jpg
    out_dir/labels/<stem>.txt        one "class xc yc w h" line per box (normalised, 6 decimals)
    out_dir/train.csv, test.csv      header "image,label", rows "<stem>.jpg,<stem>.txt"

VOCdevkit layout (``voc_xml=True``), for the same images::

    out_dir/VOC2007/JPEGImages/<stem>.jpg    hard link to images/<stem>.jpg (copy as fallback)
    out_dir/VOC2007/Annotations/<stem>.xml   1-based xmin, ymin, xmax, ymax
    out_dir/VOC2007/ImageSets/Main/trainval.txt, test.txt

Every box is held as integer pixels x1, y1, x2, y2 (inclusive, 0 <= x1 < x2 <= W-1) and
both layouts are written from those integers, so a reader mapping XML back with
``x = xmin - 1`` and Kaggle back with ``x1 = (xc - w/2) * W`` gets identical boxes.

Every image is made from its own RNG, ``np.random.default_rng([seed, split_id, index])``,
so images can be rendered in any order, in any number of processes, and the bytes on disk
depend only on the seed and the image's (split, index).
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import current_process, get_context
from pathlib import Path

import cv2
import numpy as np

from yolov3.constants import VOC_CLASSES

# ----------------------------------------------------------------------------- class design

SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "triangle", "diamond", "cross")
# Hue centres in degrees, far enough apart that the +-8 degree jitter never makes two
# families meet (closest pair: red 0 and yellow 55, still 39 degrees apart after jitter).
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
COLOUR_HUES: dict[str, float] = {"red": 0.0, "green": 125.0, "blue": 220.0, "yellow": 55.0}
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots")
SPLITS: dict[str, int] = {"train": 0, "test": 1}

HUE_JITTER_DEG = 8.0
# Objects are saturated, backgrounds are not: this gap is what lets a detector separate
# objects from clutter, while the colour family alone still never names the class.
OBJ_SAT = (0.60, 1.00)
OBJ_VAL = (0.60, 1.00)
BG_MAX_SAT = 0.18

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


def _unit_polygon(shape: str, rng: np.random.Generator) -> np.ndarray:
    """(P, 2) float64 vertices of a shape filling the box [-1, 1] x [-1, 1] (x right, y down)."""
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


def _hsv_rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 255] for a hue in degrees and saturation/value in [0, 1]."""
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, min(max(s, 0.0), 1.0),
                                  min(max(v, 0.0), 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255.0


# ------------------------------------------------------------------------------- rendering

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
    t1 = _hsv_rgb(hue, rng.uniform(0.0, BG_MAX_SAT), 1.0) / 255.0
    t2 = _hsv_rgb(hue + rng.normal(0.0, 60.0), rng.uniform(0.0, BG_MAX_SAT), 1.0) / 255.0
    # Blend the tints on a 3 x 3 grid and let the (linear) resize spread it: the same smooth
    # blend as blending at full size, for a fraction of the cost.
    alpha = rng.uniform(0.0, 1.0, size=(3, 3, 1))
    tint = cv2.resize((alpha * t1 + (1.0 - alpha) * t2).astype(np.float32), (w, h),
                      interpolation=cv2.INTER_LINEAR)
    return cv2.multiply(tint, cv2.merge([lum, lum, lum]))


def _texture(texture: str, u: np.ndarray, v: np.ndarray, period: float,
             stripe_angle: float) -> np.ndarray | None:
    """(h, w) bool pattern in object coordinates u, v (pixels, along the object's axes)."""
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
    pts = (_unit_polygon(d.shape, rng) * np.array([ow / 2, oh / 2])) @ rot.T  # centred, rotated
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
    base = _hsv_rgb(hue, sat, val)
    # The pattern uses a darker (or, for dark objects, lighter) tone of the same hue, so the
    # colour family stays readable on textured objects.
    if val >= 0.75:
        alt = _hsv_rgb(hue, sat * rng.uniform(0.85, 1.0), val * rng.uniform(0.45, 0.62))
    else:
        alt = _hsv_rgb(hue, sat * rng.uniform(0.65, 0.80), min(1.0, val * rng.uniform(1.4, 1.6)))
    mh, mw = mask.shape
    # Pixel coordinates relative to the centre, rotated into the object's own axes.
    xs = (np.arange(mw, dtype=np.float32) + ox - p["cx"])[None, :]
    ys = (np.arange(mh, dtype=np.float32) + oy - p["cy"])[:, None]
    u = xs * p["c"] + ys * p["s"]
    v = -xs * p["s"] + ys * p["c"]
    # Texture period scales with object size so the pattern reads the same at every scale.
    period = max(4.0, p["longer"] * rng.uniform(0.13, 0.22))
    pat = _texture(d.texture, u, v, period, rng.uniform(0.0, math.pi))
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


# ------------------------------------------------------------------------------ file output

def _kaggle_lines(r: RenderedImage) -> str:
    """The label file text: 'class xc yc w h' per box, normalised by the image size."""
    h, w = r.image.shape[:2]
    lines = []
    for o in r.objects:
        x1, y1, x2, y2 = o.box
        lines.append(f"{o.label} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
    return "".join(lines)


def _voc_xml(stem: str, r: RenderedImage) -> str:
    """Standard VOC annotation XML; coordinates are 1-based (xmin = x1 + 1)."""
    h, w = r.image.shape[:2]
    objs = []
    for o in r.objects:
        x1, y1, x2, y2 = o.box
        objs.append(
            "\t<object>\n"
            f"\t\t<name>{VOC_CLASSES[o.label]}</name>\n"
            "\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(o.truncated)}</truncated>\n"
            f"\t\t<difficult>{int(o.difficult)}</difficult>\n"
            "\t\t<bndbox>\n"
            f"\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
            f"\t\t\t<xmax>{x2 + 1}</xmax>\n\t\t\t<ymax>{y2 + 1}</ymax>\n"
            "\t\t</bndbox>\n"
            "\t</object>\n")
    return (
        "<annotation>\n"
        "\t<folder>VOC2007</folder>\n"
        f"\t<filename>{stem}.jpg</filename>\n"
        "\t<source>\n\t\t<database>yolov3 synthetic shapes</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n"
        "\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>0</segmented>\n"
        + "".join(objs) + "</annotation>\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, no hard-link support, ...
        shutil.copyfile(src, dst)


def _make_one(job: tuple) -> tuple[str, list[int], list[int]]:
    """Render and write one image; returns (stem, labels, difficult flags) for the summary."""
    out_dir, seed, split, index, min_side, max_side, voc_xml = job
    out = Path(out_dir)
    stem = f"{split}_{index:06d}"
    r = render_image(seed, split, index, min_side, max_side)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(r.image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, r.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {stem}")
    img_path = out / "images" / f"{stem}.jpg"
    img_path.write_bytes(buf.tobytes())
    (out / "labels" / f"{stem}.txt").write_text(_kaggle_lines(r))
    if voc_xml:
        _link_or_copy(img_path, out / "VOC2007" / "JPEGImages" / f"{stem}.jpg")
        (out / "VOC2007" / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, r))
    return stem, [o.label for o in r.objects], [int(o.difficult) for o in r.objects]


def _init_worker() -> None:
    # One OpenCV thread per worker process: the parallelism is across processes.
    cv2.setNumThreads(1)


def _prepare_out_dir(out: Path) -> None:
    """Create out_dir; clear what an earlier generate() left there, refuse foreign content.

    A previous run with more images would otherwise leave stale files that the readers would
    pick up (VOC2007/JPEGImages has no index), and hard links fail on existing names.
    """
    if out.exists() and any(out.iterdir()):
        if not (out / "synthetic.json").is_file():
            raise FileExistsError(
                f"{out}: directory is not empty and holds no synthetic.json; refusing to write "
                "a synthetic dataset into it (choose an empty or new directory)")
        for sub in ("images", "labels", "VOC2007"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        for name in ("train.csv", "test.csv", "synthetic.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0,
             voc_xml: bool = False, min_side: int = 256, max_side: int = 448,
             workers: int | None = None) -> dict:
    """Write a synthetic dataset of n_train + n_test JPEG images to out_dir.

    Kaggle layout always (images/, labels/, train.csv, test.csv), plus the VOCdevkit layout
    under out_dir/VOC2007 when voc_xml is True, plus out_dir/synthetic.json (class design,
    seed, counts). Images are (H, W, 3) with H, W drawn independently from
    [min_side, max_side]. Same arguments give byte-identical files whatever `workers` is
    (default min(2, cpu count); 0 or 1 renders in this process).

    Returns {"out_dir", "seed", "images": {split: n}, "boxes": {split: n},
    "difficult": {split: n}, "class_boxes": {split: {class name: n}}}.
    """
    if getattr(current_process(), "_inheriting", False):
        # We are a spawned worker re-importing a main script that calls generate() at top
        # level. Stop before touching out_dir, with the cause rather than a confusing error.
        raise RuntimeError(
            "generate() was called while a worker process imported the main script; put the "
            "call under `if __name__ == \"__main__\":` (or pass workers=1)")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    if not (8 <= min_side <= max_side):
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    (out / "images").mkdir()
    (out / "labels").mkdir()
    if voc_xml:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (out / "VOC2007" / sub).mkdir(parents=True)

    counts = {"train": n_train, "test": n_test}
    jobs = [(str(out), int(seed), split, i, int(min_side), int(max_side), bool(voc_xml))
            for split in ("train", "test") for i in range(counts[split])]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 8:
        results = [_make_one(j) for j in jobs]
    else:
        # "spawn", never "fork": OpenCV's thread pool (and torch's, in the CLI) does not
        # survive fork; a forked child can deadlock inside cv2. Spawned children re-import
        # the caller's main script, so scripts must call generate() under
        # `if __name__ == "__main__":` (console entry points and `python -c` are fine).
        chunk = max(1, min(32, len(jobs) // (4 * workers)))
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker) as ex:
            results = list(ex.map(_make_one, jobs, chunksize=chunk))

    summary: dict = {"out_dir": str(out), "seed": int(seed), "images": {}, "boxes": {},
                     "difficult": {}, "class_boxes": {}}
    pos = 0
    for split in ("train", "test"):
        part = results[pos:pos + counts[split]]
        pos += counts[split]
        stems = [stem for stem, _, _ in part]
        per_class = np.zeros(len(VOC_CLASSES), dtype=np.int64)
        for _, labels, _ in part:
            np.add.at(per_class, labels, 1)
        summary["images"][split] = len(stems)
        summary["boxes"][split] = int(per_class.sum())
        summary["difficult"][split] = int(sum(sum(d) for _, _, d in part))
        summary["class_boxes"][split] = {VOC_CLASSES[c]: int(n) for c, n in enumerate(per_class)}
        (out / f"{split}.csv").write_text(
            "image,label\n" + "".join(f"{s}.jpg,{s}.txt\n" for s in stems))
        if voc_xml:
            name = "trainval.txt" if split == "train" else "test.txt"
            (out / "VOC2007" / "ImageSets" / "Main" / name).write_text(
                "".join(f"{s}\n" for s in stems))

    meta = {
        "generator": "yolov3.data.synthetic",
        "seed": int(seed),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "min_side": int(min_side),
        "max_side": int(max_side),
        "voc_xml": bool(voc_xml),
        "classes": [{"index": d.index, "name": d.name, "shape": d.shape, "colour": d.colour,
                     "texture": d.texture} for d in CLASS_DESIGN],
        "colour_hues_deg": COLOUR_HUES,
        "images": summary["images"],
        "boxes": summary["boxes"],
        "difficult": summary["difficult"],
        "class_boxes": summary["class_boxes"],
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary
