"""Readers for the two on-disk layouts of PASCAL VOC.

* ``KaggleVOC``: the Kaggle "PASCAL_VOC" layout (``images/``, ``labels/`` with YOLO-style
  normalised ``class xc yc w h`` lines, ``train.csv`` / ``test.csv``).
* ``VOCDevkit``: the native VOCdevkit layout (``VOC2007/``, ``VOC2012/`` with XML
  annotations and ``ImageSets/Main/*.txt`` split files).

Both build an index of ``Record`` s (boxes in 0-based pixels, no pixels kept) eagerly in
``__init__``, decoding every image in full once (in a thread pool; Pillow releases the GIL
while it decodes), so that every problem with the files, a JPEG cut short in its data
included, surfaces before training starts and no run dies mid-epoch over a file. Both yield
the same ``Sample`` from ``__getitem__``. Every bad input raises ``DataError`` naming the
file (and line / object); with ``skip_bad=True`` the offending image is left out, its
message kept in ``skipped`` and one warning logged: nothing is dropped silently.

Boxes refer to the stored pixels: an EXIF orientation tag is not applied (as in the VOC
devkit, darknet and the course's code); the readers list the images that carry one in
``exif_oriented`` and one warning, since a viewer shows those images rotated or mirrored.

Split files are read as bytes and decoded as UTF-8 with surrogateescape, so an image name
that is not valid UTF-8 (file names are bytes on Linux) still names its file exactly.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from yolov3.constants import VOC_CLASSES
from yolov3.data.sample import IMAGE_SUFFIXES, MAX_PIXELS, DataError, Sample, load_rgb, printable, read_image

__all__ = [
    "Record",
    "DetectionSource",
    "KaggleVOC",
    "VOCDevkit",
    "detect_layout",
    "open_source",
]

log = logging.getLogger("yolov3.data")

# How many skipped-item messages (or EXIF-tagged images) the single warning quotes; the rest
# are in `skipped` (`exif_oriented`).
_WARN_FIRST = 5

# Decoding runs in C with the GIL released, so threads use every core without the pickling
# of processes; the cap keeps the number of open files modest on network file systems.
_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)


def _decode_size(path: Path, max_pixels: int) -> tuple[int, int, int]:
    """(width, height, EXIF orientation) of an image, found by decoding all of it, so a file
    whose header is fine but whose data is cut short or corrupt fails now, not mid-epoch."""
    image, orientation = read_image(path, max_pixels)
    return image.shape[1], image.shape[0], orientation


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

    The arrays are read-only, so a record cannot be changed through a Sample built from it.
    Two records are equal when all fields (array contents included) are equal.
    """

    image_path: Path
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        difficult = np.asarray(self.difficult, dtype=bool).reshape(-1)
        if not (len(boxes) == len(labels) == len(difficult)):
            raise ValueError(
                f"{self.image_path}: {len(boxes)} boxes, {len(labels)} labels, "
                f"{len(difficult)} difficult flags; they must be equal"
            )
        for name, arr in (("boxes", boxes), ("labels", labels), ("difficult", difficult)):
            arr = arr.copy()
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
    max_pixels:    images above this many pixels are refused (DataError) before decoding.
    """

    max_pixels: int = MAX_PIXELS

    def __init__(
        self,
        records: Iterable[Record],
        class_names: Sequence[str] = VOC_CLASSES,
        skipped: Iterable[str] = (),
        exif_oriented: Iterable[tuple[Path, int]] = (),
    ) -> None:
        self.records: list[Record] = list(records)
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.skipped: list[str] = list(skipped)
        self.exif_oriented: list[tuple[Path, int]] = list(exif_oriented)

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


# --------------------------------------------------------------------------- shared helpers


def _build_all(
    items: Sequence[Any],
    build: Callable[[Any], tuple[Record, int]],
    skip_bad: bool,
    what: str,
    skipped: list[str],
) -> tuple[list[Record], list[tuple[Path, int]]]:
    """Run build(item) -> (Record, EXIF orientation) for every item in a thread pool, keeping
    the order of `items`; returns the records and the (image, orientation) pairs whose
    orientation is not 1.

    A DataError from an item is raised (the first one in file order) unless skip_bad, in
    which case its message goes to `skipped`. Any other exception is a bug and propagates.
    Raises DataError if nothing is left, since an empty split is never what was meant.
    Logs one warning for all skipped items and one for all EXIF-oriented images.
    """

    def attempt(item: Any) -> tuple[Record, int] | DataError:
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

    records: list[Record] = []
    oriented: list[tuple[Path, int]] = []
    new_skips: list[str] = []
    for res in results:
        if isinstance(res, DataError):
            if not skip_bad:
                raise res
            new_skips.append(str(res))
        else:
            records.append(res[0])
            if res[1] != 1:
                oriented.append((res[0].image_path, res[1]))
    skipped.extend(new_skips)
    log.info("%s: decoded %d images in %.1f s", printable(what), len(results), time.perf_counter() - start)

    if skipped:
        first = "; ".join(skipped[:_WARN_FIRST])
        more = f" (and {len(skipped) - _WARN_FIRST} more)" if len(skipped) > _WARN_FIRST else ""
        log.warning(
            "%s: skipped %d bad item(s) of %d (skip_bad=True): %s%s",
            printable(what), len(skipped), len(skipped) + len(records), first, more,
        )
    if oriented:
        first = ", ".join(f"{printable(str(p))} ({o})" for p, o in oriented[:_WARN_FIRST])
        more = f" (and {len(oriented) - _WARN_FIRST} more)" if len(oriented) > _WARN_FIRST else ""
        log.warning(
            "%s: %d image(s) carry an EXIF orientation tag, which is not applied: their boxes and "
            "training use the stored pixels, as the VOC devkit and darknet do, while a viewer shows "
            "them rotated or mirrored: %s%s",
            printable(what), len(oriented), first, more,
        )
    if not records:
        reason = f"all {len(skipped)} item(s) were bad and skipped" if skipped else "it lists no images"
        raise DataError(f"{what}: the split is empty: {reason}")
    return records, oriented


def _check_and_clip(
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


def _read_text(path: Path, what: str) -> str:
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


def _records_arrays(
    boxes: list[tuple[float, float, float, float]], labels: list[int], difficult: list[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64).reshape(-1),
        np.asarray(difficult, dtype=bool).reshape(-1),
    )


# --------------------------------------------------------------------------- Kaggle layout


def _looks_like_image_name(field: str) -> bool:
    return Path(field.strip()).suffix.lower() in IMAGE_SUFFIXES


def _looks_like_header(fields: list[str]) -> bool:
    """A first CSV row that names no file: neither an image name in field 1 nor a .txt label
    in field 2 (`image,label` and the like). A first row such as `000005,000005.txt` is data
    (its image is then reported missing), never dropped as a header."""
    if _looks_like_image_name(fields[0]):
        return False
    return not (len(fields) > 1 and Path(fields[1]).suffix.lower() == ".txt")


class KaggleVOC(DetectionSource):
    """The Kaggle "PASCAL_VOC" layout.

    root/images/<image>, root/labels/<label> with one ``class xc yc w h`` line per box
    (normalised by the image width / height, class an index into class_names), and a split
    CSV root/<split> of ``image,label`` rows, with or without a header line.

    split: a CSV file name relative to root ("train.csv"; "train" also works) or a path.
    box_tolerance: pixels a box may stick out of the image and still be clipped, not rejected.
    Records keep the CSV order; every box is (N, 4) x1, y1, x2, y2 0-based pixels, as the
    labels say: x1 = (xc - w/2) * W, x2 = (xc + w/2) * W.

    The course's Kaggle copy of VOC was made by darknet's voc_label.py, which (a) drops every
    `difficult` object, so mAP on this layout is not the VOC protocol's (use VOCDevkit for
    that), and (b) writes boxes one pixel narrower and shorter than the devkit's ([xmin-1,
    xmax-1] in 1-based XML terms, where VOCDevkit reads [xmin-1, xmax]). Both are left as the
    labels have them: this reader cannot know which tool wrote a label file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train.csv",
        class_names: Sequence[str] = VOC_CLASSES,
        skip_bad: bool = False,
        box_tolerance: float = 1.0,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.class_names = tuple(class_names)
        self.box_tolerance = float(box_tolerance)
        self.max_pixels = int(max_pixels)
        self.csv_path = self._resolve_csv(split)
        skipped: list[str] = []
        rows = self._read_csv(skip_bad, skipped)
        records, oriented = _build_all(rows, self._build, skip_bad, str(self.csv_path), skipped)
        super().__init__(records, class_names, skipped, oriented)

    def _resolve_csv(self, split: str) -> Path:
        path = Path(split)
        if not path.is_absolute():
            path = self.root / path
        if not path.exists() and path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        if not path.is_file():
            raise DataError(
                f"{path}: split CSV file not found (the Kaggle layout needs root/train.csv, "
                f"root/test.csv, ...; root is {self.root})"
            )
        return path

    def _read_csv(self, skip_bad: bool, skipped: list[str]) -> list[tuple[int, str, str]]:
        """Rows (line number, image name, label name) in file order, header and blanks dropped.

        A row of other than 2 fields, or one that lists an image an earlier row listed, is a
        DataError naming the line (with skip_bad: skipped; of a repeated image the first row
        is kept), since training on an image twice per epoch is never what a split means.
        """
        text = _read_text(self.csv_path, "split CSV file")
        rows: list[tuple[int, str, str]] = []
        first_seen: dict[str, int] = {}
        first = True
        # Line numbers are counted on physical lines; this CSV never has quoted newlines.
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            fields = [f.strip() for f in next(csv.reader([line]))]
            if first:
                first = False
                # The CSVs come with and without an `image,label` header.
                if _looks_like_header(fields):
                    continue
            if len(fields) != 2:
                msg = (
                    f"{self.csv_path}:{lineno}: expected 2 columns (image,label), "
                    f"got {len(fields)}: {line.strip()!r}"
                )
                if not skip_bad:
                    raise DataError(msg)
                skipped.append(msg)
                continue
            key = os.path.normpath(fields[0]) if fields[0] else ""
            if key and key in first_seen:
                msg = (
                    f"{self.csv_path}:{lineno}: image {fields[0]!r} is listed twice, at lines "
                    f"{first_seen[key]} and {lineno} (each epoch would train on it twice)"
                )
                if not skip_bad:
                    raise DataError(msg)
                skipped.append(msg)
                continue
            first_seen.setdefault(key, lineno)
            rows.append((lineno, fields[0], fields[1]))
        return rows

    def _build(self, row: tuple[int, str, str]) -> tuple[Record, int]:
        lineno, image_name, label_name = row
        listed = f"(listed at {self.csv_path}:{lineno})"
        image_path = self.root / "images" / image_name
        label_path = self.root / "labels" / label_name
        if not image_name:
            raise DataError(f"{self.csv_path}:{lineno}: empty image field")
        if not label_name:
            raise DataError(f"{self.csv_path}:{lineno}: empty label field")
        try:
            width, height, orientation = _decode_size(image_path, self.max_pixels)
        except DataError as exc:
            raise DataError(f"{exc} {listed}") from None
        if not label_path.exists():
            raise DataError(f"{label_path}: label file not found {listed}")
        boxes, labels = self._parse_labels(label_path, width, height)
        b, l, d = _records_arrays(boxes, labels, [False] * len(labels))
        return Record(image_path, b, l, d, width, height), orientation

    def _parse_labels(
        self, path: Path, width: int, height: int
    ) -> tuple[list[tuple[float, float, float, float]], list[int]]:
        """Parse a label file into pixel boxes for a width x height image (empty file: no boxes)."""
        text = _read_text(path, "label file")
        n_cls = len(self.class_names)
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{lineno}"
            if len(fields) != 5:
                raise DataError(
                    f"{where}: expected 5 fields 'class xc yc w h', got {len(fields)}: {line.strip()!r}"
                )
            values: list[float] = []
            for name, tok in zip(("class", "xc", "yc", "w", "h"), fields):
                try:
                    v = float(tok)
                except ValueError:
                    raise DataError(f"{where}: field {name}={tok!r} is not a number") from None
                if not math.isfinite(v):
                    raise DataError(f"{where}: field {name}={tok!r} is not a finite number")
                values.append(v)
            cls, xc, yc, w, h = values
            if not cls.is_integer():
                raise DataError(f"{where}: class id {fields[0]!r} is not an integer")
            if not 0 <= cls < n_cls:
                raise DataError(
                    f"{where}: class id {int(cls)} is out of range [0, {n_cls})"
                )
            if w <= 0 or h <= 0:
                raise DataError(f"{where}: box width and height must be > 0, got w={w:g} h={h:g}")
            box = ((xc - w / 2) * width, (yc - h / 2) * height,
                   (xc + w / 2) * width, (yc + h / 2) * height)
            boxes.append(_check_and_clip(box, width, height, self.box_tolerance, where))
            labels.append(int(cls))
        return boxes, labels


# --------------------------------------------------------------------------- VOCdevkit layout

_SPLIT_PART = re.compile(r"^(\d{4})-([A-Za-z0-9_]+)$")


def parse_split_spec(split: str) -> list[tuple[str, str]]:
    """'2007-trainval+2012-trainval' -> [('2007', 'trainval'), ('2012', 'trainval')]."""
    parts = [p.strip() for p in split.split("+")]
    out: list[tuple[str, str]] = []
    for p in parts:
        m = _SPLIT_PART.match(p)
        if not m:
            raise DataError(
                f"bad VOC split spec {split!r}: each '+'-separated part must look like "
                f"'2007-trainval' (YEAR-IMAGESET), got {p!r}"
            )
        out.append((m.group(1), m.group(2)))
    return out


def _find_year_dir(root: Path, year: str) -> Path | None:
    """root/VOC<year>, root/VOCdevkit/VOC<year>, or root itself when it is VOC<year>."""
    for cand in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if cand.is_dir():
            return cand
    if root.name == f"VOC{year}" and root.is_dir():
        return root
    return None


def _xml_number(elem: ET.Element, tag: str, where: str) -> float:
    text = elem.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    try:
        v = float(text)
    except ValueError:
        raise DataError(f"{where}: <{tag}>={text.strip()!r} is not a number") from None
    if not math.isfinite(v):
        raise DataError(f"{where}: <{tag}>={text.strip()!r} is not a finite number")
    return v


class VOCDevkit(DetectionSource):
    """The native VOCdevkit layout.

    root/VOC<year>/ (or root/VOCdevkit/VOC<year>/) with JPEGImages/<id>.jpg,
    Annotations/<id>.xml and ImageSets/Main/<set>.txt.

    split: '+'-joined YEAR-SET parts, e.g. "2007-test" or "2007-trainval+2012-trainval";
    records follow the parts in order, each in the order of its ImageSets file.
    Boxes: x1, y1, x2, y2 = xmin-1, ymin-1, xmax, ymax ((N, 4) float32, continuous 0-based
    pixel coordinates). VOC XML coordinates are 1-based inclusive pixel indices: the object
    covers pixels xmin..xmax, whose continuous extent is [xmin-1, xmax), so the box width
    x2 - x1 equals the devkit's xmax - xmin + 1 and IoU without any +1 (as every evaluator
    here computes it) equals the devkit's VOCevaldet.m. A box with xmin == xmax is one pixel
    wide, not empty. (Darknet's voc_label.py, which made the Kaggle layout's labels, writes
    centre (xmin+xmax)/2 - 1 and width xmax - xmin, i.e. the box [xmin-1, xmax-1]: one pixel
    narrower and shorter than this.) `difficult` objects are kept and flagged.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "2007-trainval+2012-trainval",
        class_names: Sequence[str] = VOC_CLASSES,
        skip_bad: bool = False,
        box_tolerance: float = 1.0,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names = tuple(class_names)
        self._class_index = {n: i for i, n in enumerate(self.class_names)}
        self.box_tolerance = float(box_tolerance)
        self.max_pixels = int(max_pixels)
        items: list[tuple[Path, str, Path, int]] = []
        # (year folder, id) -> where it was first listed: an id listed twice (in one ImageSets
        # file, or in two parts of the spec such as 2007-train+2007-trainval) is an error.
        first_seen: dict[tuple[Path, str], tuple[Path, int]] = {}
        skipped: list[str] = []
        # All ImageSets files are read before any image, so a split-level mistake (a typo in
        # the spec, a missing year) fails at once instead of after minutes of header reads.
        for year, image_set in parse_split_spec(split):
            year_dir = _find_year_dir(self.root, year)
            if year_dir is None:
                raise DataError(
                    f"{self.root}: no VOC{year} directory (looked for {self.root / f'VOC{year}'} "
                    f"and {self.root / 'VOCdevkit' / f'VOC{year}'})"
                )
            list_path = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
            text = _read_text(list_path, "ImageSets file")
            ids = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
            if not ids:
                raise DataError(f"{list_path}: ImageSets file lists no images (empty split)")
            for n, image_id in ids:
                seen = first_seen.get((year_dir, image_id))
                if seen is not None:
                    msg = (
                        f"{list_path}:{n}: image id {image_id!r} is listed twice, at {seen[0]}:{seen[1]} "
                        f"and {list_path}:{n} (each epoch would train on it twice)"
                    )
                    if not skip_bad:
                        raise DataError(msg)
                    skipped.append(msg)
                    continue
                first_seen[(year_dir, image_id)] = (list_path, n)
                items.append((year_dir, image_id, list_path, n))
        records, oriented = _build_all(items, self._build, skip_bad, f"{self.root} split {split!r}", skipped)
        super().__init__(records, class_names, skipped, oriented)

    def _build(self, item: tuple[Path, str, Path, int]) -> tuple[Record, int]:
        year_dir, image_id, list_path, lineno = item
        listed = f"(listed at {list_path}:{lineno})"
        image_path = year_dir / "JPEGImages" / f"{image_id}.jpg"
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        try:
            width, height, orientation = _decode_size(image_path, self.max_pixels)
        except DataError as exc:
            raise DataError(f"{exc} {listed}") from None
        boxes, labels, difficult = self._parse_xml(xml_path, width, height, listed)
        b, l, d = _records_arrays(boxes, labels, difficult)
        return Record(image_path, b, l, d, width, height), orientation

    def _parse_xml(
        self, path: Path, width: int, height: int, listed: str
    ) -> tuple[list[tuple[float, float, float, float]], list[int], list[bool]]:
        if not path.is_file():
            raise DataError(f"{path}: annotation file not found {listed}")
        try:
            tree = ET.parse(path)
        except ET.ParseError as exc:
            raise DataError(f"{path}: malformed XML ({exc})") from None
        except OSError as exc:
            raise DataError(f"{path}: cannot read annotation file ({exc})") from None
        ann = tree.getroot()

        size = ann.find("size")
        if size is None:
            raise DataError(f"{path}: missing <size>")
        xml_w = _xml_number(size, "width", f"{path}: <size>")
        xml_h = _xml_number(size, "height", f"{path}: <size>")
        # The boxes are in the frame the annotator saw; if the image on disk has another size,
        # they cannot be trusted for it.
        if (xml_w, xml_h) != (width, height):
            raise DataError(
                f"{path}: <size> says {xml_w:g}x{xml_h:g} but the image is {width}x{height}"
            )

        objects = ann.findall("object")  # direct children only: <part> boxes are not objects
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        difficult: list[bool] = []
        for k, obj in enumerate(objects):
            where = f"{path}: object {k} (0-based, of {len(objects)})"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DataError(f"{where}: missing <name>")
            if name not in self._class_index:
                raise DataError(f"{where}: unknown class name {name!r}")
            diff_text = (obj.findtext("difficult") or "0").strip() or "0"
            if diff_text not in ("0", "1"):
                raise DataError(f"{where}: <difficult>={diff_text!r}, expected 0 or 1")
            bnd = obj.find("bndbox")
            if bnd is None:
                raise DataError(f"{where}: missing <bndbox>")
            xmin, ymin, xmax, ymax = (_xml_number(bnd, t, where) for t in ("xmin", "ymin", "xmax", "ymax"))
            if xmin > xmax or ymin > ymax:
                raise DataError(
                    f"{where}: inverted box, need xmin <= xmax and ymin <= ymax (1-based inclusive "
                    f"pixels), got xmin={xmin:g} ymin={ymin:g} xmax={xmax:g} ymax={ymax:g}"
                )
            # 1-based inclusive pixel indices -> continuous 0-based extent [xmin - 1, xmax)
            box = (xmin - 1, ymin - 1, xmax, ymax)
            boxes.append(_check_and_clip(box, width, height, self.box_tolerance, where))
            labels.append(self._class_index[name])
            difficult.append(diff_text == "1")
        return boxes, labels, difficult


# --------------------------------------------------------------------------- layout detection


def _layouts_present(root: Path) -> list[str]:
    found = []
    if (root / "images").is_dir() and (root / "labels").is_dir():
        found.append("kaggle")
    voc_dirs = [
        d
        for base in (root, root / "VOCdevkit")
        if base.is_dir()
        for d in base.glob("VOC[0-9][0-9][0-9][0-9]")
        if d.is_dir()
    ]
    is_year_dir = re.fullmatch(r"VOC\d{4}", root.name) is not None and (root / "Annotations").is_dir()
    if voc_dirs or is_year_dir:
        found.append("voc")
    return found


def detect_layout(root: str | os.PathLike) -> str:
    """'kaggle' when root has images/ and labels/, 'voc' when it has VOC<year>/ (directly or
    under VOCdevkit/). DataError saying what was looked for if neither (or both) is found."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (or not a directory)")
    found = _layouts_present(root)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{root}: cannot tell the dataset layout: expected either the Kaggle layout "
            f"(images/, labels/, train.csv, test.csv) or a VOCdevkit (VOC2007/, VOC2012/, "
            f"possibly under VOCdevkit/, each with JPEGImages/, Annotations/, ImageSets/Main/)"
        )
    raise DataError(
        f"{root}: holds both the Kaggle layout (images/, labels/) and VOC<year>/ directories; "
        f"pass layout='kaggle' or layout='voc'"
    )


def open_source(
    root: str | os.PathLike,
    split: str,
    layout: str = "auto",
    class_names: Sequence[str] = VOC_CLASSES,
    skip_bad: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> DetectionSource:
    """Open root with the reader for its layout ('auto', 'kaggle' or 'voc').

    With 'auto' and a root that holds both layouts, the split string decides: a YEAR-SET spec
    ('2007-test') means VOC, anything else (a CSV name) means Kaggle.
    """
    if layout == "auto":
        root_p = Path(root)
        if root_p.is_dir() and len(_layouts_present(root_p)) == 2:
            looks_voc = all(_SPLIT_PART.match(p.strip()) for p in split.split("+"))
            layout = "voc" if looks_voc else "kaggle"
        else:
            layout = detect_layout(root)
    if layout == "kaggle":
        return KaggleVOC(root, split, class_names=class_names, skip_bad=skip_bad, max_pixels=max_pixels)
    if layout == "voc":
        return VOCDevkit(root, split, class_names=class_names, skip_bad=skip_bad, max_pixels=max_pixels)
    raise ValueError(f"layout must be 'auto', 'kaggle' or 'voc', got {layout!r}")
