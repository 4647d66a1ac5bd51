"""What a full-size training checkpoint costs to write, and what saving one every N steps
then costs as a share of training time.

Builds the course's model at width 1.0 (61.6 M parameters) with Adam's two moment buffers
filled (one optimiser step on a small image), makes the checkpoint Lightning would
(weights, optimiser state, hyper-parameters), and times, in the same run and on the same
folder, Lightning's own writer (fsspec, the baseline) and yolov3.checkpoint_io.save_atomic
(the project's: same bytes, plus a file-system flush and an atomic rename), and the part of a
background write (SafeCheckpointIO's default) that training waits for: the copy of every
tensor to host memory; serialising and writing overlap with training. The share of
training time for a step checkpoint every N steps is write time / (N x step time), for the
step times given (the default 0.154 s is the course's own GPU log: 1,035 steps of batch 16
at 416 px in 2 min 40 s, ../shared/seeds/000_79527dbcf8fea65f.txt; 0.05 s stands for a GPU
three times faster). Where a write blocks training, that share is its cost.

Prints a table and writes bench/results/checkpoint_cost.json.

    python bench/checkpoint_cost.py [--dir runs/bench_ckpt] [--repeats 3] [--every 500] [--step-times 0.154 0.05]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch
from lightning.fabric.utilities.cloud_io import _atomic_save

from common import describe_machine, report
from yolov3.checkpoint_io import save_atomic
from yolov3.checkpoint_plugin import SafeCheckpointIO
from yolov3.model import YOLOv3


def full_size_checkpoint() -> dict:
    model = YOLOv3(num_classes=20, width=1.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss = sum(o.float().mean() for o in model(torch.rand(1, 3, 64, 64)))
    loss.backward()
    optimizer.step()  # fills exp_avg and exp_avg_sq, as in any checkpoint after step 1
    return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()],
            "hyper_parameters": {"num_classes": 20, "width": 1.0}, "global_step": 1, "epoch": 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="runs/bench_ckpt", help="folder to write in (on the disk that runs use)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--step-times", type=float, nargs="+", default=[0.154, 0.05])
    args = ap.parse_args()

    ckpt = full_size_checkpoint()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    background = SafeCheckpointIO(background=True)
    writers = {"lightning (fsspec)": lambda p: _atomic_save(ckpt, p), "yolov3 save_atomic": lambda p: save_atomic(ckpt, p),
               "yolov3 background (training waits)": lambda p: background.save_checkpoint(ckpt, p)}
    seconds = {}
    for name, write in writers.items():
        times = []
        for r in range(args.repeats):
            background.teardown()  # the previous background write is not this one's cost
            t0 = time.perf_counter()
            write(folder / "last.ckpt")
            times.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(times)
    background.teardown()
    size_mb = (folder / "last.ckpt").stat().st_size / 1e6
    shutil.rmtree(folder)

    base = seconds["lightning (fsspec)"]
    rows = []
    for name, s in seconds.items():
        row = {"writer": name, "seconds": s, "vs_lightning": s / base}
        for n in args.every:
            for st in args.step_times:
                row[f"share_every_{n}_at_{st}"] = 100 * s / (n * st)
        rows.append(row)
    cols = [("writer", "writer", ""), ("seconds", "s per write", ".2f"), ("vs_lightning", "vs lightning", ".2f")]
    cols += [(f"share_every_{n}_at_{st}", f"% at N={n}, {st}s/step", ".2f") for n in args.every for st in args.step_times]
    report(f"full-size checkpoint ({size_mb:.0f} MB) write time, median of {args.repeats} ({describe_machine()})",
           cols, rows, Path(__file__).parent / "results" / "checkpoint_cost.json", size_mb=size_mb,
           machine=describe_machine())


if __name__ == "__main__":
    main()
