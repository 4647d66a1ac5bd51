"""Training data pipeline throughput (images/s) and where each sample's time goes.

Times the real training loader (TrainBatchSampler -> DetectionDataset -> shrink ->
mosaic/affine -> flip and colour -> collate) at one size, batch 16, for three ways of
getting the pixels: decoded from disk every time ("none"), the memory-mapped disk cache
("disk", built first, not timed) and the per-process RAM cache ("ram"); each without and
with mosaic (0.75), in 1 process and with N DataLoader workers. Then, in 1 process, the
per-sample time of each stage (read, decode, resize, mosaic/affine, colour, survival filter,
targets, collate; data/timing.py).

Inputs: `--voc-like N` writes N synthetic JPEGs with sides in [375, 500] px (VOC photos are
mostly 500 x 375, about 2.4 boxes each) to --data if it is missing; or `--data ROOT` with
`--split` names any VOCdevkit or Kaggle root. Ratios are against this project's own
uncached pipeline measured in the same run, and against the course's pipeline as issue 13
measured it on this project's 2-core machine (400 such JPEGs, 416 px, batch 16): 67.5 img/s
mosaic in 1 process, 111 img/s with 2 workers.

    python bench/data_pipeline.py [--voc-like 400] [--data bench/data/voc_like] [--size 416]
                                  [--batches 30] [--workers 2] [--out bench/results/data_pipeline.json]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from yolov3.data import timing
from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from common import describe_machine, report

# Issue 13's measurement of the course's own pipeline on this project's machine type.
COURSE = {(0.75, 0): 67.5, (0.75, 2): 111.0, (0.0, 0): 112.0, (0.0, 2): 169.0}
STAGES = ("read", "decode", "resize", "mosaic/affine", "colour", "survival filter", "targets", "collate")


def datamodule(args: argparse.Namespace, cache: str, mosaic: float, workers: int, cache_dir: str) -> YoloDataModule:
    dm = YoloDataModule(root=args.data, train_split=args.split, image_size=args.size, batch_size=args.batch,
                        num_workers=workers, val_fraction=0.0, cache_images=cache, cache_dir=cache_dir,
                        augment=AugmentConfig(mosaic_prob=mosaic), pin_memory=False)
    dm.setup("fit")
    return dm


def batches_of(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def warm_ram_cache(dm: YoloDataModule) -> None:
    """Fill the RAM cache before timing, as after the first epoch."""
    for i in range(len(dm.train_set)):
        dm.train_set._load(i)


def measure(dm: YoloDataModule, batches: int, warm: bool) -> float:
    if warm:
        warm_ram_cache(dm)
    it = batches_of(dm.train_dataloader())
    next(it)  # start-up (worker processes, first decode) is not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += next(it)["images"].shape[0]
    rate = n / (time.perf_counter() - t0)
    it.close()
    return rate


def breakdown(dm: YoloDataModule, batches: int) -> tuple[dict[str, float], float]:
    """ms per sample in each stage, and the total, in this process."""
    it = batches_of(dm.train_dataloader())
    next(it)
    timing.enable()
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        n += next(it)["images"].shape[0]
    wall = time.perf_counter() - t0
    totals = timing.totals()
    timing.disable()
    return {k: 1e3 * totals.get(k, 0.0) / n for k in STAGES}, 1e3 * wall / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="bench/data/voc_like", help="dataset root (written if missing with --voc-like)")
    p.add_argument("--split", default="train.csv", help="train split: a CSV (Kaggle) or e.g. 2012-train (VOCdevkit)")
    p.add_argument("--voc-like", type=int, default=400, help="images to write when --data is missing")
    p.add_argument("--size", type=int, default=416)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="bench/results/data_pipeline.json")
    args = p.parse_args()

    if not Path(args.data).exists():
        from yolov3.data.synthetic import generate

        generate(args.data, args.voc_like, 0, seed=0, min_side=375, max_side=500)

    torch.set_num_threads(1)  # the loader's own work, not intra-op threads, is what is measured
    cache_dir = tempfile.mkdtemp(prefix="yolov3-bench-cache-")
    try:
        t0 = time.perf_counter()
        built = datamodule(args, "disk", 0.0, 0, cache_dir)  # builds the disk cache (not timed below)
        build_s = time.perf_counter() - t0
        cache_mb = sum(f.stat().st_size for f in Path(cache_dir).rglob("*.u8")) / 1e6
        n_images = len(built.train_set)
        rows, stage_rows = [], []
        for cache in ("none", "disk", "ram"):
            # a RAM cache is per worker process and fills over the first epoch: timed warm, in 1 process
            for workers in (0,) if cache == "ram" else (0, args.workers):
                for mosaic in (0.0, 0.75):
                    dm = datamodule(args, cache, mosaic, workers, cache_dir)
                    rate = measure(dm, args.batches, warm=cache == "ram" and workers == 0)
                    course = COURSE.get((mosaic, workers)) if args.size == 416 and args.batch == 16 else None
                    rows.append({"cache": cache, "workers": workers, "mosaic": mosaic, "img_s": round(rate, 1),
                                 "vs_uncached": 0.0, "vs_course": round(rate / course, 2) if course else "-"})
            for mosaic in (0.0, 0.75):
                dm = datamodule(args, cache, mosaic, 0, cache_dir)
                if cache == "ram":
                    warm_ram_cache(dm)
                per_stage, wall = breakdown(dm, args.batches)
                stage_rows.append({"cache": cache, "mosaic": mosaic, **{k: round(v, 3) for k, v in per_stage.items()},
                                   "other": round(wall - sum(per_stage.values()), 3), "total": round(wall, 3)})
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    base = {(r["workers"], r["mosaic"]): r["img_s"] for r in rows if r["cache"] == "none"}
    for r in rows:
        r["vs_uncached"] = round(r["img_s"] / base[(r["workers"], r["mosaic"])], 2)
    machine = describe_machine()
    title = (f"training data pipeline at {args.size} px, batch {args.batch}, {args.batches} batches, "
             f"{n_images} images of {args.data} ({machine}); disk cache {cache_mb:.0f} MB built in {build_s:.1f} s")
    report(title, [("cache", "cache", ""), ("workers", "workers", ""), ("mosaic", "mosaic", ""),
                   ("img_s", "img/s", ""), ("vs_uncached", "vs uncached", ""), ("vs_course", "vs course", "")],
           rows, args.out, machine=machine, size=args.size, batch=args.batch, batches=args.batches,
           images=n_images, data=args.data, cache_mb=round(cache_mb, 1), cache_build_s=round(build_s, 1),
           course_img_s={f"mosaic {m}, {w} workers": v for (m, w), v in COURSE.items()}, stages=stage_rows)
    print("\nms per sample in each stage, 1 process (other: sampler, loader and Python glue)")
    cols = [("cache", "cache", ""), ("mosaic", "mosaic", "")] + [(k, k, ".2f") for k in (*STAGES, "other", "total")]
    report("", cols, stage_rows, Path(args.out).with_name(Path(args.out).stem + "_stages.json"), machine=machine)


if __name__ == "__main__":
    main()
