"""Deployment on CPUs: int8 exports checked against their float32 source, and scoring any
Detector (torch or ONNX Runtime, float or int8) on a labelled split.

The network's ONNX mechanics (export, quantisation, the ONNX Runtime session) are
yolov3.onnx_backend; the Hugging Face Space folder is yolov3.commands.space. This module picks the
images (calibration from a training split, scoring on a test split) and measures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolov3.constants import VOC_CLASSES
from yolov3.data.sample import DataError, expand_sources, load_rgb
from yolov3.data.sources import detect_layout, open_source
from yolov3.detector import Detector
from yolov3.hparams import EvalConfig
from yolov3.metrics import DetectionMAP
from yolov3.onnx_backend import CALIB_METHODS, set_metadata

# The VOC protocol's settings for detections that are scored, as training's evaluation uses
# them (the defaults of YoloLitModule's evaluation settings).
EVAL_CONF = EvalConfig().conf_threshold  # 0.005
EVAL_MAX_CANDIDATES = EvalConfig().max_candidates  # 1000
# Calibration images of an int8 export when the caller does not say.
CALIB_IMAGES = 64
# The splits a dataset root is read with when none is named, by layout.
DEFAULT_SPLITS = {"kaggle": ("train.csv", "test.csv"), "voc": ("2012-train", "2012-val")}


@dataclass
class ImageSet:
    """Images to calibrate or score with: a labelled split (`source`) or bare image files.

    Exactly one of `source` (a DetectionSource) and `paths` is set; `label` names it in
    messages and reports (e.g. "data/synthetic test.csv").
    """

    label: str
    source: Sequence | None = None
    paths: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.source) if self.source is not None else len(self.paths)

    def image_paths(self) -> list[Path]:
        if self.source is not None:
            return [Path(r.image_path) for r in self.source.records]
        return list(self.paths)


def open_images(data: Sequence[str], split: str | None, role: str,
                class_names: Sequence[str] | None = None) -> ImageSet:
    """`data` -> an ImageSet: one dataset root (Kaggle or VOCdevkit layout) read with `split`
    (default: DEFAULT_SPLITS by layout, first entry for role "train", second for "test"), or
    image files, folders and globs (no labels: enough to calibrate, not to score).

    Raises FileNotFoundError / DataError (a ValueError) naming what is missing or wrong.
    """
    if len(data) == 1 and Path(data[0]).is_dir():
        root = Path(data[0])
        try:
            layout = detect_layout(root)
        except DataError:
            layout = None  # a folder of images
        if layout is not None:
            split = split or DEFAULT_SPLITS[layout][0 if role == "train" else 1]
            source = open_source(root, split, layout, class_names=class_names or VOC_CLASSES)
            if len(source) == 0:
                raise DataError(f"{root} {split}: the split lists no images")
            return ImageSet(f"{root} {split}", source=source)
    if split:
        raise ValueError(f"a split ({split}) needs a dataset root (Kaggle or VOCdevkit layout), "
                         f"not image files: {' '.join(data)}")
    paths = tuple(expand_sources(data))
    return ImageSet(" ".join(data) if len(data) <= 3 else f"{data[0]} and {len(data) - 1} more", paths=paths)


def spread(n_items: int, n: int) -> list[int]:
    """min(n, n_items) indices spread evenly over range(n_items), the first and last included
    when n > 1: a calibration set that samples the whole split, the same on every run."""
    n = min(n, n_items)
    if n <= 0:
        return []
    if n == 1:
        return [0]
    return [round(k * (n_items - 1) / (n - 1)) for k in range(n)]


def calibration_images(images: ImageSet, n: int) -> Iterator[np.ndarray]:
    """The images of `n` evenly spread entries of `images`, as (H, W, 3) uint8 RGB, read one
    at a time. Raises ValueError for n < 1, DataError naming a file that cannot be read."""
    if n < 1:
        raise ValueError(f"int8 calibration needs at least one image, not {n}")
    paths = images.image_paths()
    if not paths:
        raise ValueError(f"{images.label}: no images to calibrate with")
    for i in spread(len(paths), n):
        yield load_rgb(paths[i])


def evaluate_detector(detector, images: ImageSet, batch_size: int = 8) -> dict:
    """Score a Detector (any backend) on a labelled split with the VOC protocol, as training's
    evaluation does: score threshold EVAL_CONF, at most EVAL_MAX_CANDIDATES candidates into
    NMS, and the detector's own size, NMS IoU, score mode and detections per image.

    Returns {"map_07", "map_2010", "num_images", "split"}. Raises ValueError for image
    files without labels.
    """
    if images.source is None:
        raise ValueError(f"{images.label}: scoring needs a labelled split (a dataset root), not bare images")
    source = images.source
    scorer = detector._replace(conf_threshold=EVAL_CONF, max_candidates=EVAL_MAX_CANDIDATES)
    det_map = DetectionMAP(len(detector.class_names))
    for start in range(0, len(source), batch_size):
        samples = [source[i] for i in range(start, min(start + batch_size, len(source)))]
        det_map.update(scorer([s.image for s in samples]), [s.boxes for s in samples], [s.labels for s in samples],
                       [s.difficult for s in samples], range(start, start + len(samples)))
    result = det_map.compute()
    return {"map_07": float(result["map_07"]), "map_2010": float(result["map_2010"]),
            "num_images": int(result["num_images"]), "split": images.label}


def export_int8(detector, out: str | Path, calibration: ImageSet, n_calib: int = CALIB_IMAGES,
                evaluation: ImageSet | None = None, calib_method: str = CALIB_METHODS[0]) -> dict:
    """Write `detector` (torch weights) to `out` as an int8 ONNX model calibrated on `n_calib`
    images of `calibration` (spread over it), and, with `evaluation` (a labelled split), score
    both the float32 source and the int8 model on it; the scores go into the file's
    metadata too ("map_07_fp32", "map_07_int8", "eval_split"), where the app shows them.

    Returns {"out", "calibration_images", "calibration", "seconds", and with evaluation
    "fp32" and "int8" (evaluate_detector's results)}.
    """
    t0 = time.perf_counter()
    data = detector.save_onnx(calibration=calibration_images(calibration, n_calib), calib_method=calib_method)
    report = {"out": str(out), "calibration_images": min(n_calib, len(calibration)),
              "calibration": calibration.label}
    if evaluation is not None:
        fp32 = evaluate_detector(detector, evaluation)
        Path(out).write_bytes(data)
        int8 = evaluate_detector(Detector.load(out, size=detector.size), evaluation)
        data = set_metadata(data, {"map_07_fp32": f"{fp32['map_07']:.6f}", "map_07_int8": f"{int8['map_07']:.6f}",
                                   "eval_split": evaluation.label})
        report.update(fp32=fp32, int8=int8)
    Path(out).write_bytes(data)
    report["seconds"] = time.perf_counter() - t0
    return report
