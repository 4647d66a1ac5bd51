"""Training data pipeline throughput: images/second with and without mosaic, 1 process
and N DataLoader workers, on the synthetic set.

Times the real training loader (TrainBatchSampler -> DetectionDataset -> augmentation ->
collate), images decoded from disk each time (no cache) unless --cache. Prints a table
and writes bench/results/data_pipeline.json; ratios are against "no mosaic, 0 workers"
measured in the same run.

    python bench/data_pipeline.py [--data data/synthetic] [--sizes 416] [--batches 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from common import describe_machine, report


def measure(root: str, mosaic_prob: float, workers: int, sizes: list[int], batch: int, batches: int,
            cache: bool) -> float:
    dm = YoloDataModule(root=root, image_size=sizes[0], train_sizes=sizes, batch_size=batch, num_workers=workers,
                        val_fraction=0.0, cache_images=cache, augment=AugmentConfig(mosaic_prob=mosaic_prob),
                        pin_memory=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # start-up (worker processes, first decode) is not throughput
    if cache:  # fill the cache before timing
        for i in range(len(dm.train_set)):
            dm.train_set._sample(i)
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        n += b["images"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/synthetic", help="a synthetic set (written if missing)")
    p.add_argument("--sizes", type=int, nargs="+", default=[416])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", action="store_true", help="keep decoded images in memory (as make demo does)")
    p.add_argument("--out", default="bench/results/data_pipeline.json")
    args = p.parse_args()

    if not (Path(args.data) / "train.csv").exists():
        from yolov3.data.synthetic import generate

        generate(args.data, 1600, 200, seed=0)

    torch.set_num_threads(1)  # the loader's own work, not intra-op threads, is what is measured
    rows = []
    for workers in (0, args.workers):
        for mosaic_prob in (0.0, 0.75, 1.0):
            rate = measure(args.data, mosaic_prob, workers, args.sizes, args.batch, args.batches, args.cache)
            rows.append({"workers": workers, "mosaic_prob": mosaic_prob, "img_s": round(rate, 1)})
    base = rows[0]["img_s"]
    for r in rows:
        r["ratio"] = round(r["img_s"] / base, 2)
    machine = describe_machine()
    report(f"training data pipeline, sizes {args.sizes}, batch {args.batch}, {args.batches} batches, "
           f"{'cached' if args.cache else 'decoded from disk'} ({machine})",
           [("workers", "workers", ""), ("mosaic_prob", "mosaic", ""), ("img_s", "img/s", ""),
            ("ratio", "vs 0 workers, no mosaic", "")], rows, args.out,
           machine=machine, sizes=args.sizes, batch=args.batch, batches=args.batches, cache=args.cache)


if __name__ == "__main__":
    main()
