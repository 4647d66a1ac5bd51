"""The index of a dataset split, and what both on-disk readers (data/kaggle.py,
data/devkit.py) share to build it.

* ``Record``: one image of the index (path, size, boxes, labels, difficult; no pixels).
* ``DetectionSource``: a list of Records that yields ``Sample`` s.
* ``LayoutReader``: the readers' common constructor and per-image decode; a reader says only
  how its split lists images and how one of them becomes a Record.
* ``check_and_clip``, ``finite_number``, ``read_text``: the checks the readers parse their files with.
* ``merge_repeats``, ``file_key``: what the readers find double-counted with (a box written twice
  in one label file; one file reached under two names).

A reader builds its index eagerly in ``__init__``, decoding every image in full once (in a
thread pool; Pillow releases the GIL while it decodes), so that every problem with the files,
a JPEG cut short in its data included, surfaces before training starts and no run dies
mid-epoch over a file. Every bad input raises ``DataError`` naming the file (and line /
object); with ``skip_bad=True`` the offending image is left out, its message kept in
``skipped`` and one warning logged: nothing is dropped silently.

Nothing is counted twice. A box written twice in one image's labels (same class, every edge
within ``DUPLICATE_TOLERANCE_PX``) is one object: one copy is kept, the others are listed in
``duplicate_boxes`` with one warning (a second copy would be a positive no detector can match).
An image file listed twice in a split, under any spelling (``./a.jpg``, a symlink, a hard link),
is a DataError (skip_bad: the first is kept). Two files with the same bytes are kept, since the
reader cannot tell a deliberate copy, and listed in ``duplicate_images`` with one warning; each
Record carries its file's ``digest`` so that the DataModule can compare splits too.

Boxes refer to the stored pixels: an EXIF orientation tag is not applied (as in the VOC
devkit, darknet and the course's code); the readers list the images that carry one in
``exif_oriented`` and one warning, since a viewer shows those images rotated or mirrored.
An image of several frames (animated GIF, PNG or WebP, multi-page TIFF) is read at its first
frame; the readers list those in ``multi_frame`` and one warning, with their frame counts.

Split and label files are read as bytes and decoded as UTF-8 with surrogateescape, so an
image name that is not valid UTF-8 (file names are bytes on Linux) still names its file exactly.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yolov3.constants import VOC_CLASSES
from yolov3.data.sample import (MAX_PIXELS, DataError, Sample, annotation_arrays, decode_image, frames_text, load_rgb,
                                printable)

__all__ = [
    "Record",
    "DetectionSource",
    "LayoutReader",
    "check_and_clip",
    "file_key",
    "finite_number",
    "merge_repeats",
    "read_text",
    "DUPLICATE_TOLERANCE_PX",
]

log = logging.getLogger("yolov3.data")

# How many skipped-item messages (or EXIF-tagged images) the single warning quotes; the rest
# are in `skipped` (`exif_oriented`).
_WARN_FIRST = 5

# Decoding runs in C with the GIL released, so threads use every core without the pickling
# of processes; the cap keeps the number of open files modest on network file systems.
_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

# Two boxes of one class whose four edges all agree within this many pixels are one box written
# twice. The same box written at another precision moves by far less: 6 decimals (0.333333 for
# 0.3333333333) put it at most 5e-7 x 10,000 = 0.005 px away on a 10,000-px image. Two objects
# are never this close: the nearest same-class pair among the 152 objects of the 60 real VOC2012
# annotations in ../shared/data/voc2012_sample overlaps at IoU 0.57.
DUPLICATE_TOLERANCE_PX = 0.01


@dataclass(frozen=True, eq=False)
class Record:
    """One entry of a source's index: where the image is and what is in it (no pixels).

    image_path: the image file.
    boxes:      (N, 4) float32 x1, y1, x2, y2 in pixels of the image as load_rgb returns it
                (the stored pixels, EXIF orientation not applied), 0-based, clipped to
                [0, width] x [0, height].
    labels:     (N,) int64 class indices into the source's class_names.
    difficult:  (N,) bool, VOC's `difficult` flag (all False for the Kaggle layout).
    width, height: the stored image size, as load_rgb returns it.
    digest:     hex BLAKE2b-128 of the image file's bytes (readers set it; None when not known):
                equal digests mean the same picture, whatever the files are called.

    The arrays are read-only, so a record cannot be changed through a Sample built from it.
    Two records are equal when all fields (array contents included) are equal.
    """

    image_path: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int
    height: int
    digest: str | None = None

    def __post_init__(self) -> None:
        arrays = annotation_arrays(self.boxes, self.labels, self.difficult, str(self.image_path))
        for name, arr in zip(("boxes", "labels", "difficult"), arrays):
            arr = arr.copy()  # our own copy: the caller's array must not turn read-only
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "image_path", Path(self.image_path))

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare arrays with `==` and fail on their truth value.
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.image_path == other.image_path
            and self.width == other.width
            and self.height == other.height
            and self.digest == other.digest
            and np.array_equal(self.boxes, other.boxes)
            and np.array_equal(self.labels, other.labels)
            and np.array_equal(self.difficult, other.difficult)
        )

    __hash__ = None  # type: ignore[assignment]  # mutable-looking array fields: unhashable


class DetectionSource(Sequence):
    """Common base: an indexed list of Records that yields Samples.

    records:       list[Record], in the order of the split file.
    class_names:   tuple[str, ...]; label i means class_names[i].
    skipped:       list[str], one message per item left out because of skip_bad=True.
    exif_oriented: list[tuple[Path, int]], the indexed images whose EXIF orientation tag
                   (2-8) says a viewer shows them rotated or mirrored; not applied.
    duplicate_boxes:  list[str], one message per box dropped as a repeat of an earlier box of
                   its image ("labels/b.txt:3 repeats line 1"); one copy of each box is kept.
    duplicate_images: list[str], one message per image whose file has the same bytes as an
                   earlier image of the split ("images/c.jpg has the same bytes as images/a.jpg");
                   both are kept.
    multi_frame:   list[tuple[Path, int]], the indexed images of several frames and how many
                   (0: several, uncountable; see sample.Decoded); only the first frame is read.
    max_pixels:    images above this many pixels are refused (DataError) before decoding.
    """

    max_pixels: int = MAX_PIXELS
    multi_frame: list[tuple[Path, int]] = []  # a reader sets its own (LayoutReader); never appended to

    def __init__(
        self,
        records: Iterable[Record],
        class_names: Sequence[str] = VOC_CLASSES,
        skipped: Iterable[str] = (),
        exif_oriented: Iterable[tuple[Path, int]] = (),
        duplicate_boxes: Iterable[str] = (),
        duplicate_images: Iterable[str] = (),
    ) -> None:
        self.records: list[Record] = list(records)
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.skipped: list[str] = list(skipped)
        self.exif_oriented: list[tuple[Path, int]] = list(exif_oriented)
        self.duplicate_boxes: list[str] = list(duplicate_boxes)
        self.duplicate_images: list[str] = list(duplicate_images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: Any) -> Any:
        """Load sample i: image (H, W, 3) uint8 RGB, boxes (N, 4), labels (N,), difficult (N,).

        A slice gives a list of Samples. Raises DataError naming the file when the image
        cannot be decoded or its decoded size differs from the indexed one (the file changed
        after indexing, or its header lies), since the boxes would then be in the wrong frame.
        """
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        rec = self.records[i]
        image = load_rgb(rec.image_path, self.max_pixels)
        h, w = image.shape[:2]
        if (w, h) != (rec.width, rec.height):
            raise DataError(
                f"{rec.image_path}: decoded image is {w}x{h} but the index says "
                f"{rec.width}x{rec.height} (was the file changed after the dataset was indexed?)"
            )
        return Sample(
            image=image,
            boxes=rec.boxes.copy(),
            labels=rec.labels.copy(),
            difficult=rec.difficult.copy(),
            path=str(rec.image_path),
        )

    def __repr__(self) -> str:
        extra = f", skipped={len(self.skipped)}" if self.skipped else ""
        return f"{type(self).__name__}({len(self)} images{extra})"


class LayoutReader(DetectionSource):
    """A DetectionSource indexed from a dataset layout on disk: the constructor both readers share.

    root:          the dataset folder.
    split:         which images, in the reader's own terms; None means `default_split`.
    class_names:   label i means class_names[i].
    skip_bad:      leave out (and report in `skipped`) the images whose files are bad,
                   instead of raising DataError on the first.
    box_tolerance: pixels a box may stick out of the image and still be clipped, not rejected.
    max_pixels:    images above this many pixels are refused (DataError) before decoding.

    A subclass says how its split lists the images (`_list_items`) and how one listed image
    becomes a Record (`_build`); the images are decoded and built in a thread pool
    (_build_records). Raises DataError naming the file (and line) of the first bad input.
    """

    default_split: str = ""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str | None = None,
        class_names: Sequence[str] = VOC_CLASSES,
        skip_bad: bool = False,
        box_tolerance: float = 1.0,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.split = self.default_split if split is None else split
        self.class_names = tuple(class_names)
        self._class_index = {name: i for i, name in enumerate(self.class_names)}
        self.box_tolerance = float(box_tolerance)
        self.max_pixels = int(max_pixels)
        skipped: list[str] = []
        self._frames: dict[Path, int] = {}  # written by _decode_size from the pool's threads
        items, what = self._list_items(skip_bad, skipped)
        built = _build_records(items, self._build, skip_bad, what, skipped)
        super().__init__(built.records, self.class_names, skipped, built.oriented, built.duplicate_boxes,
                         built.duplicate_images)
        self.multi_frame = [(r.image_path, self._frames[r.image_path]) for r in built.records
                            if self._frames.get(r.image_path, 1) != 1]
        _warn_multi_frame(what, self.multi_frame)

    def _list_items(self, skip_bad: bool, skipped: list[str]) -> tuple[list[Any], str]:
        """The split's images as items for `_build`, in split order, and the split's name for
        messages. A bad line raises DataError, or with skip_bad goes to `skipped`."""
        raise NotImplementedError

    def _build(self, item: Any) -> tuple[Record, int, list[str]]:
        """One listed image -> (its Record, its EXIF orientation, one message per box dropped as
        a repeat: see merge_repeats); DataError if anything is bad."""
        raise NotImplementedError

    def _decode_size(self, image_path: Path, listed: str) -> tuple[int, int, int, str]:
        """(width, height, EXIF orientation, digest of the file's bytes) of an image, found by
        decoding all of it, so a file whose header is fine but whose data is cut short or
        corrupt fails now, not mid-epoch. The DataError names the file and, after it, `listed`
        (where the split lists it)."""
        try:
            image, orientation, frames = decode_image(image_path, self.max_pixels)
            # read again (from the page cache) rather than changing the decoder: hashing the
            # bytes costs about 0.3 ms a VOC photo against its 3.5 ms decode
            digest = hashlib.blake2b(image_path.read_bytes(), digest_size=16).hexdigest()
        except DataError as exc:
            raise DataError(f"{exc} {listed}") from None
        except OSError as exc:  # the file went away between the two reads
            raise DataError(f"{image_path}: cannot read image ({exc}) {listed}") from None
        if frames != 1:
            self._frames[Path(image_path)] = frames
        return image.shape[1], image.shape[0], orientation, digest


def _warn_multi_frame(what: str, multi_frame: Sequence[tuple[Path, int]]) -> None:
    """One warning for the images of several frames, naming the first few with their counts."""
    if multi_frame:
        first = ", ".join(f"{printable(str(p))} ({frames_text(n)})" for p, n in multi_frame[:_WARN_FIRST])
        more = f" (and {len(multi_frame) - _WARN_FIRST} more)" if len(multi_frame) > _WARN_FIRST else ""
        log.warning("%s: %d image(s) hold several frames (animated, or pages); only the first frame of each is "
                    "read, for training and evaluation alike: %s%s", printable(what), len(multi_frame), first, more)


# --------------------------------------------------------------------------- shared helpers


@dataclass
class _Built:
    """What _build_records makes of a split's items."""

    records: list[Record]
    oriented: list[tuple[Path, int]]  # (image, EXIF orientation) where it is not 1
    duplicate_boxes: list[str]  # one message per box dropped as a repeat
    duplicate_images: list[str]  # one message per image whose bytes an earlier image has


def _build_records(
    items: Sequence[Any],
    build: Callable[[Any], tuple[Record, int, list[str]]],
    skip_bad: bool,
    what: str,
    skipped: list[str],
) -> _Built:
    """Run build(item) -> (Record, EXIF orientation, repeated-box messages) for every item in a
    thread pool, keeping the order of `items`.

    A DataError from an item is raised (the first one in file order) unless skip_bad, in
    which case its message goes to `skipped`. Any other exception is a bug and propagates.
    Raises DataError if nothing is left, since an empty split is never what was meant.
    Logs one warning for each kind of note: skipped items, EXIF-oriented images, boxes dropped
    as repeats, images whose file has the same bytes as an earlier one's.
    """

    def attempt(item: Any) -> tuple[Record, int, list[str]] | DataError:
        try:
            return build(item)
        except DataError as exc:
            return exc

    start = time.perf_counter()
    if items:
        with ThreadPoolExecutor(max_workers=min(_MAX_WORKERS, len(items))) as pool:
            results = list(pool.map(attempt, items))
    else:
        results = []

    built = _Built([], [], [], [])
    new_skips: list[str] = []
    files_with_repeats = 0
    for res in results:
        if isinstance(res, DataError):
            if not skip_bad:
                raise res
            new_skips.append(str(res))
        else:
            record, orientation, repeats = res
            built.records.append(record)
            built.duplicate_boxes.extend(repeats)
            files_with_repeats += bool(repeats)
            if orientation != 1:
                built.oriented.append((record.image_path, orientation))
    skipped.extend(new_skips)
    built.duplicate_images.extend(_same_bytes(built.records))
    log.info("%s: decoded %d images in %.1f s", printable(what), len(results), time.perf_counter() - start)

    if skipped:
        log.warning("%s: skipped %d bad item(s) of %d (skip_bad=True): %s", printable(what), len(skipped),
                    len(skipped) + len(built.records), _first(skipped, "; "))
    if built.oriented:
        log.warning(
            "%s: %d image(s) carry an EXIF orientation tag, which is not applied: their boxes and "
            "training use the stored pixels, as the VOC devkit and darknet do, while a viewer shows "
            "them rotated or mirrored: %s",
            printable(what), len(built.oriented), _first([f"{p} ({o})" for p, o in built.oriented], ", "),
        )
    if built.duplicate_boxes:
        log.warning(
            "%s: dropped %d repeated box(es) in the labels of %d image(s), one copy of each kept (a box written "
            "twice would be two objects, the second one no detection can match): %s",
            printable(what), len(built.duplicate_boxes), files_with_repeats, _first(built.duplicate_boxes, "; "),
        )
    if built.duplicate_images:
        log.warning(
            "%s: %d image(s) have the same bytes as an earlier image of the split; both are kept (a copy "
            "may be deliberate), so each epoch trains on that picture twice and evaluation counts its "
            "objects twice: %s",
            printable(what), len(built.duplicate_images), _first(built.duplicate_images, "; "),
        )
    if not built.records:
        reason = f"all {len(skipped)} item(s) were bad and skipped" if skipped else "it lists no images"
        raise DataError(f"{what}: the split is empty: {reason}")
    return built


def _first(messages: Sequence[str], sep: str) -> str:
    """The first _WARN_FIRST messages joined, and how many more there are, for one log line."""
    more = f" (and {len(messages) - _WARN_FIRST} more)" if len(messages) > _WARN_FIRST else ""
    return sep.join(printable(m) for m in messages[:_WARN_FIRST]) + more


def _same_bytes(records: Sequence[Record]) -> list[str]:
    """One message per record whose digest an earlier record has, naming both images."""
    first: dict[str, Path] = {}
    out = []
    for rec in records:
        if rec.digest is None:
            continue
        seen = first.setdefault(rec.digest, rec.image_path)
        if seen != rec.image_path:
            out.append(f"{rec.image_path} has the same bytes as {seen}")
    return out


def merge_repeats(
    boxes: Sequence[tuple[float, float, float, float]], labels: Sequence[int], difficult: Sequence[bool],
    tol: float = DUPLICATE_TOLERANCE_PX,
) -> tuple[list[int], list[tuple[int, int, bool]]]:
    """Find the boxes of one image that repeat an earlier box: the same label and all four
    coordinates within `tol` pixels.

    boxes: N pixel boxes (x1, y1, x2, y2); labels, difficult: N each.
    Returns (keep, repeats): `keep` the indices of the boxes kept, in order (the first copy of
    each); `repeats` one (i, j, difficult_differs) per dropped box i, j < i the kept box it
    repeats. A box is compared with kept boxes only, so a chain of boxes each within tol of the
    previous one merges only those within tol of the first. The difficult flags of the copies
    are not compared: a caller that keeps difficult should keep it only if all copies have it.
    Cost: one (N, N) comparison.
    """
    n = len(labels)
    if n < 2:
        return list(range(n)), []
    b = np.asarray(boxes, dtype=np.float64).reshape(n, 4)
    lab = np.asarray(labels)
    close = (lab[:, None] == lab[None, :]) & (np.abs(b[:, None, :] - b[None, :, :]).max(axis=2) <= tol)
    repeat_of = np.full(n, -1)
    for i in np.flatnonzero(close.sum(axis=1) > 1):  # only boxes with a close partner need the walk
        earlier = np.flatnonzero(close[i, :i] & (repeat_of[:i] < 0))
        if earlier.size:
            repeat_of[i] = earlier[0]
    keep = np.flatnonzero(repeat_of < 0).tolist()
    repeats = [(int(i), int(repeat_of[i]), bool(difficult[i]) != bool(difficult[repeat_of[i]]))
               for i in np.flatnonzero(repeat_of >= 0)]
    return keep, repeats


def file_key(path: Path) -> tuple[int, int] | str:
    """What identifies a file whatever it is called: (device, inode) when it exists (symlinks
    followed, so a symlink, a hard link and another spelling of the path give the same key);
    else the absolute path with symlinks and '..' resolved."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def check_and_clip(
    box: tuple[float, float, float, float], width: int, height: int, tol: float, where: str
) -> tuple[float, float, float, float]:
    """Validate a pixel box (x1, y1, x2, y2) against a width x height image and clip it.

    Annotation round-off may put an edge slightly outside the image; up to `tol` pixels is
    clipped, more than that means the label belongs to another image or size and is an error.
    """
    x1, y1, x2, y2 = box
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise DataError(
            f"{where}: box x1,y1,x2,y2=({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the "
            f"{width}x{height} image by more than box_tolerance={tol:g} px"
        )
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    # Only reachable when a box lies entirely in the tolerance margin; a zero-area box would
    # give log(0) in the loss, so it is an error rather than something to keep.
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"{where}: box has no area inside the {width}x{height} image after clipping")
    return x1, y1, x2, y2


def finite_number(text: str, field: str, where: str) -> float:
    """text as a float; DataError "{where}: {field}={text!r} is not a (finite) number" otherwise,
    since NaN or infinity in a box would poison the loss."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: {field}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: {field}={text!r} is not a finite number")
    return value


def read_text(path: Path, what: str) -> str:
    """Read a small text file as UTF-8; DataError naming it if missing or unreadable.

    Bytes that are not UTF-8 become lone surrogates (surrogateescape) instead of refusing the
    file: in a split file they are part of a file name, and Path() turns them back into the
    same bytes; in a label file they make a field that is not a number, an error with its line.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except PermissionError:
        raise DataError(f"{path}: cannot read {what} (permission denied)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: {what} is a folder, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None
    # A BOM written by a spreadsheet program must not glue itself to field 1.
    return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "surrogateescape")
