"""`yolov3 export`: weights -> a safetensors or ONNX file, float32 or int8 (calibrated, and
scored before and after when given a dataset). The int8 options are shared with `yolov3 space`."""

from __future__ import annotations

import argparse
from pathlib import Path

from yolov3.deploy import CALIB_IMAGES, export_int8, open_images
from yolov3.detector import Detector
from yolov3.onnx_backend import CALIB_METHODS

EXPORT_SUFFIXES = {".safetensors": "safetensors", ".onnx": "onnx"}


def command(args: argparse.Namespace) -> None:
    fmt = args.format or EXPORT_SUFFIXES.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise SystemExit(f"yolov3 export: {args.out}: name the file .safetensors or .onnx, or pass --format")
    if args.int8 and fmt != "onnx":
        raise SystemExit(f"yolov3 export: --int8 writes an ONNX model; {args.out} is a {fmt} file (name it .onnx)")
    if not args.int8 and int8_options_given(args):
        raise SystemExit(f"yolov3 export: {', '.join(int8_options_given(args))} apply to --int8 only "
                         "(add --int8 to quantise, or leave them out for a float export)")
    if args.int8 and not args.data:
        raise SystemExit("yolov3 export: --int8 needs calibration images: --data <dataset root> (its training "
                         "split calibrates, its test split scores) or --data <image files or folders>")
    try:
        detector = Detector.load(args.weights, anchors=args.anchors, letterbox=args.letterbox)
        print(detector.describe())
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        if args.int8:
            report = _export_int8(detector, args)
        elif fmt == "onnx":
            detector.save_onnx(args.out)
        else:
            detector.save_safetensors(args.out)
    except (FileNotFoundError, ValueError) as exc:  # DataError is a ValueError
        raise SystemExit(f"yolov3 export: {exc}") from None
    kind = f"{fmt}, int8" if args.int8 else fmt
    print(f"wrote {args.out} ({kind}; {detector.model.num_classes} classes, width {detector.model.width})")
    if args.int8:
        print_int8(report)


def _export_int8(detector, args: argparse.Namespace) -> dict:
    calibration, evaluation = int8_images(args, detector.class_names)
    return export_int8(detector, args.out, calibration, args.calib, evaluation, args.calib_method)


def int8_options_given(args: argparse.Namespace) -> list[str]:
    """The int8 options given on the command line (their defaults left out)."""
    given = {"--data": args.data, "--calib": args.calib != CALIB_IMAGES, "--calib-split": args.calib_split,
             "--eval-split": args.eval_split, "--no-eval": args.no_eval,
             "--calib-method": args.calib_method != CALIB_METHODS[0]}
    return [name for name, value in given.items() if value]


def int8_images(args: argparse.Namespace, class_names):
    """(calibration, evaluation) ImageSets from --data, --calib-split, --eval-split and
    --no-eval; (None, None) without --data. Scoring needs a dataset root (labels)."""
    if not args.data:
        return None, None
    calibration = open_images(args.data, args.calib_split, "train", class_names)
    if calibration.source is None and args.eval_split:
        raise ValueError(f"--eval-split needs a dataset root (labels to score with), not image files: "
                         f"{calibration.label}")
    evaluation = None
    if calibration.source is not None and not args.no_eval:
        evaluation = open_images(args.data, args.eval_split, "test", class_names)
    elif calibration.source is None:
        print(f"note: {calibration.label} holds no labels, so float32 and int8 are not scored; pass a dataset "
              "root (Kaggle or VOCdevkit layout) as --data for the before/after VOC07 mAP")
    return calibration, evaluation


def print_int8(report: dict) -> None:
    scored = " and scoring" if "int8" in report else ""
    print(f"calibrated on {report['calibration_images']} images of {report['calibration']} "
          f"(export, calibration{scored}: {report['seconds']:.0f} s)")
    if "int8" in report:
        a, b = report["fp32"], report["int8"]
        print(f"VOC07 mAP on {b['split']} ({b['num_images']} images): float32 {100 * a['map_07']:.2f}, "
              f"int8 {100 * b['map_07']:.2f} ({100 * (b['map_07'] - a['map_07']):+.2f} points)")
