"""Training-step throughput of the model on this machine: NCHW vs channels_last, per size.

Prints a table and writes bench/results/train_throughput.json. Figures are images/second
for forward + loss + backward + Adam step on random data, and the ratio against the NCHW
baseline measured in the same run.

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


def measure(width: float, size: int, batch: int, steps: int, channels_last: bool, device: str) -> float:
    torch.manual_seed(0)
    model = YOLOv3(width=width).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
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
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    args = p.parse_args()

    rows = []
    for size in args.sizes:
        base = measure(args.width, size, args.batch, args.steps, False, args.device)
        cl = measure(args.width, size, args.batch, args.steps, True, args.device)
        rows.append({"size": size, "nchw_img_s": round(base, 1), "channels_last_img_s": round(cl, 1),
                     "ratio": round(cl / base, 2)})
    machine = describe_machine(args.device)
    report(f"training throughput, width {args.width}, batch {args.batch}, {args.device} ({machine})",
           [("size", "size", ""), ("nchw_img_s", "NCHW img/s", ""), ("channels_last_img_s", "channels_last img/s", ""),
            ("ratio", "ratio", "")], rows, args.out,
           machine=machine, device=args.device, width=args.width, batch=args.batch, steps=args.steps)


if __name__ == "__main__":
    main()
