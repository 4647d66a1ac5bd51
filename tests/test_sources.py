"""Tests of the dataset readers (yolov3.data.kaggle, .devkit, .records, .sources) on small
fixtures written in tmp_path.

Both layouts are written from the same integer ground truth (GT), inclusive 0-based pixel
boxes x1..x2, as real VOC data was: VOC XML gets the 1-based indices xmin = x1 + 1 ...
xmax = x2 + 1, Kaggle labels what darknet's voc_label.py makes of that XML, xc = (x1 + x2) / 2
/ W, w = (x2 - x1) / W. So the Kaggle reader gives [x1, x2] and the VOCdevkit reader the
devkit's continuous extent [x1, x2 + 1]: one pixel wider and taller, as on the real data.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from yolov3.constants import VOC_CLASSES
from yolov3.data.sample import DataError
from yolov3.data.devkit import VOCDevkit
from yolov3.data.kaggle import KaggleVOC
from yolov3.data.records import DetectionSource, Record
from yolov3.data.sources import detect_layout, open_source

# image id -> (year, (W, H), [(x1, y1, x2, y2, class, difficult), ...]); x2 <= W-1, y2 <= H-1
# because VOC's 1-based xmax is at most W.
GT: dict[str, tuple[str, tuple[int, int], list[tuple[int, int, int, int, int, bool]]]] = {
    "000005": ("2007", (64, 48), [(4, 6, 30, 40, 14, False), (10, 2, 63, 47, 8, True)]),
    "000007": ("2007", (50, 40), [(0, 0, 49, 39, 6, False)]),
    "000009": ("2007", (40, 56), []),  # an image with no objects
    "2008_000002": ("2012", (70, 30), [(5, 5, 20, 25, 11, True), (30, 1, 69, 29, 12, False)]),
}
# Deliberately not sorted, to check that the split file order is kept.
SPLITS = {
    ("2007", "trainval"): ["000007", "000005"],
    ("2007", "test"): ["000009"],
    ("2012", "trainval"): ["2008_000002"],
}
KAGGLE_TRAIN = ["000007", "000005", "2008_000002"]  # == 2007-trainval + 2012-trainval
KAGGLE_TEST = ["000009"]


# --------------------------------------------------------------------------- fixture writers


def write_image(path: Path, size: tuple[int, int], mode: str = "RGB", **save_kw) -> None:
    """Random-noise image of size (W, H) so files are real, decodable images."""
    w, h = size
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path, **save_kw)


def kaggle_lines(size: tuple[int, int], objs) -> str:
    w, h = size
    return "".join(
        f"{c} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n"
        for x1, y1, x2, y2, c, _ in objs
    )


def write_csv(path: Path, ids: list[str], header: bool = True, blank_lines: bool = False) -> None:
    rows = [f"{i}.jpg,{i}.txt" for i in ids]
    if blank_lines:
        rows = [r for row in rows for r in ("", row, "   ")]
    if header:
        rows = ["image,label"] + rows
    path.write_text("\n".join(rows) + "\n")


def make_kaggle(root: Path) -> Path:
    for image_id, (_, size, objs) in GT.items():
        write_image(root / "images" / f"{image_id}.jpg", size)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{image_id}.txt").write_text(kaggle_lines(size, objs))
    write_csv(root / "train.csv", KAGGLE_TRAIN, header=True)
    write_csv(root / "test.csv", KAGGLE_TEST, header=True)
    return root


def voc_xml(size: tuple[int, int], objs) -> str:
    w, h = size
    parts = [f"<annotation><folder>VOC</folder><size><width>{w}</width><height>{h}</height>"
             "<depth>3</depth></size>"]
    for k, (x1, y1, x2, y2, c, diff) in enumerate(objs):
        # Leave <difficult> out of one object to check that missing means 0.
        d = "" if (k == 0 and not diff) else f"<difficult>{int(diff)}</difficult>"
        parts.append(
            f"<object><name>{VOC_CLASSES[c]}</name><truncated>0</truncated>{d}"
            f"<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax>"
            f"<ymax>{y2 + 1}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "\n".join(parts)


def make_voc(root: Path, nested: bool = False) -> Path:
    base = root / "VOCdevkit" if nested else root
    for image_id, (year, size, objs) in GT.items():
        d = base / f"VOC{year}"
        write_image(d / "JPEGImages" / f"{image_id}.jpg", size)
        (d / "Annotations").mkdir(parents=True, exist_ok=True)
        (d / "Annotations" / f"{image_id}.xml").write_text(voc_xml(size, objs))
    for (year, image_set), ids in SPLITS.items():
        p = base / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture
def kaggle_root(tmp_path: Path) -> Path:
    return make_kaggle(tmp_path / "kaggle")


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    return make_voc(tmp_path / "voc")


def expected(ids: list[str], voc: bool = False):
    """Ground-truth boxes (N, 4), labels (N,), difficult (N,), (W, H) per image id. Boxes as
    the Kaggle labels give them, or (voc=True) as the devkit sees them: x2 + 1, y2 + 1."""
    for i in ids:
        _, size, objs = GT[i]
        boxes = np.array([o[:4] for o in objs], dtype=np.float32).reshape(-1, 4) + [0, 0, int(voc), int(voc)]
        labels = np.array([o[4] for o in objs], dtype=np.int64)
        diff = np.array([o[5] for o in objs], dtype=bool)
        yield i, boxes, labels, diff, size


# --------------------------------------------------------------------------- both layouts agree


def test_kaggle_matches_ground_truth_and_csv_order(kaggle_root: Path) -> None:
    src = KaggleVOC(kaggle_root, "train.csv")
    assert isinstance(src, DetectionSource) and len(src) == 3
    assert [r.image_path.stem for r in src.records] == KAGGLE_TRAIN
    assert src.skipped == [] and src.class_names == VOC_CLASSES
    for rec, (i, boxes, labels, _, (w, h)) in zip(src.records, expected(KAGGLE_TRAIN)):
        assert (rec.width, rec.height) == (w, h)
        assert rec.boxes.dtype == np.float32 and rec.boxes.shape == (len(labels), 4)
        np.testing.assert_allclose(rec.boxes, boxes, atol=1e-3)
        np.testing.assert_array_equal(rec.labels, labels)
        assert rec.labels.dtype == np.int64
        assert not rec.difficult.any()  # the Kaggle layout has no difficult flag


def test_voc_matches_ground_truth_and_keeps_difficult(voc_root: Path) -> None:
    src = VOCDevkit(voc_root, "2007-trainval")
    assert [r.image_path.stem for r in src.records] == SPLITS[("2007", "trainval")]
    for rec, (i, boxes, labels, diff, (w, h)) in zip(src.records, expected(SPLITS[("2007", "trainval")], voc=True)):
        assert (rec.width, rec.height) == (w, h)
        np.testing.assert_array_equal(rec.boxes, boxes)  # integer GT: exact
        np.testing.assert_array_equal(rec.labels, labels)
        np.testing.assert_array_equal(rec.difficult, diff)
    assert src.records[1].difficult.tolist() == [False, True]


def test_both_layouts_give_same_boxes(kaggle_root: Path, voc_root: Path) -> None:
    """The same objects from both layouts; the devkit's boxes are darknet's plus one pixel."""
    kag = KaggleVOC(kaggle_root, "train.csv")
    voc = VOCDevkit(voc_root, "2007-trainval+2012-trainval")
    assert len(kag) == len(voc) == 3
    for a, b in zip(kag, voc):
        assert Path(a.path).name == Path(b.path).name
        assert a.image.shape == b.image.shape and a.image.dtype == np.uint8
        np.testing.assert_allclose(a.boxes + [0, 0, 1, 1], b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.labels, b.labels)
    assert any(s.difficult.any() for s in voc)
    # Test split with an image without objects.
    kt, vt = KaggleVOC(kaggle_root, "test.csv"), VOCDevkit(voc_root, "2007-test")
    assert len(kt) == len(vt) == 1
    assert kt[0].boxes.shape == vt[0].boxes.shape == (0, 4)
    assert kt[0].image.shape == vt[0].image.shape == (56, 40, 3)


def test_two_year_split_concatenates(voc_root: Path) -> None:
    a = VOCDevkit(voc_root, "2007-trainval")
    b = VOCDevkit(voc_root, "2012-trainval")
    both = VOCDevkit(voc_root, "2007-trainval + 2012-trainval")
    assert both.records == a.records + b.records
    assert [r.image_path.parent.parent.name for r in both.records] == ["VOC2007", "VOC2007", "VOC2012"]
    # The default split is the usual training set.
    assert VOCDevkit(voc_root).records == both.records


def test_csv_with_and_without_header_are_identical(kaggle_root: Path) -> None:
    write_csv(kaggle_root / "noheader.csv", KAGGLE_TRAIN, header=False)
    write_csv(kaggle_root / "blanks.csv", KAGGLE_TRAIN, header=False, blank_lines=True)
    (kaggle_root / "crlf.csv").write_bytes(
        (kaggle_root / "train.csv").read_text().replace("\n", "\r\n").encode()
    )
    (kaggle_root / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (kaggle_root / "noheader.csv").read_bytes())
    ref = KaggleVOC(kaggle_root, "train.csv").records
    assert len(ref) == 3
    for name in ("noheader.csv", "blanks.csv", "crlf.csv", "bom.csv", "train"):
        assert KaggleVOC(kaggle_root, name).records == ref, name


def test_records_are_read_only_and_samples_are_copies(kaggle_root: Path) -> None:
    src = KaggleVOC(kaggle_root)
    rec = src.records[1]
    assert not rec.boxes.flags.writeable
    s = src[1]
    s.boxes[:] = -1  # must not reach the index
    assert (src.records[1].boxes >= 0).all()
    assert src[-1].path == str(src.records[-1].image_path)
    assert len(src[0:2]) == 2
    with pytest.raises(IndexError):
        src[3]
    other = Record(rec.image_path, rec.boxes + 1, rec.labels, rec.difficult, rec.width, rec.height)
    assert other != rec and Record(**rec.__dict__) == rec


# --------------------------------------------------------------------------- tolerance / clipping


def test_box_within_tolerance_is_clipped_beyond_is_error(kaggle_root: Path) -> None:
    w, h = GT["000007"][1]
    # x1 = -0.5, x2 = 49.0 px: 0.5 px outside the image.
    (kaggle_root / "labels" / "000007.txt").write_text(f"6 {24.25 / w!r} 0.5 {49.5 / w!r} 0.5\n")
    rec = KaggleVOC(kaggle_root).records[0]
    np.testing.assert_allclose(rec.boxes[0], [0.0, 10.0, 49.0, 30.0], atol=1e-4)
    with pytest.raises(DataError, match=r"000007\.txt:1: .*outside"):
        KaggleVOC(kaggle_root, box_tolerance=0.1)


def test_voc_xmax_equal_width_and_xmin_zero(voc_root: Path) -> None:
    xml = voc_root / "VOC2007" / "Annotations" / "000007.xml"
    xml.write_text(xml.read_text().replace("<xmin>1</xmin>", "<xmin>0</xmin>")
                   .replace("<xmax>50</xmax>", "<xmax>51</xmax>"))
    rec = VOCDevkit(voc_root, "2007-trainval").records[0]
    np.testing.assert_array_equal(rec.boxes[0], [0, 0, 50, 40])  # x1=-1 and x2=51 clipped to the image


def test_voc_boxes_are_the_devkits_pixels(voc_root: Path) -> None:
    """1-based inclusive XML pixels -> continuous [xmin - 1, xmax]: the width is the devkit's
    xmax - xmin + 1, a box with xmin == xmax is one pixel wide (not empty), and the IoU of
    two boxes without +1 equals VOCevaldet.m's IoU with +1 on the XML numbers."""
    from yolov3.evaluation import pair_iou

    xml = voc_root / "VOC2007" / "Annotations" / "000005.xml"
    text = xml.read_text()  # object 0: xmin 5, ymin 7, xmax 31, ymax 41
    xml.write_text(text.replace("<xmax>31</xmax>", "<xmax>5</xmax>"))  # one pixel wide
    rec = VOCDevkit(voc_root, "2007-trainval").records[1]
    np.testing.assert_array_equal(rec.boxes[0], [4, 6, 5, 41])
    xml.write_text(text.replace("<xmax>31</xmax>", "<xmax>4</xmax>"))
    with pytest.raises(DataError, match=r"000005\.xml: object 0 .*inverted box.*xmin=5 .*xmax=4"):
        VOCDevkit(voc_root, "2007-trainval")

    def devkit_iou(a, b):  # VOCevaldet.m, on 1-based inclusive pixel boxes
        iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
        ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
        if iw <= 0 or ih <= 0:
            return 0.0
        ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
        return iw * ih / ua

    rng = np.random.default_rng(0)
    xy = rng.integers(1, 60, (200, 2, 2))
    a = np.concatenate((xy[:, 0], xy[:, 0] + rng.integers(0, 30, (200, 2))), 1)  # xmin, ymin, xmax, ymax
    b = np.concatenate((xy[:, 1], xy[:, 1] + rng.integers(0, 30, (200, 2))), 1)
    b[:100] = a[:100] + rng.integers(-2, 3, (100, 4))  # many near matches
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2])
    cont = lambda boxes: (boxes - [1, 1, 0, 0]).astype(np.float64)  # the reader's conversion
    np.testing.assert_allclose(pair_iou(cont(a), cont(b)), [devkit_iou(p, q) for p, q in zip(a, b)], rtol=1e-12)


# --------------------------------------------------------------------------- bad input


def _set(rel: str, text: str | bytes) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        p = root / rel
        p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return mutate


def _unlink(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def _truncate(rel: str, n: int) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        p = root / rel
        p.write_bytes(p.read_bytes()[:n])
    return mutate


def _xml_edit(image_id: str, edit: Callable[[ET.Element], None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        p = root / "VOC2007" / "Annotations" / f"{image_id}.xml"
        tree = ET.parse(p)
        edit(tree.getroot())
        tree.write(p)
    return mutate


def _obj(k: int, tag: str, value: str | None) -> Callable[[ET.Element], None]:
    """Set (or with None remove) a field of object k; bndbox fields are looked up in <bndbox>."""
    def edit(ann: ET.Element) -> None:
        obj = ann.findall("object")[k]
        parent = obj.find("bndbox") if tag in ("xmin", "ymin", "xmax", "ymax") else obj
        el = parent.find(tag)
        if value is None:
            parent.remove(el)
        else:
            el.text = value
    return edit


def _remove(tag: str) -> Callable[[ET.Element], None]:
    return lambda ann: ann.remove(ann.find(tag))


def _set_size(w: int) -> Callable[[ET.Element], None]:
    def edit(ann: ET.Element) -> None:
        ann.find("size/width").text = str(w)
    return edit


LBL = "labels/000005.txt"
IMG = "images/000005.jpg"
VIMG = "VOC2007/JPEGImages/000005.jpg"
XML = "VOC2007/Annotations/000005.xml"
GOOD = "14 0.5 0.5 0.2 0.2\n"

# (id, layout, split, mutation, substrings the DataError message must contain)
BAD_CASES = [
    # Kaggle: CSV
    ("csv_three_columns", "kaggle", "train.csv", _set("train.csv", "image,label\n000005.jpg,000005.txt,x\n"), ["train.csv:2", "2 columns"]),
    ("csv_one_column", "kaggle", "train.csv", _set("train.csv", "000007.jpg,000007.txt\n\n000005.jpg\n"), ["train.csv:3", "got 1"]),
    ("csv_missing", "kaggle", "val.csv", lambda r: None, ["val.csv", "not found"]),
    ("csv_only_header", "kaggle", "train.csv", _set("train.csv", "image,label\n\n"), ["train.csv", "empty"]),
    # Kaggle: images
    ("image_missing", "kaggle", "train.csv", _unlink(IMG), ["000005.jpg", "not found", "train.csv:3"]),
    ("image_not_an_image", "kaggle", "train.csv", _set(IMG, b"hello, I am text"), ["000005.jpg", "cannot read"]),
    ("image_truncated_header", "kaggle", "train.csv", _truncate(IMG, 12), ["000005.jpg", "cannot read"]),
    # Kaggle: label files
    ("label_missing", "kaggle", "train.csv", _unlink(LBL), ["000005.txt", "not found"]),
    ("label_four_fields", "kaggle", "train.csv", _set(LBL, "14 0.5 0.5 0.2\n"), ["000005.txt:1", "5 fields"]),
    ("label_six_fields", "kaggle", "train.csv", _set(LBL, GOOD + "\n14 0.5 0.5 0.2 0.2 1\n"), ["000005.txt:3", "5 fields"]),
    ("label_non_numeric", "kaggle", "train.csv", _set(LBL, GOOD + "14 0.5 abc 0.2 0.2\n"), ["000005.txt:2", "'abc'", "not a number"]),
    ("label_nan", "kaggle", "train.csv", _set(LBL, "14 nan 0.5 0.2 0.2\n"), ["000005.txt:1", "finite"]),
    ("class_not_integer", "kaggle", "train.csv", _set(LBL, "1.5 0.5 0.5 0.2 0.2\n"), ["000005.txt:1", "not an integer"]),
    ("class_too_big", "kaggle", "train.csv", _set(LBL, "20 0.5 0.5 0.2 0.2\n"), ["000005.txt:1", "out of range"]),
    ("class_negative", "kaggle", "train.csv", _set(LBL, "-1 0.5 0.5 0.2 0.2\n"), ["000005.txt:1", "out of range"]),
    ("width_zero", "kaggle", "train.csv", _set(LBL, "14 0.5 0.5 0 0.2\n"), ["000005.txt:1", "> 0"]),
    ("height_negative", "kaggle", "train.csv", _set(LBL, "14 0.5 0.5 0.2 -0.1\n"), ["000005.txt:1", "> 0"]),
    ("box_outside", "kaggle", "train.csv", _set(LBL, GOOD + "14 0.95 0.5 0.3 0.2\n"), ["000005.txt:2", "outside"]),
    # VOC: XML
    ("xml_malformed", "voc", "2007-trainval", _set(XML, "<annotation><size><width>64</width>"), ["000005.xml", "malformed"]),
    ("xml_missing", "voc", "2007-trainval", _unlink(XML), ["000005.xml", "not found"]),
    ("xml_no_size", "voc", "2007-trainval", _xml_edit("000005", _remove("size")), ["000005.xml", "<size>"]),
    ("xml_size_mismatch", "voc", "2007-trainval", _xml_edit("000005", _set_size(65)), ["000005.xml", "65x48"]),
    ("xml_no_bndbox", "voc", "2007-trainval", _xml_edit("000005", _obj(1, "bndbox", None)), ["000005.xml", "object 1", "bndbox"]),
    ("xml_no_xmax", "voc", "2007-trainval", _xml_edit("000005", _obj(0, "xmax", None)), ["000005.xml", "object 0", "xmax"]),
    ("xml_unknown_class", "voc", "2007-trainval", _xml_edit("000005", _obj(0, "name", "unicorn")), ["000005.xml", "object 0", "unicorn"]),
    ("xml_xmin_gt_xmax", "voc", "2007-trainval", _xml_edit("000005", _obj(1, "xmin", "65")), ["000005.xml", "object 1", "inverted box", "xmin <= xmax"]),
    ("xml_ymin_gt_ymax", "voc", "2007-trainval", _xml_edit("000005", _obj(0, "ymin", "42")), ["000005.xml", "object 0", "inverted box", "ymin <= ymax"]),
    ("xml_box_outside", "voc", "2007-trainval", _xml_edit("000005", _obj(1, "xmax", "70")), ["000005.xml", "object 1", "outside"]),
    ("xml_bad_difficult", "voc", "2007-trainval", _xml_edit("000005", _obj(1, "difficult", "2")), ["000005.xml", "object 1", "difficult"]),
    ("xml_non_numeric", "voc", "2007-trainval", _xml_edit("000005", _obj(0, "ymin", "top")), ["000005.xml", "object 0", "'top'"]),
    # VOC: images and split files
    ("voc_image_missing", "voc", "2007-trainval", _unlink(VIMG), ["000005.jpg", "not found", "trainval.txt:2"]),
    ("voc_image_truncated", "voc", "2007-trainval", _truncate(VIMG, 12), ["000005.jpg", "cannot read"]),
    ("imagesets_missing", "voc", "2007-val", lambda r: None, ["val.txt", "not found"]),
    ("imagesets_empty", "voc", "2007-trainval", _set("VOC2007/ImageSets/Main/trainval.txt", "\n\n"), ["trainval.txt", "empty"]),
    ("year_missing", "voc", "2010-trainval", lambda r: None, ["VOC2010"]),
    ("bad_split_spec", "voc", "2007trainval", lambda r: None, ["2007trainval", "split spec"]),
]


@pytest.mark.parametrize(
    "layout,split,mutate,needles", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_input_raises_naming_the_file(
    kaggle_root: Path, voc_root: Path, layout: str, split: str, mutate, needles: list[str]
) -> None:
    root = kaggle_root if layout == "kaggle" else voc_root
    reader = KaggleVOC if layout == "kaggle" else VOCDevkit
    mutate(root)
    with pytest.raises(DataError) as info:
        reader(root, split)
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_decoded_size_differs_from_index(kaggle_root: Path) -> None:
    src = KaggleVOC(kaggle_root)
    write_image(kaggle_root / IMG, (32, 32))  # replaced after indexing
    src[0]  # other images still load
    with pytest.raises(DataError, match=r"000005\.jpg.*32x32"):
        src[1]


# --------------------------------------------------------------------------- skip_bad


def test_skip_bad_kaggle_records_each_and_keeps_good(kaggle_root: Path, caplog) -> None:
    _set(LBL, "20 0.5 0.5 0.2 0.2\n")(kaggle_root)
    _unlink("images/2008_000002.jpg")(kaggle_root)
    with (kaggle_root / "train.csv").open("a") as f:
        f.write("000009.jpg,000009.txt,extra\n")
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        src = KaggleVOC(kaggle_root, skip_bad=True)
    assert [r.image_path.stem for r in src.records] == ["000007"]
    assert len(src.skipped) == 3
    assert any("train.csv:5" in m for m in src.skipped)
    assert any("000005.txt:1" in m and "out of range" in m for m in src.skipped)
    assert any("2008_000002.jpg" in m for m in src.skipped)
    warnings = [r for r in caplog.records if r.name == "yolov3.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3" in warnings[0].getMessage() and "000005.txt" in warnings[0].getMessage()
    # The good image is intact.
    np.testing.assert_allclose(src[0].boxes, [[0, 0, 49, 39]], atol=1e-3)


def test_skip_bad_voc(voc_root: Path, caplog) -> None:
    _xml_edit("000005", _obj(0, "name", "unicorn"))(voc_root)
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        src = VOCDevkit(voc_root, "2007-trainval+2012-trainval", skip_bad=True)
    assert [r.image_path.stem for r in src.records] == ["000007", "2008_000002"]
    assert len(src.skipped) == 1 and "000005.xml" in src.skipped[0] and "unicorn" in src.skipped[0]
    assert len([r for r in caplog.records if r.name == "yolov3.data"]) == 1


def test_no_warning_when_nothing_skipped(kaggle_root: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        src = KaggleVOC(kaggle_root, skip_bad=True)
    assert len(src) == 3 and src.skipped == []
    assert not [r for r in caplog.records if r.name == "yolov3.data"]


def test_skip_bad_still_raises_for_split_level_errors(kaggle_root: Path, voc_root: Path) -> None:
    with pytest.raises(DataError, match="val.csv"):
        KaggleVOC(kaggle_root, "val.csv", skip_bad=True)
    with pytest.raises(DataError, match="val.txt"):
        VOCDevkit(voc_root, "2007-val", skip_bad=True)
    # Every image bad: the split is empty after skipping.
    _unlink("labels/000009.txt")(kaggle_root)
    with pytest.raises(DataError, match="empty") as info:
        KaggleVOC(kaggle_root, "test.csv", skip_bad=True)
    assert "test.csv" in str(info.value)


# --------------------------------------------------------------------------- image modes / EXIF


def test_image_modes_and_exif_orientation_kept_as_stored(tmp_path: Path, caplog) -> None:
    """Boxes refer to the stored pixels (VOC devkit, darknet, the course): an EXIF orientation
    tag is listed and warned about, never applied."""
    root = tmp_path / "modes"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "gray.jpg", (30, 20), mode="L")
    write_image(root / "images" / "rgba.png", (24, 16), mode="RGBA")
    pal = Image.new("P", (20, 10), 1)
    pal.putpalette([0, 0, 0, 200, 10, 30] + [0] * (256 * 3 - 6))
    pal.save(root / "images" / "pal.png")
    # Stored 60 wide x 40 high with a red top-left block; orientation 6 means "rotate 90
    # degrees clockwise to display". It loads as stored: 60 wide, 40 high, block top-left.
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :10] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(root / "images" / "exif.jpg", exif=exif.tobytes(), quality=95)
    # Box x2 = 58 fits only the stored (60x40) frame; the rotated one is 40 wide.
    exif_box = (45, 2, 58, 30, 7, False)
    cases = {"gray.jpg": (30, 20), "rgba.png": (24, 16), "pal.png": (20, 10), "exif.jpg": (60, 40)}
    for name, size in cases.items():
        objs = [exif_box] if name == "exif.jpg" else [(1, 1, 5, 5, 0, False)]
        (root / "labels" / f"{Path(name).stem}.txt").write_text(kaggle_lines(size, objs))
    (root / "train.csv").write_text("".join(f"{n},{Path(n).stem}.txt\n" for n in cases))

    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        src = KaggleVOC(root)
    assert len(src) == 4
    for sample, (name, (w, h)) in zip(src, cases.items()):
        assert sample.image.shape == (h, w, 3), name
        assert sample.image.dtype == np.uint8, name
    gray, _, palette, stored_sample = list(src)
    assert (gray.image[..., 0] == gray.image[..., 1]).all() and (gray.image[..., 1] == gray.image[..., 2]).all()
    assert (palette.image == (200, 10, 30)).all()
    assert (src.records[3].width, src.records[3].height) == (60, 40)
    np.testing.assert_allclose(stored_sample.boxes, [exif_box[:4]], atol=1e-3)
    top_left = stored_sample.image[:8, :8].reshape(-1, 3).mean(0)
    assert top_left[0] > 200 and top_left[1] < 60 and top_left[2] < 60
    assert src.exif_oriented == [(root / "images" / "exif.jpg", 6)]
    warned = [r.getMessage() for r in caplog.records if r.name == "yolov3.data"]
    assert len(warned) == 1 and "exif.jpg (6)" in warned[0] and "not applied" in warned[0]


# --------------------------------------------------------------------------- layout detection


def test_detect_layout_and_open_source(kaggle_root: Path, voc_root: Path, tmp_path: Path) -> None:
    assert detect_layout(kaggle_root) == "kaggle"
    assert detect_layout(voc_root) == "voc"
    assert isinstance(open_source(kaggle_root, "train.csv"), KaggleVOC)
    voc = open_source(voc_root, "2007-test")
    assert isinstance(voc, VOCDevkit) and len(voc) == 1
    assert isinstance(open_source(kaggle_root, "test.csv", layout="kaggle"), KaggleVOC)
    assert isinstance(open_source(voc_root, "2012-trainval", layout="voc"), VOCDevkit)

    nested = make_voc(tmp_path / "nested", nested=True)
    assert detect_layout(nested) == "voc"
    assert open_source(nested, "2007-trainval+2012-trainval").records[0].image_path.parts[-4] == "VOCdevkit"
    # The year directory itself also works as a root.
    assert detect_layout(voc_root / "VOC2007") == "voc"
    assert len(VOCDevkit(voc_root / "VOC2007", "2007-trainval")) == 2

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the dataset layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(DataError, match="not found"):
        detect_layout(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="layout"):
        open_source(kaggle_root, "train.csv", layout="coco")


def test_root_with_both_layouts(kaggle_root: Path) -> None:
    make_voc(kaggle_root)  # same directory now holds both
    with pytest.raises(DataError, match="both"):
        detect_layout(kaggle_root)
    assert isinstance(open_source(kaggle_root, "train.csv"), KaggleVOC)
    assert isinstance(open_source(kaggle_root, "2007-trainval"), VOCDevkit)


def test_truncated_image_data_fails_when_indexing_or_is_skipped(kaggle_root: Path, caplog) -> None:
    """A JPEG cut in the middle of its data has a good header; every image is decoded in full
    while the source is built, so it fails (or is skipped) then, not mid-epoch."""
    path = kaggle_root / IMG
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        KaggleVOC(kaggle_root, "train.csv")
    assert str(info.value).startswith(f"{path}: cannot read image") and "train.csv:3" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        skipping = KaggleVOC(kaggle_root, "train.csv", skip_bad=True)
    assert [r.image_path.stem for r in skipping.records] == ["000007", "2008_000002"]
    assert len(skipping.skipped) == 1 and "000005.jpg" in skipping.skipped[0]
    assert "000005.jpg" in caplog.text
