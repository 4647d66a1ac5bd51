"""`yolov3 space`: a Hugging Face Space folder, ready to upload, that serves a detector with
this project's app (yolov3.commands.app) on a CPU.

The folder holds:
  app.py            builds the Detector and serves DetectorApp (Gradio), on the address and
                    port the Space gives (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT)
  yolov3/           this package, copied (the Space runs the code the folder was built with)
  model.onnx        the weights: int8 ONNX by default, or float32 ONNX, or safetensors
  examples/         example images
  requirements.txt  the runtime dependencies, pinned to the versions installed here (the
                    ones this project tests with); torch's CPU build from its own index
  README.md         the Space's metadata header (sdk gradio, app_file) and what it serves
  .gitattributes    the weights through Git LFS, as the Hub wants files over 10 MB

At run time the Space needs neither Lightning nor albumentations nor onnx: only torch (pre-
and post-processing, and the torch backend), ONNX Runtime, Gradio, NumPy, OpenCV, Pillow.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path

from yolov3.commands.app import find_examples
from yolov3.commands.export import int8_images, int8_options_given, print_int8
from yolov3.commands.outputs import input_names
from yolov3.deploy import CALIB_IMAGES, export_int8
from yolov3.detector import Detector, weights_format
from yolov3.onnx_backend import CALIB_METHODS

FORMATS = ("onnx-int8", "onnx", "safetensors")
WEIGHTS_FILE = {"onnx-int8": "model.onnx", "onnx": "model.onnx", "safetensors": "model.safetensors"}
# The distributions the app imports at run time (see the module docstring), in the order
# requirements.txt lists them; safetensors only with safetensors weights.
RUNTIME = ("torch", "numpy", "pillow", "opencv-python-headless", "gradio", "onnxruntime")
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class SpaceError(ValueError):
    """What is wrong with the arguments of build_space (the message says which)."""


def build_space(weights: str | Path, out: str | Path, fmt: str = "onnx-int8", backend: str | None = None,
                examples: Sequence[str | Path] = (), calibration=None, n_calib: int = CALIB_IMAGES,
                evaluation=None, calib_method: str = CALIB_METHODS[0], title: str = "YOLOv3 detector",
                detector=None) -> dict:
    """Write the Space folder `out` (which must not exist or be empty) for `weights`.

    Args:
        weights: a .ckpt, .safetensors or .onnx file. With fmt "onnx-int8" an ONNX file must
            already be int8; torch weights are quantised here, calibrated on `n_calib` images
            of `calibration` (a deploy.ImageSet, required then), and scored before and after
            on `evaluation` when given (deploy.export_int8).
        fmt: the weights the Space serves: "onnx-int8" (default), "onnx" or "safetensors".
        backend: what runs the network in the Space: "onnxruntime" (default for ONNX) or
            "torch" (default for safetensors; only possible with safetensors).
        examples: image files for the page's examples (at least one); copied into examples/
            under their names, those sharing a name (case-insensitively) with the folders that
            tell them apart in front, or -2 (yolov3.commands.outputs.input_names).
        title: the Space's title.
        detector: `weights` already loaded (Detector.load), when the caller has it.

    Returns {"out", "weights", "format", "backend", "examples", "requirements", and
    "int8" (export_int8's report) when it quantised}. Raises SpaceError, FileNotFoundError
    or ValueError naming the file or argument.
    """
    if fmt not in FORMATS:
        raise SpaceError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    backend = backend or ("torch" if fmt == "safetensors" else "onnxruntime")
    if backend == "torch" and fmt != "safetensors":
        raise SpaceError(f"the torch backend runs torch weights, and --format {fmt} ships ONNX ones: pass "
                         "--format safetensors (with .ckpt or .safetensors --weights)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpaceError(f"{out}: exists and is not an empty folder; name a new one (nothing was written)")
    examples = [Path(e) for e in examples]
    if not examples:
        raise SpaceError("a Space needs example images: pass --examples (files, folders or globs)")
    for e in examples:
        if not e.is_file():
            raise FileNotFoundError(f"{e}: example image not found")

    detector = detector if detector is not None else Detector.load(weights)
    kind = weights_format(weights)
    if kind == "onnx" and calibration is not None:
        raise SpaceError(f"{weights}: an ONNX export is served as it is; calibration images (--data) are for "
                         "quantising torch weights (pass the .ckpt or .safetensors file to quantise)")
    if kind == "onnx" and fmt == "safetensors":
        raise SpaceError(f"{weights}: an ONNX export holds no torch weights to write as safetensors")
    if kind == "onnx" and (fmt == "onnx-int8") != (detector.precision == "int8"):
        wanted = "int8" if fmt == "onnx-int8" else "float32"
        raise SpaceError(f"{weights}: an ONNX export in {detector.precision}, and the Space is to serve {wanted} "
                         f"(quantise from the .ckpt or .safetensors weights, or pass --format "
                         f"{'onnx' if fmt == 'onnx-int8' else 'onnx-int8'})")
    if fmt == "onnx-int8" and kind != "onnx" and calibration is None:
        raise SpaceError("an int8 Space quantises the weights and needs calibration images: pass --data "
                         "(a dataset root or image files), or --format onnx for float32")

    out.mkdir(parents=True, exist_ok=True)
    target = out / WEIGHTS_FILE[fmt]
    report = {}
    if kind == "onnx":
        shutil.copyfile(weights, target)
    elif fmt == "onnx-int8":
        report["int8"] = export_int8(detector, target, calibration, n_calib, evaluation, calib_method)
    elif fmt == "onnx":
        detector.save_onnx(target)
    else:
        detector.save_safetensors(target)
    detect_file = target
    if fmt == "safetensors" and backend == "onnxruntime":
        # detections from an ONNX export shipped beside the weights (exporting at start-up
        # would need the onnx package in the Space); explanations from the safetensors
        detect_file = out / "model.onnx"
        detector.save_onnx(detect_file)
    served = Detector.load(detect_file)  # what the Space will load: its settings go into the README

    (out / "examples").mkdir()
    # examples sharing a name (two folders' IMG_0001.jpg) get names apart, as detect's pictures
    copied = input_names(examples, label=lambda e: e.name)
    for e, name in zip(examples, copied):
        shutil.copyfile(e, out / "examples" / name)
    package = Path(__file__).resolve().parents[1]  # the yolov3 package (this is yolov3/commands/space.py)
    shutil.copytree(package, out / "yolov3", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    requirements = runtime_requirements(safetensors=fmt == "safetensors")
    (out / "requirements.txt").write_text(requirements)
    explain = repr(target.name) if detect_file != target else None  # torch weights beside an ONNX detector
    (out / "app.py").write_text(APP_PY.format(weights=detect_file.name, explain=explain))
    (out / "README.md").write_text(_readme(title, served, fmt, backend, weights))
    (out / ".gitattributes").write_text("*.onnx filter=lfs diff=lfs merge=lfs -text\n"
                                        "*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return {"out": str(out), "weights": str(target), "format": fmt, "backend": backend, "examples": len(copied),
            "requirements": requirements.splitlines(), **report}


def runtime_requirements(safetensors: bool = False) -> str:
    """requirements.txt for the Space: RUNTIME pinned to the versions installed here (the
    local version label dropped: torch "2.13.0+cpu" is pinned as 2.13.0 and found on
    torch's CPU index, which pip prefers for it as the higher local version)."""
    names = [*RUNTIME, *(["safetensors"] if safetensors else [])]
    lines = ["# Written by `yolov3 space`: what the app imports, at the versions it was tested with.",
             "# torch's CPU build (a few hundred MB instead of the CUDA build's gigabytes):",
             f"--extra-index-url {TORCH_CPU_INDEX}"]
    for name in names:
        try:
            version = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            raise SpaceError(f"{name} is not installed here, so its version cannot be pinned "
                             f"(install this project's dependencies: make venv)") from None
        lines.append(f"{name}=={version.split('+')[0]}")
    return "\n".join(lines) + "\n"


APP_PY = '''"""A YOLOv3 detector on a Hugging Face Space (written by `yolov3 space`).

Run it here with `python app.py` (http://127.0.0.1:7860); on a Space it listens where the
Space says (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT).
"""

import os
from pathlib import Path

from yolov3.commands.app import DetectorApp
from yolov3.commands.server import serve
from yolov3.detector import Detector

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "{weights}"  # what detects: ONNX weights run in ONNX Runtime, safetensors in torch

detector = Detector.load(WEIGHTS)
# Explanations (Grad-CAM, EigenCAM) need torch weights: without them the page says so.
EXPLAIN_WEIGHTS = {explain}
explainer = Detector.load(HERE / EXPLAIN_WEIGHTS) if EXPLAIN_WEIGHTS else None
examples = sorted(str(p) for p in (HERE / "examples").iterdir() if p.is_file())
app = DetectorApp(detector, examples, explainer=explainer)  # a torch detector explains itself

if __name__ == "__main__":
    serve(app, host=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
          port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
'''


def _readme(title: str, detector, fmt: str, backend: str, weights) -> str:
    gradio = importlib_metadata.version("gradio")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"  # the Python it was tested with
    classes = ", ".join(detector.class_names)
    header = "\n".join(["---", f"title: {json.dumps(title)}", "emoji: 🔍", "colorFrom: blue", "colorTo: green",
                        "sdk: gradio", f"sdk_version: {gradio}", f"python_version: \"{python}\"",
                        "app_file: app.py", "pinned: false", "---", ""])
    lines = [header, f"# {title}", "",
             f"YOLOv3 (Darknet-53, three scales), width {detector.model.width:g}, {len(detector.class_names)} "
             f"classes: {classes}.", "",
             f"- weights: `{WEIGHTS_FILE[fmt]}` ({fmt}), from `{Path(weights).name}`; run by {backend} on the CPU",
             f"- input size {detector.size} px by default, NMS IoU {detector.iou_threshold:g}, score "
             f"{detector.score_mode}",
             "- explanations (Grad-CAM, EigenCAM): " + ("on" if fmt == "safetensors" else
                                                      "not with ONNX weights (they need the torch weights)")]
    meta = getattr(detector.model, "metadata", {})  # what an int8 export recorded of its check
    if "map_07_int8" in meta:
        lines.append(f"- int8 check: VOC07 mAP {100 * float(meta['map_07_int8']):.2f} against "
                     f"{100 * float(meta['map_07_fp32']):.2f} in float32 on {meta.get('eval_split', '?')}, "
                     f"calibrated on {meta.get('calibration_images', '?')} images")
    lines += ["", "Written by `yolov3 space`. Try it here first (the virtualenv outside this folder, so "
              "that it is not uploaded with it):", "", "```",
              "python -m venv ../space-venv && ../space-venv/bin/pip install -r requirements.txt",
              "../space-venv/bin/python app.py    # http://127.0.0.1:7860", "```", "",
              "Publish it with the `hf` command of huggingface_hub (installed with Gradio) and a Hugging Face "
              "token with write access; large files go up through the Hub's LFS storage:", "", "```",
              "hf auth login",
              "hf repos create <user>/<space-name> --type space --sdk gradio",
              "hf upload <user>/<space-name> . --type space --exclude '**/__pycache__/**'", "```", ""]
    return "\n".join(lines)


def command(args: argparse.Namespace) -> None:
    if args.format != "onnx-int8" and int8_options_given(args):
        raise SystemExit(f"yolov3 space: {', '.join(int8_options_given(args))} apply to --format onnx-int8 only")
    try:
        # loaded once: class names, the Space
        detector = Detector.load(args.weights, anchors=args.anchors, letterbox=args.letterbox)
        print(detector.describe())
        calibration, evaluation = (int8_images(args, detector.class_names) if args.format == "onnx-int8"
                                   else (None, None))
        examples = find_examples(args.examples)
        summary = build_space(args.weights, args.out, args.format, args.backend, examples, calibration, args.calib,
                              evaluation, args.calib_method, args.title, detector=detector)
    except (FileNotFoundError, ValueError) as exc:  # SpaceError and DataError are ValueErrors
        raise SystemExit(f"yolov3 space: {exc}") from None
    if "int8" in summary:
        print_int8(summary["int8"])
    print(f"wrote the Space folder {summary['out']}: app.py, {Path(summary['weights']).name} ({summary['format']}, "
          f"run by {summary['backend']}), {summary['examples']} examples, requirements.txt, README.md")
    print(f"{summary['out']}/README.md says how to try it in a fresh virtualenv and how to publish it")
