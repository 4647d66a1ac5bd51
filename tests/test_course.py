"""The course's checkpoint files: recognised from their content, loaded without running code,
decoded with the course's anchors and score mode unless told otherwise, and the same
detections through every path (Detector, exports, `yolov3 detect`, `yolov3 test`)."""

import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from course_files import COURSE, LOSS, write_lightning, write_save_checkpoint

from yolov3.anchors import AnchorError, anchor_set_name, as_anchors
from yolov3.checkpoint_io import CheckpointError
from yolov3.commands.cli import main
from yolov3.constants import COURSE_ANCHORS, DEFAULT_ANCHORS
from yolov3.course import CourseFormatError, model_shape
from yolov3.detector import Detector
from yolov3.model import YOLOv3

NAMES = ["disc", "square", "triangle"]


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(3)
    return YOLOv3(num_classes=20, width=0.125).eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_checkpoint_file_loads_with_the_courses_settings(small_model, tmp_path):
    path = write_save_checkpoint(small_model, tmp_path / "my_checkpoint.pth.tar")
    detector = Detector.load(path)
    assert "save_checkpoint" in detector.origin and "optimizer" in detector.origin
    assert same_weights(detector.model, small_model)
    assert (detector.model.num_classes, detector.model.width) == (20, 0.125)
    assert torch.equal(detector.anchors, torch.tensor(COURSE_ANCHORS))
    assert (detector.score_mode, detector.iou_threshold, detector.size) == ("obj", 0.45, 416)
    assert detector.letterbox == "course" and Detector.load(path, letterbox="yolo").letterbox == "yolo"
    assert detector.class_names[0] == "aeroplane"
    line = detector.describe()
    assert "the course's anchors" in line and "scores obj" in line and str(path) in line


def test_the_name_does_not_matter(small_model, tmp_path):
    """Recognised from the content: a course file named .ckpt, or with no suffix, loads the same."""
    for name in ("course.ckpt", "weights"):
        path = write_save_checkpoint(small_model, tmp_path / name)
        assert "save_checkpoint" in Detector.load(path).origin


def test_lightning_file_loads_with_stand_ins_and_runs_nothing(small_model, tmp_path):
    path = write_lightning(small_model, tmp_path / "epoch=39.ckpt", tmp_path / "course_code")
    assert COURSE not in sys.modules
    detector = Detector.load(path)
    assert COURSE not in sys.modules and LOSS not in sys.modules  # its code was never imported
    assert "Lightning" in detector.origin and f"{LOSS}.YoloLoss" in detector.origin
    assert "stand-ins" in detector.origin and "scaled_anchors" not in detector.origin  # the course's at 416
    assert same_weights(detector.model, small_model)
    assert anchor_set_name(detector.anchors) == "course" and detector.score_mode == "obj"


def test_bare_state_dict_loads_as_a_course_model(small_model, tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_model.state_dict(), path)
    detector = Detector.load(path)
    assert "bare YOLOv3 state_dict" in detector.origin
    assert same_weights(detector.model, small_model) and detector.score_mode == "obj"


def test_anchors_given_win(small_model, tmp_path):
    path = write_save_checkpoint(small_model, tmp_path / "c.pth.tar")
    assert torch.equal(Detector.load(path, anchors="coco").anchors, torch.tensor(DEFAULT_ANCHORS))
    numbers = " ".join(str(v) for v in torch.tensor(DEFAULT_ANCHORS).flatten().tolist())
    assert anchor_set_name(Detector.load(path, anchors=numbers).anchors) == "coco"
    with pytest.raises(AnchorError, match="17 numbers"):
        Detector.load(path, anchors=numbers.rsplit(" ", 1)[0])


def test_as_anchors_reads_names_numbers_and_lists():
    assert torch.equal(as_anchors("course"), torch.tensor(COURSE_ANCHORS))
    assert torch.equal(as_anchors(" COCO "), torch.tensor(DEFAULT_ANCHORS, dtype=torch.float32))
    assert torch.equal(as_anchors(COURSE_ANCHORS), as_anchors(",".join(map(str, np.ravel(COURSE_ANCHORS)))))
    for bad, message in (("yolo", "neither a named set"), ([[0.1, 0.2]], "2 values"),
                         ("0 " * 18, "positive"), ("nan " * 18, "positive")):
        with pytest.raises(AnchorError, match=message):
            as_anchors(bad, "--anchors")
    assert anchor_set_name(torch.tensor(COURSE_ANCHORS) + 2e-4) is None


def test_model_shape_from_the_weights(tmp_path):
    for classes, width in ((20, 1.0), (80, 0.25), (3, 0.125)):
        state = YOLOv3(num_classes=classes, width=width).state_dict()
        assert model_shape(state, "f") == (classes, width)
    state = YOLOv3(num_classes=20, width=0.125).state_dict()
    state = {k: (v[:-1] if k.endswith("pred.1.conv.bias") else v) for k, v in state.items()}
    with pytest.raises(CourseFormatError, match="f: output convolutions"):
        model_shape(state, "f")


def test_a_course_file_with_wrong_shapes_names_the_file(small_model, tmp_path):
    state = dict(small_model.state_dict())
    state["layers.3.conv.weight"] = state["layers.3.conv.weight"][:, :1]
    path = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": state, "optimizer": {}}, path)
    with pytest.raises(ValueError, match="broken.pth.tar: its weights do not fit a YOLOv3 of 20 classes"):
        Detector.load(path)


class _WritesAFile:
    """Unpickling this would open (create) `target` for writing."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_payload_in_a_lightning_file_is_refused(small_model, shape_images, tmp_path):
    target = tmp_path / "created_by_unpickling.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in small_model.state_dict().items()},
                "hyper_parameters": {"loss_criterion": _WritesAFile(target)}}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt") as err:
        Detector.load(path)
    assert "open" in str(err.value)
    with pytest.raises(SystemExit, match="evil.ckpt"):
        main(["detect", str(shape_images[0]), "--weights", str(path), "--out", str(tmp_path / "out")])
    assert not target.exists()


def test_course_files_give_the_same_detections_everywhere(trained_detector, shape_images, tmp_path):
    """The trained fixture written in both course formats: the same detections as the model
    decoded with the course's settings directly, and after an export to safetensors and ONNX
    (whose files then carry those settings)."""
    images = [np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in shape_images]
    model = trained_detector.model
    want = Detector(model, anchors=torch.tensor(COURSE_ANCHORS), score_mode="obj", iou_threshold=0.45,
                    size=96, conf_threshold=0.05, letterbox="course")(images)
    assert sum(len(w) for w in want) > 0
    files = [write_save_checkpoint(model, tmp_path / "c.pth.tar"),
             write_lightning(model, tmp_path / "c.ckpt", tmp_path / "code")]
    for path in files:
        course = Detector.load(path, size=96, conf_threshold=0.05)
        got = course(images)
        assert all(np.array_equal(g, w) for g, w in zip(got, want)), path
        course.save_safetensors(tmp_path / "c.safetensors")
        again = Detector.load(tmp_path / "c.safetensors", conf_threshold=0.05)
        assert again.size == 96 and again.score_mode == "obj" and anchor_set_name(again.anchors) == "course"
        assert again.letterbox == "course"
        assert "made from the course's" in again.origin
        assert all(np.array_equal(g, w) for g, w in zip(again(images), want))
    pytest.importorskip("onnxruntime")
    course.save_onnx(tmp_path / "c.onnx")
    onnx = Detector.load(tmp_path / "c.onnx", conf_threshold=0.05)
    assert onnx.score_mode == "obj" and anchor_set_name(onnx.anchors) == "course"
    for g, w in zip(onnx(images), want):  # another runtime: the same boxes to float tolerance
        assert g.shape == w.shape and np.abs(g[:, :5] - w[:, :5]).max(initial=0) < 1e-3


def test_yolov3_test_scores_a_course_checkpoint(trained_detector, shapes_root, tmp_path, monkeypatch):
    """`yolov3 test --weights <course file>`: VOC07 / VOC2010+ and the course's accuracies,
    the same mAP as scoring the Detector directly with the same settings."""
    from yolov3.deploy import evaluate_detector, open_images

    path = write_save_checkpoint(trained_detector.model, tmp_path / "course.pth.tar")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["test", "--weights", str(path), "--data.root", str(shapes_root), "--data.class_names",
              json.dumps(NAMES), "--data.image_size", "96", "--data.num_workers", "0",
              "--trainer.accelerator", "cpu", "--trainer.logger", "false", "--trainer.default_root_dir",
              str(tmp_path / "runs")])
    out = printed.getvalue()
    assert "the course's save_checkpoint file" in out and "the course's anchors" in out and "course letterbox" in out
    for row in ("VOC07 mAP@0.5", "VOC2010+ mAP@0.5", "class accuracy", "no-object accuracy", "object accuracy"):
        assert row in out, out
    results = next((tmp_path / "runs").rglob("results.json"))
    report = json.loads(results.read_text())
    direct = evaluate_detector(Detector.load(path, size=96, class_names=NAMES),
                               open_images([str(shapes_root)], None, "test", NAMES))
    assert report["images"] == direct["num_images"] == 24
    assert report["summary"]["map_07"] > 0.3  # decoded with other anchors than it learnt, still a detector
    assert abs(direct["map_07"] - report["summary"]["map_07"]) < 1e-4
    assert abs(direct["map_2010"] - report["summary"]["map_2010"]) < 1e-4
    assert os.path.isfile(results)


def test_the_commands_take_a_course_file_and_say_what_it_is(small_model, shape_images, tmp_path, capsys):
    path = write_save_checkpoint(small_model, tmp_path / "my_checkpoint.pth.tar")
    main(["detect", str(shape_images[0]), "--weights", str(path), "--out", str(tmp_path / "det"), "--size", "96"])
    printed = capsys.readouterr().out
    assert "the course's save_checkpoint file" in printed and "the course's anchors" in printed
    assert (tmp_path / "det" / "detections.json").is_file()
    main(["detect", str(shape_images[0]), "--weights", str(path), "--out", str(tmp_path / "det2"), "--size", "96",
          "--anchors", "coco"])
    assert "the COCO anchors / 416" in capsys.readouterr().out
    main(["export", "--weights", str(path), "--out", str(tmp_path / "c.safetensors")])
    assert "the course's save_checkpoint file" in capsys.readouterr().out
    exported = Detector.load(tmp_path / "c.safetensors")
    assert anchor_set_name(exported.anchors) == "course" and exported.score_mode == "obj"
    with pytest.raises(SystemExit):
        main(["detect", str(shape_images[0]), "--weights", str(path), "--out", str(tmp_path / "d3"),
              "--anchors", "0.1,0.2"])
    assert "argument --anchors: 2 numbers given; 18 are needed" in capsys.readouterr().err
    assert not (tmp_path / "d3").exists()


def test_fine_tuning_from_a_course_file_reports_it_and_its_anchors(small_model, tmp_path):
    from yolov3.pretrained import load_pretrained

    path = write_save_checkpoint(small_model, tmp_path / "my_checkpoint.pth.tar")
    target = YOLOv3(num_classes=3, width=0.125)
    report = load_pretrained(target, path)
    assert "the course's save_checkpoint file" in report.summary()
    assert anchor_set_name(report.anchors) == "course"
    assert len(report.loaded) == 72 and len(report.reinitialised) == 3  # all but the 3 output convolutions
    assert torch.equal(target.layers[0].conv.weight, small_model.layers[0].conv.weight)


def test_checkpoints_of_this_project_keep_their_anchors(tmp_path):
    """A model trained with the course's anchors (--model.anchors course) is decoded with them."""
    from yolov3.lit import YoloLitModule

    module = YoloLitModule(width=0.0625, anchors="course", evaluation={"score_mode": "obj"})
    path = tmp_path / "trained_with_course_anchors.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    detector = Detector.load(path)
    assert "this project's training" in detector.origin
    assert anchor_set_name(detector.anchors) == "course" and detector.score_mode == "obj"
    detector.save_safetensors(tmp_path / "e.safetensors")
    assert anchor_set_name(Detector.load(tmp_path / "e.safetensors").anchors) == "course"
