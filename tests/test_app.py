"""The app's logic without a server: reading uploads, predict against the Detector, CAM
choices, settings, and requests from several threads at once."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import yolov3.commands.server as server_mod
import yolov3.commands.requests as requests_mod
from yolov3.commands.app import CAM_EIGEN, CAM_GRAD, DetectorApp, UploadError, read_upload
from yolov3.data.sample import load_rgb
from yolov3.commands.detect import coco_records
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
    def no_decoding(path, *args):
        raise AssertionError("decoded a 100 MP image that should have been refused from its header")

    monkeypatch.setattr(requests_mod, "decode_image", no_decoding)
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
    with pytest.raises(UploadError, match="confidence must be a number from 0 to 1, not 1.5"):
        app.predict(str(image_path), conf=1.5)
    with pytest.raises(UploadError, match="CAM must be one of"):
        app.predict(str(image_path), cam="saliency")


@pytest.mark.parametrize("settings, message", [
    # what an API call can send that the page's controls never do
    (dict(conf="0.5"), "confidence must be a number from 0 to 1, not '0.5' (of type str)"),
    (dict(conf=True), "confidence must be a number from 0 to 1, not True (of type bool)"),
    (dict(conf=float("nan")), "confidence must be a number from 0 to 1, not nan"),
    (dict(conf=-0.1), "confidence must be a number from 0 to 1, not -0.1"),
    (dict(iou=[0.5]), "NMS IoU must be a number from 0 to 1, not [0.5] (of type list)"),
    (dict(iou=2), "NMS IoU must be a number from 0 to 1, not 2"),
    (dict(size="big"), "input size must be a number from 96 to 608, not 'big'"),
    (dict(size=96.5), "input size must be a multiple of 32 from 96 to 608, not 96.5"),
    (dict(which=-1), "detection to explain must be a detection's number (0, 1, ...), not -1"),
    (dict(which="first"), "detection to explain must be a detection's number"),
    (dict(cam=None), "CAM must be one of"),
])
def test_malformed_settings_are_refused_naming_the_setting(app, image_path, settings, message):
    with pytest.raises(UploadError) as err:
        app.predict(str(image_path), **settings)
    assert message in str(err.value)


def test_settings_of_other_numeric_types_are_taken(app, image_path):
    """What JSON or numpy legitimately give: an integral float size, numpy numbers, the
    dropdown's typed "1"; None means the loaded detector's own setting."""
    want = app.predict(str(image_path), conf=0.1, iou=0.45, size=128, which=1).detections
    for got in (app.predict(str(image_path), conf=np.float32(0.1), iou=0.45, size=128.0, which="1"),
                app.predict(str(image_path), conf=0.1, iou=np.float64(0.45), size=np.int64(128), which=1.0)):
        np.testing.assert_array_equal(got.detections, want)
    default = app.predict(str(image_path), conf=None, iou=None, size=None, which=None)
    assert "at input size 96" in default.note


@pytest.mark.parametrize("path, message", [
    (None, "no image: upload one"),
    ("", "no image: upload one"),
    (5, "image must be an uploaded file (gradio_client.handle_file(path)), not 5 (of type int)"),
    ({"path": None}, "image must be an uploaded file"),
])
def test_a_missing_or_malformed_image_is_refused(app, path, message):
    with pytest.raises(UploadError) as err:
        app.predict(path)
    assert message in str(err.value)


def test_the_size_range_reaches_down_to_the_training_sizes(tiny_checkpoint, image_path):
    detector = Detector.load(tiny_checkpoint, size=192)
    detector.train_sizes = (160, 192, 224)
    small = DetectorApp(detector)
    assert small.size_range == (160, 608, 32)
    assert len(small.predict(str(image_path), conf=0.02, size=160).detections) > 0
    assert "trained at 160, 192, 224 px" in small.info() and "default input 192 px" in small.info()
    assert f"`{tiny_checkpoint}` (a checkpoint of this project's training)" in small.info()
    assert "the COCO anchors / 416 · scores obj_cls" in small.info()


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
    from yolov3.commands.cli import main

    monkeypatch.chdir(tmp_path)  # no runs/demo here
    with pytest.raises(SystemExit, match=r"no --weights given and no demo checkpoint at runs/demo/checkpoints/"
                                         r"best.ckpt or last.ckpt\. Run `make demo` first"):
        main(["app"])
    # a demo without validation writes only last.ckpt: the app serves that (the format is read from the content)
    import shutil

    import yolov3.commands.server as server

    served = []
    monkeypatch.setattr(server, "serve", lambda app, **kwargs: served.append(app))
    (tmp_path / "runs/demo/checkpoints").mkdir(parents=True)
    shutil.copy(trained_weights, tmp_path / "runs/demo/checkpoints/last.ckpt")
    main(["app"])
    assert served and served[0].detector.source.endswith("last.ckpt")
    shutil.rmtree(tmp_path / "runs")
    with pytest.raises(SystemExit, match="notes.txt: not a readable checkpoint"):
        main(["app", "--weights", str(bad_uploads / "notes.txt")])
    with pytest.raises(SystemExit, match="missing.ckpt: weights file not found"):
        main(["app", "--weights", str(tmp_path / "missing.ckpt")])
    with pytest.raises(SystemExit, match="nothing.jpg: no such file or folder"):
        main(["app", "--weights", str(trained_weights), "--examples", "nothing.jpg"])


def _exif_rotated_jpeg(source: Path, out: Path, orientation: int = 6) -> Path:
    """source's pixels saved as a JPEG whose EXIF orientation tag asks viewers to rotate it
    (6: a quarter turn clockwise, as phones save portrait photos)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    with Image.open(source) as im:
        im.convert("RGB").save(out, quality=95, exif=exif)
    return out


def _page_component(page, elem_id: str):
    return next(b for b in page.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_page_hands_uploads_to_the_app_as_sent(app, image_path, tmp_path):
    """Boxes are in the stored pixels everywhere (the VOC devkit's and darknet's convention),
    so the page must not let Gradio rotate an upload by its EXIF orientation (its Image
    preprocessing does, for uploads and for inline data: URLs): the app gets the uploaded
    file itself, and a data: URL's bytes as sent."""
    import base64

    from gradio.data_classes import ImageData

    rotated = _exif_rotated_jpeg(image_path, tmp_path / "portrait.jpg")
    with Image.open(rotated) as im:
        assert im.getexif()[0x0112] == 6 and im.size[0] != im.size[1]
    image = _page_component(app.build(), "input-image")
    assert image.preprocess(ImageData(path=str(rotated), orig_name="portrait.jpg")) == str(rotated)
    url = "data:image/jpeg;base64," + base64.b64encode(rotated.read_bytes()).decode()
    got = Path(image.preprocess(ImageData(url=url)))
    assert got.read_bytes() == rotated.read_bytes()
    assert image.preprocess(None) is None
    import gradio as gr

    with pytest.raises(gr.Error, match="not base64 data"):
        image.preprocess(ImageData(url="data:image/jpeg,rawbytes"))


def test_an_exif_oriented_image_is_detected_in_its_stored_pixels(app, trained_weights, shape_images, tmp_path):
    """The project's convention (boxes in the stored pixels, as the VOC devkit and darknet
    read images): the app detects on the pixels as stored, whatever the EXIF tag says, and
    its boxes are those of the Detector on those pixels."""
    path = _exif_rotated_jpeg(shape_images[2], tmp_path / "portrait.jpg")
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    assert stored.shape[:2] == (120, 90)  # a viewer would show it 120 wide, 90 high
    p = app.predict(str(path), conf=0.1, size=96)
    expected = Detector.load(trained_weights, size=96, conf_threshold=0.1)([stored])[0]
    assert len(expected) > 0
    np.testing.assert_array_equal(p.detections, expected)
    assert p.image.shape == stored.shape and "(90 x 120)" in p.note


def test_an_image_that_is_no_file_is_refused_by_the_page(app):
    """An API call can send anything as the image; what is not a file's description gets
    the app's message (Gradio would answer with pydantic's validation error), and the API's
    schema for the image stays Gradio's (gradio_client reads it to know what to upload)."""
    import gradio as gr
    from gradio.data_classes import ImageData

    image = _page_component(app.build(), "input-image")
    assert image.data_model.model_json_schema() == ImageData.model_json_schema()
    for sent, shown in ((5, "5 (of type int)"), ("photo.jpg", "'photo.jpg' (of type str)"), ([1], "[1] (of type list)")):
        payload = image.data_model.model_validate(sent, context={"validate_meta": True})
        with pytest.raises(gr.Error) as err:
            image.preprocess(payload)
        assert err.value.message == f"image must be an uploaded file (gradio_client.handle_file(path)), not {shown}"
    file = image.data_model.model_validate({"path": "/x/a.jpg", "meta": {"_type": "gradio.FileData"}},
                                           context={"validate_meta": True})
    assert image.preprocess(file) == "/x/a.jpg"


def test_the_pages_settings_reach_predict_as_sent(app):
    """The sliders, radio and dropdown pass what a request sent on to predict, whose
    messages name the setting (Gradio's slider check would say "Value 1.5 is greater than
    maximum value 1.0" and fail with a TypeError on a string)."""
    page = app.build()
    fn = next(f for f in page.fns.values() if f.api_name == "detect")
    for control in fn.inputs[1:]:
        assert control.preprocess("1.5") == "1.5" and control.preprocess(None) is None


def test_output_images_are_written_once_and_whole(tmp_path):
    """Two requests giving the same image share one file, written under a temporary name and
    renamed: a file a client may be downloading is never rewritten in place (Gradio's own
    writing of an array output truncates and rewrites it, which under load sent clients
    short files)."""
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    first = Path(requests_mod.png_file(image, tmp_path, "detections.png"))
    with Image.open(first) as im:
        np.testing.assert_array_equal(np.asarray(im), image)
    before = first.stat()
    again = Path(requests_mod.png_file(image.copy(), tmp_path, "detections.png"))
    assert again == first and (again.stat().st_ino, again.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    other = Path(requests_mod.png_file(255 - image, tmp_path, "detections.png"))
    assert other != first and other.name == "detections.png"
    assert not list(tmp_path.rglob("*.part"))
    assert requests_mod.png_file(None, tmp_path, "cam.png") is None


def test_requests_leave_no_components_behind(app, image_path):
    """The server keeps no object per request: after a warm-up, twenty requests from one
    client (one session) leave the number of live Gradio components as it was. (Returning
    gr.update(...) for a control that is also an input made Gradio keep a new component in
    the session's state per request, for as long as the session lived.)"""
    import gc

    import gradio as gr
    import gradio_client

    from app_server import free_port

    def components():
        gc.collect()
        # by the MRO, not isinstance: that would run ABC checks on every object in the process
        return sum(gr.components.Component in type(o).__mro__ for o in gc.get_objects())

    server, url, _ = server_mod.serve(app, port=free_port(), block=False)
    try:
        client = gradio_client.Client(url, verbose=False)

        def detect(which):
            return client.predict(gradio_client.handle_file(str(image_path)), 0.1, 0.45, 96, "none", which,
                                  api_name="/detect")

        detect(0)
        before = components()
        answers = [detect(k % 2)[5] for k in range(20)]
        assert components() == before
        assert answers == [k % 2 for k in range(20)]  # the detection asked for is kept
    finally:
        server.get_blocks().close()


def test_malloc_arenas_are_limited_unless_the_operator_chose(monkeypatch):
    """serve() caps glibc's malloc arenas (the server's memory grew without them, see
    limit_malloc_arenas); MALLOC_ARENA_MAX in the environment wins, and elsewhere than
    glibc nothing is done."""
    import platform

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert server_mod.limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert server_mod.limit_malloc_arenas() is (platform.libc_ver()[0] == "glibc")
