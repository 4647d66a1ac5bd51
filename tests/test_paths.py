"""Path arguments and output names (issue 20, parts 5 and 6).

Part 5: a path argument that names an existing file or folder is taken literally, whatever
characters its name holds; only one that names nothing is a glob pattern (expand_sources, and
through it detect, cam, app / space --examples, export / space --data).

Part 6: every input gets output files of its own (yolov3.commands.outputs): inputs sharing a
name from several folders, `a.jpg` beside `a.png`, names that differ only in case, the same
file named twice; an earlier run's files are replaced with a warning that names them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov3.commands.outputs import OutputNames, input_names, name_key, picture_name, safe_part
from yolov3.data.sample import expand_sources


def image(path: Path, w: int = 40, h: int = 30, seed: int = 0) -> Path:
    """A small noise image at path (folders made), in the format its suffix names (PNG when
    the suffix is none Pillow knows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def names_of(paths) -> list[str]:
    return [str(p) for p in paths]


# --------------------------------------------------------------- part 5: literal first


def test_an_existing_file_whose_name_looks_like_a_pattern_is_that_file(tmp_path, monkeypatch) -> None:
    """The issue's case: `photo[1].jpg` beside `photo1.jpg` was read as the pattern, so
    `photo1.jpg` was processed; alone it was "no images"."""
    monkeypatch.chdir(tmp_path)
    image(Path("d/photo[1].jpg"))
    assert names_of(expand_sources(["d/photo[1].jpg"])) == ["d/photo[1].jpg"]
    image(Path("d/photo1.jpg"))
    assert names_of(expand_sources(["d/photo[1].jpg"])) == ["d/photo[1].jpg"]
    # * and ? in names too (legal on Linux and macOS)
    for name in ("a*.jpg", "a?.jpg", "[ab].png"):
        image(Path("e") / name)
    image(Path("e/ab.jpg"))
    image(Path("e/a.png"))
    for name in ("a*.jpg", "a?.jpg", "[ab].png"):
        assert names_of(expand_sources([f"e/{name}"])) == [f"e/{name}"]


def test_a_folder_whose_name_looks_like_a_pattern_is_that_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    image(Path("shots[2024]/x.jpg"))
    image(Path("shots[2024]/y.png"))
    image(Path("shots2/decoy.jpg"))  # what `shots[2024]` matches as a pattern
    assert names_of(expand_sources(["shots[2024]"])) == ["shots[2024]/x.jpg", "shots[2024]/y.png"]
    assert names_of(expand_sources(["shots[2024]/"])) == ["shots[2024]/x.jpg", "shots[2024]/y.png"]
    assert names_of(expand_sources(["shots[2024]/x.jpg"])) == ["shots[2024]/x.jpg"]
    # a pattern below it: the existing folder is literal, the rest the pattern
    assert names_of(expand_sources(["shots[2024]/*.jpg"])) == ["shots[2024]/x.jpg"]
    assert names_of(expand_sources([str(tmp_path / "shots[2024]" / "*.png")])) == [str(tmp_path / "shots[2024]/y.png")]
    # and the folder found by a pattern above it
    assert names_of(expand_sources(["*/x.jpg"])) == ["shots[2024]/x.jpg"]


def test_only_a_path_that_names_nothing_is_a_pattern(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("photo1.jpg", "photo2.jpg", "photo3.png", "notes.txt", "sub/deep/z.gif", ".hidden.jpg"):
        image(Path("d") / name) if not name.endswith(".txt") else (Path("d") / name).write_text("x")
    assert names_of(expand_sources(["d/photo[12].jpg"])) == ["d/photo1.jpg", "d/photo2.jpg"]
    assert names_of(expand_sources(["d/photo?.*"])) == ["d/photo1.jpg", "d/photo2.jpg", "d/photo3.png"]
    assert names_of(expand_sources(["d/*"])) == ["d/photo1.jpg", "d/photo2.jpg", "d/photo3.png"]  # no folder, no .txt
    assert names_of(expand_sources(["d/**/*.gif"])) == ["d/sub/deep/z.gif"]
    assert names_of(expand_sources(["d/**"])) == ["d/photo1.jpg", "d/photo2.jpg", "d/photo3.png",
                                                  "d/sub/deep/z.gif"]
    # a folder argument is its own images, not its subfolders'
    assert names_of(expand_sources(["d"])) == ["d/.hidden.jpg", "d/photo1.jpg", "d/photo2.jpg", "d/photo3.png"]


def test_missing_paths_and_empty_matches_say_which_and_why(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    image(Path("d/sub/a.jpg"))
    (tmp_path / "d" / "notes.txt").write_text("x")
    cases = {
        "nope.jpg": "nope.jpg: no such file or folder",
        "d/photo[1].jpg": "d/photo[1].jpg: no such file or folder, and as a glob pattern it matches nothing",
        "d/*.txt": "d/*.txt: the pattern matches 1 file(s) and no image file (looked for .bmp, ",
        "d/s*": "d/s*: the pattern matches 1 folder(s) and no image file",
        "d": "d: no images in this folder (looked for .bmp, ",
    }
    for arg, message in cases.items():
        with pytest.raises(FileNotFoundError) as info:
            expand_sources([arg])
        assert str(info.value).startswith(message), (arg, str(info.value))
    with pytest.raises(FileNotFoundError, match=r"its 1 subfolder\(s\) are not searched: 'd/\*\*' is a pattern"):
        expand_sources(["d"])
    os.symlink(tmp_path / "gone.jpg", tmp_path / "link.jpg")
    with pytest.raises(FileNotFoundError, match=r"^link\.jpg: a link to .*gone\.jpg, which does not exist$"):
        expand_sources(["link.jpg"])
    if hasattr(os, "mkfifo"):  # not on Windows
        os.mkfifo(tmp_path / "pipe.jpg")
        with pytest.raises(FileNotFoundError, match=r"^pipe\.jpg: neither a file nor a folder$"):
            expand_sources(["pipe.jpg"])


def test_a_file_named_twice_is_read_once_with_a_warning(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.chdir(tmp_path)
    a, b = image(Path("d/a.jpg")), image(Path("d/b.jpg"))
    os.symlink(tmp_path / "d" / "a.jpg", tmp_path / "alias.jpg")
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        got = expand_sources(["d/b.jpg", "d/a.jpg", "d", "./d/a.jpg", str(tmp_path / "d/b.jpg"), "alias.jpg"])
    assert got == [b, a]
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == ["2 image file(s) were named more than once and are read once each: d/b.jpg (3 times), "
                       "d/a.jpg (4 times)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, "yolov3.data"):
        assert expand_sources(["d/a.jpg", "d/b.jpg"]) == [a, b]
    assert not caplog.records


def test_the_commands_take_paths_literally(tmp_path, monkeypatch, tiny_checkpoint) -> None:
    """detect, cam, the app's and the Space's --examples, export's and space's --data."""
    from yolov3.commands.app import find_examples
    from yolov3.commands.cam import run_cam
    from yolov3.commands.detect import run_detect
    from yolov3.deploy import open_images

    monkeypatch.chdir(tmp_path)
    literal = image(Path("d/photo[1].jpg"), 48, 40, seed=1)
    image(Path("d/photo1.jpg"), 64, 32, seed=2)
    summary = run_detect(["d/photo[1].jpg"], str(tiny_checkpoint), "out", conf=0.01, size=64, max_detections=2)
    rows = json.loads(Path("out/detections.json").read_text())
    assert summary["images"] == 1 and rows and {r["file_name"] for r in rows} == {"d/photo[1].jpg"}
    assert sorted(p.name for p in Path("out").iterdir()) == ["detections.json", "photo[1].jpg"]
    assert Image.open("out/photo[1].jpg").size == (48, 40)
    cam = run_cam(["d/photo[1].jpg"], str(tiny_checkpoint), "cam", method="eigencam", size=64, conf=0.01,
                  max_detections=2)
    assert cam["images"] == 1 and Path("cam/photo[1]_eigencam.png").is_file()
    assert find_examples(["d/photo[1].jpg"]) == ["d/photo[1].jpg"]
    assert open_images(["d/photo[1].jpg"], None, "train").paths == (literal,)


# --------------------------------------------------------------- part 6: output names


def test_inputs_sharing_a_name_get_the_folders_that_tell_them_apart(tmp_path) -> None:
    two_cameras = [tmp_path / "a/DCIM/IMG_0001.jpg", tmp_path / "b/DCIM/IMG_0001.jpg", tmp_path / "a/DCIM/IMG_0002.jpg"]
    assert input_names(two_cameras) == ["a_IMG_0001.jpg", "b_IMG_0001.jpg", "IMG_0002.jpg"]
    # three that need two folders: x/a, x/b, y/a
    three = [tmp_path / "x/a/f.jpg", tmp_path / "x/b/f.jpg", tmp_path / "y/a/f.jpg"]
    assert input_names(three) == ["x_a_f.jpg", "x_b_f.jpg", "y_a_f.jpg"]
    # case and Unicode normalisation: the same name on macOS and Windows
    nfc, nfd = unicodedata.normalize("NFC", "café.jpg"), unicodedata.normalize("NFD", "café.jpg")
    assert input_names([tmp_path / "p/A.jpg", tmp_path / "q/a.jpg", tmp_path / f"r/{nfc}", tmp_path / f"s/{nfd}"]) \
        == ["p_A.jpg", "q_a.jpg", f"r_{nfc}", f"s_{nfd}"]
    # the same folder: no folder tells them apart, so -2
    assert input_names([tmp_path / "A.jpg", tmp_path / "a.jpg"]) == ["A.jpg", "a-2.jpg"]
    # a.jpg and a.png are two names; as stems (cam) they keep their suffixes
    pair = [tmp_path / "a.jpg", tmp_path / "a.png"]
    assert input_names(pair) == ["a.jpg", "a.png"]
    assert input_names(pair, label=lambda p: p.stem, stems=True) == ["a.jpg", "a.png"]
    # a name the prefixing makes is taken by another input already: -2
    clash = [tmp_path / "x/IMG.jpg", tmp_path / "y/IMG.jpg", tmp_path / "x_IMG.jpg"]
    assert input_names(clash) == ["x_IMG.jpg", "y_IMG.jpg", "x_IMG-2.jpg"]
    # the command's own files, and a suffix Pillow cannot write a picture in
    assert input_names([tmp_path / "detections.json", tmp_path / "scan"], reserved=["detections.json"]) == \
        ["detections.json.png", "scan.png"]
    assert picture_name(Path("x.JPG")) == "x.JPG"


def test_input_names_are_distinct_against_a_brute_force_check() -> None:
    """Random inputs from a few folders with clashing names: every name distinct as a
    case-insensitive file system compares them, and each keeps its input's own name."""
    rng = random.Random(0)
    folders = ["a", "b", "A", "a/DCIM", "b/DCIM", "c/DCIM", "x_y", "x"]
    files = ["IMG.jpg", "img.jpg", "IMG.png", "x_IMG.jpg", "DCIM_IMG.jpg", "a_IMG.jpg", "IMG-2.jpg"]
    for _ in range(300):
        chosen = rng.sample(list(itertools.product(folders, files)), rng.randint(2, 12))
        paths = [Path("/data", d, f) for d, f in chosen]
        for stems in (False, True):
            label = (lambda p: p.stem) if stems else picture_name
            names = input_names(paths, label=label, stems=stems, reserved=["cam.json", "detections.json"])
            keys = [name_key(n) for n in names]
            assert len(set(keys)) == len(keys), (paths, names)
            assert not {"cam.json", "detections.json"} & set(keys)
            for p, n in zip(paths, names):
                own = p.stem if stems else p.name
                assert own.rsplit(".", 1)[0] in n, (p, n)


def test_output_names_claim_and_safe_parts() -> None:
    taken = OutputNames(["cam.json"])
    assert [taken.claim(n) for n in ("a.png", "A.png", "a.png", "cam.json")] == ["a.png", "A-2.png", "a-3.png",
                                                                                "cam-2.json"]
    assert taken.claim("a", "") == "a" and taken.claim("a", "") == "a-2"
    assert safe_part('det0_car/truck:a*b?"c<d>e|f\\g\x01') == "det0_car-truck-a-b--c-d-e-f-g-"
    assert safe_part("") == "-"


def test_detect_gives_every_input_its_own_picture(tmp_path, monkeypatch, tiny_checkpoint, capsys) -> None:
    """Two cameras' IMG_0001.jpg, a.jpg beside a.png, A.jpg in another folder than a.jpg,
    and one file named twice: one picture each (sizes tell them apart), no overwrite, and
    each detections.json row names its own picture."""
    from yolov3.commands.cli import main

    monkeypatch.chdir(tmp_path)
    sizes = {"a/DCIM/IMG_0001.jpg": (64, 40), "b/DCIM/IMG_0001.jpg": (40, 64), "p/a.jpg": (50, 30),
             "p/a.png": (30, 50), "q/A.jpg": (44, 36)}
    for k, (name, (w, h)) in enumerate(sizes.items()):
        image(Path(name), w, h, seed=k)
    main(["detect", "a/DCIM", "b/DCIM", "p", "q", "p/a.jpg", "--weights", str(tiny_checkpoint), "--out", "out",
          "--size", "64", "--conf", "0.01", "--max-det", "2", "--device", "cpu"])
    expected = {"a/DCIM/IMG_0001.jpg": "a_IMG_0001.jpg", "b/DCIM/IMG_0001.jpg": "b_IMG_0001.jpg",
                "p/a.jpg": "p_a.jpg", "p/a.png": "a.png", "q/A.jpg": "q_A.jpg"}
    assert sorted(p.name for p in Path("out").iterdir()) == sorted([*expected.values(), "detections.json"])
    for src, picture in expected.items():
        assert Image.open(Path("out") / picture).size == sizes[src], src
    rows = json.loads(Path("out/detections.json").read_text())
    assert {r["file_name"]: r["picture"] for r in rows} == expected  # every image has rows at conf 0.01
    assert sorted({r["image_id"] for r in rows}) == list(range(5))  # p/a.jpg, named twice, is detected once
    printed = capsys.readouterr().out
    assert "note: 4 picture(s) named apart from their image, so none overwrites another" in printed
    assert "a/DCIM/IMG_0001.jpg -> a_IMG_0001.jpg" in printed


def test_detect_into_a_folder_of_an_earlier_run_says_what_it_replaces(tmp_path, tiny_checkpoint, caplog) -> None:
    from yolov3.commands.detect import run_detect

    a, b = image(tmp_path / "in/a.jpg"), image(tmp_path / "in/b.jpg", seed=1)
    out = tmp_path / "out"
    first = run_detect([str(a), str(b)], str(tiny_checkpoint), str(out), conf=0.01, size=64, max_detections=1)
    assert first["replaced"] == []
    with caplog.at_level(logging.WARNING, "yolov3.commands.detect"):
        second = run_detect([str(a)], str(tiny_checkpoint), str(out), conf=0.01, size=64, max_detections=1)
    assert second["replaced"] == ["a.jpg", "detections.json"]
    assert [r.getMessage() for r in caplog.records if "earlier run" in r.getMessage()] == [
        f"{out}: 2 file(s) of an earlier run are replaced: a.jpg, detections.json; its other files there are left "
        "as they were (use a new --out to keep runs apart)"]
    assert (out / "b.jpg").is_file()  # the earlier run's other picture stays


def test_cam_gives_every_input_its_own_pictures(tmp_path, monkeypatch, tiny_checkpoint) -> None:
    """Same stems from two folders and a.jpg beside a.png: EigenCAM pictures and per-detection
    overlays of their own; cam.json names each detection's overlay, which exists; a class name
    with a slash stays inside the folder."""
    import torch

    from yolov3.commands.cam import run_cam
    from yolov3.detector import Detector
    from yolov3.lit import YoloLitModule

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = YoloLitModule(width=0.0625).model
    names = [f"car/truck {k}" for k in range(20)]  # every class name holds a slash
    Detector(model, class_names=names, size=64).save_safetensors("w.safetensors")
    for k, name in enumerate(("x/IMG.jpg", "y/IMG.jpg", "p/a.jpg", "p/a.png")):
        image(Path(name), 40 + 8 * k, 32, seed=k)
    summary = run_cam(["x", "y", "p"], "w.safetensors", "cam", size=64, conf=0.0, max_detections=2)
    assert summary["stems"] == [("x/IMG.jpg", "x_IMG"), ("y/IMG.jpg", "y_IMG"), ("p/a.jpg", "a.jpg"),
                                ("p/a.png", "a.png")]
    files = {p.name for p in Path("cam").iterdir()}
    assert {"a.jpg_eigencam.png", "a.png_eigencam.png", "x_IMG_eigencam.png", "y_IMG_eigencam.png"} <= files
    records = json.loads(Path("cam/cam.json").read_text())
    assert len(records) >= 4 and len({r["picture"] for r in records}) == len(records)
    for r in records:
        stem = dict(summary["stems"])[r["file_name"]]
        assert r["picture"].startswith(f"{stem}_det{r['detection']}_") and r["picture"] in files
        assert Image.open(Path("cam") / r["picture"]).size == Image.open(r["file_name"]).size
    assert all(f"_{r['category_name'].replace('/', '-')}_gradcam.png" in r["picture"] for r in records)
    assert len(files) == 4 + len(records) + 2  # eigencam, overlays, contact sheet, cam.json: nothing went elsewhere


def test_space_copies_every_example_under_a_name_of_its_own(tmp_path, tiny_checkpoint) -> None:
    """Two folders' IMG.jpg and an example already named like the old `<k>_<name>` fallback."""
    from yolov3.commands.space import build_space

    examples = [image(tmp_path / "a/IMG.jpg", 40, 30), image(tmp_path / "b/IMG.jpg", 30, 40, seed=1),
                image(tmp_path / "c/1_IMG.jpg", 20, 20, seed=2)]
    summary = build_space(tiny_checkpoint, tmp_path / "space", "safetensors", "torch", examples)
    copied = tmp_path / "space" / "examples"
    assert summary["examples"] == 3
    assert {p.name: Image.open(p).size for p in copied.iterdir()} == {
        "a_IMG.jpg": (40, 30), "b_IMG.jpg": (30, 40), "1_IMG.jpg": (20, 20)}
