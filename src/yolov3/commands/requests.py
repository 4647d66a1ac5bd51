"""What a request to the app brings, checked, and the files the page hands back.

Uploads are read header first and refused with a message naming the file (not an image,
too many pixels) before any decoding; settings sent through the API are checked against
their type and range by name, since API calls bypass the page's sliders; images sent inline
as data: URLs and the output images are written once per content, whole or not at all.
yolov3.commands.app wires these into the Gradio page.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import os
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from yolov3.data.sample import DataError, decode_image, frames_text, image_size

# Refused above this many pixels: decoding alone would need > 120 MB and seconds, and the
# network sees at most 608 x 608 anyway. Images with a longer side than MAX_SIDE are
# downscaled first (the boxes are then in the downscaled image's pixels, as shown).
MAX_PIXELS = 40_000_000
MAX_SIDE = 4096



def gradio():
    """The gradio package, imported on first use, with its usage analytics off. Its import
    takes seconds, and `yolov3 space`, the Detector and DetectorApp.predict (tested without
    a page) need none of it: this is the one place it is imported."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    return gr


class UploadError(ValueError):
    """An upload the app cannot use; the message says which file and why."""


def read_upload(path: str | Path | None, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                name: str | None = None) -> tuple[np.ndarray, str]:
    """An uploaded file -> ((H, W, 3) uint8 RGB, a note for the user; "" when nothing was done).

    The header is read first, so a file that is not an image, or is too big, is refused
    before any decoding. Of an image of several frames (animated GIF, PNG or WebP, multi-page
    TIFF) the first is read, and the note says so. Raises UploadError naming the file (`name`,
    else the path's name).
    """
    if path is None:
        raise UploadError("no image: upload one, take a webcam snapshot or pick an example")
    label = name or Path(path).name
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: our own limit below says more
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = image_size(path)
    except DataError as exc:
        raise UploadError(f"{label} is not an image this app can read ({_reason(exc)})") from None
    if w * h > max_pixels:
        raise UploadError(f"{label} is {w} x {h} pixels ({w * h / 1e6:.0f} MP); the app takes images up to "
                          f"{max_pixels / 1e6:.0f} MP. Downscale it first, or use `yolov3 detect`, "
                          f"which has no limit.")
    try:
        image, _, frames = decode_image(path)
    except DataError as exc:
        raise UploadError(f"{label} could not be decoded ({_reason(exc)})") from None
    first = f"{label} holds {frames_text(frames)}; only the first is read." if frames != 1 else ""
    if max(w, h) <= max_side:
        return image, first
    scale = max_side / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
    return image, " ".join(filter(None, (first, f"{label} was downscaled from {w} x {h} to {new[0]} x {new[1]} "
                                                f"pixels (longer side at most {max_side}); boxes are in the "
                                                f"downscaled image's pixels.")))


def described(value) -> str:
    """A value from a request, short enough for a message, with its type."""
    text = repr(value)
    return f"{text[:60]}{'...' if len(text) > 60 else ''} (of type {type(value).__name__})"


def not_a_file(shown: str) -> str:
    return f"image must be an uploaded file (gradio_client.handle_file(path)), not {shown}"


def setting_value(value, label: str, lo: float, hi: float) -> float:
    """A setting from a request as a float in [lo, hi]; UploadError naming the setting else.

    API calls bypass the page's sliders, so anything can arrive: strings, booleans (which
    Python would silently take as 0 and 1), NaN (which `x < lo or x > hi` lets through).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UploadError(f"{label} must be a number from {lo:g} to {hi:g}, not {described(value)}")
    value = float(value)
    if not lo <= value <= hi:  # False for NaN too
        raise UploadError(f"{label} must be a number from {lo:g} to {hi:g}, not {value:g}")
    return value


def detection_index(value) -> int:
    """The "detection to explain" from a request: a whole number >= 0 (a digit string too,
    as a form field may send it); UploadError else."""
    if value is None or value == "":
        return 0
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
            and float(value).is_integer() and value >= 0:
        return int(value)
    raise UploadError(f"detection to explain must be a detection's number (0, 1, ...), not {described(value)}")


def _reason(exc: DataError) -> str:
    """The part of a DataError after "<path>: " (the app names the file by its upload name)."""
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


NOT_A_FILE = "yolov3_not_a_file"  # the key in ImageData.meta of a request's image that was no file


@functools.cache
def image_data_or_not():
    """Gradio's ImageData, except that a value which is not a file's description at all (an
    API call that sent a number or a bare string) validates too, as an empty one whose `meta`
    says what was sent. The page's image preprocessing then refuses it with a message; Gradio
    validates before any preprocessing, and pydantic's message names its model and links
    its documentation instead of saying what the app wants."""
    from pydantic import BaseModel, model_validator  # a dependency of Gradio

    class ImageData(gradio().data_classes.ImageData):  # Gradio's name: the API's schema stays as it was
        @model_validator(mode="before")
        @classmethod
        def _not_a_file(cls, value):
            if value is None or isinstance(value, (dict, BaseModel)):
                return value
            return {"meta": {"_type": "gradio.FileData", NOT_A_FILE: described(value)}}

    return ImageData


def save_data_url(url: str, cache_dir: str | Path) -> str:
    """Write the bytes of a base64 data: URL (an image sent inline) to a file, unchanged;
    its path. Raises gr.Error when the URL is not base64 data."""
    head, _, data = url.partition(",")
    try:
        if not head.endswith(";base64"):
            raise ValueError("not base64")
        raw = base64.b64decode(data, validate=True)
    except (ValueError, binascii.Error):
        raise gradio().Error("the image sent as a data: URL is not base64 data (send a file: "
                       "gradio_client.handle_file(path))", title="Cannot use this input",
                       print_exception=False) from None
    return _write_once(raw, Path(cache_dir) / "data-url", "pasted image")


def _write_once(data: bytes, root: Path, name: str) -> str:
    """Write `data` to root/<its hash>/name unless that file exists; its path.

    One folder per content, as Gradio keeps its files, so repeated content is written once;
    and the file is written under a temporary name and renamed into place, so it is whole
    or absent for a request reading it at the same time.
    """
    folder = root / hashlib.sha256(data).hexdigest()[:32]
    path = folder / name
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
        tmp.write_bytes(data)
        tmp.replace(path)
    return str(path)


def png_file(image: np.ndarray | None, cache_dir: str | Path, name: str) -> str | None:
    """An output image as a PNG file of its own (see _write_once), for an Image output.

    Handed an array, Gradio writes its PNG to a path named by the content's hash in place
    (truncate, then write): when two requests give the same image (the same upload and
    settings), one rewrites the file while the other's client downloads it, which then gets
    a short file ("Too little data for declared Content-Length", seen under load). Handed
    a file, Gradio copies it to its cache under a temporary name and renames it.
    """
    if image is None:
        return None
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")
    return _write_once(buffer.getvalue(), Path(cache_dir) / "outputs", name)
