"""The real-photo check: train on a few real VOC photos and test on the same photos.

    python bench/real_photos.py --root ../shared/data/voc2012_sample            # 60 photos
    python bench/real_photos.py --root /data/VOCdevkit --split 2007-test ... [LightningCLI overrides]

A recipe that cannot memorise 60 photos in 10 minutes on a 2-core CPU cannot learn VOC. The
bars (issue 11): VOC07 mAP@0.5 >= 0.60, object accuracy >= 80 %, no-object accuracy >= 95 %,
for a model of width <= 0.25. Prints the table and writes bench/results/real_photos.json
and the curves (curves.png) of the run under runs/real_photos/.
Extra arguments go to LightningCLI (e.g. --model.loss.objectness bce_iou).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import describe_machine, report

BARS = {"map_07": 0.60, "obj_acc": 80.0, "noobj_acc": 95.0}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="a VOCdevkit root (VOC<year>/ directly or under VOCdevkit/)")
    p.add_argument("--split", default="2012-train", help="split to train and test on (default 2012-train)")
    p.add_argument("--config", default=str(Path(__file__).parent.parent / "configs" / "real_photos.yaml"))
    p.add_argument("--out", default="bench/results/real_photos.json")
    args, overrides = p.parse_known_args(argv)

    from yolov3.commands.lightning_cli import load_cli
    from yolov3.viz import plot_training_curves

    cli = load_cli(args.config, ["--data.root", args.root, "--data.layout", "voc", "--data.train_split", args.split,
                                 "--data.val_split", args.split, "--data.test_split", args.split, *overrides])
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    if model.hparams.width > 0.25:
        raise SystemExit(f"the check is for width <= 0.25, got {model.hparams.width}")
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_s = time.perf_counter() - t0
    test = trainer.test(model, datamodule=dm, verbose=False)[0]  # the weights as training left them
    log_dir = Path(trainer.log_dir or "runs/real_photos")
    if (log_dir / "metrics.csv").exists():
        plot_training_curves(log_dir / "metrics.csv", log_dir / "curves.png")
    row = {"objectness_loss": model.loss.objectness, "objectness_prior": str(model.loss.objectness_prior),
           "width": model.hparams.width, "size": dm.image_size, "steps": trainer.global_step, "fit_min": fit_s / 60,
           "class_acc": test["test/class_acc"], "noobj_acc": test["test/noobj_acc"], "obj_acc": test["test/obj_acc"],
           "map_07": test["test/map_07"], "map_2010": test["test/map_2010"]}
    row["meets_bars"] = bool(row["map_07"] >= BARS["map_07"] and row["obj_acc"] >= BARS["obj_acc"]
                             and row["noobj_acc"] >= BARS["noobj_acc"] and fit_s <= 600)
    columns = [("objectness_loss", "objectness", ""), ("objectness_prior", "prior", ""), ("steps", "steps", "d"),
               ("fit_min", "fit min", ".1f"), ("class_acc", "class %", ".2f"), ("noobj_acc", "no-obj %", ".2f"),
               ("obj_acc", "obj %", ".2f"), ("map_07", "VOC07 mAP", ".4f"), ("map_2010", "VOC2010 mAP", ".4f"),
               ("meets_bars", "bars met", "")]
    report(f"Real-photo check: {len(dm.test_set)} images of {args.root} ({args.split}), trained and tested on them; "
           f"bars: VOC07 mAP >= {BARS['map_07']}, obj >= {BARS['obj_acc']:.0f} %, no-obj >= "
           f"{BARS['noobj_acc']:.0f} %, <= 10 min", columns, [row], args.out, machine=describe_machine(),
           images=len(dm.test_set), root=args.root, split=args.split, overrides=overrides,
           curves=str(log_dir / "curves.png"))
    return row


if __name__ == "__main__":
    main()
