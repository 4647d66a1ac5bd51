"""Nothing is counted twice (issue 20, part 4), and splits without boxes say so (part 7c).

Part 4, every way a label can be double-counted:
* a box written twice in one label file / XML: one copy kept, listed in source.duplicate_boxes
  with one warning (whatever the spelling of its numbers; a box 0.02 px away is another box);
* one image file listed twice in a split under two spellings (./a.jpg, sub/../a.jpg, an
  absolute path, a symlink, a hard link; VOC: an id that reaches another id's file): DataError;
* two images with one label file that has boxes (or one XML): DataError; one empty label file
  shared by negatives is fine;
* two files with the same bytes in one split: kept, listed in source.duplicate_images, warned;
* the same picture in two splits of a run: a warning (DataModule.split_notes).
Part 7c: a training split without boxes is a DataError at setup; an evaluation split without
ground truth, and classes without boxes, get warnings; the test report says "no ground truth".

Every fixture is written here, in tmp_path.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov3.commands.report import NO_GROUND_TRUTH, print_report, summarise
from yolov3.data.datamodule import YoloDataModule
from yolov3.data.devkit import VOCDevkit
from yolov3.data.kaggle import KaggleVOC
from yolov3.data.records import DUPLICATE_TOLERANCE_PX, Record, merge_repeats
from yolov3.data.sample import DataError
from yolov3.evaluation import EvalArrays, evaluate_voc

W, H = 64, 48
CLASSES = ("cat", "dog", "person")
DOG = "1 0.5 0.5 0.25 0.25\n"  # x 24-40, y 18-30
PERSON = "2 0.25 0.25 0.125 0.25\n"  # x 12-20, y 6-18


def jpeg(seed: int | str) -> bytes:
    """A noise JPEG; each seed (an image id) gives other bytes."""
    if isinstance(seed, str):
        seed = int.from_bytes(seed.encode(), "little")
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def kaggle(root: Path, labels: dict[str, str], csv: str = "train.csv", rows: list[str] | None = None) -> Path:
    """images/<id>.jpg (each different) and labels/<id>.txt for every id of `labels`, and a
    split CSV listing them (or the given rows)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for i, text in labels.items():
        (root / "images" / f"{i}.jpg").write_bytes(jpeg(i))
        (root / "labels" / f"{i}.txt").write_text(text)
    rows = rows if rows is not None else [f"{i}.jpg,{i}.txt" for i in labels]
    (root / csv).write_text("image,label\n" + "".join(r + "\n" for r in rows))
    return root


def obj(name: str = "dog", box=(25, 19, 40, 30), difficult: int = 0, extra: str = "") -> str:
    return (f"<object><name>{name}</name>{extra}<difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
            f"<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")


def voc(root: Path, objects: dict[str, str], ids: list[str] | None = None, image_set: str = "trainval") -> Path:
    d = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for i, objs in objects.items():
        (d / "JPEGImages" / f"{i}.jpg").write_bytes(jpeg(i))
        (d / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth></size>{objs}</annotation>")
    (d / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{i}\n" for i in (ids or objects)))
    return root


def boxes_of(source) -> list[int]:
    return [len(r.boxes) for r in source.records]


# --------------------------------------------------------------------------- boxes written twice


def test_doubled_label_file_loads_each_object_once_and_perfect_detections_score_one(tmp_path, caplog) -> None:
    """The issue's case: every line of b.txt twice. Each object loads once, one warning says so,
    and a detector that finds every object scores VOC2010 mAP 1.000 (with the doubled ground
    truth it would be 0.500: the second copy is a positive no detection can match)."""
    root = kaggle(tmp_path, {"a": DOG, "b": (DOG + PERSON) * 2, "c": PERSON + PERSON})
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        src = KaggleVOC(root, "train.csv", class_names=CLASSES)
    assert boxes_of(src) == [1, 2, 1]
    lab = root / "labels"
    assert src.duplicate_boxes == [f"{lab / 'b.txt'}:3 repeats line 1", f"{lab / 'b.txt'}:4 repeats line 2",
                                   f"{lab / 'c.txt'}:2 repeats line 1"]
    warnings = [r.getMessage() for r in caplog.records if "repeated box" in r.getMessage()]
    assert len(warnings) == 1
    assert "dropped 3 repeated box(es) in the labels of 2 image(s)" in warnings[0]
    assert f"{lab / 'b.txt'}:3 repeats line 1" in warnings[0]

    def perfect_map(records) -> float:
        gt_boxes = np.concatenate([r.boxes for r in records])
        gt_classes = np.concatenate([r.labels for r in records])
        gt_image = np.repeat(np.arange(len(records)), [len(r.boxes) for r in records])
        # the detector: each distinct object once, score 0.9
        det = {(int(i), int(c), tuple(b)) for i, c, b in zip(gt_image, gt_classes, gt_boxes.tolist())}
        det_image, det_classes, det_boxes = (np.array(x) for x in zip(*sorted(det)))
        arrays = EvalArrays(np.arange(len(records)), det_image, det_boxes.astype(float), np.full(len(det), 0.9),
                            det_classes, gt_image, gt_boxes.astype(float), gt_classes,
                            np.zeros(len(gt_classes), bool))
        return evaluate_voc(arrays, len(CLASSES))["map_2010"]

    assert perfect_map(src.records) == pytest.approx(1.0, abs=1e-9)
    # the same evaluation on ground truth with the copies kept: what the issue saw
    doubled = [Record(r.image_path, np.concatenate([r.boxes, r.boxes]), np.concatenate([r.labels, r.labels]),
                      np.zeros(2 * len(r.labels), bool), r.width, r.height) for r in src.records]
    assert perfect_map(doubled) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("second", [
    "1 0.500000 0.500000 0.250000 0.250000",  # another precision
    "1\t0.5   0.5 0.25\t0.25   ",  # other spacing
    "1.0 5e-1 0.5 0.25 0.25",  # class as a float, exponent notation
    "1 0.5000000001 0.5 0.25 0.25",  # 6.4e-9 px away
])
def test_the_same_box_written_another_way_is_a_repeat(tmp_path, second) -> None:
    root = kaggle(tmp_path, {"a": DOG, "b": DOG + "\n" + second + "\n"})
    src = KaggleVOC(root, "train.csv", class_names=CLASSES)
    assert boxes_of(src) == [1, 1]
    assert src.duplicate_boxes == [f"{root / 'labels' / 'b.txt'}:3 repeats line 1"]  # blank line 2 counted


def test_six_decimals_and_full_precision_of_one_box_are_a_repeat(tmp_path) -> None:
    """0.333333 (6 decimals) and 0.3333333333 are 2e-5 px apart on a 64-px image."""
    root = kaggle(tmp_path, {"a": "0 0.333333 0.5 0.2 0.2\n0 0.3333333333 0.5 0.2 0.2\n"})
    assert boxes_of(KaggleVOC(root, "train.csv", class_names=CLASSES)) == [1]


@pytest.mark.parametrize("second", [
    "1 0.5003125 0.5 0.25 0.25",  # 0.02 px to the right on the 64-px image: two boxes
    "2 0.5 0.5 0.25 0.25",  # the same box, another class: two labels of one box, both kept
])
def test_boxes_that_differ_are_both_kept(tmp_path, second, caplog) -> None:
    root = kaggle(tmp_path, {"a": DOG + second + "\n"})
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        src = KaggleVOC(root, "train.csv", class_names=CLASSES)
    assert boxes_of(src) == [2] and src.duplicate_boxes == []
    assert not [r for r in caplog.records if "repeated" in r.getMessage()]


def _repeats_reference(boxes: np.ndarray, labels: np.ndarray, tol: float) -> list[int]:
    """Slow, obvious: each box against every kept box before it, first match wins."""
    out = []
    for i in range(len(boxes)):
        match = -1
        for j in range(i):
            if out[j] == -1 and labels[i] == labels[j] and all(abs(boxes[i][k] - boxes[j][k]) <= tol for k in range(4)):
                match = j
                break
        out.append(match)
    return out


def test_merge_repeats_matches_a_slow_reference() -> None:
    rng = np.random.default_rng(5)
    for trial in range(200):
        n = int(rng.integers(0, 12))
        base = rng.uniform(0, 100, (n, 4))
        labels = rng.integers(0, 2, n)
        # copies of earlier boxes, some nudged by under and over the tolerance, some chained
        for i in range(1, n):
            if rng.random() < 0.5:
                j = int(rng.integers(0, i))
                base[i] = base[j] + rng.choice([0.0, 0.004, -0.006, 0.011, 0.5]) * rng.integers(0, 2, 4)
                labels[i] = labels[j] if rng.random() < 0.8 else labels[i]
        difficult = rng.random(n) < 0.3
        keep, repeats = merge_repeats(base, labels, difficult)
        ref = _repeats_reference(base, labels, DUPLICATE_TOLERANCE_PX)
        assert keep == [i for i in range(n) if ref[i] == -1], trial
        assert [(i, j) for i, j, _ in repeats] == [(i, ref[i]) for i in range(n) if ref[i] != -1], trial
        assert [d for *_, d in repeats] == [bool(difficult[i] != difficult[ref[i]]) for i in range(n) if ref[i] != -1]


def test_a_chain_of_close_boxes_merges_only_those_close_to_the_kept_one() -> None:
    boxes = [(10, 10, 20, 20), (10.008, 10, 20, 20), (10.016, 10, 20, 20)]
    keep, repeats = merge_repeats(boxes, [0, 0, 0], [False] * 3)
    assert keep == [0, 2] and repeats == [(1, 0, False)]


def test_voc_repeated_objects(tmp_path, caplog) -> None:
    """Identical <object>s, ones that differ only in fields the reader does not keep
    (<truncated>, <pose>), and ones that differ in <difficult> are one object; the kept copy is
    difficult only when every copy is. Another class or another box is another object."""
    root = voc(tmp_path, {
        "a": obj() + obj(),
        "b": obj(extra="<truncated>1</truncated><pose>Left</pose>") + obj(extra="<truncated>0</truncated>"),
        "c": obj(difficult=1) + obj(difficult=0),
        "d": obj(difficult=1) + obj(difficult=1),
        "e": obj() + obj(name="cat") + obj(box=(25, 19, 41, 30)),
    })
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        src = VOCDevkit(root, "2007-trainval", class_names=CLASSES)
    assert boxes_of(src) == [1, 1, 1, 1, 3]
    assert [r.difficult.tolist() for r in src.records[2:4]] == [[False], [True]]
    ann = root / "VOC2007" / "Annotations"
    assert src.duplicate_boxes == [
        f"{ann / 'a.xml'}: object 1 repeats object 0 (0-based)",
        f"{ann / 'b.xml'}: object 1 repeats object 0 (0-based)",
        f"{ann / 'c.xml'}: object 1 repeats object 0 (0-based) except for <difficult> (kept as not difficult)",
        f"{ann / 'd.xml'}: object 1 repeats object 0 (0-based)",
    ]
    assert any("dropped 4 repeated box(es) in the labels of 4 image(s)" in r.getMessage() for r in caplog.records)


def test_no_warning_and_nothing_recorded_without_repeats(tmp_path, caplog) -> None:
    root = kaggle(tmp_path, {"a": DOG + PERSON, "b": ""})
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        src = KaggleVOC(root, "train.csv", class_names=CLASSES)
    assert src.duplicate_boxes == [] and src.duplicate_images == [] and not caplog.records


def test_real_voc2012_sample_has_no_repeated_objects() -> None:
    root = Path(__file__).parent.parent.parent / "shared" / "data" / "voc2012_sample"  # as test_real_photos
    if not root.is_dir():
        pytest.skip("../shared/data/voc2012_sample is not here")
    src = VOCDevkit(root, "2012-train")
    assert len(src) == 60 and sum(boxes_of(src)) == 152
    assert src.duplicate_boxes == [] and src.duplicate_images == []


# --------------------------------------------------------------------------- one file listed twice


@pytest.mark.parametrize("spelling", ["./b.jpg", "sub/../b.jpg", "ABSOLUTE", "link.jpg", "hard.jpg"])
def test_an_image_listed_twice_under_two_spellings_is_an_error(tmp_path, spelling) -> None:
    root = kaggle(tmp_path, {"a": DOG, "b": DOG, "c": PERSON})
    (root / "images" / "sub").mkdir()
    (root / "images" / "link.jpg").symlink_to("b.jpg")
    os.link(root / "images" / "b.jpg", root / "images" / "hard.jpg")
    name = str(root / "images" / "b.jpg") if spelling == "ABSOLUTE" else spelling
    rows = ["a.jpg,a.txt", "b.jpg,b.txt", "c.jpg,c.txt", f"{name},b.txt"]
    (root / "train.csv").write_text("image,label\n" + "".join(r + "\n" for r in rows))
    with pytest.raises(DataError) as info:
        KaggleVOC(root, "train.csv", class_names=CLASSES)
    assert str(info.value) == (f"{root / 'train.csv'}:5: image {name!r} is listed twice, at lines 3 and 5 (as "
                               f"'b.jpg' there: the same file) (each epoch would train on it twice)")
    src = KaggleVOC(root, "train.csv", class_names=CLASSES, skip_bad=True)
    assert [r.image_path.name for r in src.records] == ["a.jpg", "b.jpg", "c.jpg"]
    assert src.skipped == [str(info.value)]


def test_two_images_with_one_label_file(tmp_path) -> None:
    """A label file with boxes listed for two images is an error; an empty one may be shared
    by images without objects; a symlink to another image's label file is the same file."""
    root = kaggle(tmp_path, {"a": DOG, "b": PERSON, "c": "", "d": "", "e": "  \n"})
    (root / "labels" / "f.txt").symlink_to("a.txt")
    rows = ["a.jpg,a.txt", "b.jpg,b.txt", "c.jpg,c.txt", "d.jpg,c.txt", "e.jpg,e.txt", "e2.jpg,e.txt"]
    (root / "images" / "e2.jpg").write_bytes(jpeg("e2"))
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    assert boxes_of(KaggleVOC(root, "train.csv", class_names=CLASSES)) == [1, 1, 0, 0, 0, 0]
    for row in ("b.jpg,a.txt", "d.jpg,f.txt"):
        (root / "train.csv").write_text("a.jpg,a.txt\n" + row + "\n")
        with pytest.raises(DataError) as info:
            KaggleVOC(root, "train.csv", class_names=CLASSES)
        label, image = row.split(",")[1], row.split(",")[0]
        assert str(info.value) == (
            f"{root / 'train.csv'}:2: label file {label!r} is listed twice, for image 'a.jpg' at line 1 and image "
            f"{image!r} at line 2: its boxes would be counted on both images (each image needs its own label file; "
            f"only an empty one may be shared)")
        assert len(KaggleVOC(root, "train.csv", class_names=CLASSES, skip_bad=True)) == 1


def test_voc_an_id_that_reaches_another_ids_file_is_an_error(tmp_path) -> None:
    root = voc(tmp_path, {"a": obj(), "b": obj()}, ids=["a", "b", "./b"])
    main = root / "VOC2007" / "ImageSets" / "Main"
    with pytest.raises(DataError, match=r"trainval.txt:3: image id './b' is listed twice, at .*trainval.txt:2 and "
                                        r".*trainval.txt:3 \(as id 'b' there: the same file\)"):
        VOCDevkit(root, "2007-trainval", class_names=CLASSES)
    jpg = root / "VOC2007" / "JPEGImages"
    (jpg / "c.jpg").symlink_to("b.jpg")
    (root / "VOC2007" / "Annotations" / "c.xml").write_text((root / "VOC2007" / "Annotations" / "b.xml").read_text())
    (main / "trainval.txt").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"trainval.txt:3: image id 'c' is listed twice, .*\(as id 'b' there"):
        VOCDevkit(root, "2007-trainval", class_names=CLASSES)
    # two parts of a spec that list one image: the error names both files
    (main / "trainval.txt").write_text("a\nb\n")
    (main / "val.txt").write_text("./a\n")
    with pytest.raises(DataError, match=r"val.txt:1: image id './a' is listed twice, at .*trainval.txt:1 and"):
        VOCDevkit(root, "2007-trainval+2007-val", class_names=CLASSES)
    src = VOCDevkit(root, "2007-trainval+2007-val", class_names=CLASSES, skip_bad=True)
    assert len(src) == 2 and len(src.skipped) == 1


def test_voc_two_ids_with_one_annotation_file(tmp_path) -> None:
    root = voc(tmp_path, {"a": obj(), "b": obj()})
    ann = root / "VOC2007" / "Annotations"
    (ann / "b.xml").unlink()
    (ann / "b.xml").symlink_to("a.xml")
    with pytest.raises(DataError) as info:
        VOCDevkit(root, "2007-trainval", class_names=CLASSES)
    main = root / "VOC2007" / "ImageSets" / "Main"
    assert str(info.value) == (f"{main / 'trainval.txt'}:2: the annotation file of id 'b' is the one of id 'a' "
                               f"(listed at {main / 'trainval.txt'}:1), the same file: its objects would be counted "
                               f"on both images (each image needs its own XML)")


def test_files_with_the_same_bytes_are_kept_and_listed(tmp_path, caplog) -> None:
    root = kaggle(tmp_path, {"a": DOG, "b": PERSON, "c": DOG})
    images = root / "images"
    (images / "c.jpg").write_bytes((images / "a.jpg").read_bytes())
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        src = KaggleVOC(root, "train.csv", class_names=CLASSES)
    assert len(src) == 3
    assert src.duplicate_images == [f"{images / 'c.jpg'} has the same bytes as {images / 'a.jpg'}"]
    assert src.records[0].digest == src.records[2].digest != src.records[1].digest
    warned = [r.getMessage() for r in caplog.records if "same bytes" in r.getMessage()]
    assert len(warned) == 1 and "1 image(s) have the same bytes as an earlier image of the split" in warned[0]


# --------------------------------------------------------------------------- splits of one run


def datamodule(root: Path, **kw) -> YoloDataModule:
    return YoloDataModule(root=str(root), class_names=list(CLASSES), image_size=64, batch_size=2, num_workers=0,
                          **kw)


@pytest.mark.parametrize("how", ["same file", "copy"])
def test_an_image_in_train_and_test_is_warned_about(tmp_path, caplog, how) -> None:
    root = kaggle(tmp_path, {"a": DOG, "b": PERSON, "c": DOG})
    kaggle(root, {"t": DOG, "u": PERSON}, csv="test.csv")
    if how == "same file":
        (root / "test.csv").write_text("t.jpg,t.txt\nu.jpg,u.txt\nb.jpg,b.txt\n")
        quoted = str(root / "images" / "b.jpg")
    else:
        (root / "images" / "u.jpg").write_bytes((root / "images" / "b.jpg").read_bytes())
        quoted = f"{root / 'images' / 'u.jpg'} is {root / 'images' / 'b.jpg'}"
    dm = datamodule(root, val_fraction=0.0)
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        dm.setup(None)
    shared = [n for n in dm.split_notes if "shares" in n]
    assert len(shared) == 1 and shared[0] == (
        f"test split 'test.csv' of {root} shares 1 of its {2 if how == 'copy' else 3} image(s) with train split "
        f"'train.csv' of {root} (the same file or the same bytes): scores on them measure what the model "
        f"remembers, not what it detects: {quoted}")
    assert any(r.getMessage() == shared[0] for r in caplog.records)


def test_disjoint_splits_say_nothing(tmp_path, caplog) -> None:
    root = kaggle(tmp_path, {"a": DOG, "b": PERSON, "c": "0 0.5 0.5 0.5 0.5\n"})
    kaggle(root, {"t": DOG + PERSON, "u": "0 0.5 0.5 0.5 0.5\n"}, csv="val.csv")
    kaggle(root, {"v": DOG + PERSON + "0 0.5 0.5 0.5 0.5\n"}, csv="test.csv")
    dm = datamodule(root, val_split="val.csv")
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        dm.setup(None)
    assert dm.split_notes == [] and not caplog.records


# --------------------------------------------------------------------------- splits without boxes


@pytest.mark.parametrize("layout", ["kaggle", "voc"])
def test_a_training_split_without_boxes_is_an_error_before_training(tmp_path, layout) -> None:
    if layout == "kaggle":
        root = kaggle(tmp_path, {"a": "", "b": "\n", "c": ""})
        split, name = "train.csv", "'train.csv'"
    else:
        root = voc(tmp_path, {"a": "", "b": "", "c": ""}, image_set="train")
        split, name = "2007-train", "'2007-train'"
    dm = datamodule(root, train_split=split, val_fraction=0.0, layout=layout)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert str(info.value) == (
        f"train split {name} of {root}: the training split has no boxes: none of its 3 image(s) has one (every "
        f"label file is empty, or every XML has no <object>); there is nothing to train on")
    assert dm.train_set is None


def test_boxes_only_in_the_held_out_images_is_an_error_too(tmp_path) -> None:
    labels = {f"i{k}": "" for k in range(10)}
    root = kaggle(tmp_path, labels)
    held = datamodule(root, val_fraction=0.1)
    held.setup("validate")  # validate trains nothing: no error, the split is set up
    val_name = held.val_set.source.source.records[held.val_set.source.indices[0]].image_path.stem
    (root / "labels" / f"{val_name}.txt").write_text(DOG)
    with pytest.raises(DataError, match=r"train split 'train.csv' of .* \(less the 1 image\(s\) held out for "
                                        r"validation\): the training split has no boxes: none of its 9 image"):
        datamodule(root, val_fraction=0.1).setup("fit")


@pytest.mark.parametrize("content, extra", [("", ""), ("difficult", " (1 box(es), all difficult, which evaluation "
                                                                    "ignores)")])
def test_an_evaluation_split_without_ground_truth_is_warned_about(tmp_path, caplog, content, extra) -> None:
    root = voc(tmp_path, {"a": obj() + obj("cat", (1, 1, 9, 9)) + obj("person", (2, 2, 30, 30))}, image_set="train")
    voc(root, {"t": obj(difficult=1) if content else "", "u": ""}, image_set="test")
    dm = datamodule(root, train_split="2007-train", val_fraction=0.0, test_split="2007-test")
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        dm.setup("fit")
        dm.setup("test")
    msg = (f"test split '2007-test' of {root}: none of its 2 image(s) has a ground-truth box{extra}: its mAP will be "
           f"n/a (no ground truth), not a score")
    assert dm.split_notes == [msg]
    assert [r.getMessage() for r in caplog.records] == [msg]


def test_classes_without_boxes_are_named(tmp_path, caplog) -> None:
    root = kaggle(tmp_path, {"a": DOG, "b": DOG + DOG.replace("0.5 0.5", "0.4 0.4")})
    kaggle(root, {"t": DOG + PERSON}, csv="test.csv")
    dm = datamodule(root, val_fraction=0.0)
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        dm.setup(None)
    assert dm.split_notes == [
        f"train split 'train.csv' of {root}: 2 of 3 classes have no box in the training split, so the model cannot "
        f"learn them: cat, person",
        f"test split 'test.csv' of {root}: 1 of 3 classes have no ground truth here, so their AP is n/a and the mAP "
        f"is the mean over the other 2: cat",
    ]
    assert [r.getMessage() for r in caplog.records] == dm.split_notes


def test_the_report_says_the_split_has_no_ground_truth(capsys) -> None:
    detections = (np.zeros(1, np.int64), np.array([[1.0, 1, 9, 9]]), np.array([0.8]), np.array([1]))
    arrays = EvalArrays(np.arange(2), *detections, np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64),
                        np.zeros(0, bool))
    voc_results = evaluate_voc(arrays, len(CLASSES))
    results = {"voc": voc_results, "num_images": 2, "map_07": voc_results["map_07"],
               "map_2010": voc_results["map_2010"], "map_course": voc_results["map_course"]}
    report = summarise({}, results, CLASSES)
    assert report["ground_truth"] == 0 and report["note"] == NO_GROUND_TRUTH
    assert report["summary"]["map_2010"] is None
    print_report(report)
    out = " ".join(capsys.readouterr().out.split())
    assert "this split has no ground truth (no box that is not difficult): every AP and the mAP are n/a" in out
    # with ground truth there is no note
    with_gt = arrays._replace(gt_image=np.zeros(1, np.int64), gt_boxes=np.array([[1.0, 1, 9, 9]]),
                              gt_classes=np.array([1]), gt_difficult=np.zeros(1, bool))
    voc_results = evaluate_voc(with_gt, len(CLASSES))
    report = summarise({}, {**results, "voc": voc_results}, CLASSES)
    assert report["ground_truth"] == 1 and "note" not in report


def test_fit_on_a_split_without_boxes_stops_with_one_line(synth_root, tmp_path, monkeypatch) -> None:
    """`yolov3 fit` prints the DataError as one line before any training step."""
    import shutil
    import sys

    from yolov3.commands.cli import main

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    for label in (root / "labels").glob("*.txt"):
        label.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    config = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", config, "--data.root", str(root), "--data.val_fraction", "0.25",
              "--trainer.max_epochs", "1"])
    message = str(info.value.code)
    assert message.startswith("yolov3 fit: train split 'train.csv' of ") and "\n" not in message, message
    assert message.endswith("(less the 6 image(s) held out for validation): the training split has no boxes: none "
                            "of its 18 image(s) has one (every label file is empty, or every XML has no <object>); "
                            "there is nothing to train on"), message
    assert not list(tmp_path.rglob("*.ckpt"))
