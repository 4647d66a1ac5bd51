"""Reader for the Kaggle "PASCAL_VOC" layout: ``images/``, ``labels/`` with YOLO-style
normalised ``class xc yc w h`` lines, and split CSVs (``train.csv``, ``test.csv``) of
``image,label`` rows. The index, its Records and the shared constructor are in
data/records.py; every bad input is a DataError naming the file and line.
"""

from __future__ import annotations

import csv
from pathlib import Path

from yolov3.data.records import (
    LayoutReader,
    Record,
    check_and_clip,
    file_key,
    finite_number,
    merge_repeats,
    read_text,
)
from yolov3.data.sample import IMAGE_SUFFIXES, DataError

__all__ = ["KaggleVOC"]


def _looks_like_image_name(field: str) -> bool:
    return Path(field.strip()).suffix.lower() in IMAGE_SUFFIXES


def _looks_like_header(fields: list[str]) -> bool:
    """A first CSV row that names no file: neither an image name in field 1 nor a .txt label
    in field 2 (`image,label` and the like). A first row such as `000005,000005.txt` is data
    (its image is then reported missing), never dropped as a header."""
    if _looks_like_image_name(fields[0]):
        return False
    return not (len(fields) > 1 and Path(fields[1]).suffix.lower() == ".txt")


class KaggleVOC(LayoutReader):
    """The Kaggle "PASCAL_VOC" layout.

    root/images/<image>, root/labels/<label> with one ``class xc yc w h`` line per box
    (normalised by the image width / height, class an index into class_names), and a split
    CSV root/<split> of ``image,label`` rows, with or without a header line.

    split: a CSV file name relative to root ("train.csv", the default; "train" also works)
    or a path; the other arguments are LayoutReader's. csv_path: the split CSV read.
    Records keep the CSV order; every box is (N, 4) x1, y1, x2, y2 0-based pixels, as the
    labels say: x1 = (xc - w/2) * W, x2 = (xc + w/2) * W.

    The course's Kaggle copy of VOC was made by darknet's voc_label.py, which (a) drops every
    `difficult` object, so mAP on this layout is not the VOC protocol's (use VOCDevkit for
    that), and (b) writes boxes one pixel narrower and shorter than the devkit's ([xmin-1,
    xmax-1] in 1-based XML terms, where VOCDevkit reads [xmin-1, xmax]). Both are left as the
    labels have them: this reader cannot know which tool wrote a label file.

    Counted once: a label line that repeats an earlier line of its file (same class, the same
    box to DUPLICATE_TOLERANCE_PX, whatever the spelling of its numbers: `0.5` and `0.500000`)
    is dropped and listed in `duplicate_boxes` (records.py); an image file listed twice, under
    any spelling, and a label file with boxes that two images list, are DataErrors naming both
    CSV lines (skip_bad: the later line is skipped). Images may share an empty label file.
    """

    default_split = "train.csv"

    def _list_items(self, skip_bad: bool, skipped: list[str]) -> tuple[list[tuple[int, str, str]], str]:
        self.csv_path = self._resolve_csv(self.split)
        return self._read_csv(skip_bad, skipped), str(self.csv_path)

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

        A row of other than 2 fields, one that lists an image an earlier row listed (the same
        file under any name: `./a.jpg`, a symlink, a hard link), or one whose label file an
        earlier row listed when that file has boxes, is a DataError naming the line (with
        skip_bad: skipped; the first row is kept), since training on an image, or a box,
        twice per epoch is never what a split means.
        """
        text = read_text(self.csv_path, "split CSV file")
        rows: list[tuple[int, str, str]] = []
        first_image: dict[object, tuple[int, str]] = {}
        first_label: dict[object, tuple[int, str]] = {}
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
            msg = self._listed_twice(lineno, fields[0], fields[1], first_image, first_label)
            if msg:
                if not skip_bad:
                    raise DataError(msg)
                skipped.append(msg)
                continue
            rows.append((lineno, fields[0], fields[1]))
        return rows

    def _listed_twice(self, lineno: int, image: str, label: str, first_image: dict, first_label: dict) -> str | None:
        """The message for a row whose image file, or whose label file with boxes, an earlier
        row listed; None for a new row, whose files are then remembered. Empty fields are left
        to _build, which names them."""
        image_key = file_key(self.root / "images" / image) if image else None
        seen = first_image.get(image_key)
        if seen is not None:
            same = "" if seen[1] == image else f" (as {seen[1]!r} there: the same file)"
            return (f"{self.csv_path}:{lineno}: image {image!r} is listed twice, at lines {seen[0]} and "
                    f"{lineno}{same} (each epoch would train on it twice)")
        label_path = self.root / "labels" / label
        label_key = file_key(label_path) if label else None
        seen_label = first_label.get(label_key)
        if seen_label is not None and _has_lines(label_path):
            return (f"{self.csv_path}:{lineno}: label file {label!r} is listed twice, for image {seen_label[1]!r} "
                    f"at line {seen_label[0]} and image {image!r} at line {lineno}: its boxes would be counted "
                    f"on both images (each image needs its own label file; only an empty one may be shared)")
        if image_key is not None:
            first_image[image_key] = (lineno, image)
        if label_key is not None and seen_label is None:
            first_label[label_key] = (lineno, image)
        return None

    def _build(self, row: tuple[int, str, str]) -> tuple[Record, int, list[str]]:
        lineno, image_name, label_name = row
        listed = f"(listed at {self.csv_path}:{lineno})"
        image_path = self.root / "images" / image_name
        label_path = self.root / "labels" / label_name
        if not image_name:
            raise DataError(f"{self.csv_path}:{lineno}: empty image field")
        if not label_name:
            raise DataError(f"{self.csv_path}:{lineno}: empty label field")
        width, height, orientation, digest = self._decode_size(image_path, listed)
        if not label_path.exists():
            raise DataError(f"{label_path}: label file not found {listed}")
        boxes, labels, lines = self._parse_labels(label_path, width, height)
        keep, repeats = merge_repeats(boxes, labels, [False] * len(labels))
        notes = [f"{label_path}:{lines[i]} repeats line {lines[j]}" for i, j, _ in repeats]
        record = Record(image_path, [boxes[k] for k in keep], [labels[k] for k in keep], [False] * len(keep),
                        width, height, digest)
        return record, orientation, notes

    def _parse_labels(
        self, path: Path, width: int, height: int
    ) -> tuple[list[tuple[float, float, float, float]], list[int], list[int]]:
        """Parse a label file into pixel boxes for a width x height image (empty file: no boxes),
        their class ids and the line each is on."""
        text = read_text(path, "label file")
        n_cls = len(self.class_names)
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        lines: list[int] = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{lineno}"
            if len(fields) != 5:
                raise DataError(
                    f"{where}: expected 5 fields 'class xc yc w h', got {len(fields)}: {line.strip()!r}"
                )
            cls, xc, yc, w, h = (
                finite_number(tok, f"field {name}", where)
                for name, tok in zip(("class", "xc", "yc", "w", "h"), fields)
            )
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
            boxes.append(check_and_clip(box, width, height, self.box_tolerance, where))
            labels.append(int(cls))
            lines.append(lineno)
        return boxes, labels, lines


def _has_lines(path: Path) -> bool:
    """Whether a label file has a non-blank line (a box, or an error _build will name); a missing
    or unreadable file is left to _build too."""
    try:
        return any(line.strip() for line in path.read_bytes().splitlines())
    except OSError:
        return False
