"""Explanation cost per image on this machine: Grad-CAM, Grad-CAM++ and EigenCAM.

Times yolov3.cam.explain one image at a time (the worst case: no batching) on synthetic
test images rendered in memory (yolov3.data.synthetic.render_image, 256-448 px a side) for
the reduced-width model: the demo checkpoint when it exists (its detections are real ones,
so the per-detection backward passes are the ones a user pays for), otherwise a randomly
initialised width-0.125 model. Each row is the mean over the images after one warm-up call;
"detect only" is Detector.__call__ on the same images, for scale. Image reading and
drawing are not timed.

Prints a table and writes bench/results/cam.json.

    python bench/cam.py [--weights runs/demo/checkpoints/best.ckpt] [--sizes 192 416] [--images 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from yolov3.cam import explain
from yolov3.data.synthetic import render_image
from yolov3.detector import Detector
from yolov3.model import YOLOv3
from common import describe_machine, report

# (method, layer) pairs: the default per-detection layer, the deepest alias, and EigenCAM
CASES = (("gradcam", "head"), ("gradcam++", "head"), ("gradcam", "backbone"), ("eigencam", "head"))


def per_image(fn, images) -> float:
    fn(images[:1])  # warm-up: allocator, kernels, lazy imports
    t0 = time.perf_counter()
    for img in images:
        fn([img])
    return (time.perf_counter() - t0) / len(images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="runs/demo/checkpoints/best.ckpt",
                   help="checkpoint to explain (a random width-0.125 model if it does not exist)")
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 416])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench/results/cam.json")
    args = p.parse_args()

    images = [render_image(0, "test", i).image for i in range(args.images)]
    rows = []
    for size in args.sizes:
        if Path(args.weights).is_file():
            detector, source = Detector.load(args.weights, size=size, device=args.device), args.weights
        else:
            torch.manual_seed(0)
            detector, source = Detector(YOLOv3(width=0.125), size=size, device=args.device), "random width 0.125"
        detect_s = per_image(detector, images)
        dets = sum(len(d) for d in detector(images)) / len(images)
        for method, layer in CASES:
            s = per_image(lambda ims, m=method, la=layer: explain(detector, ims, m, la), images)
            rows.append({"size": size, "method": method, "layer": layer, "s_per_image": round(s, 4),
                         "detections_per_image": round(dets, 2), "detect_only_s_per_image": round(detect_s, 4),
                         "width": detector.model.width, "weights": source})
    machine = describe_machine(args.device)
    report(f"explanation time per image (one image per call), {args.device} ({machine}), weights: {rows[0]['weights']}",
           [("size", "size", ""), ("method", "method", ""), ("layer", "layer", ""), ("s_per_image", "s/image", ".3f"),
            ("detections_per_image", "dets/image", ".2f"), ("detect_only_s_per_image", "detect only s", ".3f")],
           rows, args.out, machine=machine, device=args.device, images=args.images)


if __name__ == "__main__":
    main()
