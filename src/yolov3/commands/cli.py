"""The `yolov3` command.

`yolov3 fit|validate|test|predict` are LightningCLI (configs in configs/*.yaml); the other
subcommands are small tools of this project, each a thin shell over the package.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from yolov3.commands.lightning_cli import YoloCLI, load_cli
from yolov3.commands.parser import build_parser

log = logging.getLogger("yolov3")


def _show_batch(args: argparse.Namespace) -> None:
    from PIL import Image

    from yolov3.viz import draw_batch, image_grid

    dm = load_cli(args.config, args.overrides).datamodule
    dm.setup("fit")
    loader = dm.train_dataloader() if args.split == "train" else dm.val_dataloader()
    pictures, sizes = [], []
    for _, batch in zip(range(args.batches), loader):
        pictures += draw_batch(batch, dm.class_names)
        sizes.append(batch["images"].shape[-1])
    if not pictures:
        raise SystemExit(f"the {args.split} split gave no batches")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(pictures, cols=args.cols, cell=args.cell)).save(args.out)
    print(f"wrote {len(pictures)} {args.split} samples from {len(sizes)} batches (sizes {sizes}) to {args.out}")


def _detect(args: argparse.Namespace) -> None:
    from yolov3.data.sample import DataError
    from yolov3.commands.detect import run_detect

    try:
        summary = run_detect(args.sources, args.weights, args.out, conf=args.conf, iou=args.iou, size=args.size,
                             device=args.device, batch_size=args.batch, max_detections=args.max_det,
                             skip_bad=args.skip_bad, draw=not args.no_draw, backend=args.backend,
                             **({"max_pixels": args.max_pixels} if args.max_pixels else {}))
    except (FileNotFoundError, DataError, ValueError) as exc:
        raise SystemExit(f"yolov3 detect: {exc}") from None
    print(f"{summary['detections']} detections in {summary['images']} images -> {summary['out']}/detections.json"
          f"{'' if args.no_draw else ' and annotated images'}")
    for line in summary["skipped"]:
        print(f"skipped {line}")
    for line in summary.get("notes", []):
        print(f"note: {line}")


def _cam(args: argparse.Namespace) -> None:
    from yolov3.commands.cam import run_cam

    try:
        summary = run_cam(args.images, args.weights, args.out, method=args.method, layer=args.layer, size=args.size,
                          conf=args.conf, iou=args.iou, device=args.device, max_detections=args.max_det,
                          batch_size=args.batch)
    except (FileNotFoundError, ValueError) as exc:  # DataError (unreadable image) is a ValueError
        raise SystemExit(f"yolov3 cam: {exc}") from None
    print(f"{summary['detections']} detections in {summary['images']} images: {summary['pictures']} overlays and "
          f"contact_sheet.png in {summary['out']} ({summary['seconds_per_image']:.2f} s per image)")
    if summary["zero_maps"]:
        print(f"{summary['zero_maps']} detections do not depend on layer {args.layer!r} (their maps are empty); "
              f"try --layer head or backbone")


EXPORT_SUFFIXES = {".safetensors": "safetensors", ".onnx": "onnx"}


def _export(args: argparse.Namespace) -> None:
    from yolov3.detector import Detector

    fmt = args.format or EXPORT_SUFFIXES.get(Path(args.out).suffix.lower())
    if fmt is None:
        raise SystemExit(f"yolov3 export: {args.out}: name the file .safetensors or .onnx, or pass --format")
    if args.int8 and fmt != "onnx":
        raise SystemExit(f"yolov3 export: --int8 writes an ONNX model; {args.out} is a {fmt} file (name it .onnx)")
    if not args.int8 and _int8_options_given(args):
        raise SystemExit(f"yolov3 export: {', '.join(_int8_options_given(args))} apply to --int8 only "
                         "(add --int8 to quantise, or leave them out for a float export)")
    if args.int8 and not args.data:
        raise SystemExit("yolov3 export: --int8 needs calibration images: --data <dataset root> (its training "
                         "split calibrates, its test split scores) or --data <image files or folders>")
    try:
        detector = Detector.load(args.weights)
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
        _print_int8(report)


def _export_int8(detector, args: argparse.Namespace) -> dict:
    from yolov3.deploy import export_int8

    calibration, evaluation = _int8_images(args, detector.class_names)
    return export_int8(detector, args.out, calibration, args.calib, evaluation, args.calib_method)


def _int8_options_given(args: argparse.Namespace) -> list[str]:
    """The int8 options given on the command line (their defaults left out)."""
    from yolov3.deploy import CALIB_IMAGES
    from yolov3.onnx_backend import CALIB_METHODS

    given = {"--data": args.data, "--calib": args.calib != CALIB_IMAGES, "--calib-split": args.calib_split,
             "--eval-split": args.eval_split, "--no-eval": args.no_eval,
             "--calib-method": args.calib_method != CALIB_METHODS[0]}
    return [name for name, value in given.items() if value]


def _int8_images(args: argparse.Namespace, class_names):
    """(calibration, evaluation) ImageSets from --data, --calib-split, --eval-split and
    --no-eval; (None, None) without --data. Scoring needs a dataset root (labels)."""
    from yolov3.deploy import open_images

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


def _print_int8(report: dict) -> None:
    scored = " and scoring" if "int8" in report else ""
    print(f"calibrated on {report['calibration_images']} images of {report['calibration']} "
          f"(export, calibration{scored}: {report['seconds']:.0f} s)")
    if "int8" in report:
        a, b = report["fp32"], report["int8"]
        print(f"VOC07 mAP on {b['split']} ({b['num_images']} images): float32 {100 * a['map_07']:.2f}, "
              f"int8 {100 * b['map_07']:.2f} ({100 * (b['map_07'] - a['map_07']):+.2f} points)")


def _space(args: argparse.Namespace) -> None:
    from yolov3.commands.app import find_examples
    from yolov3.detector import Detector
    from yolov3.commands.space import build_space

    if args.format != "onnx-int8" and _int8_options_given(args):
        raise SystemExit(f"yolov3 space: {', '.join(_int8_options_given(args))} apply to --format onnx-int8 only")
    try:
        detector = Detector.load(args.weights)  # loaded once, for the class names and the Space
        calibration, evaluation = (_int8_images(args, detector.class_names) if args.format == "onnx-int8"
                                   else (None, None))
        examples = find_examples(args.examples)
        summary = build_space(args.weights, args.out, args.format, args.backend, examples, calibration, args.calib,
                              evaluation, args.calib_method, args.title, detector=detector)
    except (FileNotFoundError, ValueError) as exc:  # SpaceError and DataError are ValueErrors
        raise SystemExit(f"yolov3 space: {exc}") from None
    if "int8" in summary:
        _print_int8(summary["int8"])
    print(f"wrote the Space folder {summary['out']}: app.py, {Path(summary['weights']).name} ({summary['format']}, "
          f"run by {summary['backend']}), {summary['examples']} examples, requirements.txt, README.md")
    print(f"{summary['out']}/README.md says how to try it in a fresh virtualenv and how to publish it")


def _summary(args: argparse.Namespace) -> None:
    from torchinfo import summary

    from yolov3.model import YOLOv3

    model = YOLOv3(num_classes=args.num_classes, width=args.width)
    stats = summary(
        model,
        input_size=(1, 3, args.size, args.size),
        depth=args.depth,
        col_names=("input_size", "output_size", "num_params", "mult_adds"),
        row_settings=("var_names",),
        verbose=0,
    )
    print(stats)


def _synth(args: argparse.Namespace) -> None:
    from yolov3.data.synthetic import generate

    summary = generate(args.out, args.train, args.test, seed=args.seed, voc_xml=args.voc_xml)
    images, boxes = summary["images"], summary["boxes"]
    print(f"wrote {images['train']} training images ({boxes['train']} boxes) and {images['test']} test images "
          f"({boxes['test']} boxes) to {args.out}")


def _demo(args: argparse.Namespace) -> None:
    from yolov3.commands.demo import run_demo

    run_demo(args.config, data_dir=args.data_dir, n_train=args.train, n_test=args.test, seed=args.seed,
             out_dir=args.out, overrides=args.overrides)


def _app(args: argparse.Namespace) -> None:
    from yolov3.commands.app import DEMO_WEIGHTS, DetectorApp, find_examples, serve
    from yolov3.detector import Detector

    weights = args.weights
    if weights is None:
        if not DEMO_WEIGHTS.is_file():
            raise SystemExit(f"yolov3 app: no --weights given and no demo checkpoint at {DEMO_WEIGHTS}. "
                             "Run `make demo` first (it trains one on synthetic data in about 12 minutes on a "
                             "2-core CPU), or pass --weights with a .ckpt checkpoint or a .safetensors export.")
        weights = str(DEMO_WEIGHTS)
    try:
        detector = Detector.load(weights, size=args.size, conf_threshold=args.conf, iou_threshold=args.iou,
                                 device=args.device)
        # detections from ONNX Runtime, explanations from the torch weights when there are any
        explainer = detector if detector.backend == "torch" else None
        if args.backend is not None:
            detector = detector.with_backend(args.backend)
        examples = find_examples(args.examples)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"yolov3 app: {exc}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the app listens on %s: anyone who can reach this machine can use it", args.host)
    print(f"weights {weights}; {len(examples)} example images; serving on http://{args.host}:{args.port} "
          "(Ctrl+C stops)")
    serve(DetectorApp(detector, examples, explainer=explainer), host=args.host, port=args.port,
          concurrency=args.concurrency,
          max_queue=args.max_queue)


def _user_errors() -> tuple[type[BaseException], ...]:
    from yolov3.checkpoint_io import CheckpointError
    from yolov3.data.sample import DataError
    from yolov3.nonfinite import TrainingDiverged

    return DataError, CheckpointError, TrainingDiverged


_USER_ERRORS = _user_errors()
HANDLERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "summary": _summary, "synth": _synth, "demo": _demo, "show-batch": _show_batch, "detect": _detect,
    "export": _export, "cam": _cam, "app": _app, "space": _space}
OWN_COMMANDS = tuple(HANDLERS)
PASSES_OVERRIDES = ("demo", "show-batch")


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Lightning 2.6 trips over its own torch.utils._pytree deprecation; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*treespec.*deprecated")
    # Our training sampler resumes mid-epoch by itself (the DataModule's state in the checkpoint).
    warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")
    # validate / test log to their own folder, so a checkpoint's ModelCheckpoint state "moves": harmless there.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    if argv and argv[0] in OWN_COMMANDS:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command not in PASSES_OVERRIDES:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        try:
            HANDLERS[args.command](args)
        except _USER_ERRORS as exc:
            raise SystemExit(f"yolov3 {args.command}: {exc}") from None
        return
    # LightningCLI reads sys.argv itself when run from the command line.
    try:
        YoloCLI(args=None if from_command_line else argv)
    except _USER_ERRORS as exc:
        # a bad file of the user's is one line naming it, not a traceback of our internals
        raise SystemExit(f"yolov3 {argv[0] if argv else ''}: {exc}".replace(":  ", ": ")) from None


if __name__ == "__main__":
    main()
