"""ONNX export and the onnxruntime backend against the torch backend, on the trained fixture."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (it is in constraints.txt)")

from tiny_detector import two_objects  # noqa: E402

from yolov3.detector import Detector  # noqa: E402


@pytest.fixture(scope="module")
def onnx_weights(trained_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "shapes.onnx"
    Detector.load(trained_weights).save_onnx(path)
    return path


def held_out(n: int, seed: int = 123) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [two_objects(rng, int(rng.integers(72, 141)), int(rng.integers(72, 141)))[0] for _ in range(n)]


@pytest.mark.parametrize("batch, height, width", [(1, 96, 96), (3, 128, 96), (2, 160, 224)])
def test_raw_heads_match_torch_at_any_batch_and_size(trained_weights, onnx_weights, batch, height, width):
    torch_det = Detector.load(trained_weights)
    onnx_det = Detector.load(onnx_weights)
    assert (torch_det.backend, onnx_det.backend) == ("torch", "onnxruntime")
    x = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        ref = torch_det.model(x)
    got = onnx_det.model(x)
    assert [tuple(g.shape) for g in got] == [tuple(r.shape) for r in ref]
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-4)


def test_detections_after_nms_match_torch(trained_weights, onnx_weights):
    images = held_out(24)
    torch_det = Detector.load(trained_weights, conf_threshold=0.05)
    onnx_det = Detector.load(onnx_weights, conf_threshold=0.05)
    total = 0
    for ref, got in zip(torch_det(images), onnx_det(images)):
        assert got.shape == ref.shape
        np.testing.assert_array_equal(got[:, 5], ref[:, 5])  # the same classes in the same order
        np.testing.assert_allclose(got[:, :4], ref[:, :4], atol=1e-3)  # pixels
        np.testing.assert_allclose(got[:, 4], ref[:, 4], atol=1e-5)
        total += len(ref)
    assert total >= 24  # the fixture finds its two objects per image: the comparison is not empty


def test_export_keeps_the_detector_settings(trained_weights, onnx_weights):
    a = Detector.load(trained_weights)
    b = Detector.load(onnx_weights)
    assert b.class_names == a.class_names and b.size == a.size and b.train_sizes == a.train_sizes
    assert (b.score_mode, b.iou_threshold, b.max_detections) == (a.score_mode, a.iou_threshold, a.max_detections)
    torch.testing.assert_close(b.anchors, a.anchors)
    assert (b.model.num_classes, b.model.width) == (a.model.num_classes, a.model.width)
    # and a caller's value still wins over the file's
    assert Detector.load(onnx_weights, size=128, iou_threshold=0.3).size == 128


def test_onnx_file_declares_opset_and_dynamic_axes(trained_weights, onnx_weights):
    import onnx

    proto = onnx.load(str(onnx_weights))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) and d for d in (dims[0], dims[2], dims[3]))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert tuple(json.loads(meta["class_names"])) == Detector.load(trained_weights).class_names
    assert json.loads(meta["image_size"]) == Detector.load(trained_weights).size


def test_with_backend_exports_in_memory(trained_weights):
    torch_det = Detector.load(trained_weights)
    onnx_det = torch_det.with_backend("onnxruntime")
    assert onnx_det.backend == "onnxruntime" and torch_det.backend == "torch"
    images = held_out(4, seed=5)
    for ref, got in zip(torch_det(images), onnx_det(images)):
        np.testing.assert_allclose(got, ref, atol=1e-3)
    assert onnx_det.source == torch_det.source  # exported in memory: no file of its own
    with pytest.raises(ValueError, match="cannot run on the torch backend"):
        onnx_det.with_backend("torch")
    with pytest.raises(ValueError, match="exporting needs torch weights"):
        onnx_det.save_onnx()


def test_cli_export_then_detect_with_onnx(trained_weights, shape_images, tmp_path):
    from yolov3.commands.cli import main
    from yolov3.commands.detect import run_detect

    out = tmp_path / "m.onnx"
    main(["export", "--weights", str(trained_weights), "--out", str(out)])
    assert out.stat().st_size > 100_000
    ref = run_detect([str(p) for p in shape_images], str(trained_weights), str(tmp_path / "t"), conf=0.05, draw=False)
    got = run_detect([str(p) for p in shape_images], str(out), str(tmp_path / "o"), conf=0.05, draw=False)
    a = json.loads((tmp_path / "t" / "detections.json").read_text())
    b = json.loads((tmp_path / "o" / "detections.json").read_text())
    assert ref["detections"] == got["detections"] == len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        np.testing.assert_allclose(x["bbox"], y["bbox"], atol=1e-2)
    # --backend onnxruntime with torch weights gives the same too
    run_detect([str(p) for p in shape_images], str(trained_weights), str(tmp_path / "m"), conf=0.05, draw=False,
               backend="onnxruntime")
    c = json.loads((tmp_path / "m" / "detections.json").read_text())
    assert [r["category_id"] for r in c] == [r["category_id"] for r in a]


def test_cli_export_rejects_an_unknown_suffix(trained_weights, tmp_path):
    from yolov3.commands.cli import main

    with pytest.raises(SystemExit, match="name the file .safetensors or .onnx"):
        main(["export", "--weights", str(trained_weights), "--out", str(tmp_path / "m.bin")])


def test_exports_load_as_what_they_are_whatever_their_name(trained_weights, onnx_weights, tmp_path):
    import shutil

    from yolov3.commands.cli import main
    from yolov3.detector import weights_format

    main(["export", "--weights", str(trained_weights), "--out", str(tmp_path / "m.bin"), "--format", "onnx"])
    main(["export", "--weights", str(trained_weights), "--out", str(tmp_path / "st.onnx"), "--format", "safetensors"])
    main(["export", "--weights", str(trained_weights), "--out", str(tmp_path / "upper.ONNX")])
    shutil.copy(onnx_weights, tmp_path / "noext")
    assert weights_format(tmp_path / "m.bin") == "onnx" and Detector.load(tmp_path / "m.bin").backend == "onnxruntime"
    assert weights_format(tmp_path / "st.onnx") == "safetensors" and Detector.load(tmp_path / "st.onnx").backend == "torch"
    assert weights_format(tmp_path / "upper.ONNX") == "onnx" and weights_format(tmp_path / "noext") == "onnx"
    assert weights_format(trained_weights) == "safetensors"


def test_cam_refuses_onnx_weights_with_a_reason(onnx_weights, shape_images, tmp_path):
    from yolov3.commands.cam import run_cam

    with pytest.raises(ValueError, match="need gradients and the network's feature maps"):
        run_cam([str(shape_images[0])], str(onnx_weights), str(tmp_path / "cam"))


def test_bad_onnx_files_are_named(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not protobuf \x00\xff" * 10)
    with pytest.raises(ValueError, match="garbage.onnx: not a readable ONNX model"):
        Detector.load(garbage)
    # a valid ONNX model that is not this project's export
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(ValueError, match="other.onnx: not an export of this project's YOLOv3"):
        Detector.load(other)
    # this project's network without the metadata a Detector needs (class names, width)
    from yolov3.model import YOLOv3
    from yolov3.onnx_backend import export_onnx

    bare = tmp_path / "bare.onnx"
    export_onnx(YOLOv3(num_classes=2, width=0.0625), {}, bare)
    with pytest.raises(ValueError, match="bare.onnx: ONNX file without this project's metadata"):
        Detector.load(bare)


def test_the_app_serves_onnx_weights_and_says_what_needs_torch(trained_weights, onnx_weights, shape_images):
    from yolov3.commands.app import CAM_GRAD, DetectorApp, UploadError

    image = str(shape_images[0])
    ref = DetectorApp(Detector.load(trained_weights)).predict(image, conf=0.3)
    onnx_app = DetectorApp(Detector.load(onnx_weights))
    got = onnx_app.predict(image, conf=0.3)
    assert len(ref.detections) >= 1 and got.detections.shape == ref.detections.shape
    np.testing.assert_allclose(got.detections, ref.detections, atol=1e-3)
    with pytest.raises(UploadError, match="explanations need the torch backend"):
        onnx_app.predict(image, conf=0.3, cam=CAM_GRAD)
    info = onnx_app.info()
    assert "onnxruntime (fp32)" in info and "no explanations" in info and "ONNX export" in info
    # detections from ONNX Runtime, explanations from the torch weights (`yolov3 app --backend onnxruntime`)
    torch_det = Detector.load(trained_weights)
    mixed = DetectorApp(torch_det.with_backend("onnxruntime"), explainer=torch_det)
    explained = mixed.predict(image, conf=0.3, cam=CAM_GRAD)
    assert explained.cam is not None and len(explained.detections) == len(ref.detections)
    assert "explanations on torch" in mixed.info() and "onnxruntime" in mixed.info()
    with pytest.raises(ValueError, match="explanations need a torch detector"):
        DetectorApp(torch_det, explainer=Detector.load(onnx_weights))


@pytest.mark.parametrize("weights, backend, served, explains", [
    ("torch", "onnxruntime", "onnxruntime", True), ("onnx", None, "onnxruntime", False), ("torch", None, "torch", True),
])
def test_yolov3_app_takes_a_backend(trained_weights, onnx_weights, monkeypatch, weights, backend, served, explains):
    import yolov3.commands.server
    from yolov3.commands.cli import main

    started = []
    monkeypatch.setattr(yolov3.commands.server, "serve", lambda app, **kw: started.append(app))
    path = trained_weights if weights == "torch" else onnx_weights
    main(["app", "--weights", str(path), *(["--backend", backend] if backend else [])])
    (app,) = started
    assert app.detector.backend == served and (app.explainer is not None) == explains


def test_yolov3_app_refuses_torch_backend_for_onnx_weights(onnx_weights):
    from yolov3.commands.cli import main

    with pytest.raises(SystemExit, match="holds no torch weights"):
        main(["app", "--weights", str(onnx_weights), "--backend", "torch"])
