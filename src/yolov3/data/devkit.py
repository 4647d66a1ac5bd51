"""Reader for the native VOCdevkit layout: ``VOC2007/``, ``VOC2012/`` (directly or under
``VOCdevkit/``) with ``JPEGImages/``, XML ``Annotations/`` and ``ImageSets/Main/*.txt`` split
files, and the YEAR-SET split specs that name them ("2007-trainval+2012-trainval"). The
index, its Records and the shared constructor are in data/records.py; every bad input is a
DataError naming the file and line or object.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
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
from yolov3.data.sample import DataError

__all__ = ["VOCDevkit", "looks_like_split_spec", "parse_split_spec"]

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


def looks_like_split_spec(split: str) -> bool:
    """Whether every '+'-separated part of split is YEAR-SET ('2007-test'), as parse_split_spec
    wants; a Kaggle CSV name ('train.csv') is not."""
    return all(_SPLIT_PART.match(p.strip()) for p in split.split("+"))


def _find_year_dir(root: Path, year: str) -> Path | None:
    """root/VOC<year>, root/VOCdevkit/VOC<year>, or root itself when it is VOC<year>."""
    for cand in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if cand.is_dir():
            return cand
    if root.name == f"VOC{year}" and root.is_dir():
        return root
    return None


def _listed_twice(
    year_dir: Path, image_id: str, where: tuple[Path, int], first_image: dict, first_xml: dict
) -> str | None:
    """The message for an id whose image file an earlier line listed (in this ImageSets file or
    another part of the spec such as 2007-train+2007-trainval), under this id or another that
    reaches the same file (see file_key), or whose annotation file is an earlier id's (a
    symlink: one image's objects would be counted on both); None for a new image, whose files
    are then remembered in first_image / first_xml (file key -> (list file, line, id))."""
    list_path, n = where
    key = file_key(year_dir / "JPEGImages" / f"{image_id}.jpg")
    seen = first_image.get(key)
    if seen is not None:
        same = "" if seen[2] == image_id else f" (as id {seen[2]!r} there: the same file)"
        return (f"{list_path}:{n}: image id {image_id!r} is listed twice, at {seen[0]}:{seen[1]} and "
                f"{list_path}:{n}{same} (each epoch would train on it twice)")
    xml_key = file_key(year_dir / "Annotations" / f"{image_id}.xml")
    other = first_xml.get(xml_key)
    if other is not None:
        return (f"{list_path}:{n}: the annotation file of id {image_id!r} is the one of id {other[2]!r} "
                f"(listed at {other[0]}:{other[1]}), the same file: its objects would be counted on both "
                f"images (each image needs its own XML)")
    first_image[key] = first_xml[xml_key] = (list_path, n, image_id)
    return None


def _xml_number(elem: ET.Element, tag: str, where: str) -> float:
    text = elem.findtext(tag)
    if text is None or not text.strip():
        raise DataError(f"{where}: missing <{tag}>")
    return finite_number(text.strip(), f"<{tag}>", where)


class VOCDevkit(LayoutReader):
    """The native VOCdevkit layout.

    root/VOC<year>/ (or root/VOCdevkit/VOC<year>/) with JPEGImages/<id>.jpg,
    Annotations/<id>.xml and ImageSets/Main/<set>.txt.

    split: '+'-joined YEAR-SET parts, e.g. "2007-test" or "2007-trainval+2012-trainval" (the
    default); records follow the parts in order, each in the order of its ImageSets file.
    The other arguments are LayoutReader's.
    Boxes: x1, y1, x2, y2 = xmin-1, ymin-1, xmax, ymax ((N, 4) float32, continuous 0-based
    pixel coordinates). VOC XML coordinates are 1-based inclusive pixel indices: the object
    covers pixels xmin..xmax, whose continuous extent is [xmin-1, xmax), so the box width
    x2 - x1 equals the devkit's xmax - xmin + 1 and IoU without any +1 (as every evaluator
    here computes it) equals the devkit's VOCevaldet.m. A box with xmin == xmax is one pixel
    wide, not empty. (Darknet's voc_label.py, which made the Kaggle layout's labels, writes
    centre (xmin+xmax)/2 - 1 and width xmax - xmin, i.e. the box [xmin-1, xmax-1]: one pixel
    narrower and shorter than this.) `difficult` objects are kept and flagged.

    Counted once: an <object> that repeats an earlier one of its XML (same <name>, the same
    box to DUPLICATE_TOLERANCE_PX; <truncated>, <pose>, <occluded>, which this reader does not
    keep, may differ) is dropped and listed in `duplicate_boxes` (records.py); the kept copy
    is difficult only if every copy is, since a copy without the flag says the object is to be
    found. The devkit's VOCevaldet would count both copies, the second a positive no detection
    can match; the official annotations have no such repeats. An image listed twice in the
    split (one ImageSets file, two parts of the spec, or two ids that reach one file through a
    symlink) is a DataError naming both lines (skip_bad: the later line is skipped).
    """

    default_split = "2007-trainval+2012-trainval"

    def _list_items(self, skip_bad: bool, skipped: list[str]) -> tuple[list[tuple[Path, str, Path, int]], str]:
        items: list[tuple[Path, str, Path, int]] = []
        first_image: dict[object, tuple[Path, int, str]] = {}
        first_xml: dict[object, tuple[Path, int, str]] = {}
        # All ImageSets files are read before any image, so a split-level mistake (a typo in
        # the spec, a missing year) fails at once instead of after minutes of header reads.
        for year, image_set in parse_split_spec(self.split):
            year_dir = _find_year_dir(self.root, year)
            if year_dir is None:
                raise DataError(
                    f"{self.root}: no VOC{year} directory (looked for {self.root / f'VOC{year}'} "
                    f"and {self.root / 'VOCdevkit' / f'VOC{year}'})"
                )
            list_path = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
            text = read_text(list_path, "ImageSets file")
            ids = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
            if not ids:
                raise DataError(f"{list_path}: ImageSets file lists no images (empty split)")
            for n, image_id in ids:
                msg = _listed_twice(year_dir, image_id, (list_path, n), first_image, first_xml)
                if msg:
                    if not skip_bad:
                        raise DataError(msg)
                    skipped.append(msg)
                    continue
                items.append((year_dir, image_id, list_path, n))
        return items, f"{self.root} split {self.split!r}"

    def _build(self, item: tuple[Path, str, Path, int]) -> tuple[Record, int, list[str]]:
        year_dir, image_id, list_path, lineno = item
        listed = f"(listed at {list_path}:{lineno})"
        image_path = year_dir / "JPEGImages" / f"{image_id}.jpg"
        xml_path = year_dir / "Annotations" / f"{image_id}.xml"
        width, height, orientation, digest = self._decode_size(image_path, listed)
        boxes, labels, difficult = self._parse_xml(xml_path, width, height, listed)
        keep, repeats = merge_repeats(boxes, labels, difficult)
        flags = [difficult[k] for k in keep]
        notes = []
        for i, j, differs in repeats:
            note = f"{xml_path}: object {i} repeats object {j} (0-based)"
            if differs:
                # one copy says difficult, the other not: the object is kept as one to be found
                flags[keep.index(j)] = False
                note += " except for <difficult> (kept as not difficult)"
            notes.append(note)
        record = Record(image_path, [boxes[k] for k in keep], [labels[k] for k in keep], flags, width, height, digest)
        return record, orientation, notes

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
            boxes.append(check_and_clip(box, width, height, self.box_tolerance, where))
            labels.append(self._class_index[name])
            difficult.append(diff_text == "1")
        return boxes, labels, difficult
