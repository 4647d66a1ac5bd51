"""The small tools: `yolov3 summary` (the model's layer table), `yolov3 synth` (write the
synthetic dataset) and `yolov3 show-batch` (training or validation batches as a picture)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torchinfo
from PIL import Image

from yolov3.commands.lightning_cli import load_cli
from yolov3.data.synthetic import generate
from yolov3.model import YOLOv3
from yolov3.viz import draw_batch, image_grid


def summary(args: argparse.Namespace) -> None:
    model = YOLOv3(num_classes=args.num_classes, width=args.width)
    stats = torchinfo.summary(
        model,
        input_size=(1, 3, args.size, args.size),
        depth=args.depth,
        col_names=("input_size", "output_size", "num_params", "mult_adds"),
        row_settings=("var_names",),
        verbose=0,
    )
    print(stats)


def synth(args: argparse.Namespace) -> None:
    summary = generate(args.out, args.train, args.test, seed=args.seed, voc_xml=args.voc_xml)
    images, boxes = summary["images"], summary["boxes"]
    print(f"wrote {images['train']} training images ({boxes['train']} boxes) and {images['test']} test images "
          f"({boxes['test']} boxes) to {args.out}")


def show_batch(args: argparse.Namespace) -> None:
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
