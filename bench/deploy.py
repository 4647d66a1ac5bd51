"""CPU deployment: network latency of the full-width model in four forms, measured in one run
on the same CPU, and the int8 accuracy check on the demo model.

Latency: the full model (width 1.0, 20 classes, 61.6 M parameters) at 416 x 416, batch 1,
randomly initialised (speed does not depend on the weights' values), after `--warmup`
calls; `--runs` timed calls of the network alone (no letterbox, decode or NMS, which are
the same Python code for every form):
  torch fp32      eager PyTorch, float32 (as Detector runs it)
  torch bf16      eager PyTorch under CPU autocast to bfloat16
  ort fp32        the ONNX export (yolov3.onnx_backend) in ONNX Runtime
  ort int8        the same export quantised (quantize_int8), calibrated on `--calib`
                  synthetic images rendered in memory
p50 and p95 in milliseconds, and each form's speed-up over torch fp32 (its p50 over theirs).

Accuracy (with --weights, default the demo checkpoint when it exists): VOC07 mAP of the
float32 weights and of their int8 export, calibrated on `--calib` images of the training
split and scored on the test split of `--data` (default data/synthetic): the issue's bar
is at most 1 point lost. And the float32 export's parity on that split: on how many images
ONNX Runtime gives torch's detections (default detection settings).

Prints two tables and writes bench/results/deploy.json.

    python bench/deploy.py [--runs 40] [--warmup 5] [--threads N] [--no-accuracy]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from yolov3.data.synthetic import render_image
from yolov3.detector import Detector
from yolov3.model import YOLOv3
from yolov3.onnx_backend import OnnxNetwork
from common import describe_machine, report

DEMO_WEIGHTS = Path("runs/demo/checkpoints/best.ckpt")


def latency(fn, x, warmup: int, runs: int) -> tuple[float, float, list[float]]:
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95)), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--calib", type=int, default=64, help="calibration images (default 64)")
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: theirs)")
    ap.add_argument("--weights", default=str(DEMO_WEIGHTS) if DEMO_WEIGHTS.is_file() else None)
    ap.add_argument("--data", default="data/synthetic", help="dataset root for the accuracy check")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--out", default="bench/results/deploy.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = YOLOv3(num_classes=20, width=args.width).eval()
    detector = Detector(model, size=args.size)
    x = torch.rand(1, 3, args.size, args.size)
    calibration = [render_image(1, "train", k).image for k in range(args.calib)]

    t0 = time.perf_counter()
    fp32_onnx = detector.save_onnx()
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8_onnx = detector.save_onnx(calibration=calibration)
    quantize_s = time.perf_counter() - t0

    def torch_fp32(inp):
        with torch.inference_mode():
            return model(inp)

    def torch_bf16(inp):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(inp)

    forms = [("torch fp32", torch_fp32), ("torch bf16", torch_bf16),
             ("ort fp32", OnnxNetwork(fp32_onnx, threads=args.threads)),
             ("ort int8", OnnxNetwork(int8_onnx, threads=args.threads))]
    rows = []
    for name, fn in forms:
        p50, p95, times = latency(fn, x, args.warmup, args.runs)
        rows.append({"form": name, "p50_ms": p50, "p95_ms": p95, "times_ms": times})
    base = rows[0]["p50_ms"]
    for r in rows:
        r["speedup"] = base / r["p50_ms"]
    params = sum(p.numel() for p in model.parameters())
    meta = {"machine": describe_machine(), "size": args.size, "width": args.width, "parameters": params,
            "runs": args.runs, "warmup": args.warmup, "onnx_export_s": export_s, "int8_quantise_s": quantize_s,
            "onnx_mb": {"fp32": len(fp32_onnx) / 1e6, "int8": len(int8_onnx) / 1e6}}
    accuracy = None if args.no_accuracy or not args.weights else check_accuracy(args)
    if accuracy:
        meta["accuracy"] = accuracy
    report(f"Network latency, width {args.width:g} ({params:,} parameters), {args.size} x {args.size}, batch 1, "
           f"{describe_machine()} (ONNX {len(fp32_onnx) / 1e6:.0f} MB fp32, {len(int8_onnx) / 1e6:.0f} MB int8)",
           [("form", "form", ""), ("p50_ms", "p50 ms", ".1f"), ("p95_ms", "p95 ms", ".1f"),
            ("speedup", "x torch fp32", ".2f")], rows, args.out, **meta)
    if accuracy:
        print(f"int8 check on {accuracy['weights']}: VOC07 mAP {accuracy['fp32']:.4f} float32, "
              f"{accuracy['int8']:.4f} int8 ({accuracy['points_lost']:+.2f} points lost) on {accuracy['split']}, "
              f"calibrated on {accuracy['calibration_images']} images of {accuracy['calibration']}")
        q = accuracy["parity"]
        print(f"ONNX Runtime float32 against torch on the same split: {q['identical']} of {q['images']} images "
              f"with the same detections (largest differences {q['max_box_px']:.2g} px, score {q['max_score']:.2g})")


def check_accuracy(args) -> dict:
    import tempfile

    from yolov3.deploy import export_int8, open_images

    detector = Detector.load(args.weights)
    names = detector.class_names
    calibration = open_images([args.data], None, "train", names)
    evaluation = open_images([args.data], None, "test", names)
    with tempfile.TemporaryDirectory() as tmp:
        r = export_int8(detector, Path(tmp) / "m.onnx", calibration, args.calib, evaluation)
    return {"weights": args.weights, "split": r["int8"]["split"], "fp32": r["fp32"]["map_07"],
            "int8": r["int8"]["map_07"], "points_lost": 100 * (r["fp32"]["map_07"] - r["int8"]["map_07"]),
            "calibration_images": r["calibration_images"], "calibration": r["calibration"],
            "parity": parity(detector, evaluation)}


def parity(detector, images) -> dict:
    """ONNX Runtime float32 against torch on every image of a split, at the default detection
    settings: images whose detections agree (same count and classes in the same order, boxes
    within 1e-3 px, scores within 1e-5) and the largest box and score differences."""
    onnx = detector.with_backend("onnxruntime")
    same, box_diff, score_diff = 0, 0.0, 0.0
    for i in range(len(images.source)):
        image = [images.source[i].image]
        a, b = detector(image)[0], onnx(image)[0]
        if a.shape == b.shape and np.array_equal(a[:, 5], b[:, 5]):
            d_box = float(np.abs(a[:, :4] - b[:, :4]).max(initial=0.0))
            d_score = float(np.abs(a[:, 4] - b[:, 4]).max(initial=0.0))
            box_diff, score_diff = max(box_diff, d_box), max(score_diff, d_score)
            same += d_box <= 1e-3 and d_score <= 1e-5
    return {"images": len(images.source), "identical": same, "max_box_px": box_diff, "max_score": score_diff}


if __name__ == "__main__":
    main()
