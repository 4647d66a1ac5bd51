"""VOC mAP inside Lightning (metric, coordinate frame), `yolov3 test`, `yolov3 detect`, export."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolov3.commands.cli import main
from yolov3.data.augment import letterbox
from yolov3.data.datamodule import YoloDataModule
from yolov3.data.sample import Sample
from yolov3.detector import Detector
from yolov3.lit import YoloLitModule
from yolov3.metrics import DetectionMAP

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"


def random_split(seed, n_images=12, num_classes=4):
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(n_images):
        g = rng.integers(0, 5)
        xy = rng.uniform(0, 80, (g, 2))
        boxes = np.concatenate((xy, xy + rng.uniform(5, 40, (g, 2))), 1)
        gts.append({"boxes": boxes, "labels": rng.integers(0, num_classes, g), "difficult": rng.random(g) < 0.2})
        k = rng.integers(0, 7)
        noisy = np.concatenate((boxes, rng.uniform(0, 100, (k, 4))))[: g + k]
        noisy = np.sort(noisy.reshape(-1, 2, 2), axis=1).reshape(-1, 4) + rng.normal(0, 2, (len(noisy), 4))
        cls = np.concatenate((gts[-1]["labels"], rng.integers(0, num_classes, k)))[: len(noisy)]
        dets.append(np.concatenate((noisy, rng.random((len(noisy), 1)), cls[:, None]), 1))
    return dets, gts


def feed(metric, dets, gts, ids):
    metric.update([torch.tensor(dets[i]) for i in ids], [torch.tensor(gts[i]["boxes"]) for i in ids],
                  [torch.tensor(gts[i]["labels"]) for i in ids], [torch.tensor(gts[i]["difficult"]) for i in ids],
                  torch.tensor(ids))


@pytest.mark.parametrize("seed", range(5))
def test_detection_map_is_the_same_however_images_are_split(seed):
    dets, gts = random_split(seed)
    reference = DetectionMAP(4)  # image by image, in id order, the numpy arrays as they are
    for i in range(len(dets)):
        reference.update(dets[i:i + 1], [gts[i]["boxes"]], [gts[i]["labels"]], [gts[i]["difficult"]], [i])
    expected = reference.compute()["voc"]
    one = DetectionMAP(4)
    feed(one, dets, gts, list(range(12)))
    # two "processes" with shuffled, uneven shards: gather = concatenating their states
    a, b = DetectionMAP(4), DetectionMAP(4)
    feed(a, dets, gts, [7, 1, 3])
    feed(b, dets, gts, [0, 11, 2, 5, 4, 6, 10, 9, 8])
    merged = DetectionMAP(4)
    merged.merge_state(a)  # torchmetrics' own merge: what a gather does to list states
    merged.merge_state(b)
    for m in (one, merged):
        out = m.compute()
        np.testing.assert_equal(out["map_07"], expected["map_07"])
        np.testing.assert_equal(out["map_2010"], expected["map_2010"])
        np.testing.assert_array_equal(out["voc"]["ap_2010"], expected["ap_2010"])


def test_perfect_detections_give_map_one():
    dets, gts = random_split(0)
    perfect = [np.concatenate((g["boxes"], np.ones((len(g["boxes"]), 1)), g["labels"][:, None]), 1) for g in gts]
    m = DetectionMAP(4, coco=True)
    feed(m, perfect, gts, list(range(12)))
    out = m.compute()
    assert out["map_07"] == pytest.approx(1.0) and out["map_2010"] == pytest.approx(1.0)
    assert out["coco_map"] == pytest.approx(1.0)


def test_letterbox_undo_boxes_inverts_the_sample_letterbox():
    img = np.zeros((300, 500, 3), np.uint8)
    boxes = np.array([[10, 20, 200, 290], [0, 0, 500, 300]], np.float32)
    out, info = letterbox(Sample(img, boxes, np.zeros(2)), 416)
    back = info.undo_boxes(torch.from_numpy(out.boxes))
    np.testing.assert_allclose(back.numpy(), boxes, atol=1e-3)
    # boxes reaching into the padding are clipped to the image
    pad_box = torch.tensor([[0.0, 0.0, 416.0, 416.0]])
    clipped = info.undo_boxes(pad_box)
    np.testing.assert_allclose(clipped.numpy(), [[0, 0, 500, 300]], atol=1e-3)


def test_lightning_evaluates_in_original_pixels(synth_root):
    dm = YoloDataModule(root=str(synth_root), image_size=96, batch_size=3, num_workers=0, val_fraction=0.25)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    model = YoloLitModule(width=0.0625).eval()
    with torch.no_grad():
        detections, truth = model.detect(model(batch["images"]), batch)
    for i, idx in enumerate(batch["indices"].tolist()):
        source = dm.test_set.source[idx]
        np.testing.assert_allclose(truth[i].numpy(), source.boxes, atol=1e-3)
        h, w = source.image.shape[:2]
        d = detections[i]
        assert d.shape[1] == 6 and len(d) <= 100
        assert (d[:, [0, 2]] <= w + 1e-3).all() and (d[:, [1, 3]] <= h + 1e-3).all() and (d[:, :4] >= 0).all()


def test_detect_writes_pictures_and_coco_results(synth_root, tiny_checkpoint, tmp_path, capsys):
    """`yolov3 detect` writes, row for row, what the Detector returns for the same batch.

    The model is random, so at conf 0.01 every image has hundreds of near-tied candidates and
    hits the 100-per-image cap: which rows survive the cap depends on the last bits of the
    scores, and those depend on the batch the kernels ran (one image or three) and on the
    processor. Comparing against the Detector on the very batch detect runs (its batch size
    8 holds all three images) uses the same kernels, so the rows must agree exactly, up to the
    JSON's rounding; that the answer does not depend on the batch beyond float rounding is
    checked with a trained model in test_detect_batch_size_does_not_change_the_answer."""
    images = sorted((synth_root / "images").glob("*.jpg"))[:3]
    out = tmp_path / "out"
    pattern = images[1].parent / f"{images[1].stem[:-1]}[{images[1].stem[-1]}]{images[1].suffix}"  # a glob
    main(["detect", str(images[0]), str(pattern), str(images[2]), "--weights", str(tiny_checkpoint),
          "--out", str(out), "--conf", "0.01", "--size", "96"])
    results = json.loads((out / "detections.json").read_text())
    detector = Detector.load(tiny_checkpoint, size=96, conf_threshold=0.01)
    expected = detector([np.asarray(Image.open(p).convert("RGB")) for p in images])
    assert len(results) == sum(len(e) for e in expected) > 0
    for i, e in enumerate(expected):
        rows = [r for r in results if r["image_id"] == i]
        assert [r["file_name"] for r in rows] == [str(images[i])] * len(e)
        assert [r["category_id"] for r in rows] == e[:, 5].astype(int).tolist()
        assert [r["category_name"] for r in rows] == [detector.class_names[int(c)] for c in e[:, 5]]
        xywh = np.array([r["bbox"] for r in rows]).reshape(-1, 4)
        np.testing.assert_allclose(xywh[:, :2], e[:, :2], atol=0.006)  # rounded to 0.01 px
        np.testing.assert_allclose(xywh[:, 2:], e[:, 2:4] - e[:, :2], atol=0.011)
        np.testing.assert_allclose([r["score"] for r in rows], e[:, 4], atol=6e-6)  # rounded to 1e-5
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in images)
    assert f"{len(results)} detections in 3 images" in capsys.readouterr().out


def _match(a: np.ndarray, b: np.ndarray, score_tol: float, box_tol: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of rows of a and b (K, 6 detections) with the same class, scores within
    score_tol and every coordinate within box_tol, each row used once (greedy, by a's order)."""
    used, pairs = set(), []
    for i, row in enumerate(a):
        close = ((b[:, 5] == row[5]) & (np.abs(b[:, 4] - row[4]) <= score_tol)
                 & (np.abs(b[:, :4] - row[:4]).max(1) <= box_tol))
        j = next((j for j in np.flatnonzero(close) if j not in used), None)
        if j is not None:
            used.add(j)
            pairs.append((i, j))
    return pairs


def test_detect_batch_size_does_not_change_the_answer(trained_weights, shape_images, tmp_path):
    """Batches of 1 and of 4 give the same detections up to float rounding (the kernels of
    two batch sizes differ in their last bits). Rows are matched with a tolerance, and a row
    may be unmatched only where rounding can decide: its score within 1e-4 of the threshold,
    or another same-class detection of that image within 1e-4 of its score (NMS or the cap
    could then keep either)."""
    conf = 0.05
    runs = {}
    for bs in (1, 4):
        main(["detect", *map(str, shape_images), "--weights", str(trained_weights), "--out", str(tmp_path / str(bs)),
              "--conf", str(conf), "--batch", str(bs), "--no-draw"])
        runs[bs] = json.loads((tmp_path / str(bs) / "detections.json").read_text())
    total = 0
    for i in range(len(shape_images)):
        a, b = ([[*r["bbox"][:2], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3], r["score"], r["category_id"]]
                 for r in runs[bs] if r["image_id"] == i] for bs in (1, 4))
        a, b = np.array(a).reshape(-1, 6), np.array(b).reshape(-1, 6)
        pairs = _match(a, b, 2e-5, 0.02)
        total += len(pairs)
        for rows, other, done in ((a, b, {p[0] for p in pairs}), (b, a, {p[1] for p in pairs})):
            for k in set(range(len(rows))) - done:
                near = np.abs(rows[:, 4] - rows[k, 4]) <= 1e-4
                near[k] = False
                assert abs(rows[k, 4] - conf) <= 1e-4 or (near & (rows[:, 5] == rows[k, 5])).any(), (
                    f"image {i}: row {rows[k]} has no counterpart in {other}")
    assert total >= len(shape_images)  # the trained model finds objects in these images


def test_safetensors_export_gives_the_same_detections(synth_root, tiny_checkpoint, tmp_path):
    st = tmp_path / "tiny.safetensors"
    main(["export", "--weights", str(tiny_checkpoint), "--out", str(st)])
    img = np.asarray(Image.open(sorted((synth_root / "images").glob("*.jpg"))[0]).convert("RGB"))
    a = Detector.load(tiny_checkpoint, size=96, conf_threshold=0.01)([img])[0]
    b = Detector.load(st, size=96, conf_threshold=0.01)([img])[0]
    assert len(a) > 0
    np.testing.assert_array_equal(a, b)
    # readable like every other file written here, not the owner-only file safetensors makes
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert st.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777


def test_detect_bad_inputs_get_clear_messages(synth_root, tiny_checkpoint, tmp_path, capsys):
    good = sorted((synth_root / "images").glob("*.jpg"))[0]
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    cases = [
        ([str(tmp_path / "missing.jpg")], str(tiny_checkpoint), "missing.jpg: no such file"),
        ([str(tmp_path / "*.png")], str(tiny_checkpoint), "*.png: no such file or folder, and as a glob pattern it "
                                                            "matches nothing"),
        ([str(bad)], str(tiny_checkpoint), "cut.jpg: cannot read image"),
        ([str(good)], str(tmp_path / "none.ckpt"), "none.ckpt: weights file not found"),
        ([str(good)], str(text), "notes.txt: not a readable checkpoint"),
    ]
    for sources, weights, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["detect", *sources, "--weights", weights, "--out", str(tmp_path / "o")])
        assert message in str(exc.value), (message, str(exc.value))
    main(["detect", str(good), str(bad), "--weights", str(tiny_checkpoint), "--out", str(tmp_path / "o"),
          "--skip-bad", "--size", "64"])
    out = capsys.readouterr().out
    assert "in 1 images" in out and "skipped" in out and "cut.jpg" in out


def test_yolov3_test_prints_the_table_and_writes_the_report(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    common = ["--config", str(DEMO), "--data.root", str(synth_root), "--data.val_fraction", "0.25",
              "--data.image_size", "64", "--data.train_sizes", "[64, 96]", "--data.batch_size", "4",
              "--data.cache_images", "false", "--model.width", "0.0625", "--trainer.max_epochs", "1",
              "--trainer.limit_train_batches", "2"]
    main(["fit", *common, "--trainer.limit_val_batches", "1"])
    ckpt = tmp_path / "runs" / "demo" / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    # the checkpoint records the data side, so inference defaults to the eval size and the
    # class names of the run (without the record: 416 and the VOC names), also after export
    assert torch.load(ckpt, weights_only=True)["yolov3_data"]["image_size"] == 64
    main(["export", "--weights", str(ckpt), "--out", str(tmp_path / "w.safetensors")])
    for path in (ckpt, tmp_path / "w.safetensors"):
        detector = Detector.load(path)
        assert (detector.size, detector.train_sizes) == (64, (64, 96)), path
        assert detector.class_names[0] == "aeroplane" and len(detector.class_names) == 20
        assert Detector.load(path, size=128).size == 128
    main(["test", *common, "--ckpt_path", str(ckpt)])
    printed = capsys.readouterr().out
    for row in ("class accuracy", "VOC07 mAP@0.5", "VOC2010+ mAP@0.5",
                'course-style "mAP"@0.5 (trapezoid, no envelope)', "COCO mAP@[.5:.95]", "Per-class AP", "aeroplane"):
        assert row in printed, row
    report = json.loads((tmp_path / "runs" / "demo" / "test" / "version_0" / "results.json").read_text())
    assert report["images"] == 8 and len(report["per_class"]) == 20
    assert {"class_acc", "map_07", "map_2010", "map_course", "coco_map"} <= set(report["summary"])
    assert {"ap_07", "ap_2010", "ap_course"} <= set(report["per_class"][0])
    for png in ("pr_curves.png", "ap_per_class.png"):
        with Image.open(tmp_path / "runs" / "demo" / "test" / "version_0" / png) as im:
            assert im.size[0] > 300


def test_map_every_n_epochs_in_a_fit(synth_root):
    import lightning as L

    logged = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            logged.append("val/map_07" in trainer.callback_metrics)

    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25)
    trainer = L.Trainer(accelerator="cpu", max_epochs=5, limit_train_batches=1, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, num_sanity_val_steps=0, callbacks=[Record()])
    model = YoloLitModule(width=0.0625, evaluation={"map_every_n_epochs": 2})
    calls = []
    original = model.val_map.update
    model.val_map.update = lambda *a, **k: (calls.append(model.current_epoch), original(*a, **k))[1]
    trainer.fit(model, datamodule=dm)
    assert sorted(set(calls)) == [1, 3, 4]  # epochs 2 and 4 (1-based), and the last one
    assert trainer.validate(model, datamodule=dm, verbose=False)[0]["val/map_07"] >= 0  # validate alone: always


def test_detect_cam_and_app_take_the_evaluation_settings_of_the_checkpoint(synth_root, tmp_path):
    """A model validated with score_mode "obj", NMS IoU 0.6 and 7 detections per image is
    served that way by Detector.load, its safetensors export, `yolov3 detect` and the app,
    unless the caller overrides a setting; the confidence cut stays the caller's (0.25)."""
    from yolov3.commands.app import DetectorApp

    torch.manual_seed(0)
    module = YoloLitModule(width=0.0625, evaluation={"score_mode": "obj", "iou_threshold": 0.6, "max_detections": 7})
    ckpt = tmp_path / "obj.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    settings = lambda d: (d.score_mode, d.iou_threshold, d.max_detections, d.conf_threshold)  # noqa: E731
    assert settings(Detector.load(ckpt)) == ("obj", 0.6, 7, 0.25)
    assert settings(Detector.load(ckpt, score_mode="obj_cls", iou_threshold=0.3, max_detections=None)) == (
        "obj_cls", 0.3, 7, 0.25)
    st = tmp_path / "obj.safetensors"
    main(["export", "--weights", str(ckpt), "--out", str(st)])
    assert settings(Detector.load(st)) == ("obj", 0.6, 7, 0.25)
    assert settings(DetectorApp(Detector.load(st)).detector) == ("obj", 0.6, 7, 0.25)
    # a checkpoint that says nothing keeps the defaults
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {"width": 0.0625}}, plain)
    assert settings(Detector.load(plain)) == ("obj_cls", 0.45, 100, 0.25)

    images = sorted((synth_root / "images").glob("*.jpg"))[:2]
    main(["detect", *map(str, images), "--weights", str(ckpt), "--out", str(tmp_path / "d"), "--conf", "0.01",
          "--size", "96", "--no-draw"])
    rows = json.loads((tmp_path / "d" / "detections.json").read_text())
    expected = Detector.load(ckpt, size=96, conf_threshold=0.01)([np.asarray(Image.open(p).convert("RGB")) for p in images])
    assert [len(e) for e in expected] == [7, 7]  # a random model passes hundreds of cells at 0.01
    assert [sum(r["image_id"] == i for r in rows) == 7 for i in range(2)] == [True, True]
    # score_mode "obj": the score is the objectness alone, as the validation computed it
    obj_only = Detector.load(ckpt, size=96, conf_threshold=0.01, max_detections=1000)
    both = Detector.load(ckpt, size=96, conf_threshold=0.01, max_detections=1000, score_mode="obj_cls")
    img = [np.asarray(Image.open(images[0]).convert("RGB"))]
    assert obj_only(img)[0][:, 4].max() > both(img)[0][:, 4].max()
    # and the app serves the checkpoint's cap of 7 per image
    app = DetectorApp(Detector.load(ckpt, size=96))
    assert app.predict(str(images[0]), conf=0.01).detections.shape[0] == 7
