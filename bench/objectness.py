"""Objectness dynamics on real photos: the loss forms and the objectness prior, side by side.

    python bench/objectness.py --root ../shared/data/voc2012_sample [--steps 400] [--every 25]

Trains the project's YOLOv3 (width 0.125, 256 px, batch 8, Adam + OneCycleLR to max_lr
0.005, horizontal flips only) on every image of a VOCdevkit split with each variant of
(objectness_loss, objectness_prior), everything else equal and seeded, and every `every`
steps measures the course's object / no-object / class accuracy on those same images; at the
end VOC07 and VOC2010+ mAP@0.5 on them. Prints the final table and writes
bench/results/objectness.json with the curves. Plain PyTorch (no Lightning) so the only
difference between the runs is the objectness term and the bias it starts from.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import describe_machine, report
from yolov3.boxes import xyxy_to_cxcywh
from yolov3.constants import DEFAULT_ANCHORS
from yolov3.data.augment import letterbox
from yolov3.data.devkit import VOCDevkit
from yolov3.loss import YoloLoss
from yolov3.metrics import CourseAccuracy, DetectionMAP
from yolov3.model import YOLOv3
from yolov3.postprocess import postprocess
from yolov3.targets import build_targets

VARIANTS = [("mse_iou", None), ("mse_iou", 0.01), ("bce_iou", None), ("bce_iou", 0.01)]


def load(root: str, split: str, size: int):
    """Letterboxed images (N, 3, S, S) float, per-image target rows (class, cx, cy, w, h as
    fractions) and ground truths in input pixels (for the mAP)."""
    src = VOCDevkit(root, split)
    images, rows, truths = [], [], []
    for i in range(len(src)):
        s, _ = letterbox(src[i], size)
        images.append(torch.from_numpy(s.image).permute(2, 0, 1).float() / 255)
        b = s.boxes.astype(np.float32)
        cxcywh = xyxy_to_cxcywh(torch.from_numpy(b)).numpy() / size
        rows.append(np.concatenate((s.labels[:, None].astype(np.float32), cxcywh), 1))
        truths.append({"boxes": b, "labels": s.labels, "difficult": s.difficult})
    return torch.stack(images), rows, truths


def batch_rows(rows, index, flip) -> torch.Tensor:
    out = []
    for b, (i, f) in enumerate(zip(index, flip)):
        r = rows[i].copy()
        if f:
            r[:, 1] = 1.0 - r[:, 1]
        out.append(np.concatenate((np.full((len(r), 1), b, np.float32), r), 1))
    return torch.from_numpy(np.concatenate(out))


def run(variant, images, rows, truths, args) -> dict:
    form, prior = variant
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    anchors = torch.tensor(DEFAULT_ANCHORS)
    model = YOLOv3(num_classes=20, width=args.width)
    if prior is not None:
        model.init_objectness_bias(prior)
    loss_fn = YoloLoss(objectness_loss=form)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr / 100, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.125,
                                                div_factor=100, final_div_factor=100, anneal_strategy="linear")
    n, curve, t0 = len(images), [], time.perf_counter()

    @torch.no_grad()
    def measure(final: bool) -> dict:
        model.eval()
        acc, evaluator = CourseAccuracy(0.05), DetectionMAP(20)
        for s in range(0, n, 20):
            idx = list(range(s, min(s + 20, n)))
            out = model(images[idx])
            acc.update(out, build_targets(batch_rows(rows, idx, [False] * len(idx)), len(idx),
                                          [o.shape[2:4] for o in out], anchors))
            if final:
                dets = postprocess(out, anchors, images.shape[-2:], 0.005, 0.45, 100, max_candidates=1000)
                evaluator.update(dets, [truths[i]["boxes"] for i in idx], [truths[i]["labels"] for i in idx],
                                 [truths[i]["difficult"] for i in idx], idx)
        model.train()
        r = {k: float(v) for k, v in acc.compute().items()}
        if final:
            voc = evaluator.compute()
            r.update(map_07=voc["map_07"], map_2010=voc["map_2010"])
        return r

    model.train()
    for step in range(1, args.steps + 1):
        index = rng.choice(n, args.batch, replace=False)
        flip = rng.random(args.batch) < 0.5
        x = images[index].clone()
        x[flip] = x[flip].flip(-1)
        out = model(x)
        loss, _ = loss_fn(out, build_targets(batch_rows(rows, index, flip), args.batch, [o.shape[2:4] for o in out],
                                             anchors), anchors)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.every == 0 or step == args.steps:
            curve.append({"step": step, **measure(final=step == args.steps)})
    last = curve[-1]
    print(f"{form} prior {prior}: obj {last['obj_acc']:.2f} % after {args.steps} steps "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"objectness_loss": form, "objectness_prior": str(prior), **last, "curve": curve}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a VOCdevkit root")
    p.add_argument("--split", default="2012-train")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--out", default="bench/results/objectness.json")
    args = p.parse_args()
    images, rows, truths = load(args.root, args.split, args.size)
    results = [run(v, images, rows, truths, args) for v in VARIANTS]
    columns = [("objectness_loss", "objectness", ""), ("objectness_prior", "prior", ""), ("class_acc", "class %", ".2f"),
               ("noobj_acc", "no-obj %", ".2f"), ("obj_acc", "obj %", ".2f"), ("map_07", "VOC07 mAP", ".4f"),
               ("map_2010", "VOC2010 mAP", ".4f")]
    report(f"Objectness on {len(images)} photos of {args.root} ({args.split}), trained and measured on them, "
           f"{args.steps} steps", columns, results, args.out, machine=describe_machine(),
           settings={k: v for k, v in vars(args).items() if k != "out"})


if __name__ == "__main__":
    main()
