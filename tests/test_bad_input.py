"""Every kind of bad input in the bad-input table of docs/training.md, each with exactly what it gets.

Readers (KaggleVOC, VOCDevkit): a DataError whose message starts with the bad file's path and
names the line (of the label file, or the split file that lists the image); with
skip_bad=True the image is left out, its message is in `skipped` and one warning is logged,
and every other image is kept. Images that are valid but unusual (PNG, grayscale, RGBA, CMYK,
16-bit, EXIF orientation, non-UTF-8 names) load with the right pixels. `yolov3 detect`
(run_detect) checks its output folder and decodes every image before it loads the model.

All fixtures are written here, in tmp_path: three small images a, b, c; the bad one is b.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolov3.data.devkit import VOCDevkit
from yolov3.data.kaggle import KaggleVOC
from yolov3.data.sample import MAX_PIXELS, DataError, image_size, load_rgb, printable, read_image

W, H = 64, 48
IDS = ("a", "b", "c")
GOOD_LABEL = "14 0.5 0.5 0.25 0.25\n"  # a person box, x 24-40, y 18-30
XML_OBJECT = ("<object><name>person</name><difficult>0</difficult><bndbox><xmin>25</xmin><ymin>19</ymin>"
              "<xmax>40</xmax><ymax>30</ymax></bndbox></object>")
NOT_ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                              reason="root reads files whatever their mode; the simulated case covers it")


def noise(w: int = W, h: int = H, seed: int = 0, channels: int = 3) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png_bytes(pixels: np.ndarray, bit_depth: int) -> bytes:
    """A PNG written by hand (so its bit depth is exactly the one asked): (H, W) gray or
    (H, W, 3) RGB samples of 8 or 16 bits."""
    color_type = 0 if pixels.ndim == 2 else 2
    h, w = pixels.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    rows = b"".join(b"\x00" + pixels[y].astype(dtype).tobytes() for y in range(h))
    return png_header(w, h, bit_depth, color_type, zlib.compress(rows))


def png_header(w: int, h: int, bit_depth: int = 8, color_type: int = 2, idat: bytes = b"") -> bytes:
    """A PNG with the given header; with the default empty IDAT it cannot be decoded, which
    does not matter for a size limit checked from the header (a decompression bomb's shape)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes(pixels: np.ndarray, mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def make_kaggle(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k, i in enumerate(IDS):
        (root / "images" / f"{i}.jpg").write_bytes(jpeg_bytes(noise(seed=k)))
        (root / "labels" / f"{i}.txt").write_text(GOOD_LABEL)
    (root / "train.csv").write_text("image,label\n" + "".join(f"{i}.jpg,{i}.txt\n" for i in IDS))  # b: line 3
    return root


def voc_xml(w: int = W, h: int = H, objects: str = XML_OBJECT) -> str:
    return (f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
            f"{objects}</annotation>")


def make_voc(root: Path) -> Path:
    d = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (d / sub).mkdir(parents=True)
    for k, i in enumerate(IDS):
        (d / "JPEGImages" / f"{i}.jpg").write_bytes(jpeg_bytes(noise(seed=k)))
        (d / "Annotations" / f"{i}.xml").write_text(voc_xml())
    (d / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in IDS))  # b: line 2
    return root


def write(rel: str, data: str | bytes) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(data if isinstance(data, bytes) else data.encode())


def append(rel: str, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        with (root / rel).open("a") as f:
            f.write(text)
    return mutate


def unlink(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).unlink()


def cut_in_half(rel: str) -> Callable[[Path], None]:
    """Keep the first half of the file: the header still reads, the data ends early."""
    def mutate(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
    return mutate


def float_tiff(rel: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        buf = io.BytesIO()
        Image.fromarray(noise(channels=1).astype(np.float32) / 255).save(buf, "TIFF")
        (root / rel).write_bytes(buf.getvalue())
    return mutate


def csv_row(line: int, text: str) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        lines = (root / "train.csv").read_text().splitlines()
        lines[line - 1] = text
        (root / "train.csv").write_text("\n".join(lines) + "\n")
    return mutate


IMG, LBL, CSV = "images/b.jpg", "labels/b.txt", "train.csv"
VIMG, XML, LIST = "VOC2007/JPEGImages/b.jpg", "VOC2007/Annotations/b.xml", "VOC2007/ImageSets/Main/trainval.txt"

# (id, layout, mutation, the file the message starts with (relative to root), substrings it
# must contain, the images skip_bad keeps)
READER_CASES = [
    # images
    ("zero_byte_jpg", "kaggle", write(IMG, b""), IMG, ["cannot read image", "cannot identify image file", "train.csv:3"], "ac"),
    ("truncated_jpg", "kaggle", cut_in_half(IMG), IMG, ["cannot read image (image file is truncated", "train.csv:3"], "ac"),
    ("text_named_jpg", "kaggle", write(IMG, "I am text, not a JPEG"), IMG, ["cannot identify image file", "train.csv:3"], "ac"),
    ("image_missing", "kaggle", unlink(IMG), IMG, ["image file not found", "train.csv:3"], "ac"),
    ("float32_tiff", "kaggle", float_tiff(IMG), IMG, ["image mode 'F' is not supported", "train.csv:3"], "ac"),
    ("decompression_bomb", "kaggle", write(IMG, png_header(20000, 10000)), IMG,
     ["20000 x 10000 pixels (200.0 MP) is more than the limit of 179.0 MP", "decompression bomb", "train.csv:3"], "ac"),
    ("voc_truncated_jpg", "voc", cut_in_half(VIMG), VIMG, ["cannot read image (image file is truncated", "trainval.txt:2"], "ac"),
    ("voc_image_missing", "voc", unlink(VIMG), VIMG, ["image file not found", "trainval.txt:2"], "ac"),
    # Kaggle label files and split CSV
    ("label_missing", "kaggle", unlink(LBL), LBL, ["label file not found", "train.csv:3"], "ac"),
    ("label_nan", "kaggle", write(LBL, "14 nan 0.5 0.25 0.25\n"), LBL + ":1", ["xc='nan' is not a finite number"], "ac"),
    ("label_inf", "kaggle", write(LBL, GOOD_LABEL + "14 0.5 0.5 inf 0.25\n"), LBL + ":2", ["w='inf' is not a finite number"], "ac"),
    ("label_not_utf8", "kaggle", write(LBL, b"14 0.5 0.5 0.25 0.2\xff\n"), LBL + ":1", ["h='0.2\\udcff' is not a number"], "ac"),
    ("label_box_outside", "kaggle", write(LBL, GOOD_LABEL + "14 0.95 0.5 0.3 0.2\n"), LBL + ":2",
     ["lies outside the 64x48 image by more than box_tolerance=1 px"], "ac"),
    ("label_box_inverted", "kaggle", write(LBL, "14 0.5 0.5 -0.2 0.25\n"), LBL + ":1", ["must be > 0, got w=-0.2"], "ac"),
    ("label_box_zero_size", "kaggle", write(LBL, "14 0.5 0.5 0.25 0\n"), LBL + ":1", ["must be > 0, got w=0.25 h=0"], "ac"),
    ("label_unknown_class", "kaggle", write(LBL, "20 0.5 0.5 0.25 0.25\n"), LBL + ":1", ["class id 20 is out of range [0, 20)"], "ac"),
    ("csv_missing_column", "kaggle", csv_row(3, "b.jpg"), CSV + ":3", ["expected 2 columns (image,label), got 1"], "ac"),
    ("csv_extra_column", "kaggle", csv_row(3, "b.jpg,b.txt,2007"), CSV + ":3", ["expected 2 columns (image,label), got 3"], "ac"),
    ("csv_duplicate_image", "kaggle", append(CSV, "b.jpg,b.txt\n"), CSV + ":5",
     ["image 'b.jpg' is listed twice, at lines 3 and 5"], "abc"),
    # VOC XML and ImageSets
    ("xml_missing", "voc", unlink(XML), XML, ["annotation file not found", "trainval.txt:2"], "ac"),
    ("xml_malformed", "voc", write(XML, "<annotation>\n<size><width>64</width>\n"), XML,
     ["malformed XML (no element found: line 3, column 0)"], "ac"),
    ("xml_without_size", "voc", write(XML, f"<annotation>{XML_OBJECT}</annotation>"), XML, ["missing <size>"], "ac"),
    ("xml_size_disagrees", "voc", write(XML, voc_xml(w=65)), XML, ["<size> says 65x48 but the image is 64x48"], "ac"),
    ("xml_unknown_class", "voc", write(XML, voc_xml(objects=XML_OBJECT.replace("person", "unicorn"))), XML,
     ["object 0 (0-based, of 1): unknown class name 'unicorn'"], "ac"),
    ("xml_box_inverted", "voc", write(XML, voc_xml(objects=XML_OBJECT.replace("<xmax>40", "<xmax>20"))), XML,
     ["object 0", "inverted box", "xmin=25", "xmax=20"], "ac"),
    ("xml_box_outside", "voc", write(XML, voc_xml(objects=XML_OBJECT.replace("<xmax>40", "<xmax>70"))), XML,
     ["object 0", "lies outside the 64x48 image"], "ac"),
    # a one-pixel box in the 1-px tolerance margin right of the image: clipped to nothing
    ("xml_box_zero_size", "voc", write(XML, voc_xml(objects=XML_OBJECT.replace("<xmin>25", "<xmin>65")
                                                    .replace("<xmax>40", "<xmax>65"))), XML,
     ["object 0", "box has no area inside the 64x48 image after clipping"], "ac"),
    ("imagesets_duplicate_id", "voc", append(LIST, "b\n"), LIST + ":4",
     ["image id 'b' is listed twice, at", "trainval.txt:2 and", "trainval.txt:4"], "abc"),
]


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    return {"kaggle": make_kaggle(tmp_path / "kaggle"), "voc": make_voc(tmp_path / "voc")}


def open_reader(layout: str, root: Path, **kw):
    return KaggleVOC(root, "train.csv", **kw) if layout == "kaggle" else VOCDevkit(root, "2007-trainval", **kw)


@pytest.mark.parametrize("layout,mutate,file,needles,kept", [c[1:] for c in READER_CASES],
                         ids=[c[0] for c in READER_CASES])
def test_reader_names_the_file_and_line(roots, layout, mutate, file, needles, kept) -> None:
    root = roots[layout]
    mutate(root)
    with pytest.raises(DataError) as info:
        open_reader(layout, root)
    msg = str(info.value)
    assert msg.startswith(f"{root / file}: "), msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "\n" not in msg  # one line


@pytest.mark.parametrize("layout,mutate,file,needles,kept", [c[1:] for c in READER_CASES],
                         ids=[c[0] for c in READER_CASES])
def test_skip_bad_skips_and_lists_it(roots, layout, mutate, file, needles, kept, caplog) -> None:
    root = roots[layout]
    mutate(root)
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        src = open_reader(layout, root, skip_bad=True)
    assert [r.image_path.stem for r in src.records] == list(kept)
    assert len(src.skipped) == 1 and src.skipped[0].startswith(f"{root / file}: ")
    assert all(n in src.skipped[0] for n in needles)
    warned = [r.getMessage() for r in caplog.records if r.name == "yolov3.data"]
    assert len(warned) == 1 and "skipped 1 bad item(s)" in warned[0] and file.split(":")[0] in warned[0]
    for sample in src:  # what is kept is intact: the one box of GOOD_LABEL / XML_OBJECT
        np.testing.assert_allclose(sample.boxes, [[24, 18, 40, 30]], atol=1e-4)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
@NOT_ROOT
@pytest.mark.parametrize("rel", [IMG, LBL, CSV])
def test_permission_denied_file(roots, rel) -> None:
    root = roots["kaggle"]
    (root / rel).chmod(0)
    with pytest.raises(DataError, match=re.escape(f"{root / rel}: cannot read") + ".*permission denied"):
        KaggleVOC(root, "train.csv")


def test_permission_denied_simulated(roots, monkeypatch) -> None:
    """The same as test_permission_denied_file for a process that may read anything (root):
    the operating system's refusal is simulated where the readers open files."""
    root = roots["kaggle"]
    denied = {root / IMG, root / LBL}
    real_open, real_read = Image.open, Path.read_bytes

    def image_open(path, *a, **kw):  # headers are read by opening the path
        if isinstance(path, (str, Path)) and Path(path) in denied:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    def read_bytes(self):  # images are decoded from their bytes, label files read as bytes
        if self in denied:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(Image, "open", image_open)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DataError, match=re.escape(f"{root / IMG}: cannot read image (permission denied) "
                                                  f"(listed at {root / CSV}:3)")):
        KaggleVOC(root, "train.csv")
    denied.discard(root / IMG)
    with pytest.raises(DataError, match=re.escape(f"{root / LBL}: cannot read label file (permission denied)")):
        KaggleVOC(root, "train.csv")


# --------------------------------------------------------------------------- split-level problems


@pytest.mark.parametrize("layout,rel,content,needle", [
    ("kaggle", CSV, "image,label\n\n", "train.csv: the split is empty: it lists no images"),
    ("kaggle", CSV, "", "train.csv: the split is empty: it lists no images"),
    ("voc", LIST, "\n \n", "trainval.txt: ImageSets file lists no images (empty split)"),
], ids=["csv_only_header", "csv_zero_bytes", "imagesets_blank"])
def test_empty_split_is_an_error_even_with_skip_bad(roots, layout, rel, content, needle) -> None:
    root = roots[layout]
    (root / rel).write_text(content)
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=re.escape(needle)):
            open_reader(layout, root, skip_bad=skip_bad)


def test_all_images_bad_with_skip_bad_is_an_empty_split(roots) -> None:
    root = roots["kaggle"]
    for i in IDS:
        (root / "labels" / f"{i}.txt").write_text("20 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=re.escape(f"{root / CSV}: the split is empty: all 3 item(s) were bad")):
        KaggleVOC(root, "train.csv", skip_bad=True)


def test_duplicate_id_across_spec_parts(roots) -> None:
    root = roots["voc"]
    main = root / "VOC2007" / "ImageSets" / "Main"
    (main / "train.txt").write_text("a\n")
    (main / "val.txt").write_text("c\nb\na\n")
    with pytest.raises(DataError) as info:
        VOCDevkit(root, "2007-train+2007-val")
    assert str(info.value).startswith(f"{main / 'val.txt'}:3: image id 'a' is listed twice, at {main / 'train.txt'}:1 ")
    assert [r.image_path.stem for r in VOCDevkit(root, "2007-train+2007-val", skip_bad=True).records] == ["a", "c", "b"]


def test_first_csv_row_without_suffix_is_data_not_a_dropped_header(roots) -> None:
    """Only a first row that names no file is taken for the `image,label` header; a data row
    with an odd image name is read (and here reported missing), never dropped unseen."""
    root = roots["kaggle"]
    (root / CSV).write_text("a,a.txt\nb.jpg,b.txt\n")
    with pytest.raises(DataError, match=re.escape(f"{root / 'images' / 'a'}: image file not found (listed at {root / CSV}:1)")):
        KaggleVOC(root, "train.csv")


# --------------------------------------------------------------------------- non-UTF-8 file names


LATIN1 = b"caf\xe9"  # "café" in Latin-1: not valid UTF-8


def test_non_utf8_names_in_a_split_file_name_their_files(roots, caplog) -> None:
    """File names are bytes on Linux. A name that is not UTF-8 reads (surrogateescape) and
    opens the very file; a message about it is printable and shows the byte as \\xe9."""
    root = roots["kaggle"]
    name = os.fsdecode(LATIN1)
    os.rename(root / IMG, root / "images" / f"{name}.jpg")
    os.rename(root / LBL, root / "labels" / f"{name}.txt")
    (root / CSV).write_bytes(b"image,label\na.jpg,a.txt\n" + LATIN1 + b".jpg," + LATIN1 + b".txt\nc.jpg,c.txt\n")
    src = KaggleVOC(root, "train.csv")
    assert os.fsencode(src.records[1].image_path.name) == LATIN1 + b".jpg"
    np.testing.assert_array_equal(src[1].image, load_rgb(root / "images" / f"{name}.jpg"))
    np.testing.assert_allclose(src[1].boxes, [[24, 18, 40, 30]], atol=1e-4)

    (root / "labels" / f"{name}.txt").write_text("20 0.5 0.5 0.1 0.1\n")
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        skipping = KaggleVOC(root, "train.csv", skip_bad=True)
    with pytest.raises(DataError) as info:
        KaggleVOC(root, "train.csv")
    msg = str(info.value)
    assert msg.startswith(f"{root}/labels/caf\\xe9.txt:1: class id 20")
    msg.encode("utf-8")  # printable on a UTF-8 terminal: no lone surrogates
    assert skipping.skipped == [msg]
    caplog.text.encode("utf-8")


def test_non_utf8_voc_id(roots) -> None:
    root = roots["voc"]
    d = root / "VOC2007"
    name = os.fsdecode(b"\xff\xfe")
    os.rename(d / "JPEGImages" / "b.jpg", d / "JPEGImages" / f"{name}.jpg")
    os.rename(d / "Annotations" / "b.xml", d / "Annotations" / f"{name}.xml")
    (d / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"a\n\xff\xfe\nc\n")
    src = VOCDevkit(root, "2007-trainval")
    assert os.fsencode(src.records[1].image_path.name) == b"\xff\xfe.jpg"
    assert src[1].image.shape == (H, W, 3)


# --------------------------------------------------------------------------- images that load


def _load_through_reader(tmp_path: Path, data: bytes, size: tuple[int, int]) -> np.ndarray:
    """Put `data` in a Kaggle layout as image b and return what the reader gives for it."""
    root = make_kaggle(tmp_path / "k")
    (root / IMG).write_bytes(data)
    src = KaggleVOC(root, "train.csv")
    assert (src.records[1].width, src.records[1].height) == size
    return src[1].image


def test_png_rgb_exact(tmp_path) -> None:
    pixels = noise()
    image = _load_through_reader(tmp_path, png_bytes(pixels, 8), (W, H))
    np.testing.assert_array_equal(image, pixels)


def test_grayscale_png_and_jpeg_become_gray_rgb(tmp_path) -> None:
    gray = noise(channels=1)
    image = _load_through_reader(tmp_path, png_bytes(gray, 8), (W, H))
    np.testing.assert_array_equal(image, np.repeat(gray[..., None], 3, axis=2))
    smooth = np.tile(np.arange(W, dtype=np.uint8) * 4, (H, 1))
    jpg = load_rgb(_file(tmp_path, "g.jpg", jpeg_bytes(smooth, "L")))
    assert (jpg[..., 0] == jpg[..., 1]).all() and (jpg[..., 1] == jpg[..., 2]).all()
    assert np.abs(jpg[..., 0].astype(int) - smooth).max() <= 3


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_rgba_png_drops_alpha_keeps_the_stored_colour(tmp_path) -> None:
    rgba = noise(channels=4)
    rgba[:10, :, 3] = 0  # fully transparent rows keep their stored colour
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    image = _load_through_reader(tmp_path, buf.getvalue(), (W, H))
    np.testing.assert_array_equal(image, rgba[..., :3])


def test_cmyk_jpeg_becomes_rgb(tmp_path) -> None:
    yy, xx = np.mgrid[0:H, 0:W]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1).astype(np.uint8)
    data = jpeg_bytes(smooth, "CMYK")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    image = _load_through_reader(tmp_path, data, (W, H))
    assert np.abs(image.astype(int) - smooth).max() <= 4  # JPEG's loss only; no inverted channels


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path) -> None:
    """Was 99.4 % white (every value above 255 clipped); now round(v * 255 / 65535)."""
    values = (np.arange(H * W).reshape(H, W) * 65535 // (H * W - 1)).astype(np.uint16)
    assert Image.open(io.BytesIO(png_bytes(values, 16))).mode == "I;16"
    image = _load_through_reader(tmp_path, png_bytes(values, 16), (W, H))
    expected = np.round(values / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=2))
    assert (image == 255).mean() < 0.01 and abs(image.mean() - 127.5) < 1


def test_16bit_rgb_png_keeps_the_high_byte(tmp_path) -> None:
    values = np.random.default_rng(3).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    image = _load_through_reader(tmp_path, png_bytes(values, 16), (W, H))
    np.testing.assert_array_equal(image, (values >> 8).astype(np.uint8))


def test_exif_orientation_is_reported_not_applied(tmp_path, caplog) -> None:
    """Stored 64x48 with orientation 8: the VOC reader takes the XML <size> 64x48 (the stored
    frame, which it used to refuse as a size mismatch), the pixels are the stored ones and
    the image is listed in exif_oriented and in one warning."""
    root = make_voc(tmp_path / "v")
    yy, xx = np.mgrid[0:H, 0:W]
    pixels = np.stack([xx * 4, yy * 5, np.full_like(xx, 128)], -1).astype(np.uint8)  # no symmetry
    exif = Image.Exif()
    exif[0x0112] = 8
    (root / VIMG).write_bytes(jpeg_bytes(pixels, exif=exif.tobytes()))
    with caplog.at_level(logging.WARNING, logger="yolov3.data"):
        src = VOCDevkit(root, "2007-trainval")
    assert src.exif_oriented == [(root / VIMG, 8)]
    assert image_size(root / VIMG) == (W, H)
    image, orientation = read_image(root / VIMG)
    assert orientation == 8 and image.shape == (H, W, 3)
    np.testing.assert_array_equal(src[1].image, image)
    assert np.abs(image.astype(int) - pixels).max() <= 8  # the stored pixels, JPEG's loss only
    assert np.abs(image.astype(int) - pixels[::-1, ::-1]).mean() > 50  # not turned (what 3 would do)
    np.testing.assert_allclose(src[1].boxes, [[24, 18, 40, 30]])
    warned = [r.getMessage() for r in caplog.records if r.name == "yolov3.data"]
    assert len(warned) == 1 and f"{root / VIMG} (8)" in warned[0] and "stored pixels" in warned[0]


def test_reader_pixel_limit_is_checked_from_the_header(roots) -> None:
    root = roots["kaggle"]
    assert len(KaggleVOC(root, "train.csv", max_pixels=W * H)) == 3
    with pytest.raises(DataError, match=re.escape(f"{root / 'images' / 'a.jpg'}: 64 x 48 pixels (0.0 MP) is more "
                                                  "than the limit of 0.0 MP")):
        KaggleVOC(root, "train.csv", max_pixels=W * H - 1)
    assert MAX_PIXELS == 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal point, unchanged


def test_no_pillow_bomb_warning_and_its_limit_restored(tmp_path) -> None:
    """A 100 MP header (between Pillow's warning and error points) gets our message, not
    Pillow's warning, and Pillow's global limit is left as it was."""
    path = _file(tmp_path, "big.png", png_header(10000, 10000))
    saved = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_size(path) == (10000, 10000)
        with pytest.raises(DataError, match="100.0 MP"):
            load_rgb(path, max_pixels=50_000_000)
    assert Image.MAX_IMAGE_PIXELS == saved


def test_printable_escapes_only_undecodable_bytes() -> None:
    assert printable("plain/é.jpg") == "plain/é.jpg"
    assert printable(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert str(DataError(os.fsdecode(b"\xff: bad"))) == "\\xff: bad"


# --------------------------------------------------------------------------- yolov3 detect


def test_detect_output_under_a_file_fails_before_the_model_loads(tmp_path) -> None:
    from yolov3.commands.detect import OutputError, run_detect

    image = _file(tmp_path, "a.jpg", jpeg_bytes(noise()))
    blocker = _file(tmp_path, "file", b"x")
    for out in (blocker, blocker / "sub" / "dir"):
        # the weights do not exist: the output error must come first
        with pytest.raises(OutputError) as info:
            run_detect([str(image)], str(tmp_path / "none.ckpt"), str(out))
        assert str(info.value).startswith(f"{out}: cannot be the output folder: ")
        assert "is a file, not a folder" in str(info.value)
    assert blocker.read_bytes() == b"x" and sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "file"]


def test_detect_output_not_writable_simulated(tmp_path, monkeypatch) -> None:
    import tempfile

    from yolov3.commands.detect import OutputError, run_detect

    image = _file(tmp_path, "a.jpg", jpeg_bytes(noise()))

    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError, match=re.escape(f"{tmp_path / 'out'}: output folder cannot be written "
                                                    f"(Permission denied in {tmp_path})")):
        run_detect([str(image)], str(tmp_path / "none.ckpt"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@NOT_ROOT
def test_detect_output_not_writable(tmp_path) -> None:
    from yolov3.commands.detect import OutputError, run_detect

    image = _file(tmp_path, "a.jpg", jpeg_bytes(noise()))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(OutputError, match="output folder cannot be written"):
        run_detect([str(image)], str(tmp_path / "none.ckpt"), str(locked / "out"))


def test_detect_bad_images_stop_it_before_the_model_and_create_nothing(tmp_path) -> None:
    from yolov3.commands.detect import run_detect

    good = _file(tmp_path, "a.jpg", jpeg_bytes(noise()))
    data = jpeg_bytes(noise(seed=1))
    cut = _file(tmp_path, "b.jpg", data[: len(data) // 2])
    empty = _file(tmp_path, "c.jpg", b"")
    out = tmp_path / "runs" / "detect"
    with pytest.raises(DataError) as info:
        run_detect([str(good), str(cut), str(empty)], str(tmp_path / "none.ckpt"), str(out))
    assert str(info.value).startswith(f"{cut}: cannot read image (image file is truncated")
    assert "(and 1 more bad image(s); --skip-bad skips and lists them)" in str(info.value)
    assert not (tmp_path / "runs").exists()


def test_detect_pixel_limit_names_the_option(tmp_path) -> None:
    from yolov3.commands.detect import MAX_PIXELS as DETECT_MAX, run_detect

    assert DETECT_MAX == 40_000_000
    big = _file(tmp_path, "big.png", png_header(8000, 6000))  # 48 MP: above 40, below Pillow's warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as info:
            run_detect([str(big)], str(tmp_path / "none.ckpt"), str(tmp_path / "out"))
    assert str(info.value).startswith(f"{big}: 8000 x 6000 pixels (48.0 MP) is more than detect's limit of 40.0 MP")
    assert "--max-pixels 48000000" in str(info.value)
    # raised, the header passes and the (fake) data is what fails, before the model loads
    with pytest.raises(DataError, match=re.escape(f"{big}: cannot read image")):
        run_detect([str(big)], str(tmp_path / "none.ckpt"), str(tmp_path / "out"), max_pixels=48_000_000)


def test_detect_file_changed_mid_run_leaves_no_empty_folder(tmp_path, tiny_checkpoint, monkeypatch) -> None:
    import yolov3.commands.detect as detect_mod

    image = _file(tmp_path, "a.jpg", jpeg_bytes(noise()))

    def vanished(path, *a, **kw):
        raise DataError(f"{path}: image file not found")

    monkeypatch.setattr(detect_mod, "load_rgb", vanished)  # passes the check, then is gone
    out = tmp_path / "new" / "out"
    with pytest.raises(DataError, match="a.jpg: image file not found"):
        detect_mod.run_detect([str(image)], str(tiny_checkpoint), str(out), size=64)
    assert not (tmp_path / "new").exists()


def test_detect_non_utf8_name_exif_note_and_skip_bad(tmp_path, tiny_checkpoint) -> None:
    """One run: a file whose name is not UTF-8 goes into detections.json as valid JSON that
    keeps its exact bytes; an EXIF-oriented image gets a note; a bad image is skipped and
    listed."""
    from yolov3.commands.detect import run_detect

    src = tmp_path / "in"
    src.mkdir()
    odd = src / os.fsdecode(LATIN1 + b".jpg")
    odd.write_bytes(jpeg_bytes(noise()))
    exif = Image.Exif()
    exif[0x0112] = 6
    _file(src, "rotated.jpg", jpeg_bytes(noise(seed=2), exif=exif.tobytes()))
    _file(src, "zero.jpg", b"")
    summary = run_detect([str(src)], str(tiny_checkpoint), str(tmp_path / "out"), conf=0.01, size=64,
                         max_detections=3, skip_bad=True)
    assert summary["images"] == 2 and summary["detections"] > 0
    assert len(summary["skipped"]) == 1 and summary["skipped"][0].startswith(f"{src / 'zero.jpg'}: cannot read image")
    assert summary["notes"] == [f"{src / 'rotated.jpg'}: EXIF orientation 6 (a viewer shows it rotated 90 degrees "
                                "clockwise) is not applied: boxes are in the stored pixels"]
    raw = (tmp_path / "out" / "detections.json").read_bytes()
    text = raw.decode("utf-8")  # strict
    assert not re.search(r"\\ud[89a-f][0-9a-f]{2}", text, re.I)  # no lone surrogate escapes
    rows = json.loads(text)
    odd_rows = [r for r in rows if "file_name_b64" in r]
    assert odd_rows and all(r["file_name"] == f"{printable(str(src))}/caf\\xe9.jpg" for r in odd_rows)
    assert {base64.b64decode(r["file_name_b64"]) for r in odd_rows} == {os.fsencode(odd)}
    assert all("file_name_b64" not in r for r in rows if r["file_name"].endswith("rotated.jpg"))
    assert os.path.exists(os.fsencode(tmp_path / "out") + b"/" + LATIN1 + b".jpg")  # the picture, exact name


@pytest.mark.parametrize("command", ["fit", "show-batch"])
def test_commands_print_a_data_error_as_one_line(command, synth_root, tmp_path, monkeypatch) -> None:
    """A truncated image stops fit / show-batch before training with one line naming it."""
    import shutil
    import sys

    from yolov3.commands.cli import main

    root = tmp_path / "data"
    shutil.copytree(synth_root, root)
    victim = sorted((root / "images").glob("train_*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:300])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    config = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    extra = ["--out", str(tmp_path / "b.png")] if command == "show-batch" else ["--trainer.max_epochs", "1"]
    with pytest.raises(SystemExit) as info:
        main([command, "--config", config, "--data.root", str(root), "--data.val_fraction", "0.25", *extra])
    message = str(info.value.code)
    assert message.startswith(f"yolov3 {command}: ") and victim.name in message and "\n" not in message, message


def test_detect_cli_takes_max_pixels(tmp_path) -> None:
    from yolov3.commands.cli import main

    big = _file(tmp_path, "big.png", png_header(8000, 6000))
    with pytest.raises(SystemExit, match="more than detect's limit of 40.0 MP"):
        main(["detect", str(big), "--weights", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="big.png: cannot read image"):  # past the limit: the data is what fails
        main(["detect", str(big), "--weights", str(tmp_path / "none.ckpt"), "--out", str(tmp_path / "o"),
              "--max-pixels", "48000000"])
