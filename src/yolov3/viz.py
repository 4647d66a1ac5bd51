"""Drawing: boxes, CAM overlays, training batches, image grids; plots: training curves, PR
curves, per-class AP bars."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from yolov3.cam import ImageCAM

PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
]


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: Sequence[int], class_names: Sequence[str],
               scores: Sequence[float] | None = None, truth: bool = False) -> np.ndarray:
    """Draw boxes on a copy of image (H, W, 3) uint8. boxes (N, 4) xyxy pixels.

    Predictions are drawn in their class colour with "name score"; ground truth (truth=True)
    as thin white boxes with the name below, so both can share one picture.
    """
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), labels)):
        x1, y1, x2, y2 = (float(v) for v in box)
        name = class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))
        if truth:
            draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 255), width=1)
            draw.text((x1 + 2, y2 - 11), name, fill=(255, 255, 255))
        else:
            color = PALETTE[int(label) % len(PALETTE)]
            draw.rectangle((x1, y1, x2, y2), outline=color, width=2)
            text = name if scores is None else f"{name} {float(scores[i]):.2f}"
            tw = draw.textlength(text)
            draw.rectangle((x1, y1 - 11, x1 + tw + 4, y1), fill=color)
            draw.text((x1 + 2, y1 - 11), text, fill=(0, 0, 0))
    return np.asarray(im)


def draw_batch(batch: dict, class_names: Sequence[str]) -> list[np.ndarray]:
    """A collated batch (images (B, 3, S, S) uint8, boxes, labels) -> B pictures (S, S, 3)
    with the boxes and class names the model will be trained on, and the size written in."""
    pictures = []
    for image, boxes, labels in zip(batch["images"], batch["boxes"], batch["labels"]):
        img = image.permute(1, 2, 0).cpu().numpy()
        picture = draw_boxes(img, boxes.cpu().numpy(), labels.tolist(), class_names)
        im = Image.fromarray(picture)
        draw = ImageDraw.Draw(im)
        text = f"{img.shape[1]}x{img.shape[0]}, {len(labels)} boxes"
        draw.rectangle((0, 0, draw.textlength(text) + 6, 13), fill=(0, 0, 0))
        draw.text((3, 1), text, fill=(255, 255, 255))
        pictures.append(np.asarray(im))
    return pictures


def image_grid(images: Sequence[np.ndarray], cols: int = 4, cell: int = 320) -> np.ndarray:
    """Tile images (each fitted into cell x cell, aspect kept) into one (rows*cell, cols*cell, 3) array."""
    rows = math.ceil(len(images) / cols)
    canvas = Image.new("RGB", (cols * cell, rows * cell), (32, 32, 32))
    for i, img in enumerate(images):
        im = Image.fromarray(img)
        im.thumbnail((cell, cell))
        x = (i % cols) * cell + (cell - im.width) // 2
        y = (i // cols) * cell + (cell - im.height) // 2
        canvas.paste(im, (x, y))
    return np.asarray(canvas)


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [0, 1] map (H, W) over image (H, W, 3) uint8 with the jet colour map -> uint8."""
    heat = cv2.applyColorMap(np.uint8(np.clip(heatmap, 0, 1) * 255), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(np.float32)
    return np.clip((1 - alpha) * image.astype(np.float32) + alpha * heat, 0, 255).astype(np.uint8)


def caption(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of image with `text` on a black band at the bottom left."""
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    draw.rectangle((0, im.height - 13, draw.textlength(text) + 6, im.height), fill=(0, 0, 0))
    draw.text((3, im.height - 12), text, fill=(255, 255, 255))
    return np.asarray(im)


def render_cam(image: np.ndarray, result: ImageCAM, class_names: Sequence[str],
               method: str) -> list[tuple[str, np.ndarray]]:
    """Pictures of one image's yolov3.cam.explain result: (name suffix, (H, W, 3) uint8),
    the EigenCAM first (if any), then one per detection.

    Per-detection overlays show that detection's map with only its box; the EigenCAM
    overlay shows every box.
    """
    pictures = []
    if result.eigencam is not None:
        d = result.detections
        pic = draw_boxes(overlay_heatmap(image, result.eigencam), d[:, :4], d[:, 5].astype(int), class_names,
                         scores=d[:, 4])
        name = result.eigen_layer_name or "+".join(result.eigen_layers)
        pictures.append(("eigencam", caption(pic, f"eigencam {name}")))
    for k, cam in enumerate(result.cams):
        pic = draw_boxes(overlay_heatmap(image, cam.heatmap), cam.box[None], [cam.label], class_names,
                         scores=[cam.score])
        name = class_names[cam.label] if 0 <= cam.label < len(class_names) else str(cam.label)
        pictures.append((f"det{k}_{name}_{method}", caption(pic, f"{method} {cam.layer_name or cam.layer}")))
    return pictures


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display). Imported here, once, not
    with the module: inference (the Detector, the app, a Space) draws boxes with this module
    and needs no matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(metrics_csv: str | Path, out_png: str | Path) -> None:
    """Loss and the three accuracies per epoch from a Lightning CSVLogger metrics.csv."""
    plt = _pyplot()

    rows = list(csv.DictReader(open(metrics_csv, newline="")))

    def series(key: str, x: str = "epoch") -> tuple[list[float], list[float]]:
        pts = [(float(r[x]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get(x) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    sx, sy = series("train/loss", "step")
    if sx:
        k = max(1, len(sy) // 50)
        smooth = np.convolve(sy, np.ones(k) / k, mode="valid")
        train_epochs = [float(r["epoch"]) for r in rows if r.get("train/loss") not in (None, "") and r.get("epoch")]
        steps_per_epoch = (max(sx) + 1) / (max(train_epochs) + 1) if train_epochs else 1.0
        ax1.plot(np.asarray(sx[k - 1:]) / steps_per_epoch, smooth, label="train loss (per step, smoothed)")
    for key, label in (("val/loss", "val loss"),):
        ex, ey = series(key)
        ax1.plot(np.asarray(ex) + 1, ey, "o-", label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, label in (("val/class_acc", "class"), ("val/noobj_acc", "no-object"), ("val/obj_acc", "object")):
        ex, ey = series(key)
        ax2.plot(np.asarray(ex) + 1, ey, "o-", label=f"val {label} accuracy")
    ex, ey = series("val/map_2010")
    if ex:
        ax2.plot(np.asarray(ex) + 1, 100 * np.asarray(ey), "s--", label="val VOC2010+ mAP@0.5")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("% (mAP x 100)")
    ax2.set_ylim(0, 100)
    ax2.legend(loc="lower right")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def plot_pr_curves(precision: Sequence[np.ndarray], recall: Sequence[np.ndarray], ap: Sequence[float],
                   class_names: Sequence[str], out_png: str | Path) -> None:
    """One small precision-recall panel per class (the raw curve and its VOC envelope)."""
    plt = _pyplot()

    n = len(class_names)
    cols = 5
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.3 * rows), sharex=True, sharey=True, squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= n:
            ax.axis("off")
            continue
        p, r = np.asarray(precision[c], float), np.asarray(recall[c], float)
        if len(p) and not np.isnan(r).all():
            envelope = np.maximum.accumulate(p[::-1])[::-1]  # best precision at this recall or beyond
            ax.plot(r, p, color="0.7", lw=1)
            ax.step(r, envelope, where="post", color="C0", lw=1.5)
        title = class_names[c] if np.isnan(ap[c]) else f"{class_names[c]}  AP {100 * ap[c]:.1f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fig.supxlabel("recall")
    fig.supylabel("precision")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def plot_ap_bars(ap_07: Sequence[float], ap_2010: Sequence[float], class_names: Sequence[str],
                 out_png: str | Path) -> None:
    """Per-class AP@0.5, VOC07 11-point and VOC2010+ all-point side by side, with the means."""
    plt = _pyplot()

    a07, a10 = 100 * np.asarray(ap_07, float), 100 * np.asarray(ap_2010, float)
    x = np.arange(len(class_names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(class_names) + 2), 3.6))
    ax.bar(x - 0.2, np.nan_to_num(a07), 0.4, label=f"VOC07 11-point (mAP {np.nanmean(a07):.1f})")
    ax.bar(x + 0.2, np.nan_to_num(a10), 0.4, label=f"VOC2010+ all-point (mAP {np.nanmean(a10):.1f})")
    ax.set_xticks(x, class_names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("AP@0.5 (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
