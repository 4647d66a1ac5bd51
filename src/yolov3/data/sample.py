"""The one sample type every reader yields, the data error, and the image loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


class DataError(ValueError):
    """A problem with a file of the dataset; the message names the file (and line)."""


@dataclass
class Sample:
    """One image and its boxes.

    image:     (H, W, 3) uint8 RGB.
    boxes:     (N, 4) float32 x1, y1, x2, y2 in pixels of `image`, 0-based.
    labels:    (N,) int64 class indices.
    difficult: (N,) bool, VOC's `difficult` flag (False where the layout has none).
    path:      the image file it came from.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray = field(default=None)  # type: ignore[assignment]
    path: str = ""

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.difficult is None:
            self.difficult = np.zeros(len(self.labels), dtype=bool)
        self.difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.difficult)):
            raise ValueError(
                f"{self.path}: {len(self.boxes)} boxes, {len(self.labels)} labels and "
                f"{len(self.difficult)} difficult flags; they must be equal"
            )


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    EXIF orientation is applied (the pixels come out the way a viewer shows them), and
    grayscale, RGBA, CMYK and palette images are converted to RGB. Raises DataError naming
    the file when it cannot be read or decoded (missing, not an image, truncated).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image as load_rgb would return it, reading only the header."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    # EXIF orientations 5-8 swap width and height.
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
