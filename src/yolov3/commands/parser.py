"""The argument parser of the project's own `yolov3` subcommands (summary, synth, demo,
show-batch, detect, cam, app, export, space): their options, defaults and help texts.
yolov3.commands.cli dispatches the parsed arguments."""

from __future__ import annotations

import argparse

import torch

from yolov3.anchors import AnchorError, as_anchors
from yolov3.cam import METHODS as CAM_METHODS
from yolov3.deploy import CALIB_IMAGES
from yolov3.letterbox import LETTERBOX_STYLES
from yolov3.onnx_backend import CALIB_METHODS


def _add_detector_args(p: argparse.ArgumentParser, weights_required: bool = True) -> None:
    """The options every command that runs a Detector takes."""
    p.add_argument("--weights", required=weights_required,
                   help=WEIGHTS_HELP + ("" if weights_required else
                                        " (default: the demo's runs/demo/checkpoints/best.ckpt)"))
    _add_anchors_arg(p)
    p.add_argument("--conf", type=float, default=0.25, help="score threshold (default 0.25)")
    p.add_argument("--iou", type=float, default=None,
                   help="NMS IoU threshold (default: the one the weights were evaluated with, else 0.45)")
    p.add_argument("--size", type=int, default=None,
                   help="input size, a multiple of 32 (default: the size the weights were evaluated at, else 416)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda when there is one; the onnxruntime backend runs on the cpu)")


# How every image-path argument is read (yolov3.data.sample.expand_sources).
PATHS_RULE = ("an existing file or folder is taken literally, even with *, ? or [ in its name; only a path that "
              "names nothing is a glob pattern (quote it: 'dir/*.jpg', 'dir/**/*.png'); a file named twice is "
              "read once")

WEIGHTS_HELP = ("a .ckpt checkpoint, a .safetensors or .onnx export, or the course's checkpoint (its "
                "save_checkpoint .pth.tar or Lightning .ckpt), recognised from the content")


def _anchors(value: str):
    """--anchors, read when the arguments are parsed: an error names the option and stops early."""
    try:
        return as_anchors(value, "--anchors")
    except AnchorError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--anchors: ")) from None


def _add_anchors_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--anchors", default=None, type=_anchors,
                   help="decode with these anchors: coco (COCO / 416), course (the course's, rounded) or 18 "
                        "numbers w h ... (fractions of the image, stride-32 head first); default: the ones the "
                        "weights were trained with (the course's for a course checkpoint)")
    p.add_argument("--letterbox", choices=tuple(LETTERBOX_STYLES), default=None,
                   help="how images are fitted into the input: yolo (grey padding, area-averaged shrinking) or "
                        "course (black padding, bilinear, as the course's test_transforms); default: the weights' "
                        "(course for a course checkpoint, else yolo)")


def _add_backend_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="what runs the network (default: onnxruntime for .onnx weights, else torch; "
                        f"onnxruntime with torch weights exports them in memory first{note})")


def _add_int8_args(p: argparse.ArgumentParser):
    """The calibration and scoring options of an int8 export (export --int8 and space)."""
    q = p.add_argument_group("int8 (ONNX Runtime static quantisation)")
    q.add_argument("--calib", type=int, default=CALIB_IMAGES,
                   help=f"calibration images, spread over the split (default {CALIB_IMAGES})")
    q.add_argument("--data", nargs="+", help="a dataset root (Kaggle or VOCdevkit layout), or image files, "
                                             f"folders or globs (calibration only; {PATHS_RULE})")
    q.add_argument("--calib-split", default=None,
                   help="the split that calibrates (default: train.csv, or 2012-train for VOCdevkit)")
    q.add_argument("--eval-split", default=None,
                   help="the split float32 and int8 are scored on, VOC07 mAP (default: test.csv, or 2012-val)")
    q.add_argument("--no-eval", action="store_true", help="skip the before/after scoring")
    q.add_argument("--calib-method", choices=CALIB_METHODS, default=CALIB_METHODS[0],
                   help="activation ranges: min-max (default) or the 99.999th percentile")
    return q


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolov3")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("summary", help="per-layer table of parameters and multiply-adds")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    p.add_argument("--size", type=int, default=416, help="input size, a multiple of 32 (default 416)")
    p.add_argument("--num-classes", type=int, default=20, help="number of classes (default 20, VOC)")
    p.add_argument("--depth", type=int, default=3, help="module nesting depth shown")

    p = sub.add_parser("synth", help="write a synthetic VOC-format dataset")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=1600, help="training images")
    p.add_argument("--test", type=int, default=200, help="test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--voc-xml", action="store_true", help="also write the VOCdevkit layout (XML)")

    p = sub.add_parser("demo", help="synthetic data -> CPU training -> test -> report in runs/demo",
                       epilog="Other arguments are passed to the config, e.g. --trainer.max_epochs 5")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--data-dir", default="data/synthetic")
    p.add_argument("--train", type=int, default=1600, help="synthetic training images (if the set must be made)")
    p.add_argument("--test", type=int, default=200, help="synthetic test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo")

    p = sub.add_parser("show-batch", help="draw training samples as the model sees them (augmented, boxes on top)",
                       epilog="Other arguments are passed to the config, e.g. --data.augment.mosaic_prob 1")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--batches", type=int, default=2, help="how many batches to draw (default 2)")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--cols", type=int, default=4)
    p.add_argument("--cell", type=int, default=320, help="grid cell size in pixels (larger images are shrunk)")

    p = sub.add_parser("detect", help="detect objects in images: annotated copies + detections.json (COCO results)")
    p.add_argument("sources", nargs="+", help=f"image files, folders or glob patterns: {PATHS_RULE}; each image "
                                              "gets its own annotated picture (images sharing a name get the "
                                              "folders that tell them apart in front, or -2)")
    p.add_argument("--out", default="runs/detect",
                   help="output folder (default runs/detect); an earlier run's files of the same names are "
                        "replaced, with a warning that names them")
    _add_detector_args(p)
    p.add_argument("--batch", type=int, default=8, help="images per forward pass")
    p.add_argument("--max-det", type=int, default=None,
                   help="detections per image at most (default: the evaluation's, else 100)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (listed) instead of stopping")
    p.add_argument("--no-draw", action="store_true", help="write only detections.json")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels than this (default 40,000,000, as the app)")
    _add_backend_arg(p)

    p = sub.add_parser("cam", help="Grad-CAM / Grad-CAM++ per detection and EigenCAM per image",
                       description="One overlay per detection (its own map, its box drawn), one EigenCAM "
                                   "overlay per image, contact_sheet.png and cam.json in --out.")
    p.add_argument("images", nargs="+", help=f"image files, folders or glob patterns: {PATHS_RULE}")
    p.add_argument("--method", choices=CAM_METHODS, default="gradcam",
                   help="per-detection method (eigencam: only the per-image maps); default gradcam")
    p.add_argument("--layer", default="head",
                   help="head (each box at its own scale's head; default), head32, head16, head8, backbone, "
                        "or a module path such as layers.14")
    p.add_argument("--out", default="runs/cam", help="output folder (default runs/cam)")
    _add_detector_args(p)
    p.add_argument("--max-det", type=int, default=20, help="detections explained per image at most (default 20)")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass")

    p = sub.add_parser("app", help="a web page (Gradio) to detect, inspect and explain images",
                       description="Serves the page on loopback unless --host says otherwise.")
    _add_detector_args(p, weights_required=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--examples", nargs="*", default=[],
                   help=f"example images (files, folders, globs: {PATHS_RULE}); default: the demo's "
                        "runs/demo/examples")
    _add_backend_arg(p, "; explanations then still run on torch")
    p.add_argument("--concurrency", type=int, default=1, help="requests run at once (default 1)")
    p.add_argument("--max-queue", type=int, default=16, help="requests that may wait (default 16)")

    p = sub.add_parser("export", help="write a checkpoint's weights as one .safetensors file (loads without "
                                      "pickle) or as an ONNX model (opset 17, dynamic batch and size)",
                       description="Writes the weights with the detector's settings (class names, sizes, NMS) "
                                   "as .safetensors or .onnx (from the --out suffix); --int8 quantises the ONNX "
                                   "model, calibrated on --data images, and scores it against float32.")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP + " (not .onnx)")
    _add_anchors_arg(p)
    p.add_argument("--out", required=True, help="the file to write (.safetensors or .onnx)")
    p.add_argument("--format", choices=("safetensors", "onnx"), default=None,
                   help="default: from the --out suffix")
    q = _add_int8_args(p)
    q.add_argument("--int8", action="store_true", help="quantise the ONNX model to int8 (weights per channel, "
                                                       "activations calibrated on --calib images)")

    p = sub.add_parser("space", help="write a Hugging Face Space folder (app.py, weights, examples, pinned "
                                     "requirements, README with the Space header) ready to upload",
                       description="The Space serves `yolov3 app` on a CPU. The default weights are int8 ONNX, "
                                   "quantised here from torch weights with --data images.")
    p.add_argument("--weights", required=True, help=WEIGHTS_HELP)
    _add_anchors_arg(p)
    p.add_argument("--out", required=True, help="the folder to write (new or empty)")
    p.add_argument("--format", choices=("onnx-int8", "onnx", "safetensors"), default="onnx-int8",
                   help="the weights the Space serves (default onnx-int8; explanations need safetensors)")
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="what runs the network in the Space (default: onnxruntime for ONNX, torch for safetensors)")
    p.add_argument("--examples", nargs="*", default=[],
                   help=f"example images (files, folders, globs: {PATHS_RULE}); default: the demo's "
                        "runs/demo/examples")
    p.add_argument("--title", default="YOLOv3 detector", help="the Space's title")
    _add_int8_args(p)
    return parser
