"""Tests of the synthetic dataset generator (yolov3.data.synthetic)."""

from __future__ import annotations

import colorsys
import csv
import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from yolov3.constants import VOC_CLASSES
from yolov3.data.sample import load_rgb
from yolov3.data.synthetic import (
    CLASS_DESIGN,
    COLOUR_HUES,
    COLOURS,
    SHAPES,
    TEXTURES,
    generate,
    render_image,
)

N_TRAIN, N_TEST, SEED = 200, 20, 7
MIN_SIDE, MAX_SIDE = 256, 448


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    """One dataset with both layouts, made in this process (workers=1)."""
    out = tmp_path_factory.mktemp("synth") / "ds"
    summary = generate(out, N_TRAIN, N_TEST, seed=SEED, voc_xml=True, workers=1)
    return out, summary


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_kaggle(out: Path, stem: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4) float64 x1 y1 x2 y2 pixels and (N,) int labels from a Kaggle label file."""
    boxes, labels = [], []
    for line in (out / "labels" / f"{stem}.txt").read_text().splitlines():
        c, xc, yc, bw, bh = line.split()
        xc, yc, bw, bh = float(xc), float(yc), float(bw), float(bh)
        boxes.append([(xc - bw / 2) * w, (yc - bh / 2) * h, (xc + bw / 2) * w, (yc + bh / 2) * h])
        labels.append(int(c))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64)


def _read_xml(path: Path) -> dict:
    """A tiny VOC XML reader: size, boxes mapped back to 0-based, class indices, difficult."""
    root = ET.parse(path).getroot()
    size = root.find("size")
    out = {"filename": root.findtext("filename"),
           "w": int(size.findtext("width")), "h": int(size.findtext("height")),
           "depth": int(size.findtext("depth")), "boxes": [], "labels": [], "difficult": []}
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        out["boxes"].append([float(bb.findtext(k)) - 1 for k in ("xmin", "ymin", "xmax", "ymax")])
        out["labels"].append(VOC_CLASSES.index(obj.findtext("name")))
        out["difficult"].append(int(obj.findtext("difficult")))
        assert obj.findtext("pose") == "Unspecified"
        assert obj.findtext("truncated") in ("0", "1")
    out["boxes"] = np.array(out["boxes"], dtype=np.float64).reshape(-1, 4)
    return out


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_any_workers_and_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    ref = _all_files(out)
    # Same seed in two worker processes: every file byte-identical to the in-process run.
    again = tmp_path / "again"
    generate(again, N_TRAIN, N_TEST, seed=SEED, voc_xml=True, workers=2)
    got = _all_files(again)
    assert sorted(got) == sorted(ref)
    for name, data in ref.items():
        assert got[name] == data, name
    # Another seed: (nearly) every image differs.
    other = tmp_path / "other"
    generate(other, 10, 2, seed=SEED + 1, workers=1)
    differ = sum((other / "images" / f"train_{i:06d}.jpg").read_bytes()
                 != ref[f"images/train_{i:06d}.jpg"] for i in range(10))
    assert differ == 10


def test_render_matches_file(dataset):
    """render_image(seed, split, i) is the image that went to disk (up to JPEG loss)."""
    out, _ = dataset
    for split, i in (("train", 0), ("train", 17), ("test", 3)):
        r = render_image(SEED, split, i, MIN_SIDE, MAX_SIDE)
        img = load_rgb(out / "images" / f"{split}_{i:06d}.jpg")
        assert img.shape == r.image.shape
        assert np.abs(img.astype(np.float32) - r.image).mean() < 4.0
        boxes, labels = _read_kaggle(out, f"{split}_{i:06d}", img.shape[1], img.shape[0])
        np.testing.assert_allclose(boxes, r.boxes, atol=1e-3)
        np.testing.assert_array_equal(labels, r.labels)


def test_regenerate_clears_stale_files_and_refuses_foreign_dir(tmp_path):
    out = tmp_path / "ds"
    generate(out, 12, 4, seed=1, voc_xml=True, workers=1)
    generate(out, 5, 2, seed=1, voc_xml=False, workers=1)
    assert len(list((out / "images").iterdir())) == 7
    assert len(list((out / "labels").iterdir())) == 7
    assert not (out / "VOC2007").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        generate(foreign, 2, 1, workers=1)
    assert (foreign / "keep.txt").read_text() == "mine"


# ----------------------------------------------------------------------------------- layout

def test_kaggle_layout(dataset):
    out, summary = dataset
    assert summary["images"] == {"train": N_TRAIN, "test": N_TEST}
    assert len(list((out / "images").glob("*.jpg"))) == N_TRAIN + N_TEST
    assert len(list((out / "labels").glob("*.txt"))) == N_TRAIN + N_TEST
    n_boxes = Counter()
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        lines = (out / f"{split}.csv").read_text().splitlines()
        assert lines[0] == "image,label"
        rows = list(csv.reader(lines[1:]))
        assert len(rows) == n
        assert rows == [[f"{split}_{i:06d}.jpg", f"{split}_{i:06d}.txt"] for i in range(n)]
        for img_name, lab_name in rows:
            assert (out / "images" / img_name).is_file()
            text = (out / "labels" / lab_name).read_text()
            assert text.strip(), lab_name  # every image has at least one object
            for line in text.splitlines():
                parts = line.split()
                assert len(parts) == 5, line
                c = int(parts[0])
                assert 0 <= c < len(VOC_CLASSES)
                xc, yc, w, h = map(float, parts[1:])
                assert all(len(p.split(".")[1]) == 6 for p in parts[1:]), line
                assert w > 0 and h > 0
                assert 0 <= xc <= 1 and 0 <= yc <= 1 and w <= 1 and h <= 1
                # Edges inside the image up to the 6-decimal rounding of xc and w.
                eps = 1.5e-6
                assert -eps <= xc - w / 2 and xc + w / 2 <= 1 + eps
                assert -eps <= yc - h / 2 and yc + h / 2 <= 1 + eps
                n_boxes[split] += 1
    assert dict(n_boxes) == summary["boxes"]
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["seed"] == SEED and meta["n_train"] == N_TRAIN and meta["n_test"] == N_TEST
    assert len(meta["classes"]) == 20
    assert {c["name"] for c in meta["classes"]} == set(VOC_CLASSES)


def test_voc_xml_matches_kaggle(dataset):
    out, _ = dataset
    voc = out / "VOC2007"
    for split, listing, n in (("train", "trainval.txt", N_TRAIN), ("test", "test.txt", N_TEST)):
        stems = (voc / "ImageSets" / "Main" / listing).read_text().split()
        assert stems == [f"{split}_{i:06d}" for i in range(n)]
        for stem in stems:
            jpg = voc / "JPEGImages" / f"{stem}.jpg"
            assert jpg.is_file()
            assert jpg.read_bytes() == (out / "images" / f"{stem}.jpg").read_bytes()
            ann = _read_xml(voc / "Annotations" / f"{stem}.xml")
            assert ann["filename"] == f"{stem}.jpg" and ann["depth"] == 3
            boxes, labels = _read_kaggle(out, stem, ann["w"], ann["h"])
            np.testing.assert_array_equal(ann["labels"], labels)
            np.testing.assert_allclose(ann["boxes"], boxes, atol=1e-3, rtol=0)
            # The integer convention: 0 <= x1 < x2 <= W-1, 0 <= y1 < y2 <= H-1.
            b = ann["boxes"]
            assert np.all(b == np.round(b))
            assert np.all((0 <= b[:, 0]) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= ann["w"] - 1))
            assert np.all((0 <= b[:, 1]) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= ann["h"] - 1))


def test_difficult_share_and_meaning(dataset):
    """~5% of objects are difficult, and they are the small / occluded ones."""
    out, _ = dataset
    diff, vis_side = [], []
    for i in range(N_TRAIN):
        ann = _read_xml(out / "VOC2007" / "Annotations" / f"train_{i:06d}.xml")
        r = render_image(SEED, "train", i, MIN_SIDE, MAX_SIDE) if i < 60 else None
        diff += ann["difficult"]
        if r is not None:
            visible = r.visible_masks().reshape(len(r.objects), -1).sum(1)
            vis_side += list(np.sqrt(visible) / min(ann["w"], ann["h"]))
            np.testing.assert_array_equal(r.difficult.astype(int), ann["difficult"])
    share = float(np.mean(diff))
    assert 0.01 <= share <= 0.12, share
    flags = np.array(diff[: len(vis_side)], dtype=bool)
    vis_side = np.array(vis_side)
    if flags.any() and (~flags).any():
        assert vis_side[flags].max() < vis_side[~flags].min()


# ------------------------------------------------------------------------ boxes and pixels

def test_boxes_are_tight_and_objects_stand_out():
    """Box == bounding box of the drawn shape; only object pixels are strongly coloured."""
    for i in range(12):
        r = render_image(SEED, "train", i, MIN_SIDE, MAX_SIDE)
        h, w = r.image.shape[:2]
        full = r.full_masks()
        assert full.shape == (len(r.objects), h, w)
        for k, (box, m) in enumerate(zip(r.boxes, full)):
            ys, xs = np.nonzero(m)
            assert tuple(box) == (xs.min(), ys.min(), xs.max(), ys.max())
            # Occlusion never hides more than ~40% of an object.
            visible = (r.labelmap == k).sum()
            assert visible >= 0.55 * m.sum()
        hsv = cv2.cvtColor(r.image, cv2.COLOR_RGB2HSV_FULL).astype(np.float32) / 255.0
        sat = hsv[..., 1]
        # Background stays muted, so every saturated pixel belongs to some object...
        assert not np.any((sat > 0.3) & ~full.any(0))
        # ...and every visible object pixel is saturated, with its colour family's hue.
        for k, o in enumerate(r.objects):
            vis = r.labelmap == k
            assert np.median(sat[vis]) > 0.35
            hue = hsv[..., 0][vis] * 2 * np.pi
            mean_hue = np.degrees(np.arctan2(np.sin(hue).mean(), np.cos(hue).mean())) % 360
            centre = COLOUR_HUES[CLASS_DESIGN[o.label].colour]
            assert abs((mean_hue - centre + 180) % 360 - 180) < 15, (i, k, mean_hue, centre)


def test_objects_vary_in_scale_and_count():
    longer, counts = [], []
    for i in range(80):
        r = render_image(SEED, "test", i, MIN_SIDE, MAX_SIDE)
        b = r.boxes
        side = min(r.image.shape[:2])
        longer += list(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) / side)
        counts.append(len(r.objects))
    longer = np.array(longer)
    assert longer.min() < 0.15 and longer.max() > 0.5
    assert min(counts) >= 1 and max(counts) <= 5 and len(set(counts)) >= 4


# ----------------------------------------------------------------------------- class design

def test_class_design_needs_two_cues():
    assert len(CLASS_DESIGN) == len(VOC_CLASSES) == 20
    assert [d.name for d in CLASS_DESIGN] == list(VOC_CLASSES)
    pairs = {(d.shape, d.colour) for d in CLASS_DESIGN}
    assert len(pairs) == 20  # each (shape, colour) pair names one class
    colour_n = Counter(d.colour for d in CLASS_DESIGN)
    shape_n = Counter(d.shape for d in CLASS_DESIGN)
    texture_n = Counter(d.texture for d in CLASS_DESIGN)
    assert colour_n == {c: 5 for c in COLOURS}
    assert shape_n == {s: 4 for s in SHAPES}
    assert texture_n == {t: 5 for t in TEXTURES}
    for d in CLASS_DESIGN:
        assert TEXTURES.index(d.texture) == (SHAPES.index(d.shape) + COLOURS.index(d.colour)) % 4


def test_every_class_appears_roughly_balanced(dataset):
    _, summary = dataset
    per_class = summary["class_boxes"]["train"]
    assert set(per_class) == set(VOC_CLASSES)
    counts = np.array(list(per_class.values()))
    assert counts.min() > 0
    assert counts.max() <= 4 * counts.min()  # uniform draws: no class swamps another


def test_images_load_with_expected_sizes(dataset):
    out, _ = dataset
    sizes = set()
    for p in sorted((out / "images").glob("*.jpg"))[:40]:
        img = load_rgb(p)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
        h, w = img.shape[:2]
        assert MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE
        ann = _read_xml(out / "VOC2007" / "Annotations" / f"{p.stem}.xml")
        assert (ann["w"], ann["h"]) == (w, h)
        sizes.add((w, h))
    assert len(sizes) > 20  # mixed sizes, width and height drawn independently


def test_custom_side_range(tmp_path):
    generate(tmp_path / "small", 6, 0, seed=3, min_side=64, max_side=96, workers=1)
    for p in (tmp_path / "small" / "images").glob("*.jpg"):
        h, w = load_rgb(p).shape[:2]
        assert 64 <= h <= 96 and 64 <= w <= 96
    assert (tmp_path / "small" / "test.csv").read_text() == "image,label\n"


def test_hsv_helper_sanity():
    # Guard on the family hue table the colour test relies on: families at least 39 deg apart
    # after +-8 deg jitter, i.e. centres >= 55 deg apart.
    hues = sorted(COLOUR_HUES.values())
    gaps = np.diff(hues + [hues[0] + 360])
    assert gaps.min() >= 55
    r, g, b = colorsys.hsv_to_rgb(COLOUR_HUES["green"] / 360, 1, 1)
    assert g > r and g > b
