"""The demo end to end on a tiny synthetic set: every file of the report is written."""

import json
import sys

from yolov3.commands.cli import main


def test_demo_writes_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    config = __import__("pathlib").Path(__file__).parent.parent / "configs" / "demo.yaml"
    args = ["demo", "--config", str(config), "--data-dir", "data/synthetic", "--train", "24", "--test", "8",
            "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--data.image_size", "64",
            "--data.val_fraction", "0.25", "--out", "report"]
    main(args)
    main(args)  # a second run reuses the data and replaces the report and checkpoint
    run = tmp_path / "runs" / "demo"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    out = tmp_path / "report"  # the report may live apart from the logger's run folder
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_images"] == 8 and metrics["train_images"] == 18
    assert set(metrics["test"]) == {"class_acc", "noobj_acc", "obj_acc", "loss", "map_07", "map_2010", "coco_map",
                                    "coco_map_50"}
    assert "synthetic" in metrics["data"]
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 8 and len(results["per_class"]) == 20
    # the two files report the same evaluation
    for key in ("map_07", "map_2010", "coco_map"):
        assert abs(metrics["test"][key] - results["summary"][key]) < 1e-6, key
    # and the mAP is the mean of the per-class APs over the classes that have objects
    aps = [c["ap_07"] for c in results["per_class"] if c["positives"] > 0]
    assert aps and abs(sum(aps) / len(aps) - results["summary"]["map_07"]) < 1e-6
    detections = json.loads((out / "detect" / "detections.json").read_text())
    assert isinstance(detections, list) and len(list((out / "detect").glob("*.jpg"))) == 4
    # Grad-CAM / EigenCAM overlays of the first three test images (yolov3 cam)
    cam = json.loads((out / "cam" / "cam.json").read_text())
    assert len(list((out / "cam").glob("*_eigencam.png"))) == 3
    assert len(list((out / "cam").glob("*_det*_gradcam.png"))) == len(cam)
    assert all(abs(r["target"] - r["score"]) <= 2e-6 for r in cam)
    assert not (out / "cam" / "contact_sheet.png").exists()
    # the app's examples: the first four test images, byte for byte
    examples = sorted((out / "examples").iterdir())
    assert [p.name for p in examples] == sorted(p.name for p in (out / "detect").glob("*.jpg"))
    assert all(p.read_bytes() == (tmp_path / "data/synthetic/images" / p.name).read_bytes() for p in examples)
    for name in ("curves.png", "predictions.png", "metrics.json", "pr_curves.png", "ap_per_class.png", "cam_sheet.png"):
        assert (out / name).stat().st_size > 0, name
    assert (run / "metrics.csv").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "class accuracy" in printed and "no-object accuracy" in printed and "VOC07 mAP@0.5" in printed
