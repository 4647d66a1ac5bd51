"""int8 export (ONNX Runtime static quantisation) and scoring any Detector on a labelled split,
with the trained fixture on a dataset of its own kind of images written to disk."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (it is in constraints.txt)")

from tiny_detector import NUM_CLASSES  # noqa: E402

from yolov3.commands.cli import main  # noqa: E402
from yolov3.deploy import calibration_images, evaluate_detector, open_images, spread  # noqa: E402
from yolov3.detector import Detector  # noqa: E402
from yolov3.onnx_backend import quantize_int8  # noqa: E402

NAMES = ["disc", "square", "triangle"]
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def int8_export(trained_weights, shapes_root, tmp_path_factory):
    """`yolov3 export --int8` of the fixture, calibrated on 16 training images and scored on
    the test split: (path, what it printed)."""
    out = tmp_path_factory.mktemp("int8") / "shapes.int8.onnx"
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["export", "--weights", str(trained_weights), "--out", str(out), "--int8", "--calib", "16",
              "--data", str(shapes_root)])
    return out, printed.getvalue()


def test_evaluate_detector_gives_what_yolov3_test_gives(trained_detector, shapes_root, tmp_path, monkeypatch):
    """The scoring behind the int8 before/after is training's evaluation: the same VOC07 mAP
    as `yolov3 test` for the same weights and split."""
    from yolov3.lit import YoloLitModule

    module = YoloLitModule(num_classes=NUM_CLASSES, width=0.125)
    module.model.load_state_dict(trained_detector.model.state_dict())
    ckpt = tmp_path / "shapes.ckpt"
    import lightning

    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    main(["test", "--config", str(DEMO), "--data.root", str(shapes_root), "--data.class_names", json.dumps(NAMES),
          "--data.image_size", "96", "--data.cache_images", "false", "--model.width", "0.125",
          "--ckpt_path", str(ckpt)])
    report = json.loads((tmp_path / "runs" / "demo" / "test" / "version_0" / "results.json").read_text())
    ours = evaluate_detector(Detector.load(ckpt, size=96, class_names=NAMES),
                             open_images([str(shapes_root)], None, "test", NAMES))
    assert ours["num_images"] == report["images"] == 24
    assert ours["split"] == f"{shapes_root} test.csv"
    assert report["summary"]["map_07"] > 0.5  # the fixture has learned: a comparison of real numbers
    assert abs(ours["map_07"] - report["summary"]["map_07"]) < 1e-4
    assert abs(ours["map_2010"] - report["summary"]["map_2010"]) < 1e-4


def test_int8_export_reports_before_and_after(int8_export, trained_weights):
    out, printed = int8_export
    m = re.search(r"VOC07 mAP on (.+) \((\d+) images\): float32 ([\d.]+), int8 ([\d.]+) \(([-+][\d.]+) points\)",
                  printed)
    assert m, printed
    assert m.group(1).endswith("test.csv") and m.group(2) == "24"
    fp32, int8 = float(m.group(3)) / 100, float(m.group(4)) / 100  # printed in percent, as `yolov3 test` does
    assert abs(100 * (int8 - fp32) - float(m.group(5))) < 0.011
    assert fp32 > 0.5
    assert int8 >= fp32 - 0.05, printed  # the bar is 1 point on the demo model; this is a tiny one
    assert "calibrated on 16 images of" in printed and "train.csv" in printed
    detector = Detector.load(out)
    assert (detector.backend, detector.precision) == ("onnxruntime", "int8")
    meta = detector.model.metadata
    assert meta["calibration_images"] == "16" and meta["eval_split"].endswith("test.csv")
    assert abs(float(meta["map_07_fp32"]) - fp32) < 1e-4 and abs(float(meta["map_07_int8"]) - int8) < 1e-4
    # what the float32 export records is kept (settings, anchors, class names)
    source = Detector.load(trained_weights)
    assert detector.class_names == source.class_names and detector.size == source.size
    torch.testing.assert_close(detector.anchors, source.anchors.cpu())
    assert detector.num_parameters == source.num_parameters


def test_int8_model_is_integer_and_smaller(int8_export, trained_weights):
    import onnx

    out, _ = int8_export
    fp32 = Detector.load(trained_weights).save_onnx()
    assert out.stat().st_size < 0.5 * len(fp32)  # int8 weights: a quarter, plus scales and the float heads
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_detections_stay_close_to_float32(int8_export, trained_detector, shapes_root):
    out, _ = int8_export
    images = [np.asarray(Image.open(p)) for p in sorted((shapes_root / "images").glob("test_*.png"))[:12]]
    fp32 = trained_detector.configured(conf_threshold=0.25)(images)
    int8 = Detector.load(out, conf_threshold=0.25)(images)
    matched = total = 0
    for a, b in zip(fp32, int8):
        for row in a:
            total += 1
            same = b[b[:, 5] == row[5]]
            if len(same) and np.abs(same[:, :4] - row[:4]).max(axis=1).min() < 3.0:  # pixels
                matched += 1
    assert total >= 12 and matched >= 0.9 * total


def test_int8_export_from_bare_images_calibrates_without_scoring(trained_weights, shapes_root, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    main(["export", "--weights", str(trained_weights), "--out", str(out), "--int8", "--calib", "4",
          "--data", str(shapes_root / "images")])
    printed = capsys.readouterr().out
    assert "calibrated on 4 images" in printed and "VOC07 mAP on" not in printed
    assert "holds no labels, so float32 and int8 are not scored" in printed
    assert Detector.load(out).precision == "int8"


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/m.safetensors", "--int8", "--data", "{root}"], "--int8 writes an ONNX model"),
    (["--out", "{tmp}/m.onnx", "--int8"], "--int8 needs calibration images"),
    (["--out", "{tmp}/m.onnx", "--int8", "--data", "{root}", "--calib", "0"], "at least one image"),
    (["--out", "{tmp}/m.onnx", "--int8", "--data", "{root}", "--calib-split", "nope.csv"], "nope.csv"),
    (["--out", "{tmp}/m.onnx", "--int8", "--data", "{root}/images", "--calib-split", "train.csv"],
     "needs a dataset root"),
    (["--out", "{tmp}/m.onnx", "--int8", "--data", "{root}/images", "--eval-split", "test.csv"],
     "--eval-split needs a dataset root"),
    (["--out", "{tmp}/m.onnx", "--data", "{root}", "--calib", "8"], "--data, --calib apply to --int8 only"),
])
def test_int8_export_refuses_bad_arguments_with_a_message(trained_weights, shapes_root, tmp_path, args, message):
    args = [a.format(tmp=tmp_path, root=shapes_root) for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["export", "--weights", str(trained_weights), *args])
    assert message in str(exc.value)
    assert not (tmp_path / "m.onnx").exists()


def test_quantize_refuses_an_empty_calibration(trained_detector):
    with pytest.raises(ValueError, match="needs images"):
        quantize_int8(trained_detector.save_onnx(), iter([]))


def test_scoring_needs_labels(trained_detector, shapes_root):
    with pytest.raises(ValueError, match="labelled split"):
        evaluate_detector(trained_detector, open_images([str(shapes_root / "images")], None, "test"))


@pytest.mark.parametrize("n_items", [1, 2, 5, 24, 97])
@pytest.mark.parametrize("n", [1, 2, 3, 16, 64, 200])
def test_spread_picks_distinct_evenly_spaced_indices(n_items, n):
    idx = spread(n_items, n)
    assert len(idx) == min(n, n_items) and len(set(idx)) == len(idx)
    assert idx == sorted(idx) and idx[0] == 0 and all(0 <= i < n_items for i in idx)
    if len(idx) > 1:
        assert idx[-1] == n_items - 1
        gaps = np.diff(idx)
        assert gaps.max() - gaps.min() <= 1  # even: no gap more than one longer than another


def test_calibration_reads_the_spread_images(shapes_root):
    images = open_images([str(shapes_root)], None, "train", NAMES)
    paths = images.image_paths()
    got = list(calibration_images(images, 3))
    want = [np.asarray(Image.open(paths[i]).convert("RGB")) for i in (0, 12, 23)]
    assert len(got) == 3 and all(np.array_equal(g, w) for g, w in zip(got, want))
