"""Image transforms: letterbox (undoable, for evaluation) and the training augmentation.

Every transform takes a Sample and the output size and returns a Sample at that size, so
the size can be chosen per batch (multi-resolution training hands it in; nothing here
assumes 416). Boxes always move with the pixels; boxes that leave the image or become too
small are dropped by the augmentation, never by the readers.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from yolov3.data.sample import Sample

PAD_VALUE = 114  # grey padding, the usual YOLO letterbox colour


@dataclass(frozen=True)
class Letterbox:
    """How an image was letterboxed: x_out = x_in * scale_x + pad_x (likewise for y)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def undo(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) xyxy in the letterboxed image -> (N, 4) xyxy in the original image."""
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)
        return (np.asarray(boxes, dtype=np.float32) - offset) / scale


def letterbox(sample: Sample, size: int) -> tuple[Sample, Letterbox]:
    """Resize keeping the aspect ratio so the longer side is `size`, pad to (size, size).

    Returns the new sample (image (size, size, 3)) and the Letterbox that undoes it.
    """
    h, w = sample.image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(sample.image, (new_w, new_h), interpolation=interp)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    # Use the realised per-axis scale so boxes land exactly on the resized pixels.
    sx, sy = new_w / w, new_h / h
    boxes = sample.boxes * np.array([sx, sy, sx, sy], dtype=np.float32) + np.array(
        [pad_x, pad_y, pad_x, pad_y], dtype=np.float32
    )
    info = Letterbox(scale_x=sx, scale_y=sy, pad_x=pad_x, pad_y=pad_y)
    return Sample(out, boxes, sample.labels, sample.difficult, sample.path), info


@dataclass
class AugmentConfig:
    """Training augmentation settings (probabilities in [0, 1]).

    hflip:       probability of a horizontal flip.
    brightness, contrast, saturation: colour-jitter strengths (fractions).
    hue:         hue jitter as a fraction of the hue circle; must lie in [0, 0.5].
    jitter_prob: probability of applying the colour jitter.
    scale:       (min, max) random zoom around the letterboxed image.
    translate:   maximum shift as a fraction of the size.
    affine_prob: probability of applying the zoom/shift.
    min_visibility: a box keeps at least this fraction of its area after crop, else dropped.
    min_box_size: minimum width and height in pixels of a kept box.
    """

    hflip: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.5
    hue: float = 0.015
    jitter_prob: float = 0.8
    scale: tuple[float, float] = (0.6, 1.4)
    translate: float = 0.1
    affine_prob: float = 0.7
    min_visibility: float = 0.3
    min_box_size: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"augment.hue must be in [0, 0.5] (fraction of the hue circle), got {self.hue}")
        for name in ("hflip", "jitter_prob", "affine_prob", "min_visibility"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"augment.{name} must be in [0, 1], got {value}")
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"augment.scale must be (min, max) with 0 < min <= max, got {self.scale}")


class TrainTransform:
    """Letterbox to the batch's size, then random zoom/shift, flip and colour jitter.

    Call as transform(sample, size). One albumentations pipeline is kept per size.
    `set_seed` makes the randomness reproducible (called per DataLoader worker).
    """

    def __init__(self, config: AugmentConfig | None = None, seed: int | None = None) -> None:
        self.config = config or AugmentConfig()
        self._pipelines: dict[int, A.Compose] = {}
        self._seed = seed

    def set_seed(self, seed: int) -> None:
        self._seed = seed
        for pipeline in self._pipelines.values():
            pipeline.set_random_seed(seed)

    def _pipeline(self, size: int) -> A.Compose:
        if size not in self._pipelines:
            c = self.config
            self._pipelines[size] = A.Compose(
                [
                    A.Affine(
                        scale=c.scale,
                        translate_percent=(-c.translate, c.translate),
                        border_mode=cv2.BORDER_CONSTANT,
                        fill=PAD_VALUE,
                        p=c.affine_prob,
                    ),
                    A.HorizontalFlip(p=c.hflip),
                    A.ColorJitter(c.brightness, c.contrast, c.saturation, c.hue, p=c.jitter_prob),
                ],
                bbox_params=A.BboxParams(
                    format="pascal_voc",
                    label_fields=["labels", "index"],
                    min_visibility=c.min_visibility,
                    min_width=c.min_box_size,
                    min_height=c.min_box_size,
                    clip=True,
                ),
                seed=self._seed,
            )
        return self._pipelines[size]

    def __call__(self, sample: Sample, size: int) -> Sample:
        boxed, _ = letterbox(sample, size)
        boxes = np.clip(boxed.boxes, 0, size)
        out = self._pipeline(size)(
            image=boxed.image, bboxes=boxes, labels=boxed.labels, index=np.arange(len(boxed.labels))
        )
        index = np.asarray(out["index"], dtype=np.int64)
        return Sample(
            np.ascontiguousarray(out["image"]),
            np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4),
            boxed.labels[index],
            boxed.difficult[index],
            sample.path,
        )


class EvalTransform:
    """Letterbox only; returns the sample and how to undo it."""

    def __call__(self, sample: Sample, size: int) -> tuple[Sample, Letterbox]:
        return letterbox(sample, size)
