"""Training-step throughput of the model on this machine, per size, in three layouts:
NCHW; every layer NHWC (`model.to(memory_format=torch.channels_last)`); and the project's
channels_last (YOLOv3.use_channels_last: NHWC except convolutions with fewer than 16 output
channels, which only reduced widths have).

Prints a table and writes bench/results/train_throughput.json. Figures are images/second
for forward + loss + backward + Adam step on random data, and the ratios against the NCHW
baseline measured in the same run. The layouts take turns, `--repeats` times, and each
keeps its best round, so a slow moment of a shared machine does not land on one layout.

    python bench/train_throughput.py [--width 0.125] [--sizes 192 256 416] [--batch 8] [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from yolov3.constants import DEFAULT_ANCHORS
from yolov3.loss import YoloLoss
from yolov3.model import YOLOv3
from yolov3.targets import build_targets
from common import describe_machine, report


LAYOUTS = ("nchw", "all_nhwc", "channels_last")


def measure(width: float, size: int, batch: int, steps: int, layout: str, device: str) -> float:
    torch.manual_seed(0)
    model = YOLOv3(width=width).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    if layout == "all_nhwc":
        model = model.to(memory_format=torch.channels_last)
    elif layout == "channels_last":
        model.use_channels_last()
    if layout != "nchw" and model.first_layer_channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    anchors = torch.tensor(DEFAULT_ANCHORS, device=device)
    boxes = torch.tensor([[b, b % 20, 0.5, 0.5, 0.3, 0.4] for b in range(batch)], dtype=torch.float32, device=device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = YoloLoss()
    for i in range(steps + 1):
        if i == 1:  # the first step warms up allocators and kernels
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        out = model(x)
        targets = build_targets(boxes, batch, [tuple(o.shape[2:4]) for o in out], anchors)
        loss, _ = loss_fn(out, targets, anchors)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 256])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    args = p.parse_args()

    rows = []
    for size in args.sizes:
        best = dict.fromkeys(LAYOUTS, 0.0)
        for _ in range(args.repeats):
            for layout in LAYOUTS:
                best[layout] = max(best[layout], measure(args.width, size, args.batch, args.steps, layout, args.device))
        rows.append({"size": size, **{f"{k}_img_s": round(v, 1) for k, v in best.items()},
                     "all_nhwc_ratio": round(best["all_nhwc"] / best["nchw"], 2),
                     "channels_last_ratio": round(best["channels_last"] / best["nchw"], 2)})
    machine = describe_machine(args.device)
    report(f"training throughput, width {args.width}, batch {args.batch}, {args.device} ({machine})",
           [("size", "size", ""), ("nchw_img_s", "NCHW img/s", ""), ("all_nhwc_img_s", "all NHWC img/s", ""),
            ("channels_last_img_s", "channels_last img/s", ""), ("all_nhwc_ratio", "all NHWC / NCHW", ""),
            ("channels_last_ratio", "channels_last / NCHW", "")], rows, args.out,
           machine=machine, device=args.device, width=args.width, batch=args.batch, steps=args.steps,
           repeats=args.repeats)


if __name__ == "__main__":
    main()
