"""`yolov3 demo`: synthetic data -> CPU training -> test -> a report under runs/demo.

The same LightningCLI config machinery as `yolov3 fit`, driven in-process so one command
shows the whole job and writes the checkpoint, metrics.json, curves.png and
predictions.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table

from yolov3.commands.cam import run_cam
from yolov3.commands.detect import run_detect
from yolov3.commands.lightning_cli import load_cli
from yolov3.commands.report import ACCURACIES, summarise, write_report
from yolov3.data.synthetic import generate
from yolov3.detector import Detector
from yolov3.fit_checkpoints import check_monitors, fit_checkpoints
from yolov3.viz import draw_boxes, image_grid, plot_training_curves

# The bars the mission sets for reduced-width models (class, no-object, object accuracy).
BARS = {"class_acc": 75.0, "noobj_acc": 95.0, "obj_acc": 70.0}


def run_demo(config: str, data_dir: str = "data/synthetic", n_train: int = 1600, n_test: int = 200,
             seed: int = 0, out_dir: str = "runs/demo", overrides: list[str] | None = None) -> dict:
    """Run the demo; `overrides` are extra LightningCLI arguments (e.g. --trainer.max_epochs 2).

    It tests, draws and explains the best checkpoint of its fit; a fit without one (no
    validation ran, e.g. --data.val_fraction 0) says so and why, and the demo uses its
    last.ckpt instead (metrics.json: "checkpoint_kind" "last", "checkpoint_note").
    SystemExit naming the setting when the config writes no checkpoint or monitors a metric
    the model does not log."""
    t0 = time.perf_counter()
    console = Console()
    data = Path(data_dir)
    if not (data / "train.csv").exists():
        console.print(f"[bold]1/4[/] writing {n_train}+{n_test} synthetic images to {data} (seed {seed})")
        generate(data, n_train, n_test, seed=seed)
    else:
        console.print(f"[bold]1/4[/] using the synthetic set already in {data}")
    t_data = time.perf_counter() - t0

    cli = load_cli(config, ["--data.root", str(data), *(overrides or [])])
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    try:
        check_monitors(trainer, model.evaluation.map_every_n_epochs)
    except ValueError as exc:
        raise SystemExit(f"yolov3 demo: {exc}") from None
    if not trainer.checkpoint_callbacks:
        raise SystemExit("yolov3 demo: the trainer writes no checkpoint (trainer.enable_checkpointing is false), "
                         "and the demo tests, draws and explains the checkpoint its fit writes")
    console.print(f"[bold]2/4[/] training width {model.hparams.width} for {trainer.max_epochs} epochs "
                  f"on {trainer.accelerator.__class__.__name__.replace('Accelerator', '')}")
    t1 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    t_fit = time.perf_counter() - t1

    # the best checkpoint; without one (no validation ran: yolov3.fit_checkpoints says why), the last
    saved = fit_checkpoints(trainer)
    best = saved.path
    if best is None:
        raise SystemExit(f"yolov3 demo: the fit wrote no checkpoint to test ({saved.why_no_best or 'none saved'})")
    if saved.best:
        console.print("[bold]3/4[/] testing the best checkpoint on the held-out synthetic test split")
    else:
        console.print(f"[bold]3/4[/] no best checkpoint ({saved.why_no_best}): testing the last one, {best} (the "
                      "weights as training left them), on the held-out synthetic test split")
    t2 = time.perf_counter()
    test = trainer.test(model, datamodule=dm, ckpt_path=best, verbose=False)[0]
    t_test = time.perf_counter() - t2

    console.print("[bold]4/4[/] writing the report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = {k: float(test[f"test/{k}"]) for k in ("class_acc", "noobj_acc", "obj_acc")}
    maps = {k: float(test[f"test/{k}"]) for k in ("map_07", "map_2010", "coco_map", "coco_map_50")}
    metrics = {
        "data": "synthetic (yolov3 synth), not PASCAL VOC",
        "test_images": len(dm.test_set),
        "train_images": len(dm.train_set),
        "test": {**figures, **maps, "loss": float(test["test/loss"])},
        "bars": BARS,
        "meets_bars": all(figures[k] > v for k, v in BARS.items()),
        "width": model.hparams.width,
        "image_size": dm.image_size,
        "epochs": trainer.current_epoch,
        "checkpoint": best,
        "checkpoint_kind": "best" if saved.best else "last",
        **({} if saved.best else {"checkpoint_note": f"no best checkpoint: {saved.why_no_best}"}),
        "seconds": {"data": round(t_data, 1), "fit": round(t_fit, 1), "test": round(t_test, 1)},
    }
    write_report(summarise(test, model.test_results, dm.class_names), model.test_results, dm.class_names, out)
    _report_pictures(best, dm, out, Path(trainer.log_dir or out) / "metrics.csv")
    metrics["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    table = Table(title="Synthetic test split (yolov3 demo)")
    for col in ("metric", "value", "bar"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key, name in ACCURACIES:
        ok = figures[key] > BARS[key]
        table.add_row(name, f"{figures[key]:.2f} %", f"{'[green]>' if ok else '[red]<='} {BARS[key]:.0f} %")
    for key, name in (("map_07", "VOC07 mAP@0.5"), ("map_2010", "VOC2010+ mAP@0.5"), ("coco_map", "COCO mAP@[.5:.95]")):
        table.add_row(name, f"{100 * maps[key]:.2f}", "")
    table.add_row("loss", f"{metrics['test']['loss']:.3f}", "")
    console.print(table)
    console.print(f"wrote {out}/metrics.json, results.json, curves.png, predictions.png, pr_curves.png, "
                  f"ap_per_class.png, detect/, cam/, cam_sheet.png, examples/; {metrics['checkpoint_kind']} "
                  f"checkpoint {best}; "
                  f"{metrics['seconds']['total']:.0f} s in all")
    return metrics


def _report_pictures(checkpoint: str, dm, out: Path, metrics_csv: Path, n: int = 8) -> None:
    if metrics_csv.exists():
        plot_training_curves(metrics_csv, out / "curves.png")
    detector = Detector.from_checkpoint(checkpoint, class_names=dm.class_names, size=dm.image_size)
    source = dm.test_set.source
    samples = [source[i] for i in range(min(n, len(source)))]
    dets = detector([s.image for s in samples])
    tiles = []
    for s, d in zip(samples, dets):
        img = draw_boxes(s.image, s.boxes, s.labels, dm.class_names, truth=True)
        tiles.append(draw_boxes(img, d[:, :4], d[:, 5].astype(int), dm.class_names, scores=d[:, 4]))
    Image.fromarray(image_grid(tiles, cols=4, cell=320)).save(out / "predictions.png")
    # the app's example images (`yolov3 app` offers runs/demo/examples): test images as they are
    examples = out / "examples"
    shutil.rmtree(examples, ignore_errors=True)
    examples.mkdir(parents=True)
    for s in samples[:4]:
        shutil.copy2(s.path, examples / Path(s.path).name)
    # what `yolov3 detect` writes, on the first test images (the demo's own folder: an earlier run's goes)
    shutil.rmtree(out / "detect", ignore_errors=True)
    run_detect([str(s.path) for s in samples[:4]], checkpoint, str(out / "detect"), size=dm.image_size)
    # what `yolov3 cam` writes: Grad-CAM of each detection, EigenCAM of each image
    shutil.rmtree(out / "cam", ignore_errors=True)  # no overlays left over from an earlier run
    run_cam([str(s.path) for s in samples[:3]], checkpoint, str(out / "cam"), size=dm.image_size,
            max_detections=4, sheet_path=out / "cam_sheet.png")


def command(args: argparse.Namespace) -> None:
    run_demo(args.config, data_dir=args.data_dir, n_train=args.train, n_test=args.test, seed=args.seed,
             out_dir=args.out, overrides=args.overrides)
