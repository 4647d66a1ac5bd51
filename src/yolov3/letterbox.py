"""The letterbox: how an image is fitted into the network's S x S input, and how to undo it.

An image of W x H pixels is resized keeping its aspect ratio so that its longer side is S
(each new side rounded to whole pixels, so the realised per-axis scales differ slightly),
then padded with grey to S x S, centred. In input pixels

    x_in = x * scale_x + pad_x,    y_in = y * scale_y + pad_y.

`Letterbox` is the one owner of that mapping: evaluation, the Detector, the ONNX backend's
calibration and CAM all apply and undo it through it (images and boxes forward; boxes and
maps on the network's grid back; detections back, less those that lie wholly in the padding:
Letterbox.undo_detections). Training makes its inputs by other geometry (mosaic,
random affine) that is never undone, so training batches carry no Letterbox.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch

PAD_VALUE = 114  # grey padding, the usual YOLO letterbox colour


class LetterboxStyle(NamedTuple):
    """What fills the padding and how a larger image is shrunk: the part of the input
    convention a model learns (its evaluation and inference must use the one it was trained
    with). pad_value: 0-255, the same in every channel. shrink: "area" (area averaging) or
    "linear" (bilinear); enlarging is always bilinear."""

    pad_value: int
    shrink: str


# "yolo": this project's (grey 114, as YOLO letterboxes; area averaging, which does not alias).
# "course": the course's test_transforms (albumentations LongestMaxSize, bilinear by default, then
# PadIfNeeded with BORDER_CONSTANT, i.e. black, centred the same way: floor((S - h) / 2) on top).
LETTERBOX_STYLES: dict[str, LetterboxStyle] = {"yolo": LetterboxStyle(PAD_VALUE, "area"),
                                               "course": LetterboxStyle(0, "linear")}


def letterbox_style(name: str, what: str = "letterbox") -> LetterboxStyle:
    """The style of that name; ValueError naming `what` and the choices for another."""
    try:
        return LETTERBOX_STYLES[name]
    except (KeyError, TypeError):
        raise ValueError(f"{what}: unknown letterbox style {name!r}; choose {' or '.join(LETTERBOX_STYLES)}") from None


def longest_side_to(w: int, h: int, size: int) -> tuple[int, int, float]:
    """(new_w, new_h, scale) of a w x h image scaled so its longer side is `size` (sides rounded, >= 1)."""
    scale = size / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale)), scale


def resize_image(image: np.ndarray, new_w: int, new_h: int, fast: bool = False, shrink: str = "area") -> np.ndarray:
    """image (H, W, C) -> (new_h, new_w, C); the same array when the size is unchanged.

    Shrinking uses area averaging (shrink "area"), unless `fast` (training), where bilinear
    is 5x quicker and the slight aliasing is one more augmentation, or shrink "linear" (the
    course's style); enlarging is bilinear.
    """
    h, w = image.shape[:2]
    if (new_w, new_h) == (w, h):
        return image
    shrinking = new_w < w or new_h < h
    interp = cv2.INTER_AREA if shrinking and not fast and shrink == "area" else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


class Letterbox(NamedTuple):
    """How a `width` x `height` image was fitted into a `size` x `size` input.

    x_in = x * scale_x + pad_x and y_in = y * scale_y + pad_y (pixels; pads are whole
    pixels). Make one with `Letterbox.fit`. A NamedTuple, not a dataclass: it travels in
    evaluation batches, and Lightning's batch transfer rebuilds tuples but refuses frozen
    dataclasses.
    """

    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    width: int
    height: int
    size: int

    @classmethod
    def fit(cls, width: int, height: int, size: int) -> Letterbox:
        """The letterbox of a width x height image into size x size."""
        if width < 1 or height < 1 or size < 1:
            raise ValueError(f"letterbox needs positive sizes, got image {width}x{height} into {size}")
        new_w, new_h, _ = longest_side_to(width, height, size)
        return cls(scale_x=new_w / width, scale_y=new_h / height, pad_x=(size - new_w) // 2,
                   pad_y=(size - new_h) // 2, width=width, height=height, size=size)

    @property
    def resized(self) -> tuple[int, int]:
        """(new_w, new_h): the image's size inside the input, padding excluded."""
        return round(self.width * self.scale_x), round(self.height * self.scale_y)

    def apply_image(self, image: np.ndarray, fast: bool = False, style: str = "yolo") -> np.ndarray:
        """image (height, width, 3) uint8 -> (size, size, 3) uint8; `fast` as in resize_image,
        `style` a name of LETTERBOX_STYLES (padding colour, how it shrinks)."""
        if image.shape[:2] != (self.height, self.width):
            raise ValueError(f"this letterbox is for {self.width}x{self.height} images, got "
                             f"{image.shape[1]}x{image.shape[0]}")
        pad_value, shrink = letterbox_style(style)
        new_w, new_h = self.resized
        out = np.full((self.size, self.size, image.shape[2]), pad_value, dtype=np.uint8)
        out[self.pad_y : self.pad_y + new_h, self.pad_x : self.pad_x + new_w] = resize_image(image, new_w, new_h,
                                                                                            fast, shrink)
        return out

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """boxes (N, 4) xyxy in image pixels -> (N, 4) float32 in input pixels."""
        scale = np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y], dtype=np.float32)
        pad = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float32)
        return (boxes * scale + pad).astype(np.float32, copy=False)

    def undo_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (K, 4) xyxy in input pixels -> (K, 4) in image pixels, clipped to the image
        (same dtype and device). Evaluation, the Detector and CAM all undo with this."""
        pad = boxes.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        scale = boxes.new_tensor([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        out = (boxes - pad) / scale
        w, h = float(self.width), float(self.height)
        return torch.stack((out[:, 0].clamp(0, w), out[:, 1].clamp(0, h),
                            out[:, 2].clamp(0, w), out[:, 3].clamp(0, h)), 1)

    @property
    def region(self) -> tuple[float, float, float, float]:
        """The image's area in input pixels, x1, y1, x2, y2 (the input without the padding).
        A box covers some of the image (on_image) iff it overlaps this with positive width and
        height: postprocess drops the others before NMS (see stack_regions)."""
        return (float(self.pad_x), float(self.pad_y), self.pad_x + self.width * self.scale_x,
                self.pad_y + self.height * self.scale_y)

    def on_image(self, boxes: torch.Tensor) -> torch.Tensor:
        """boxes (K, 4) xyxy in input pixels -> (K,) bool: whether the box, undone and clipped
        (undo_boxes), keeps a width and a height above zero, i.e. covers some of the image.

        A detection that fails this lies wholly in the letterbox's padding (on a very elongated
        image the grey bands are most of the input) or on the image's edge line: clipped, it
        becomes a box of zero width or height, which covers no pixel of the image, can match no
        object (its IoU with anything is 0, so evaluation can only count it a false positive) and
        draws as a line. It is not a detection of the image, so undo_detections drops it.
        """
        out = self.undo_boxes(boxes)
        return (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])

    def undo_detections(self, det: torch.Tensor) -> torch.Tensor:
        """det (K, 4 + n) with xyxy in input pixels first (then score, class, ...) -> (K', 4 + n) in
        image pixels, clipped, without the detections that cover none of the image (on_image says
        why). The one rule for the Detector (to_original), evaluation (YoloLitModule.detect) and
        CAM (yolov3.cam.explain, which drops their maps too). Those callers also give postprocess
        the regions, so such candidates never enter NMS (where they could suppress a box on the
        image or take one of max_detections' places); this pass then only catches a box on the
        region's edge that float rounding let through."""
        keep = self.on_image(det[:, :4])
        kept = det[keep]
        return torch.cat((self.undo_boxes(kept[:, :4]), kept[:, 4:]), 1)

    def undo_map(self, grid_map: torch.Tensor) -> np.ndarray:
        """A map on the network's grid (h, w) -> (height, width) float32 on the image.

        Bilinear upsampling to the (size, size) input, the padding cropped off, then a
        bilinear resize to the image. Values are resampled, not rescaled.
        """
        up = torch.nn.functional.interpolate(grid_map.detach().float()[None, None], size=(self.size, self.size),
                                             mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
        new_w, new_h = self.resized
        crop = up[self.pad_y : self.pad_y + new_h, self.pad_x : self.pad_x + new_w]
        return cv2.resize(crop, (self.width, self.height), interpolation=cv2.INTER_LINEAR).astype(np.float32)


def stack_regions(infos, device: torch.device | str | None = None) -> torch.Tensor:
    """(B, 4) float32: each Letterbox's region, for postprocess(regions=...)."""
    return torch.tensor([info.region for info in infos], dtype=torch.float32, device=device).reshape(-1, 4)
