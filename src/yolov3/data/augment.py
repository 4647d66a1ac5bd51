"""Image transforms: letterbox (undoable, for evaluation) and the training augmentation.

Every transform takes a Sample and the output size and returns a Sample at that size, so
the size can be chosen per batch (multi-resolution training hands it in; nothing here
assumes 416). Boxes always move with the pixels; a box that the augmentation cuts down
too far is dropped by one rule (`box_survives`), never by the readers.

Training samples are made in one of two ways, chosen per sample at random:

- mosaic (probability `mosaic_prob`): four images, each resized so its longer side is the
  output size S, are placed around a random centre on a 2S x 2S canvas; a random affine
  (scale, translate, rotation, shear) then maps the canvas centre to the output centre
  and the result is cropped to S x S;
- single image: letterboxed to S x S, then (probability `affine_prob`) the same kind of
  random affine with its own scale range.

Both then get the horizontal flip, the colour jitter (ours: one affine colour transform,
`colour_jitter`) and blur / grayscale / CLAHE at low probability (albumentations). The
geometric part is ours because the box rule has to see the whole chain (tile resize, canvas
cut, affine, crop) to measure how much of each box survives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from yolov3.data import timing
from yolov3.data.colour import colour_jitter
from yolov3.data.sample import Sample
from yolov3.letterbox import PAD_VALUE, Letterbox, letterbox_style, longest_side_to, resize_image


def resize_longest(image: np.ndarray, boxes: np.ndarray, size: int,
                   fast: bool = False) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Resize keeping the aspect ratio so the longer side is `size`.

    image (H, W, 3), boxes (N, 4) xyxy -> resized image, boxes on it, and the realised
    per-axis scales (sx, sy) (rounding the new sides makes them differ slightly).
    `fast` as in letterbox.resize_image.
    """
    h, w = image.shape[:2]
    new_w, new_h, _ = longest_side_to(w, h, size)
    with timing.stage("resize"):
        image = resize_image(image, new_w, new_h, fast)
    sx, sy = new_w / w, new_h / h
    return image, boxes * np.array([sx, sy, sx, sy], dtype=np.float32), sx, sy


def letterbox(sample: Sample, size: int, fast: bool = False, style: str = "yolo") -> tuple[Sample, Letterbox]:
    """The sample letterboxed to (size, size) (see yolov3.letterbox) and the Letterbox that
    undoes it. `fast` as in letterbox.resize_image; `style` a name of LETTERBOX_STYLES."""
    h, w = sample.image.shape[:2]
    info = Letterbox.fit(w, h, size)
    with timing.stage("resize"):
        image = info.apply_image(sample.image, fast, style)
    return Sample(image, info.apply_boxes(sample.boxes), sample.labels, sample.difficult, sample.path), info


@dataclass
class AugmentConfig:
    """Training augmentation settings (probabilities in [0, 1]).

    Mosaic:
        mosaic_prob:  share of training samples made as a mosaic of four images.
        mosaic_scale: (min, max) zoom of the mosaic's affine (1 = tiles at the output size).
        close_mosaic_epochs: no mosaic in the last N epochs of a run, so the model finishes
                      on whole images like those it is evaluated on (needs the trainer's
                      max_epochs; 0 = mosaic to the end).
    Single-image geometry:
        affine_prob:  probability of the random affine on a non-mosaic sample.
        scale:        (min, max) zoom of that affine.
    Both:
        translate:    maximum shift as a fraction of the output size.
        degrees:      maximum rotation, degrees either way.
        shear:        maximum shear, degrees either way.
    Which boxes survive (after every geometric step, in output pixels):
        min_box_size:     minimum width and height in pixels.
        min_area_ratio:   minimum fraction of the box's area that must remain (measured
                          against the whole box, scaled by the affine, so cutting by
                          the mosaic canvas and by the final crop both count).
        max_aspect_ratio: maximum of width/height and height/width.
    Flip and colour:
        hflip:        probability of a horizontal flip.
        brightness, contrast, saturation: colour-jitter strengths (fractions).
        hue:          hue jitter as a fraction of the hue circle; must lie in [0, 0.5].
        jitter_prob:  probability of applying the colour jitter.
        blur_prob, gray_prob, clahe_prob: probabilities of blur, grayscale and CLAHE.
    """

    mosaic_prob: float = 0.75
    mosaic_scale: tuple[float, float] = (0.5, 1.5)
    close_mosaic_epochs: int = 0
    affine_prob: float = 0.7
    scale: tuple[float, float] = (0.6, 1.4)
    translate: float = 0.1
    degrees: float = 0.0
    shear: float = 0.0
    min_box_size: float = 2.0
    min_area_ratio: float = 0.2
    max_aspect_ratio: float = 20.0
    hflip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.5
    hue: float = 0.015
    jitter_prob: float = 0.8
    blur_prob: float = 0.01
    gray_prob: float = 0.01
    clahe_prob: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5] (fraction of the hue circle), got {self.hue}")
        for name in ("mosaic_prob", "affine_prob", "hflip", "jitter_prob", "blur_prob", "gray_prob",
                     "clahe_prob", "min_area_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {value}")
        for name in ("scale", "mosaic_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"augment.{name} must be (min, max) with 0 < min <= max, got {getattr(self, name)}")
        for name in ("translate", "brightness", "contrast", "saturation", "min_box_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.degrees <= 180:
            raise ValueError(f"augment.degrees must be in [0, 180], got {self.degrees}")
        if not 0 <= self.shear < 90:
            raise ValueError(f"augment.shear must be in [0, 90), got {self.shear}")
        if self.close_mosaic_epochs < 0:
            raise ValueError(f"augment.close_mosaic_epochs must be >= 0, got {self.close_mosaic_epochs}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"augment.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")


def random_affine_matrix(rng: np.random.Generator, src_centre: tuple[float, float], out_size: int,
                         scale: tuple[float, float], translate: float, degrees: float, shear: float) -> np.ndarray:
    """A random (2, 3) affine that maps `src_centre` near the output centre.

    out = T(out_size/2 + shift) . R(angle) . Sh(shear) . Z(zoom) . T(-src_centre), with the
    zoom uniform in `scale`, the angle and shear uniform in +-degrees / +-shear, and the
    shift uniform in +-translate * out_size on each axis.
    """
    zoom = rng.uniform(*scale)
    angle = math.radians(rng.uniform(-degrees, degrees))
    shx, shy = (math.tan(math.radians(rng.uniform(-shear, shear))) for _ in range(2))
    tx, ty = (rng.uniform(-translate, translate) * out_size for _ in range(2))
    c, s = math.cos(angle), math.sin(angle)
    linear = np.array([[c, -s], [s, c]]) @ np.array([[1.0, shx], [shy, 1.0]]) * zoom
    centre = np.asarray(src_centre, dtype=np.float64)
    offset = np.array([out_size / 2 + tx, out_size / 2 + ty]) - linear @ centre
    return np.concatenate((linear, offset[:, None]), axis=1)


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(N, 4) xyxy -> (N, 4) xyxy: the axis-aligned box around the 4 transformed corners."""
    if len(boxes) == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack(p, -1) for p in ((x1, y1), (x2, y1), (x1, y2), (x2, y2))], 1)  # (N, 4, 2)
    moved = corners @ matrix[:, :2].T + matrix[:, 2]
    return np.concatenate((moved.min(1), moved.max(1)), 1).astype(np.float32)


def box_survives(boxes: np.ndarray, full_area: np.ndarray, config: AugmentConfig) -> np.ndarray:
    """Which boxes to keep after augmentation: boxes (N, 4) xyxy, already clipped to the
    output; full_area (N,) the area each box would have uncut (source area x the affine's
    area factor). Returns a (N,) bool mask (the rule of AugmentConfig)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    big_enough = (w >= config.min_box_size) & (h >= config.min_box_size) & (w > 0) & (h > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.maximum(w / h, h / w)
        kept_share = w * h / full_area
    return big_enough & (kept_share >= config.min_area_ratio) & (aspect <= config.max_aspect_ratio)


def _finish(image: np.ndarray, boxes: np.ndarray, full_area: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
            path: str, size: int, config: AugmentConfig) -> Sample:
    with timing.stage("survival filter"):
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, size)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, size)
        keep = box_survives(boxes, full_area, config)
        return Sample(image, boxes[keep], labels[keep], difficult[keep], path)


def affine_sample(sample: Sample, size: int, matrix: np.ndarray, config: AugmentConfig,
                  full_area: np.ndarray | None = None) -> Sample:
    """Warp a sample with a (2, 3) matrix into (size, size), moving and filtering its boxes.

    full_area: (N,) uncut area of each box in the sample's own pixels (default: its area
    now); it is scaled by the matrix's area factor before the survival rule is applied.
    """
    image = cv2.warpAffine(sample.image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)
    if full_area is None:
        full_area = (sample.boxes[:, 2] - sample.boxes[:, 0]) * (sample.boxes[:, 3] - sample.boxes[:, 1])
    area_factor = abs(np.linalg.det(matrix[:, :2]))
    return _finish(image, warp_boxes(sample.boxes, matrix), full_area * area_factor, sample.labels,
                   sample.difficult, sample.path, size, config)


def mosaic(samples: Sequence[Sample], size: int, rng: np.random.Generator, config: AugmentConfig) -> Sample:
    """Four samples -> one (size, size) mosaic sample.

    Each sample is resized so its longer side is `size` and placed in one quadrant around a
    random centre (uniform in [size/2, 3*size/2] on each axis) of a (2 size)^2 canvas: the
    first has its bottom-right corner at the centre, the second its bottom-left, the third
    its top-right, the fourth its top-left. Parts that fall off the canvas are cut. Then a
    random affine (mosaic_scale, translate, degrees, shear) maps the canvas centre near the
    output centre, and the output is cropped to (size, size). A box survives by
    `box_survives`, its uncut area being its area in the resized tile.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic takes 4 samples, got {len(samples)}")
    canvas_size = 2 * size
    canvas = np.full((canvas_size, canvas_size, 3), PAD_VALUE, dtype=np.uint8)
    xc, yc = (int(rng.uniform(size / 2, 3 * size / 2)) for _ in range(2))
    all_boxes, areas, labels, difficult = [], [], [], []
    for k, s in enumerate(samples):
        tile, boxes, _, _ = resize_longest(s.image, s.boxes, size, fast=True)
        h, w = tile.shape[:2]
        x0 = xc - w if k in (0, 2) else xc  # tile's top-left corner on the canvas
        y0 = yc - h if k in (0, 1) else yc
        # the visible part of the tile, in canvas and in tile coordinates
        cx1, cy1, cx2, cy2 = max(x0, 0), max(y0, 0), min(x0 + w, canvas_size), min(y0 + h, canvas_size)
        canvas[cy1:cy2, cx1:cx2] = tile[cy1 - y0 : cy2 - y0, cx1 - x0 : cx2 - x0]
        areas.append((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        boxes = boxes + np.array([x0, y0, x0, y0], dtype=np.float32)
        # cut boxes to the visible part of their own tile (the canvas edge)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(cx1, cx2)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(cy1, cy2)
        all_boxes.append(boxes)
        labels.append(s.labels)
        difficult.append(s.difficult)
    joined = Sample(canvas, np.concatenate(all_boxes), np.concatenate(labels), np.concatenate(difficult),
                    samples[0].path)
    matrix = random_affine_matrix(rng, (size, size), size, config.mosaic_scale, config.translate,
                                  config.degrees, config.shear)
    return affine_sample(joined, size, matrix, config, full_area=np.concatenate(areas).astype(np.float32))


def hflip(sample: Sample, size: int) -> Sample:
    """Mirror a (size, size) sample left to right."""
    boxes = sample.boxes.copy()
    boxes[:, [0, 2]] = size - sample.boxes[:, [2, 0]]
    return Sample(np.ascontiguousarray(sample.image[:, ::-1]), boxes, sample.labels, sample.difficult, sample.path)


class TrainTransform:
    """The training augmentation: mosaic or single-image geometry, then flip and colour.

    Call as transform(sample, size, pool): `pool` is the sequence the three other mosaic
    images are drawn from (the training set); without it no mosaic is made. All choices
    (mosaic or not, partners, affine, flip, colour jitter) come from one numpy Generator,
    blur / grayscale / CLAHE from albumentations' own seeded generator; `set_seed` re-seeds both
    (the DataModule calls it once per DataLoader worker, so workers differ but a run is
    reproducible).
    """

    def __init__(self, config: AugmentConfig | None = None, seed: int | None = None) -> None:
        # imported here: inference (Detector, the app, a Space) letterboxes with this module
        # and needs neither albumentations nor its SciPy
        import albumentations as A

        self.config = config or AugmentConfig()
        c = self.config
        self.photometric = A.Compose(
            [
                A.Blur(blur_limit=(3, 5), p=c.blur_prob),
                A.ToGray(num_output_channels=3, p=c.gray_prob),
                A.CLAHE(p=c.clahe_prob),
            ]
        )
        self.rng = np.random.default_rng(seed)
        self.set_seed(seed)

    def set_seed(self, seed: int | None) -> None:
        self.rng = np.random.default_rng(seed)
        # albumentations gets its own stream drawn from ours, so one seed fixes both
        self.photometric.set_random_seed(int(self.rng.integers(2**31)))

    def __call__(self, sample: Sample, size: int, pool: Sequence[Sample] | None = None) -> Sample:
        c, rng = self.config, self.rng
        if pool is not None and len(pool) > 0 and rng.random() < c.mosaic_prob:
            partners = [pool[int(i)] for i in rng.integers(len(pool), size=3)]
            with timing.stage("mosaic/affine"):
                out = mosaic([sample, *partners], size, rng, c)
        else:
            with timing.stage("mosaic/affine"):
                out, _ = letterbox(sample, size, fast=True)
                if rng.random() < c.affine_prob:
                    matrix = random_affine_matrix(rng, (size / 2, size / 2), size, c.scale, c.translate,
                                                  c.degrees, c.shear)
                    out = affine_sample(out, size, matrix, c)
        if rng.random() < c.hflip:
            with timing.stage("mosaic/affine"):
                out = hflip(out, size)
        with timing.stage("colour"):
            image = out.image
            if rng.random() < c.jitter_prob:
                image = colour_jitter(image, rng, c)
            image = np.ascontiguousarray(self.photometric(image=image)["image"])
        return Sample(image, out.boxes, out.labels, out.difficult, out.path)


class EvalTransform:
    """Letterbox only, in `style` (a name of yolov3.letterbox.LETTERBOX_STYLES); returns the
    sample and how to undo it."""

    def __init__(self, style: str = "yolo") -> None:
        letterbox_style(style)  # ValueError for an unknown name, before any image
        self.style = style

    def __call__(self, sample: Sample, size: int) -> tuple[Sample, Letterbox]:
        return letterbox(sample, size, style=self.style)
