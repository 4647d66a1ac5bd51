"""Writing a synthetic dataset to disk (generate): the rendered images as JPEG, in the two
layouts the readers understand, rendered by a pool of worker processes.

Kaggle PASCAL_VOC layout::

    out_dir/images/<stem>.jpg
    out_dir/labels/<stem>.txt        one "class xc yc w h" line per box (normalised, 6 decimals)
    out_dir/train.csv, test.csv      header "image,label", rows "<stem>.jpg,<stem>.txt"

VOCdevkit layout (``voc_xml=True``), for the same images::

    out_dir/VOC2007/JPEGImages/<stem>.jpg    hard link to images/<stem>.jpg (copy as fallback)
    out_dir/VOC2007/Annotations/<stem>.xml   1-based xmin, ymin, xmax, ymax
    out_dir/VOC2007/ImageSets/Main/trainval.txt, test.txt

Every box is held as integer pixels x1, y1, x2, y2 (inclusive, 0 <= x1 < x2 <= W-1) and
both layouts are written from those integers, so a reader mapping XML back with
``x = xmin - 1`` and Kaggle back with ``x1 = (xc - w/2) * W`` gets identical boxes.

Each image's bytes depend only on the seed and its (split, index) (see
yolov3.data.synthetic.render), so any number of worker processes writes the same files.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from multiprocessing import current_process, get_context
from pathlib import Path

import cv2
import numpy as np

from yolov3.constants import VOC_CLASSES
from yolov3.data.synthetic.design import CLASS_DESIGN, COLOUR_HUES
from yolov3.data.synthetic.render import RenderedImage, render_image
from yolov3.progress import counting


def _kaggle_lines(r: RenderedImage) -> str:
    """The label file text: 'class xc yc w h' per box, normalised by the image size."""
    h, w = r.image.shape[:2]
    lines = []
    for o in r.objects:
        x1, y1, x2, y2 = o.box
        lines.append(f"{o.label} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} "
                     f"{(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}\n")
    return "".join(lines)


def _voc_xml(stem: str, r: RenderedImage) -> str:
    """Standard VOC annotation XML; coordinates are 1-based (xmin = x1 + 1)."""
    h, w = r.image.shape[:2]
    objs = []
    for o in r.objects:
        x1, y1, x2, y2 = o.box
        objs.append(
            "\t<object>\n"
            f"\t\t<name>{VOC_CLASSES[o.label]}</name>\n"
            "\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(o.truncated)}</truncated>\n"
            f"\t\t<difficult>{int(o.difficult)}</difficult>\n"
            "\t\t<bndbox>\n"
            f"\t\t\t<xmin>{x1 + 1}</xmin>\n\t\t\t<ymin>{y1 + 1}</ymin>\n"
            f"\t\t\t<xmax>{x2 + 1}</xmax>\n\t\t\t<ymax>{y2 + 1}</ymax>\n"
            "\t\t</bndbox>\n"
            "\t</object>\n")
    return (
        "<annotation>\n"
        "\t<folder>VOC2007</folder>\n"
        f"\t<filename>{stem}.jpg</filename>\n"
        "\t<source>\n\t\t<database>yolov3 synthetic shapes</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n"
        "\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>0</segmented>\n"
        + "".join(objs) + "</annotation>\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, no hard-link support, ...
        shutil.copyfile(src, dst)


def _make_one(job: tuple) -> tuple[str, list[int], list[int]]:
    """Render and write one image; returns (stem, labels, difficult flags) for the summary."""
    out_dir, seed, split, index, min_side, max_side, voc_xml = job
    out = Path(out_dir)
    stem = f"{split}_{index:06d}"
    r = render_image(seed, split, index, min_side, max_side)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(r.image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, r.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {stem}")
    img_path = out / "images" / f"{stem}.jpg"
    img_path.write_bytes(buf.tobytes())
    (out / "labels" / f"{stem}.txt").write_text(_kaggle_lines(r))
    if voc_xml:
        _link_or_copy(img_path, out / "VOC2007" / "JPEGImages" / f"{stem}.jpg")
        (out / "VOC2007" / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, r))
    return stem, [o.label for o in r.objects], [int(o.difficult) for o in r.objects]


def _init_worker() -> None:
    # One OpenCV thread per worker process: the parallelism is across processes.
    cv2.setNumThreads(1)


def _prepare_out_dir(out: Path) -> None:
    """Create out_dir; clear what an earlier generate() left there, refuse foreign content.

    A previous run with more images would otherwise leave stale files that the readers would
    pick up (VOC2007/JPEGImages has no index), and hard links fail on existing names.
    """
    if out.exists() and any(out.iterdir()):
        if not (out / "synthetic.json").is_file():
            raise FileExistsError(
                f"{out}: directory is not empty and holds no synthetic.json; refusing to write "
                "a synthetic dataset into it (choose an empty or new directory)")
        for sub in ("images", "labels", "VOC2007"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        for name in ("train.csv", "test.csv", "synthetic.json"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0,
             voc_xml: bool = False, min_side: int = 256, max_side: int = 448,
             workers: int | None = None, progress: bool = True) -> dict:
    """Write a synthetic dataset of n_train + n_test JPEG images to out_dir.

    Kaggle layout always (images/, labels/, train.csv, test.csv), plus the VOCdevkit layout
    under out_dir/VOC2007 when voc_xml is True, plus out_dir/synthetic.json (class design,
    seed, counts). Images are (H, W, 3) with H, W drawn independently from
    [min_side, max_side]. Same arguments give byte-identical files whatever `workers` is
    (default min(2, cpu count); 0 or 1 renders in this process). With `progress`, when
    stdout is not a terminal, a plain line `synth <done>/<total> images (..%) .. img/s eta ..`
    is printed every $YOLOV3_PROGRESS_EVERY seconds (30 by default; yolov3.progress); on a
    terminal nothing is printed.

    Returns {"out_dir", "seed", "images": {split: n}, "boxes": {split: n},
    "difficult": {split: n}, "class_boxes": {split: {class name: n}}}.
    """
    if getattr(current_process(), "_inheriting", False):
        # We are a spawned worker re-importing a main script that calls generate() at top
        # level. Stop before touching out_dir, with the cause rather than a confusing error.
        raise RuntimeError(
            "generate() was called while a worker process imported the main script; put the "
            "call under `if __name__ == \"__main__\":` (or pass workers=1)")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
    if not (8 <= min_side <= max_side):
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out = Path(out_dir)
    _prepare_out_dir(out)
    (out / "images").mkdir()
    (out / "labels").mkdir()
    if voc_xml:
        for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
            (out / "VOC2007" / sub).mkdir(parents=True)

    counts = {"train": n_train, "test": n_test}
    jobs = [(str(out), int(seed), split, i, int(min_side), int(max_side), bool(voc_xml))
            for split in ("train", "test") for i in range(counts[split])]
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    results = []
    with counting("synth", len(jobs), bar=False) if progress else nullcontext(lambda n=1: None) as advance:
        if workers <= 1 or len(jobs) < 8:
            for job in jobs:
                results.append(_make_one(job))
                advance(1)
        else:
            # "spawn", never "fork": OpenCV's thread pool (and torch's, in the CLI) does not
            # survive fork; a forked child can deadlock inside cv2. Spawned children re-import
            # the caller's main script, so scripts must call generate() under
            # `if __name__ == "__main__":` (console entry points and `python -c` are fine).
            chunk = max(1, min(32, len(jobs) // (4 * workers)))
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                     initializer=_init_worker) as ex:
                for result in ex.map(_make_one, jobs, chunksize=chunk):  # in order, as they come
                    results.append(result)
                    advance(1)

    summary: dict = {"out_dir": str(out), "seed": int(seed), "images": {}, "boxes": {},
                     "difficult": {}, "class_boxes": {}}
    pos = 0
    for split in ("train", "test"):
        part = results[pos:pos + counts[split]]
        pos += counts[split]
        stems = [stem for stem, _, _ in part]
        per_class = np.zeros(len(VOC_CLASSES), dtype=np.int64)
        for _, labels, _ in part:
            np.add.at(per_class, labels, 1)
        summary["images"][split] = len(stems)
        summary["boxes"][split] = int(per_class.sum())
        summary["difficult"][split] = int(sum(sum(d) for _, _, d in part))
        summary["class_boxes"][split] = {VOC_CLASSES[c]: int(n) for c, n in enumerate(per_class)}
        (out / f"{split}.csv").write_text(
            "image,label\n" + "".join(f"{s}.jpg,{s}.txt\n" for s in stems))
        if voc_xml:
            name = "trainval.txt" if split == "train" else "test.txt"
            (out / "VOC2007" / "ImageSets" / "Main" / name).write_text(
                "".join(f"{s}\n" for s in stems))

    meta = {
        "generator": "yolov3.data.synthetic",
        "seed": int(seed),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "min_side": int(min_side),
        "max_side": int(max_side),
        "voc_xml": bool(voc_xml),
        "classes": [{"index": d.index, "name": d.name, "shape": d.shape, "colour": d.colour,
                     "texture": d.texture} for d in CLASS_DESIGN],
        "colour_hues_deg": COLOUR_HUES,
        "images": summary["images"],
        "boxes": summary["boxes"],
        "difficult": summary["difficult"],
        "class_boxes": summary["class_boxes"],
    }
    (out / "synthetic.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary
