"""The app's logic without a server: reading uploads, predict against the Detector, CAM
choices, settings, and requests from several threads at once."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import yolov3.app as app_mod
from yolov3.app import CAM_EIGEN, CAM_GRAD, DetectorApp, UploadError, read_upload
from yolov3.data.sample import load_rgb
from yolov3.detect import coco_records
from yolov3.detector import Detector


@pytest.fixture(scope="module")
def image_path(shape_images):
    return shape_images[0]


@pytest.fixture(scope="module")
def app(trained_weights):
    return DetectorApp(Detector.load(trained_weights))


def test_read_upload_gives_the_image_unchanged(image_path):
    image, note = read_upload(image_path)
    np.testing.assert_array_equal(image, load_rgb(image_path))
    assert note == ""


def test_bad_uploads_are_refused_with_the_files_name(bad_uploads):
    with pytest.raises(UploadError, match=r"notes\.txt is not an image this app can read"):
        read_upload(bad_uploads / "notes.txt")
    with pytest.raises(UploadError, match=r"cut\.jpg could not be decoded \(.*truncated"):
        read_upload(bad_uploads / "cut.jpg")
    with pytest.raises(UploadError, match=r"huge\.png is 10000 x 10000 pixels \(100 MP\); .* up to 40 MP"):
        read_upload(bad_uploads / "huge.png")
    with pytest.raises(UploadError, match="no image"):
        read_upload(None)
    # the name the user uploaded is the one named, not the server's temporary path
    with pytest.raises(UploadError, match=r"^my notes\.txt "):
        read_upload(bad_uploads / "notes.txt", name="my notes.txt")


def test_a_huge_image_is_refused_from_its_header(bad_uploads, monkeypatch):
    def no_decoding(path):
        raise AssertionError("decoded a 100 MP image that should have been refused from its header")

    monkeypatch.setattr(app_mod, "load_rgb", no_decoding)
    with pytest.raises(UploadError, match="100 MP"):
        read_upload(bad_uploads / "huge.png")


def test_large_images_are_downscaled_with_a_note(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    image, note = read_upload(tmp_path / "wide.png", max_side=150)
    assert image.shape == (100, 150, 3)
    assert "wide.png was downscaled from 300 x 200 to 150 x 100" in note
    image, note = read_upload(tmp_path / "wide.png", max_side=300)  # at the limit: untouched
    assert image.shape == (200, 300, 3) and note == ""
    with pytest.raises(UploadError, match="0 MP"):
        read_upload(tmp_path / "wide.png", max_pixels=59_999)


def test_predict_is_the_detector_and_detect_records(app, trained_weights, image_path):
    p = app.predict(str(image_path), conf=0.1, iou=0.5, size=128)
    expected = Detector.load(trained_weights, size=128, conf_threshold=0.1, iou_threshold=0.5)([load_rgb(image_path)])[0]
    assert len(expected) > 0
    np.testing.assert_array_equal(p.detections, expected)
    assert p.records == coco_records(expected, app.detector.class_names, 0, image_path.name)
    table = p.table(app.detector.class_names)
    assert len(table) == len(expected) and all(len(r) == 7 for r in table)
    assert [r[1] for r in table] == [app.detector.class_names[int(c)] for c in expected[:, 5]]
    assert p.image.shape == load_rgb(image_path).shape and (p.image != load_rgb(image_path)).any()
    assert p.cam is None and f"{len(expected)} detections in {image_path.name}" in p.note
    # the app's settings are per request: the loaded detector keeps its own
    assert (app.detector.size, app.detector.conf_threshold) == (96, 0.25)


def test_settings_change_the_result(app, image_path):
    """The confidence threshold reaches the detector: at a threshold between two of the
    model's own scores, exactly the detections above it come back. The threshold is taken in
    the widest gap between this model's scores rather than fixed (the trained fixture differs
    from one processor to another, and a fixed 0.5 / 0.02 pair once fell where it had no
    score between them). Greedy NMS in falling-score order never lets a lower score affect a
    higher one, so the answer at the threshold is the low-threshold answer cut at it."""
    many = app.predict(str(image_path), conf=0.001, size=96)
    scores = np.sort(many.detections[:, 4])[::-1]
    assert len(scores) >= 2 and scores[0] > 0.5, f"the trained fixture should find objects here: {scores[:5]}"
    top = scores[scores > 0.05]  # a gap among the real detections, not among the low-score noise
    gaps = top[:-1] - top[1:] if len(top) >= 2 else scores[:1] - scores[1:2]
    k = int(np.argmax(gaps))
    conf = float((scores[k] + scores[k + 1]) / 2)
    assert gaps[k] > 1e-3, f"no clear gap between the scores {scores[:10]}"
    few = app.predict(str(image_path), conf=conf, size=96)
    assert 0 < len(few.detections) < len(many.detections)
    np.testing.assert_array_equal(few.detections, many.detections[many.detections[:, 4] > conf])
    other = app.predict(str(image_path), conf=0.001, size=128)
    assert other.detections.shape != many.detections.shape or not np.allclose(other.detections, many.detections)


def test_gradcam_explains_the_chosen_detection(app, image_path):
    plain = app.predict(str(image_path), conf=0.1, size=96)
    first = app.predict(str(image_path), conf=0.1, size=96, cam=CAM_GRAD, which=0)
    second = app.predict(str(image_path), conf=0.1, size=96, cam=CAM_GRAD, which=1)
    np.testing.assert_allclose(first.detections, plain.detections, atol=1e-4)
    shape = load_rgb(image_path).shape
    assert first.cam.shape == second.cam.shape == shape
    assert (first.cam != second.cam).any()  # each detection has its own map
    missing = app.predict(str(image_path), conf=0.1, size=96, cam=CAM_GRAD, which=999)
    assert "there is no detection #999" in missing.note
    np.testing.assert_array_equal(missing.cam, first.cam)
    eigen = app.predict(str(image_path), conf=0.1, size=96, cam=CAM_EIGEN)
    assert eigen.cam.shape == shape and (eigen.cam != first.cam).any()
    none = app.predict(str(image_path), conf=1.0, size=96, cam=CAM_GRAD)
    assert len(none.detections) == 0 and none.cam is None and "no detections to explain" in none.note


def test_bad_settings_are_refused(app, image_path):
    with pytest.raises(UploadError, match="multiple of 32 from 96 to 608, not 330"):
        app.predict(str(image_path), size=330)
    with pytest.raises(UploadError, match="not 640"):
        app.predict(str(image_path), size=640)
    with pytest.raises(UploadError, match=r"\[0, 1\]"):
        app.predict(str(image_path), conf=1.5)
    with pytest.raises(UploadError, match="CAM must be one of"):
        app.predict(str(image_path), cam="saliency")


def test_the_size_range_reaches_down_to_the_training_sizes(tiny_checkpoint, image_path):
    detector = Detector.load(tiny_checkpoint, size=192)
    detector.train_sizes = (160, 192, 224)
    small = DetectorApp(detector)
    assert small.size_range == (160, 608, 32)
    assert len(small.predict(str(image_path), conf=0.02, size=160).detections) > 0
    assert "trained at 160, 192, 224 px" in small.info() and "default input 192 px" in small.info()
    assert f"`{tiny_checkpoint}`" in small.info() and "weights_only=True" in small.info()


def test_requests_from_several_threads_get_their_own_answers(app, image_path):
    """Four threads at once, each with its own settings and CAM (which hooks the shared
    model): every answer equals the one the same request gets alone."""
    requests = [dict(size=96, conf=0.1), dict(size=128, conf=0.1, cam=CAM_GRAD, which=1),
                dict(size=160, conf=0.05, cam=CAM_EIGEN), dict(size=96, conf=0.1, cam=CAM_GRAD, which=0)]
    alone = [app.predict(str(image_path), **r) for r in requests]
    together: list = [None] * len(requests)

    def work(i):
        together[i] = app.predict(str(image_path), **requests[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a.detections, b.detections)
        assert (a.cam is None and b.cam is None) or np.array_equal(a.cam, b.cam)


def test_the_page_builds_with_one_api_endpoint(app, tmp_path):
    """In process, no server: the page's API is /detect with the six inputs, and building
    it writes nothing into the package (a gr.Image subclass would write a .pyi stub)."""
    import yolov3

    page = app.build()
    api = page.get_api_info()["named_endpoints"]
    assert list(api) == ["/detect"]
    assert [p["label"] for p in api["/detect"]["parameters"]] == [
        "image", "confidence", "NMS IoU", "input size", "explain (class activation map)",
        "detection to explain (Grad-CAM)"]
    assert not list(Path(yolov3.__file__).parent.glob("*.pyi"))


def test_yolov3_app_bad_start_up_gets_clear_messages(tmp_path, monkeypatch, bad_uploads, trained_weights):
    from yolov3.cli import main

    monkeypatch.chdir(tmp_path)  # no runs/demo here
    with pytest.raises(SystemExit, match=r"no --weights given and no demo checkpoint at runs/demo/checkpoints/"
                                         r"best.ckpt\. Run `make demo` first"):
        main(["app"])
    with pytest.raises(SystemExit, match="notes.txt: not a readable checkpoint"):
        main(["app", "--weights", str(bad_uploads / "notes.txt")])
    with pytest.raises(SystemExit, match="missing.ckpt: weights file not found"):
        main(["app", "--weights", str(tmp_path / "missing.ckpt")])
    with pytest.raises(SystemExit, match="nothing.jpg: no such file or folder"):
        main(["app", "--weights", str(trained_weights), "--examples", "nothing.jpg"])
