"""Images of several frames (issue 20, part 7d): animated GIF, PNG (APNG) and WebP, multi-page
TIFF. Each is read at its first frame, as before, but now that is said: decode_image counts
the frames, the dataset readers list the files in `multi_frame` and one warning, detect adds
a note per image and a warning, cam a note, the app a note on the page."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov3.data.sample import decode_image, load_rgb, read_image

GOOD_LABEL = "14 0.5 0.5 0.25 0.25\n"


def frames_of(w: int = 40, h: int = 30, n: int = 3) -> list[np.ndarray]:
    """n frames of few colours (exact in a GIF palette): a colour per frame, a bar per frame."""
    out = []
    for k in range(n):
        f = np.full((h, w, 3), (40 * k, 200 - 50 * k, 90), np.uint8)
        f[5:10, 4 * k : 4 * k + 6] = (255, 255, 255)
        out.append(f)
    return out


def save_frames(path: Path, frames: list[np.ndarray], fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    images[0].save(path, format=fmt, save_all=True, append_images=images[1:], **extra)
    return path


@pytest.mark.parametrize("fmt, suffix", [("GIF", "gif"), ("PNG", "png"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_the_first_frame_is_read_and_the_frames_counted(tmp_path, fmt, suffix) -> None:
    frames = frames_of()
    path = save_frames(tmp_path / f"anim.{suffix}", frames, fmt)
    decoded = decode_image(path)
    assert decoded.frames == 3 and decoded.orientation == 1
    np.testing.assert_array_equal(decoded.pixels, frames[0])
    np.testing.assert_array_equal(load_rgb(path), frames[0])
    image, orientation = read_image(path)  # the two-value reader is unchanged
    np.testing.assert_array_equal(image, frames[0])
    still = save_frames(tmp_path / f"still.{suffix}", frames[:1], fmt)
    assert decode_image(still).frames == 1


def test_an_mpo_counts_as_one_picture(tmp_path) -> None:
    """A camera JPEG with a second (preview or depth) image: the photo is the picture."""
    frames = frames_of(n=2)
    path = save_frames(tmp_path / "phone.jpg", frames, "MPO")
    assert Image.open(path).format == "MPO"
    decoded = decode_image(path)
    assert decoded.frames == 1 and np.abs(decoded.pixels.astype(int) - frames[0]).mean() < 3


def test_a_damaged_later_frame_leaves_the_first_readable(tmp_path) -> None:
    path = save_frames(tmp_path / "anim.gif", frames_of(), "GIF")
    whole = path.read_bytes()
    cut = tmp_path / "cut.gif"
    counted = set()
    for end in range(len(whole) - 1, len(whole) // 2, -3):  # cuts inside the later frames
        cut.write_bytes(whole[:end])
        decoded = decode_image(cut)
        np.testing.assert_array_equal(decoded.pixels, frames_of()[0])
        counted.add(decoded.frames)
    assert 0 in counted  # "several, uncountable": no crash of the count


def test_a_dataset_lists_its_multi_frame_images_in_one_warning(tmp_path, caplog) -> None:
    from yolov3.data.kaggle import KaggleVOC

    root = tmp_path / "k"
    (root / "labels").mkdir(parents=True)
    save_frames(root / "images" / "a.gif", frames_of(64, 48), "GIF")
    save_frames(root / "images" / "b.png", frames_of(64, 48, 1), "PNG")
    save_frames(root / "images" / "c.tif", frames_of(64, 48, 2), "TIFF")
    for i in "abc":
        (root / "labels" / f"{i}.txt").write_text(GOOD_LABEL)
    (root / "train.csv").write_text("image,label\na.gif,a.txt\nb.png,b.txt\nc.tif,c.txt\n")
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        source = KaggleVOC(root, "train.csv")
    assert source.multi_frame == [(root / "images" / "a.gif", 3), (root / "images" / "c.tif", 2)]
    warned = [r.getMessage() for r in caplog.records if "frames" in r.getMessage()]
    assert warned == [f"{root / 'train.csv'}: 2 image(s) hold several frames (animated, or pages); only the first "
                      f"frame of each is read, for training and evaluation alike: {root / 'images' / 'a.gif'} "
                      f"(3 frames), {root / 'images' / 'c.tif'} (2 frames)"]
    np.testing.assert_array_equal(source[0].image, frames_of(64, 48)[0])


def test_detect_notes_each_multi_frame_image(tmp_path, tiny_checkpoint, caplog) -> None:
    from yolov3.commands.detect import run_detect

    anim = save_frames(tmp_path / "in" / "anim.gif", frames_of(), "GIF")
    still = save_frames(tmp_path / "in" / "still.png", frames_of(n=1), "PNG")
    with caplog.at_level(logging.WARNING, logger="yolov3.commands.detect"):
        summary = run_detect([str(anim), str(still)], str(tiny_checkpoint), str(tmp_path / "out"), size=64)
    assert summary["notes"] == [f"{anim}: 3 frames; only the first is read"]
    assert [r.getMessage() for r in caplog.records if "frames" in r.getMessage()] == [
        f"1 image(s) hold several frames (animated, or pages); only the first frame of each is read: "
        f"{anim} (3 frames)"]
    assert Image.open(tmp_path / "out" / "anim.gif").size == (40, 30)
    json.loads((tmp_path / "out" / "detections.json").read_text())


def test_cam_and_the_app_say_so_too(tmp_path, tiny_checkpoint) -> None:
    from yolov3.commands.cam import run_cam
    from yolov3.commands.requests import read_upload

    anim = save_frames(tmp_path / "anim.webp", frames_of(), "WEBP")
    summary = run_cam([str(anim)], str(tiny_checkpoint), str(tmp_path / "cam"), method="eigencam", size=64)
    assert summary["notes"] == [f"{anim}: 3 frames; only the first is read"]
    image, note = read_upload(anim, name="party.webp")
    np.testing.assert_array_equal(image, frames_of()[0])
    assert note == "party.webp holds 3 frames; only the first is read."
    image, note = read_upload(anim, name="party.webp", max_side=20)
    assert note.startswith("party.webp holds 3 frames; only the first is read. party.webp was downscaled from 40 x 30")
