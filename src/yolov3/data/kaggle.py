"""Reader for the Kaggle "PASCAL_VOC" layout: ``images/``, ``labels/`` with YOLO-style
normalised ``class xc yc w h`` lines, and split CSVs (``train.csv``, ``test.csv``) of
``image,label`` rows. The index, its Records and the shared constructor are in
data/records.py; every bad input is a DataError naming the file and line.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from yolov3.data.records import LayoutReader, Record, check_and_clip, finite_number, read_text
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

        A row of other than 2 fields, or one that lists an image an earlier row listed, is a
        DataError naming the line (with skip_bad: skipped; of a repeated image the first row
        is kept), since training on an image twice per epoch is never what a split means.
        """
        text = read_text(self.csv_path, "split CSV file")
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
        width, height, orientation = self._decode_size(image_path, listed)
        if not label_path.exists():
            raise DataError(f"{label_path}: label file not found {listed}")
        boxes, labels = self._parse_labels(label_path, width, height)
        return Record(image_path, boxes, labels, [False] * len(labels), width, height), orientation

    def _parse_labels(
        self, path: Path, width: int, height: int
    ) -> tuple[list[tuple[float, float, float, float]], list[int]]:
        """Parse a label file into pixel boxes for a width x height image (empty file: no boxes)."""
        text = read_text(path, "label file")
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
        return boxes, labels
