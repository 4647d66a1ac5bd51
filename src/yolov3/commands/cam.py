"""`yolov3 cam`: Grad-CAM / Grad-CAM++ overlays per detection and EigenCAM per image for
image files, a contact sheet and cam.json. The maps are yolov3.cam's; this module reads the
files and writes the pictures."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from yolov3.cam import METHODS, explain, resolve_layer
from yolov3.commands.detect import _output_names
from yolov3.data.sample import expand_sources, load_rgb
from yolov3.detector import Detector
from yolov3.progress import ProgressLines, is_terminal
from yolov3.viz import image_grid, render_cam


def run_cam(sources: Sequence[str], weights: str, out_dir: str, method: str = "gradcam", layer: str = "head",
            size: int | None = None, conf: float = 0.25, iou: float | None = None, device: str = "cpu",
            max_detections: int = 20, batch_size: int = 4, cols: int = 6, cell: int = 320,
            sheet_path: str | Path | None = None, anchors: str | None = None) -> dict:
    """`yolov3 cam`: overlays per detection and per image, a contact sheet, and cam.json.

    Writes <stem>_det<k>_<class>_<method>.png for each detection (Grad-CAM methods),
    <stem>_eigencam.png for each image, contact_sheet.png with all of them (or sheet_path:
    one row per image, wrapped after `cols` pictures, EigenCAM first), and cam.json (per
    detection: file, box in original pixels, class, score, target score, cell, layer).
    Unreadable images stop the run with the file's name (DataError).
    """

    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}: use one of {', '.join(METHODS)}")
    paths = expand_sources(sources)
    detector = Detector.load(weights, size=size, conf_threshold=conf, iou_threshold=iou,
                             max_detections=max_detections, device=device, anchors=anchors)
    if detector.backend != "torch":
        raise ValueError(f"{weights}: Grad-CAM and EigenCAM need gradients and the network's feature maps, "
                         f"which {detector.backend} does not give; use the .ckpt or .safetensors weights")
    resolve_layer(detector.model, layer)  # a bad name fails before any work
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(n).stem for n in _output_names(paths)]
    sheet, records, seconds, zero = [], [], 0.0, 0
    lines = None if is_terminal() else ProgressLines("explaining", len(paths))  # off a terminal only (as detect)
    for start in range(0, len(paths), batch_size):
        idx = list(range(start, min(start + batch_size, len(paths))))
        images = [load_rgb(paths[i]) for i in idx]
        t0 = time.perf_counter()
        results = explain(detector, images, method, layer)
        seconds += time.perf_counter() - t0
        for i, img, res in zip(idx, images, results):
            row = []
            sheet.append(row)
            for suffix, pic in render_cam(img, res, detector.class_names, method):
                Image.fromarray(pic).save(out / f"{stems[i]}_{suffix}.png")
                row.append(pic)
            zero += sum(c.grad_norm == 0 for c in res.cams)
            for k, c in enumerate(res.cams):
                records.append({"file_name": str(paths[i]), "detection": k, "category_id": c.label,
                                "category_name": detector.class_names[c.label],
                                "bbox_xyxy": [round(float(v), 2) for v in c.box], "score": round(c.score, 6),
                                "target": round(c.target, 6), "cell": list(c.cell), "layer": c.layer,
                                "method": method})
        if lines is not None:
            lines.advance(len(idx))
    if lines is not None:
        lines.finish()
    if any(sheet):
        Image.fromarray(_sheet(sheet, cols, cell)).save(sheet_path or out / "contact_sheet.png")
    (out / "cam.json").write_text(json.dumps(records, indent=1))
    return {"images": len(paths), "detections": len(records), "pictures": sum(map(len, sheet)), "out": str(out),
            "seconds_per_image": seconds / max(1, len(paths)), "zero_maps": zero, "loaded": detector.describe()}


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
                          batch_size=args.batch, anchors=args.anchors)
    except (FileNotFoundError, ValueError) as exc:  # DataError (unreadable image) is a ValueError
        raise SystemExit(f"yolov3 cam: {exc}") from None
    print(summary["loaded"])
    print(f"{summary['detections']} detections in {summary['images']} images: {summary['pictures']} overlays and "
          f"contact_sheet.png in {summary['out']} ({summary['seconds_per_image']:.2f} s per image)")
    if summary["zero_maps"]:
        print(f"{summary['zero_maps']} detections do not depend on layer {args.layer!r} (their maps are empty); "
              f"try --layer head or backbone")
