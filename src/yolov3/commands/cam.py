"""`yolov3 cam`: Grad-CAM / Grad-CAM++ overlays per detection and EigenCAM per image for
image files, a contact sheet and cam.json. The maps are yolov3.cam's; this module reads the
files and writes the pictures.

Path arguments are taken as `yolov3 detect` takes them (an existing file or folder literally,
else a glob pattern: yolov3.data.sample.expand_sources); every image's pictures are named
from a stem of its own (yolov3.commands.outputs), so no picture overwrites another."""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from yolov3.cam import METHODS, explain, resolve_layer
from yolov3.commands.outputs import OutputNames, describe_replaced, input_names, left_from_before, listing, safe_part
from yolov3.data.sample import decode_image, expand_sources, frames_text, printable
from yolov3.detector import Detector
from yolov3.progress import counting
from yolov3.viz import image_grid, render_cam

log = logging.getLogger("yolov3.commands.cam")

CAM_FILE, SHEET_FILE = "cam.json", "contact_sheet.png"


def run_cam(sources: Sequence[str], weights: str, out_dir: str, method: str = "gradcam", layer: str = "head",
            size: int | None = None, conf: float = 0.25, iou: float | None = None, device: str = "cpu",
            max_detections: int = 20, batch_size: int = 4, cols: int = 6, cell: int = 320,
            sheet_path: str | Path | None = None, anchors: str | None = None,
            letterbox: str | None = None) -> dict:
    """`yolov3 cam`: overlays per detection and per image, a contact sheet, and cam.json.

    Writes <stem>_det<k>_<class>_<method>.png for each detection (Grad-CAM methods),
    <stem>_eigencam.png for each image, contact_sheet.png with all of them (or sheet_path:
    one row per image, wrapped after `cols` pictures, EigenCAM first), and cam.json (per
    detection: file, its picture's name, box in original pixels, class, score, target score,
    cell, layer). <stem> is the image's own stem, or for images sharing one the folders that
    tell them apart in front, or its suffix kept, or -2 (yolov3.commands.outputs.input_names);
    a class name's characters that no file name may hold become "-". Files an earlier run left
    under the same names are replaced, with a warning naming them; an image of several frames
    is read at its first, with a warning. Unreadable images stop the run with the file's name
    (DataError).

    Returns {"images", "detections", "pictures", "out", "seconds_per_image", "zero_maps",
    "notes": [one line per image of several frames], "stems": [(input path, stem)],
    "replaced": [names of an earlier run's files replaced], "loaded"}.
    """

    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}: use one of {', '.join(METHODS)}")
    paths = expand_sources(sources)
    detector = Detector.load(weights, size=size, conf_threshold=conf, iou_threshold=iou,
                             max_detections=max_detections, device=device, anchors=anchors,
                             letterbox=letterbox)
    if detector.backend != "torch":
        raise ValueError(f"{weights}: Grad-CAM and EigenCAM need gradients and the network's feature maps, "
                         f"which {detector.backend} does not give; use the .ckpt or .safetensors weights")
    resolve_layer(detector.model, layer)  # a bad name fails before any work
    out = Path(out_dir)
    before = listing(out)
    out.mkdir(parents=True, exist_ok=True)
    stems = input_names(paths, label=lambda p: p.stem, stems=True)
    taken = OutputNames([CAM_FILE, SHEET_FILE])
    written, notes = [], []
    sheet, records, seconds, zero = [], [], 0.0, 0
    # plain lines off a terminal, nothing on one (as before this command had any)
    with counting("explaining", len(paths), bar=False) as advance:
        for start in range(0, len(paths), batch_size):
            idx = list(range(start, min(start + batch_size, len(paths))))
            decoded = [decode_image(paths[i]) for i in idx]
            images = [d.pixels for d in decoded]
            for i, d in zip(idx, decoded):
                if d.frames != 1:
                    notes.append(f"{printable(str(paths[i]))}: {frames_text(d.frames)}; only the first is read")
                    log.warning("%s", notes[-1])
            t0 = time.perf_counter()
            results = explain(detector, images, method, layer)
            seconds += time.perf_counter() - t0
            for i, img, res in zip(idx, images, results):
                row = []
                sheet.append(row)
                names = {}
                for suffix, pic in render_cam(img, res, detector.class_names, method):
                    names[suffix] = taken.claim(f"{stems[i]}_{safe_part(suffix)}.png")
                    Image.fromarray(pic).save(out / names[suffix])
                    written.append(names[suffix])
                    row.append(pic)
                overlays = [n for suffix, n in names.items() if suffix != "eigencam"]
                zero += sum(c.grad_norm == 0 for c in res.cams)
                for k, c in enumerate(res.cams):
                    records.append({"file_name": str(paths[i]), "picture": overlays[k], "detection": k,
                                    "category_id": c.label,
                                    "category_name": detector.class_names[c.label],
                                    "bbox_xyxy": [round(float(v), 2) for v in c.box], "score": round(c.score, 6),
                                    "target": round(c.target, 6), "cell": list(c.cell), "layer": c.layer,
                                    "method": method})
            advance(len(idx))
    if any(sheet):
        Image.fromarray(_sheet(sheet, cols, cell)).save(sheet_path or out / SHEET_FILE)
        if sheet_path is None:
            written.append(SHEET_FILE)
    (out / CAM_FILE).write_text(json.dumps(records, indent=1))
    replaced = left_from_before(before, [*written, CAM_FILE])
    if replaced:
        log.warning("%s", describe_replaced(out, replaced))
    return {"images": len(paths), "detections": len(records), "pictures": sum(map(len, sheet)), "out": str(out),
            "seconds_per_image": seconds / max(1, len(paths)), "zero_maps": zero, "notes": notes,
            "stems": [(str(p), s) for p, s in zip(paths, stems)], "replaced": replaced,
            "loaded": detector.describe()}


def _sheet(rows: Sequence[Sequence[np.ndarray]], cols: int, cell: int) -> np.ndarray:
    """One row per image (wrapped after `cols` pictures), blank cells after each image's last."""
    cols = max(1, min(cols, max(len(r) for r in rows)))
    blank = np.full((1, 1, 3), 32, np.uint8)  # the grid's background colour: an empty cell
    tiles = []
    for r in rows:
        if r:
            tiles += list(r) + [blank] * (-len(r) % cols)
    return image_grid(tiles, cols=cols, cell=cell)


def command(args: argparse.Namespace) -> None:
    try:
        summary = run_cam(args.images, args.weights, args.out, method=args.method, layer=args.layer, size=args.size,
                          conf=args.conf, iou=args.iou, device=args.device, max_detections=args.max_det,
                          batch_size=args.batch, anchors=args.anchors, letterbox=args.letterbox)
    except (FileNotFoundError, ValueError) as exc:  # DataError (unreadable image) is a ValueError
        raise SystemExit(f"yolov3 cam: {exc}") from None
    print(summary["loaded"])
    print(f"{summary['detections']} detections in {summary['images']} images: {summary['pictures']} overlays and "
          f"contact_sheet.png in {summary['out']} ({summary['seconds_per_image']:.2f} s per image)")
    for line in summary["notes"]:
        print(f"note: {line}")
    renamed = [(src, stem) for src, stem in summary["stems"] if Path(src).stem != stem]
    if renamed:
        shown = ", ".join(f"{printable(src)} -> {printable(stem)}_*.png" for src, stem in renamed[:5])
        more = f" and {len(renamed) - 5} more" if len(renamed) > 5 else ""
        print(f"note: {len(renamed)} image(s) share a name with another, so their pictures are named apart "
              f"(cam.json names each detection's picture): {shown}{more}")
    if summary["zero_maps"]:
        print(f"{summary['zero_maps']} detections do not depend on layer {args.layer!r} (their maps are empty); "
              f"try --layer head or backbone")
