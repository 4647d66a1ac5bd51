"""The one sample type every reader yields, its annotation arrays' check, the data error, the image
loader, and the image files named by the commands' path arguments (expand_sources).

Pixels are the STORED pixels: an EXIF orientation tag is reported (``read_image`` returns
it) but never applied, because VOC boxes are drawn on the stored pixels, as the VOC devkit
(MATLAB imread), darknet and the course's code (PIL without exif_transpose) read them.
An image of several frames (animated GIF, APNG or WebP, multi-page TIFF) is read at its first
frame; ``decode_image`` says how many it has, for the callers' warnings.
"""

from __future__ import annotations

import glob
import io
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image, UnidentifiedImageError

from yolov3.data import timing

log = logging.getLogger("yolov3.data")

# Pillow refuses images above twice its MAX_IMAGE_PIXELS (2 x 89,478,485) as decompression
# bombs; the readers keep that limit, with a message of their own instead of Pillow's warning
# or error. Callers that want another (detect: 40 MP, like the app) pass max_pixels.
MAX_PIXELS = 178_956_970

# File name suffixes taken as images: by `yolov3 detect` and the app when they expand folders
# and globs, and by the Kaggle reader to tell a CSV header row from a data row. (An animated
# GIF, PNG or WebP, or a multi-page TIFF, is read at its first frame, with a warning.)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# EXIF tag 0x0112. 1 (or no tag) means "show as stored"; 2-8 mean a viewer mirrors and/or
# rotates the image; other values are not defined and viewers ignore them.
ORIENTATION_TAG = 0x0112
ORIENTATIONS = {
    2: "mirrored left-right", 3: "rotated 180 degrees", 4: "mirrored top-bottom",
    5: "transposed", 6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise",
}

# Image modes load_rgb turns into RGB without guessing at a value range. 16-bit grayscale is
# handled apart (scaled to 8 bits); 32-bit integer or float samples have no agreed range and
# are refused rather than clipped.
_TO_RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def printable(text: str) -> str:
    """text with the lone surrogates of undecodable file-name bytes as \\xNN escapes.

    On Linux a file name is bytes; Python carries a byte that is not UTF-8 as a lone surrogate
    (surrogateescape), which a UTF-8 terminal or log file refuses to encode. b"caf\\xe9.jpg"
    (Latin-1) reads "caf\\xe9.jpg" here: the backslash sequence is four ASCII characters.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from file-name bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class DataError(ValueError):
    """A problem with a file of the dataset; the message names the file (and line).

    The message is made printable (see `printable`), so printing or logging it never fails on
    a file name that is not valid UTF-8.
    """

    def __init__(self, message: str) -> None:
        super().__init__(printable(str(message)))


def annotation_arrays(
    boxes: ArrayLike, labels: ArrayLike, difficult: ArrayLike | None, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An image's annotations as the arrays every Sample and Record holds.

    boxes:     anything of 4N numbers -> (N, 4) float32 x1, y1, x2, y2 in pixels.
    labels:    N class indices -> (N,) int64.
    difficult: N flags -> (N,) bool; None means all False.
    where:     the image file, to name it in the error.

    The arrays may share memory with the inputs (no copy when the dtype already fits).
    Raises ValueError naming `where` when N differs between the three.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if difficult is None:
        difficult = np.zeros(len(labels), dtype=bool)
    difficult = np.asarray(difficult, dtype=bool).reshape(-1)
    if not (len(boxes) == len(labels) == len(difficult)):
        raise ValueError(
            f"{where}: {len(boxes)} boxes, {len(labels)} labels and "
            f"{len(difficult)} difficult flags; they must be equal"
        )
    return boxes, labels, difficult


@dataclass
class Sample:
    """One image and its boxes.

    image:     (H, W, 3) uint8 RGB, the stored pixels (EXIF orientation not applied).
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
        self.boxes, self.labels, self.difficult = annotation_arrays(
            self.boxes, self.labels, self.difficult, self.path
        )


# Pillow's bomb check runs inside Image.open against the module global MAX_IMAGE_PIXELS
# (a warning above it, an error above twice it). Our callers check against a limit of their
# own, so the header is opened with Pillow's check off; the global is switched only around
# the header read (no decoding happens there) and under a lock, so threads of this module
# never see each other's setting and restore it in the right order.
_PILLOW_LIMIT_LOCK = threading.Lock()


@contextmanager
def _open(path: Path | io.BytesIO) -> Iterator[Image.Image]:
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            im = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with im:
        yield im


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag, 1 when absent or unreadable (it is only reported, never
    applied, so a damaged EXIF block must not make the image unreadable)."""
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001  # Pillow's EXIF parser raises many types on bad data
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _cannot_read(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: image file not found")
    if isinstance(exc, PermissionError):
        return DataError(f"{path}: cannot read image (permission denied)")
    if isinstance(exc, IsADirectoryError):
        return DataError(f"{path}: is a folder, not an image file")
    if isinstance(exc, UnidentifiedImageError):  # its text names the in-memory copy, not the file
        return DataError(f"{path}: cannot read image (cannot identify image file: not a format Pillow decodes)")
    return DataError(f"{path}: cannot read image ({exc})")


_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _too_large(path: Path, w: int, h: int, max_pixels: int) -> DataError:
    return DataError(
        f"{path}: {w} x {h} pixels ({w * h / 1e6:.1f} MP) is more than the limit of "
        f"{max_pixels / 1e6:.1f} MP (a file this large may be a decompression bomb)"
    )


class Decoded(NamedTuple):
    """An image file, decoded (decode_image).

    pixels:      (H, W, 3) uint8 RGB, the stored pixels of its first frame.
    orientation: the EXIF orientation tag, 1-8 (1 when absent); NOT applied.
    frames:      how many frames (pages) the file holds: 1 for a still image, n for an animated
                 GIF, PNG or WebP or a multi-page TIFF (only the first is in `pixels`), 0 for
                 one that says it has several but whose later frames cannot be counted.
    """

    pixels: np.ndarray
    orientation: int
    frames: int


def frames_text(frames: int) -> str:
    """"12 frames" or "several frames" (frames == 0, see Decoded), for messages."""
    return f"{frames} frames" if frames else "several frames"


# The formats whose files hold animations or pages, each a frame to Pillow: GIF, APNG, TIFF,
# WebP, FLI/FLC animations, DCX (multi-page PCX). Not MPO (see _frames), not PSD (whose
# "frames" are the layers of the one picture frame 0 already is).
_MULTI_FRAME_FORMATS = frozenset({"GIF", "PNG", "TIFF", "WEBP", "FLI", "DCX"})


def _frames(data: bytes) -> int:
    """How many frames the image file `data` holds (see Decoded.frames), counted on a handle of
    its own: counting walks every frame's header, which must not disturb the decoding of frame
    0, and a damaged later frame must not make the first unreadable. Only for
    _MULTI_FRAME_FORMATS: an MPO (a camera's JPEG with a second, preview or depth image after
    the photo) is one picture, the photo, which comes first and is what every viewer shows."""
    try:
        with _open(io.BytesIO(data)) as im:
            return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # noqa: BLE001  # a damaged later frame (Pillow raises many types): the first was fine
        return 0


def decode_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Decoded:
    """Decode an image file completely: its first frame's stored pixels, its EXIF orientation
    and its frame count (see Decoded).

    The orientation is the EXIF tag's value (1 when absent; 2-8 mean a viewer would show
    the image mirrored or rotated); it is NOT applied. Grayscale, palette, RGBA (alpha
    dropped, the stored colour kept), CMYK and YCbCr images become RGB; 16-bit grayscale is
    scaled to 8 bits (round(v * 255 / 65535)); 16-bit RGB(A) PNGs keep their high byte.
    Of an animated GIF, PNG or WebP, or a multi-page TIFF, the first frame is read (what a
    still-image viewer shows, and what darknet and the course's code, through OpenCV and PIL,
    read); `frames` says there were more, so callers can say so.

    Raises DataError naming the file when it is missing, unreadable, not an image, cut
    short anywhere (the whole first frame is decoded), has more than max_pixels pixels
    (checked from the header, before decoding), or has samples of 32-bit integers or floats.
    """
    path = Path(path)
    try:
        with timing.stage("read"):  # the file's bytes, apart from decoding them (bench/data_pipeline.py)
            raw = path.read_bytes()
        with timing.stage("decode"), _open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise _too_large(path, w, h, max_pixels)
            orientation = _orientation(im)
            im.load()
            frames = _frames(raw) if im.format in _MULTI_FRAME_FORMATS else 1
            if im.mode in _16BIT_MODES:
                wide = np.asarray(im, dtype=np.uint16).astype(np.uint32)
                gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # round(v * 255 / 65535)
                return Decoded(np.repeat(gray[..., None], 3, axis=2), orientation, frames)
            if im.mode not in _TO_RGB_MODES:
                raise DataError(
                    f"{path}: image mode {im.mode!r} is not supported (8-bit and 16-bit images "
                    f"are; 32-bit samples have no agreed range); convert it to 8-bit RGB"
                )
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")  # a palette with transparency converts to RGB via RGBA
            if im.mode != "RGB":
                im = im.convert("RGB")
            return Decoded(np.asarray(im, dtype=np.uint8).copy(), orientation, frames)
    except DataError:
        raise
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, int]:
    """((H, W, 3) uint8 RGB stored pixels, EXIF orientation): decode_image without the frame
    count (its conversions, first-frame rule and DataError cases)."""
    pixels, orientation, _ = decode_image(path, max_pixels)
    return pixels, orientation


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB, its stored pixels (EXIF orientation NOT
    applied; see read_image for the conversions and the DataError cases)."""
    return read_image(path, max_pixels)[0]


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of the stored image, as load_rgb returns it, reading only the header.

    No pixel limit is applied (nothing is decoded); DataError naming the file when it is
    missing, unreadable or not an image.
    """
    return image_header(path)[:2]


def image_header(path: str | Path) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) from the header only; see image_size and read_image."""
    path = Path(path)
    try:
        with _open(path) as im:
            return im.size[0], im.size[1], _orientation(im)
    except _READ_ERRORS as exc:
        raise _cannot_read(path, exc) from None


_GLOB_CHARS = frozenset("*?[")


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """The image files named by path arguments (files, folders, glob patterns), in order; a file
    named more than once is read once.

    An argument that names an existing file or folder is taken literally, always, even when
    its name holds glob characters (`photo[1].jpg`, `shots[2024]/`): a file as it is (any
    suffix; decoding says whether it is an image), a folder as its image files (IMAGE_SUFFIXES,
    not its subfolders), sorted. Only an argument that names nothing is a glob pattern (`*`,
    `?`, `[...]`, `**` for any depth), and in it too each part that names an existing file or
    folder is literal (`shots[2024]/*.jpg` looks in the folder `shots[2024]`); it gives the
    image files it matches, sorted (not folders, not hidden files, as glob).

    The same file (the same file-system object: by device and inode, so a second spelling, a
    link, or another case on a case-insensitive file system too) named again, as an argument
    or inside a folder or pattern, is kept at its first place only, and one warning names the
    files and how often each was named.

    Raises FileNotFoundError naming the argument: a missing path that is no pattern, a
    pattern that matches nothing (it says both), a dangling link, a folder or pattern without
    image files (it says what it found), something that is neither a file nor a folder.
    """
    paths: list[Path] = []
    for src in sources:
        paths += _expand_one(src)
    kept: list[Path] = []
    first: dict[object, int] = {}
    repeats: dict[int, int] = {}
    for p in paths:
        key = _identity(p)
        if key in first:
            repeats[first[key]] = repeats.get(first[key], 1) + 1
            continue
        first[key] = len(kept)
        kept.append(p)
    if repeats:
        named = ", ".join(f"{printable(str(kept[i]))} ({n} times)" for i, n in sorted(repeats.items())[:5])
        more = f" and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        log.warning("%d image file(s) were named more than once and are read once each: %s%s",
                    len(repeats), named, more)
    return kept


def _identity(p: Path) -> object:
    """What makes two paths the same file: (device, inode), else the resolved path."""
    try:
        st = p.stat()
    except OSError:
        return str(p.resolve())
    return (st.st_dev, st.st_ino) if st.st_ino else str(p.resolve())


def _expand_one(src: str) -> list[Path]:
    shown = printable(src)
    p = Path(src)
    looked = f"looked for {', '.join(sorted(IMAGE_SUFFIXES))}"
    if p.is_dir():
        found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            subfolders = sum(1 for f in p.iterdir() if f.is_dir())
            sub = (f"; its {subfolders} subfolder(s) are not searched: '{shown}/**' is a pattern that includes them"
                   if subfolders else "")
            raise FileNotFoundError(f"{shown}: no images in this folder ({looked}){sub}")
        return found
    if p.is_file():
        return [p]
    if p.exists():
        raise FileNotFoundError(f"{shown}: neither a file nor a folder")
    if os.path.lexists(src):
        raise FileNotFoundError(f"{shown}: a link to {printable(os.readlink(src))}, which does not exist")
    if not _GLOB_CHARS & set(src):
        raise FileNotFoundError(f"{shown}: no such file or folder")
    matches = _glob_literal_first(src)
    files = [m for m in matches if m.is_file()]
    images = sorted((m for m in files if m.suffix.lower() in IMAGE_SUFFIXES), key=str)
    if not images:
        if not matches:
            raise FileNotFoundError(f"{shown}: no such file or folder, and as a glob pattern it matches nothing")
        folders = len(matches) - len(files)
        what = ", ".join(x for x in (f"{len(files)} file(s)" if files else "",
                                     f"{folders} folder(s)" if folders else "") if x)
        raise FileNotFoundError(f"{shown}: the pattern matches {what} and no image file ({looked})")
    return images


def _glob_literal_first(pattern: str) -> list[Path]:
    """What a glob pattern matches, each part taken literally where it names an existing entry
    (see expand_sources); `**` is any number of folders, as glob.glob(recursive=True)."""
    p = Path(pattern)
    parts = p.parts
    bases = [Path(p.anchor)] if p.anchor else [Path()]
    parts = parts[1:] if p.anchor else parts
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        found: list[Path] = []
        for base in bases:
            here = "" if base == Path() else glob.escape(str(base))
            if part == "**":
                # base itself and every folder below it (or, last, everything below it)
                tail = os.path.join(here, "**") if last else os.path.join(here, "**", "")
                if not last:
                    found.append(base)
                found += [Path(m) for m in glob.glob(tail, recursive=True) if m]
            elif os.path.lexists(base / part):
                found.append(base / part)
            elif _GLOB_CHARS & set(part):
                found += [Path(m) for m in glob.glob(os.path.join(here, part))]
        bases = found if last else [b for b in found if b.is_dir()]
        bases = list(dict.fromkeys(bases))
    return bases
