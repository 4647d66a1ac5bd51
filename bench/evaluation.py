"""End-to-end VOC evaluation cost on this machine: decode + NMS + VOC AP (2007 and 2010).

Builds realistic raw head outputs for a VOC2007-test-sized split (4,952 images at 416, 20
classes, 10,647 cells per image): around each of ~2.4 ground-truth boxes per image (15%
difficult) the cells the object covers, on every scale and anchor, get jittered boxes and a
confidence that falls with the distance from the object's centre, a few vote for a wrong class,
and a few stray false positives are added: about 300 cells per image score above 0.05, in
clusters, so NMS has real work; every other cell scores below 0.01. The images go through the
validation path (select_candidates -> nms_per_image -> DetectionMAP.update, then one
compute() for AP 2007 and 2010) in chunks as a validation loop would see them, and each stage
is timed. Data generation is not timed.

A deliberately naive baseline runs on a subset in the same process: decode_heads, then Python
lists thresholded, sorted and suppressed box by box, and a per-detection AP loop, both with a
small-tensor IoU per pair as in the course's code. Its time is extrapolated linearly to the
full split (a lower bound for the naive AP, whose per-detection cost grows with the split), and
its detections and APs are checked equal to ours.

Prints a table and writes bench/results/evaluation.json.

    python bench/evaluation.py [--images 4952] [--chunk 64] [--naive-images 100]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from yolov3.boxes import decode_heads
from yolov3.postprocess import nms_per_image, select_candidates
from yolov3.constants import DEFAULT_ANCHORS, STRIDES
from yolov3.coco_eval import coco_map
from yolov3.metrics import DetectionMAP

SIZE, NUM_CLASSES = 416, 20


# --------------------------------------------------------------------------------------------
# Synthetic data (not timed)
# --------------------------------------------------------------------------------------------


def make_background(batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Per scale (B, 3, g, g, 25) raw heads whose every cell scores below 0.05."""
    outs = []
    for stride in STRIDES:
        g = SIZE // stride
        t = torch.randn(batch, 3, g, g, 5 + NUM_CLASSES, generator=gen)
        t[..., 0] = torch.rand(batch, 3, g, g, generator=gen) * 5 - 9.5  # sigmoid <= 0.007
        outs.append(t)
    return outs


def make_ground_truth(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One image's boxes: on average 2.4 objects, 15% difficult, sides 16 to 350 pixels."""
    n = min(1 + rng.poisson(1.4), 12)
    side = np.exp(rng.uniform(np.log(16), np.log(350), (n, 2)))
    centre = rng.uniform(0, SIZE, (n, 2))
    boxes = np.clip(np.concatenate((centre - side / 2, centre + side / 2), 1), 0, SIZE)
    return {"boxes": boxes, "labels": rng.integers(0, NUM_CLASSES, n), "difficult": rng.random(n) < 0.15}


def plant_objects(outs: list[torch.Tensor], gts: list[dict], rng: np.random.Generator) -> list[tuple]:
    """Write candidate cells around every ground truth (and a few strays) into outs in place.

    Returns what was overwritten, so restore() can undo it for the next chunk.
    """
    anchors = np.asarray(DEFAULT_ANCHORS) * SIZE
    saved = []
    for s, (out, stride) in enumerate(zip(outs, STRIDES)):
        g = SIZE // stride
        cells = []  # (image, anchor, row, col, cx, cy, w, h, class, objectness logit)
        for b, gt in enumerate(gts):
            for (x1, y1, x2, y2), cls in zip(gt["boxes"], gt["labels"]):
                cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
                col, row = int(cx // stride), int(cy // stride)
                radius = int(np.clip(round(0.35 * min(w, h) / stride), 0, 4))  # cells the object covers
                for a in range(3):
                    for r in range(max(row - radius, 0), min(row + radius + 1, g)):
                        for c in range(max(col - radius, 0), min(col + radius + 1, g)):
                            if rng.random() < 0.8:  # a ragged cluster, not a full square
                                # confidence falls with the distance from the object's centre cell
                                dist = max(abs(r - row), abs(c - col))
                                cells.append((b, a, r, c, cx, cy, w, h, cls, 2.5 - dist + rng.normal(0, 0.7)))
            for _ in range(rng.integers(2, 8)):  # stray false positives
                cells.append((b, rng.integers(3), rng.integers(g), rng.integers(g), rng.uniform(0, SIZE),
                              rng.uniform(0, SIZE), rng.uniform(20, 200), rng.uniform(20, 200),
                              rng.integers(NUM_CLASSES), rng.uniform(-2.5, 0.0)))
        if not cells:
            continue
        arr = np.array(cells, dtype=np.float64)
        b, a, r, c = (torch.from_numpy(arr[:, i].astype(np.int64)) for i in range(4))
        saved.append((s, b, a, r, c, out[b, a, r, c].clone()))
        k = len(arr)
        cx = arr[:, 4] + rng.normal(0, 0.05, k) * arr[:, 6]
        cy = arr[:, 5] + rng.normal(0, 0.05, k) * arr[:, 7]
        w = arr[:, 6] * np.exp(rng.normal(0, 0.12, k))
        h = arr[:, 7] * np.exp(rng.normal(0, 0.12, k))
        fx = np.clip(cx / stride - arr[:, 3], 0.02, 0.98)
        fy = np.clip(cy / stride - arr[:, 2], 0.02, 0.98)
        row = np.zeros((k, 5 + NUM_CLASSES))
        row[:, 0] = arr[:, 9]
        row[:, 1], row[:, 2] = np.log(fx / (1 - fx)), np.log(fy / (1 - fy))
        row[:, 3] = np.log(w / anchors[s, arr[:, 1].astype(int), 0])
        row[:, 4] = np.log(h / anchors[s, arr[:, 1].astype(int), 1])
        row[:, 5:] = rng.normal(0, 1, (k, NUM_CLASSES))
        cls = arr[:, 8].astype(int)
        wrong = rng.random(k) < 0.05 # some cells vote for another class
        cls[wrong] = rng.integers(0, NUM_CLASSES, wrong.sum())
        row[np.arange(k), 5 + cls] += 4.0
        out[b, a, r, c] = torch.from_numpy(row).float()
    return saved


def restore(outs: list[torch.Tensor], saved: list[tuple]) -> None:
    for s, b, a, r, c, values in saved:
        outs[s][b, a, r, c] = values


# --------------------------------------------------------------------------------------------
# Deliberately naive baseline: per-box Python NMS and per-detection Python AP
# --------------------------------------------------------------------------------------------


def iou_tensor(a: list[float], b: list[float]) -> float:
    """IoU of two xyxy boxes through small tensors, as per-pair code usually does it."""
    a, b = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    inter = (torch.minimum(a[2:], b[2:]) - torch.maximum(a[:2], b[:2])).clamp(min=0).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter
    return float(inter / union)


def naive_postprocess(outputs, anchors, conf: float, iou_thr: float, max_det: int) -> list[list]:
    """decode_heads, then Python lists: threshold, sort, pop the best, filter the rest."""
    boxes, obj, cls_prob = decode_heads(outputs, anchors, (SIZE, SIZE))
    cls_score, cls_idx = cls_prob.max(-1)
    scores = obj * cls_score
    results = []
    for bx, sc, cl in zip(boxes.tolist(), scores.tolist(), cls_idx.tolist()):
        cand = [(s, i, c, b) for i, (b, s, c) in enumerate(zip(bx, sc, cl)) if s > conf]
        cand.sort(key=lambda t: -t[0])  # stable: ties keep the lower cell index
        kept = []
        while cand:
            best = cand.pop(0)
            kept.append(best)
            cand = [t for t in cand if t[2] != best[2] or iou_tensor(t[3], best[3]) <= iou_thr]
        results.append([[*b, s, c] for s, _, c, b in kept[:max_det]])
    return results


def naive_ap(detections: list[list], gts: list[dict], iou_thr: float = 0.5) -> tuple[list, list]:
    """Per class, per detection in score order: scan its image's boxes, IoU pair by pair."""
    ap07, ap10 = [], []
    for c in range(NUM_CLASSES):
        dets = [(d[4], i, d[:4]) for i, image in enumerate(detections) for d in image if int(d[5]) == c]
        dets.sort(key=lambda t: -t[0])
        taken = {i: [False] * len(g["labels"]) for i, g in enumerate(gts)}
        npos = sum(int(lab == c and not dif) for g in gts for lab, dif in zip(g["labels"], g["difficult"]))
        tp, fp = [], []
        for _, i, box in dets:
            best, best_j = -math.inf, -1
            for j, (gbox, lab) in enumerate(zip(gts[i]["boxes"].tolist(), gts[i]["labels"])):
                if lab == c:
                    ov = iou_tensor(box, gbox)
                    if ov > best:
                        best, best_j = ov, j
            if best > iou_thr and gts[i]["difficult"][best_j]:
                continue
            hit = best > iou_thr and not taken[i][best_j]
            if hit:
                taken[i][best_j] = True
            tp.append(int(hit))
            fp.append(int(not hit))
        if npos == 0:
            ap07.append(float("nan"))
            ap10.append(float("nan"))
            continue
        rec, prec, t, f = [], [], 0, 0
        for a, b in zip(tp, fp):
            t, f = t + a, f + b
            rec.append(t / npos)
            prec.append(t / (t + f))
        ap07.append(sum(max([p for r, p in zip(rec, prec) if r >= k / 10], default=0.0) for k in range(11)) / 11)
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        ap10.append(sum((mrec[k + 1] - mrec[k]) * mpre[k + 1] for k in range(len(mrec) - 1) if mrec[k + 1] != mrec[k]))
    return ap07, ap10


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def run_ours(outs, gts, ids, anchors, evaluator, args, timers) -> list[torch.Tensor]:
    t0 = time.perf_counter()
    cand = select_candidates(outs, anchors, (SIZE, SIZE), args.conf, args.score_mode)
    t1 = time.perf_counter()
    dets = nms_per_image(cand, len(gts), NUM_CLASSES, args.iou, args.max_det)
    t2 = time.perf_counter()
    evaluator.update(dets, [g["boxes"] for g in gts], [g["labels"] for g in gts], [g["difficult"] for g in gts], ids)
    t3 = time.perf_counter()
    timers["decode"] += t1 - t0
    timers["nms"] += t2 - t1
    timers["ap"] += t3 - t2
    timers["candidates"] += cand.scores.numel()
    timers["detections"] += sum(len(d) for d in dets)
    return dets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4952)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--naive-images", type=int, default=100)
    p.add_argument("--conf", type=float, default=0.05)
    p.add_argument("--iou", type=float, default=0.45)
    p.add_argument("--max-det", type=int, default=100)
    p.add_argument("--score-mode", default="obj_cls")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-coco", action="store_true", help="skip the COCO mAP timing")
    p.add_argument("--out", default="bench/results/evaluation.json")
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]  # other jobs on the machine slow every stage down
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    anchors = torch.tensor(DEFAULT_ANCHORS)
    background = make_background(args.chunk, gen)

    # ours over the whole split
    evaluator = DetectionMAP(NUM_CLASSES)
    timers = dict.fromkeys(("decode", "nms", "ap", "candidates", "detections"), 0.0)
    with torch.inference_mode():
        for start in range(0, args.images, args.chunk):
            n = min(args.chunk, args.images - start)
            gts = [make_ground_truth(rng) for _ in range(n)]
            outs = [o[:n] for o in background]
            saved = plant_objects(outs, gts, rng)
            run_ours(outs, gts, range(start, start + n), anchors, evaluator, args, timers)
            restore(outs, saved)
        t0 = time.perf_counter()
        result = evaluator.compute()
        timers["ap"] += time.perf_counter() - t0
    ours_total = timers["decode"] + timers["nms"] + timers["ap"]
    coco_s, coco = None, None
    if not args.no_coco:
        t0 = time.perf_counter()
        coco = coco_map(evaluator.arrays(), NUM_CLASSES)
        coco_s = time.perf_counter() - t0

    # naive against ours on a subset
    n = args.naive_images
    sub_bg = make_background(n, gen)
    gts = [make_ground_truth(rng) for _ in range(n)]
    plant_objects(sub_bg, gts, rng)
    sub_timers = dict.fromkeys(timers, 0.0)
    sub_eval = DetectionMAP(NUM_CLASSES)
    with torch.inference_mode():
        ours_sub = run_ours(sub_bg, gts, range(n), anchors, sub_eval, args, sub_timers)
        t0 = time.perf_counter()
        sub_result = sub_eval.compute()["voc"]
        sub_timers["ap"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        naive_dets = naive_postprocess(sub_bg, anchors, args.conf, args.iou, args.max_det)
        t_naive_nms = time.perf_counter() - t0
        t0 = time.perf_counter()
        n07, n10 = naive_ap(naive_dets, gts)
        t_naive_ap = time.perf_counter() - t0
    same_dets = all(len(a) == len(b) and (len(a) == 0 or torch.allclose(a.double(), torch.tensor(b, dtype=torch.float64), atol=1e-3))
                    for a, b in zip(ours_sub, naive_dets))
    same_ap = np.allclose(sub_result["ap_07"], n07, equal_nan=True) and np.allclose(sub_result["ap_2010"], n10, equal_nan=True)

    scale = args.images / n
    rows = [
        {"stage": "decode + threshold", "ours_s": timers["decode"]},
        {"stage": "NMS", "ours_s": timers["nms"]},
        {"stage": "decode + threshold + NMS", "ours_s": timers["decode"] + timers["nms"], "naive_s": t_naive_nms},
        {"stage": "VOC AP 07 + 2010", "ours_s": timers["ap"], "naive_s": t_naive_ap},
        {"stage": "total", "ours_s": ours_total, "naive_s": t_naive_nms + t_naive_ap},
    ]
    if coco_s is not None:
        rows.append({"stage": "COCO mAP (faster_coco_eval, extra)", "ours_s": coco_s})
    for r in rows:
        r["ours_s"] = round(r["ours_s"], 3)
        if "naive_s" in r:
            r["naive_subset_s"] = round(r.pop("naive_s"), 3)
            r["naive_extrapolated_s"] = round(r["naive_subset_s"] * scale, 1)
            r["speedup"] = round(r["naive_extrapolated_s"] / max(r["ours_s"], 1e-9), 1)

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"{torch.get_num_threads()} torch threads, load {load_before:.1f} at start")
    table = Table(title=f"VOC evaluation, {args.images} images at {SIZE}, {NUM_CLASSES} classes, CPU ({machine})")
    for col in ("stage", f"ours, {args.images} images (s)", f"naive, {n} images (s)", "naive extrapolated (s)", "speed-up"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for r in rows:
        table.add_row(r["stage"], f"{r['ours_s']:.2f}", *(f"{r[k]}" if k in r else "-" for k in
                      ("naive_subset_s", "naive_extrapolated_s", "speedup")))
    console = Console(width=120)
    console.print(table)
    console.print(f"candidates/image {timers['candidates'] / args.images:.0f}, detections/image "
                  f"{timers['detections'] / args.images:.1f}, mAP07 {result['map_07']:.4f}, "
                  f"mAP2010 {result['map_2010']:.4f}"
                  + (f", COCO mAP@[.5:.95] {coco['map_50_95']:.4f} mAP@.5 {coco['map_50']:.4f}" if coco else "")
                  + f"; naive subset agrees: detections {same_dets}, AP {same_ap}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine, "device": "cpu", "images": args.images, "chunk": args.chunk, "size": SIZE,
        "classes": NUM_CLASSES, "conf_threshold": args.conf, "iou_threshold": args.iou, "max_detections": args.max_det,
        "score_mode": args.score_mode, "naive_images": n,
        "candidates_per_image": timers["candidates"] / args.images,
        "detections_per_image": timers["detections"] / args.images,
        "map_07": result["map_07"], "map_2010": result["map_2010"],
        "coco_map_50_95": coco["map_50_95"] if coco else None, "coco_map_50": coco["map_50"] if coco else None,
        "naive_agrees": {"detections": bool(same_dets), "ap": bool(same_ap)}, "rows": rows,
    }, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
