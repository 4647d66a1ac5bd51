"""The evaluation report of `yolov3 test` and the demo: one table, results.json, plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from yolov3.viz import plot_ap_bars, plot_pr_curves

ACCURACIES = (("class_acc", "class accuracy"), ("noobj_acc", "no-object accuracy"), ("obj_acc", "object accuracy"))
# map_course: the ERA V1 course's own figure (evaluation.course_ap), to compare with its 0.46-0.48
MAPS = (("map_07", "VOC07 mAP@0.5 (11-point)"), ("map_2010", "VOC2010+ mAP@0.5 (all-point)"),
        ("map_course", 'course-style "mAP"@0.5 (trapezoid, no envelope)'),
        ("coco_map", "COCO mAP@[.5:.95]"), ("coco_map_50", "COCO mAP@.5"))


def _num(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


NO_GROUND_TRUTH = ("this split has no ground truth (no box that is not difficult): every AP and the mAP are n/a, "
                   "not scores")


def summarise(metrics: dict, results: dict, class_names: Sequence[str]) -> dict:
    """Plain-JSON summary: logged test metrics ("test/class_acc", ...) and DetectionMAP results.
    "ground_truth" is the split's number of boxes that count as positives; with none, "note"
    says so (NO_GROUND_TRUTH), since the mAPs are then n/a."""
    voc = results["voc"]
    per_class = []
    for c, name in enumerate(class_names):
        row = {"class": name, "ap_07": _num(voc["ap_07"][c]), "ap_2010": _num(voc["ap_2010"][c]),
               "ap_course": _num(voc["ap_course"][c]), "positives": int(voc["num_positives"][c]),
               "detections": int(voc["num_detections"][c]), "true_positives": int(voc["num_tp"][c])}
        if "coco" in results:
            row["coco_ap"] = _num(results["coco"]["ap_50_95"][c])
        per_class.append(row)
    summary = {k: _num(metrics[f"test/{k}"]) for k, _ in ACCURACIES if f"test/{k}" in metrics}
    summary.update({k: _num(results[k]) for k, _ in MAPS if k in results})
    if "test/loss" in metrics:
        summary["loss"] = _num(metrics["test/loss"])
    report = {"summary": summary, "images": results["num_images"], "per_class": per_class,
              "ground_truth": sum(row["positives"] for row in per_class)}
    if report["ground_truth"] == 0:
        report["note"] = NO_GROUND_TRUTH
    return report


def print_report(report: dict, title: str = "Test split") -> None:
    """The summary table and the per-class AP table (rich)."""
    console = Console()
    s = report["summary"]
    table = Table(title=f"{title} ({report['images']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, name in ACCURACIES:
        if s.get(key) is not None:
            table.add_row(name, f"{s[key]:.2f} %")
    for key, name in MAPS:
        if key in s:
            table.add_row(name, "n/a" if s[key] is None else f"{100 * s[key]:.2f}")
    if s.get("loss") is not None:
        table.add_row("loss", f"{s['loss']:.3f}")
    console.print(table)
    if report.get("note"):
        console.print(f"[bold yellow]{report['note']}[/]")
    per = Table(title="Per-class AP@0.5 (%)")
    for col in ("class", "VOC07", "VOC2010+", "positives", "TP", "detections"):
        per.add_column(col, justify="left" if col == "class" else "right")

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f}"

    for row in report["per_class"]:
        per.add_row(row["class"], pct(row["ap_07"]), pct(row["ap_2010"]), str(row["positives"]),
                    str(row["true_positives"]), str(row["detections"]))
    console.print(per)


def write_report(report: dict, results: dict, class_names: Sequence[str], out_dir: str | Path) -> list[Path]:
    """results.json, pr_curves.png (one panel per class) and ap_per_class.png in out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "results.json", out / "pr_curves.png", out / "ap_per_class.png"]
    paths[0].write_text(json.dumps(report, indent=2))
    voc = results["voc"]
    plot_pr_curves(voc["precision"], voc["recall"], voc["ap_2010"], class_names, paths[1])
    plot_ap_bars(voc["ap_07"], voc["ap_2010"], class_names, paths[2])
    return paths
