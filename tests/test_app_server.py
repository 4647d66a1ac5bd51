"""The app as users meet it: a real `yolov3 app` server (started and stopped here), its API
through gradio_client, and the page in Debian's Chromium driven by Playwright."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import CHROMIUM, CHROMIUM_ARGS, app_server
from yolov3.commands.cli import main

gradio_client = pytest.importorskip("gradio_client")

SETTINGS = dict(conf=0.1, iou=0.45, size=96)  # also the page's defaults (server options)


@pytest.fixture(scope="module")
def server(trained_weights, shape_images, tmp_path_factory):
    log = tmp_path_factory.mktemp("app") / "server.log"
    examples = shape_images[2:]
    args = ["--conf", str(SETTINGS["conf"]), "--iou", str(SETTINGS["iou"]), "--size", str(SETTINGS["size"]),
            "--examples", *map(str, examples)]
    with app_server(trained_weights, args, log=log) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


@pytest.fixture(scope="module")
def image_path(shape_images):
    return shape_images[0]


def _detect(client, path, cam="none", which=0, **settings):
    s = {**SETTINGS, **settings}
    return client.predict(gradio_client.handle_file(str(path)), s["conf"], s["iou"], s["size"], cam, which,
                          api_name="/detect")


def test_api_gives_what_yolov3_detect_gives(client, trained_weights, image_path, tmp_path):
    annotated, table, cam, records, status, which = _detect(client, image_path)
    main(["detect", str(image_path), "--weights", str(trained_weights), "--out", str(tmp_path),
          "--conf", str(SETTINGS["conf"]), "--iou", str(SETTINGS["iou"]), "--size", str(SETTINGS["size"])])
    expected = json.loads((tmp_path / "detections.json").read_text())
    assert len(expected) > 0
    assert len(records) == len(expected)
    for got, want in zip(records, expected):
        assert Path(got.pop("file_name")).name == Path(want.pop("file_name")).name == image_path.name
        assert want.pop("picture") == image_path.name  # detect's annotated copy; the app returns it in the page
        assert got == want
    rows = table["data"]
    assert table["headers"] == ["#", "class", "score", "x1", "y1", "x2", "y2"]
    assert len(rows) == len(expected) and all(len(r) == 7 for r in rows)
    for row, want in zip(rows, expected):
        x, y, w, h = want["bbox"]
        assert row[1] == want["category_name"] and abs(row[2] - want["score"]) < 1e-4
        np.testing.assert_allclose(row[3:], [x, y, x + w, y + h], atol=0.06)
    with Image.open(annotated) as im, Image.open(image_path) as src:
        assert im.size == src.size
    assert cam is None and f"{len(expected)} detections in {image_path.name}" in status


def test_api_explains_a_detection(client, image_path):
    _, _, cam, records, status, which = _detect(client, image_path, cam="Grad-CAM (one detection)", which=1)
    assert len(records) > 1 and which == 1 and "Grad-CAM" in status
    with Image.open(cam) as im, Image.open(image_path) as src:
        assert im.size == src.size


@pytest.mark.parametrize("name, message", [
    ("notes.txt", "notes.txt is not an image this app can read"),
    ("cut.jpg", "cut.jpg could not be decoded"),
    ("huge.png", "huge.png is 10000 x 10000 pixels (100 MP)"),
])
def test_api_refuses_bad_uploads_with_a_message(client, bad_uploads, image_path, name, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as err:
        _detect(client, bad_uploads / name)
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)
    assert len(_detect(client, image_path)[3]) > 0  # the server goes on serving


@pytest.mark.parametrize("image, settings, message", [
    # wrong types
    ("image", dict(conf="high"), "confidence must be a number from 0 to 1, not 'high' (of type str)"),
    ("image", dict(size="big"), "input size must be a number from 96 to 608, not 'big' (of type str)"),
    ("image", dict(which="first"), "detection to explain must be a detection's number"),
    (5, {}, "image must be an uploaded file"),
    # out of range
    ("image", dict(conf=1.5), "confidence must be a number from 0 to 1, not 1.5"),
    ("image", dict(iou=-0.2), "NMS IoU must be a number from 0 to 1, not -0.2"),
    ("image", dict(size=100), "input size must be a multiple of 32 from 96 to 608, not 100"),
    ("image", dict(size=1024), "input size must be a number from 96 to 608, not 1024"),
    ("image", dict(cam="saliency"), "CAM must be one of"),
    # no image
    (None, {}, "no image: upload one, take a webcam snapshot or pick an example"),
])
def test_malformed_api_calls_get_a_message_and_the_server_goes_on(client, image_path, image, settings, message):
    from gradio_client.exceptions import AppError

    s = {**SETTINGS, "cam": "none", "which": 0, **settings}
    sent = gradio_client.handle_file(str(image_path)) if image == "image" else image
    with pytest.raises(AppError) as err:
        client.predict(sent, s["conf"], s["iou"], s["size"], s["cam"], s["which"], api_name="/detect")
    assert message in str(err.value)
    assert "Traceback" not in str(err.value)
    assert len(_detect(client, image_path)[3]) > 0  # the server goes on serving


def test_an_exif_oriented_upload_gets_what_yolov3_detect_gives(client, trained_weights, shape_images, tmp_path):
    """An image with an EXIF orientation tag: the app's detections and annotated image are
    those of `yolov3 detect` on the same file (the stored pixels, by the project's
    convention; the page must not let Gradio rotate the upload first)."""
    from test_app import _exif_rotated_jpeg

    from yolov3.data.sample import load_rgb

    path = _exif_rotated_jpeg(shape_images[2], tmp_path / "portrait.jpg")  # 90 x 120, not square
    annotated, _, _, records, status, _ = _detect(client, path)
    main(["detect", str(path), "--weights", str(trained_weights), "--out", str(tmp_path / "out"),
          "--conf", str(SETTINGS["conf"]), "--iou", str(SETTINGS["iou"]), "--size", str(SETTINGS["size"])])
    expected = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(expected) > 0 and len(records) == len(expected)
    for got, want in zip(records, expected):
        assert Path(got.pop("file_name")).name == Path(want.pop("file_name")).name == path.name
        assert want.pop("picture") == path.name  # detect's annotated copy; the app returns it in the page
        assert got == want
    h, w = load_rgb(path).shape[:2]  # the pixels detect reads
    with Image.open(annotated) as im:
        assert im.size == (w, h)
    assert f"({w} x {h})" in status


# ----------------------------------------------------------------------------- a full queue

MAX_QUEUE = 2


@pytest.fixture(scope="module")
def small_queue_server(trained_weights, tmp_path_factory):
    """A server that runs one request at a time and lets MAX_QUEUE wait."""
    log = tmp_path_factory.mktemp("app_queue") / "server.log"
    with app_server(trained_weights, ["--concurrency", "1", "--max-queue", str(MAX_QUEUE)], log=log) as url:
        yield url, log


def _raw_burst(url: str, image: Path, n: int, timeout: float) -> tuple[list, dict]:
    """n joins of /detect sent at the same instant over Gradio's HTTP protocol (what every
    client does underneath), then the answers of those accepted, read from the session's
    event stream. Returns ([(HTTP status, body) per join], {event id: completed message})."""
    import httpx

    with httpx.Client(base_url=url, timeout=timeout) as http:
        config = http.get("/config").json()
        fn_index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "detect")
        with image.open("rb") as f:
            uploaded = http.post("/gradio_api/upload", files={"files": (image.name, f)}).json()[0]
        file = {"path": uploaded, "orig_name": image.name, "meta": {"_type": "gradio.FileData"}}
        body = {"data": [file, 0.05, 0.45, 608, "Grad-CAM (one detection)", 0], "fn_index": fn_index,
                "session_hash": "burst", "event_data": None, "trigger_id": None}
        start = threading.Barrier(n)
        joins: list = [None] * n

        def join(k):
            start.wait()
            r = http.post("/gradio_api/queue/join", json=body)
            joins[k] = (r.status_code, r.json())

        threads = [threading.Thread(target=join, args=(k,)) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in threads), "a join got no answer"
        accepted = {b["event_id"] for status, b in joins if status == 200}
        done: dict = {}
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": "burst"}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        done[message["event_id"]] = message
                if accepted <= done.keys():
                    break
    return joins, done


def test_requests_beyond_the_queue_are_refused_with_a_message(small_queue_server, shape_images, client):
    """Twelve clients at once against one running and MAX_QUEUE waiting: each is answered
    or refused at once with the busy message, within a bounded time; none hangs, and the
    server goes on serving."""
    import time

    from yolov3.commands.server import BUSY

    url, log = small_queue_server
    t0 = time.monotonic()
    joins, done = _raw_burst(url, shape_images[0], 12, timeout=60)
    seconds = time.monotonic() - t0
    refused = [b for status, b in joins if status == 503]
    accepted = [b for status, b in joins if status == 200]
    assert len(refused) + len(accepted) == len(joins), joins
    assert refused and accepted, joins  # one request takes far longer than twelve joins
    assert len(accepted) <= MAX_QUEUE + 1 + 1, joins  # running + waiting (+ one that finished)
    busy = BUSY.format(waiting=MAX_QUEUE)
    assert all(b["detail"] == busy for b in refused), refused
    assert all(done[b["event_id"]]["success"] for b in accepted)
    assert seconds < 60
    assert "refused a request: 2 waiting, the --max-queue limit" in log.read_text()
    # the same server answers a normal client afterwards
    after = gradio_client.Client(url, verbose=False)
    assert len(_detect(after, shape_images[0])[3]) > 0


# ----------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def page(server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (Debian) runs the browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.wait_for_selector("#detect-button", timeout=60_000)
        yield page
        browser.close()


def test_browser_upload_detect_and_screenshot(page, client, image_path, tmp_path):
    expected = _detect(client, image_path)[3]  # the page's default settings
    page.locator("#input-image input[type=file]").set_input_files(str(image_path))
    page.click("#detect-button")
    page.wait_for_selector("#annotated img", timeout=60_000)
    page.get_by_text(f"{len(expected)} detections in {image_path.name}").wait_for(timeout=60_000)
    rows = page.locator("#table [role=row]")  # the header, then one per detection
    assert rows.count() == len(expected) + 1 > 1
    for k, want in enumerate(expected, 1):
        cells = rows.nth(k).inner_text().split()
        assert cells[:2] == [str(k - 1), want["category_name"]], cells
        # the table shows the score to 4 decimals, detections.json rows to 6: rounding the
        # rounded value can differ in the last shown digit, so compare with that margin
        assert abs(float(cells[2]) - want["score"]) <= 0.5e-4 + 0.5e-6 + 1e-9, (cells, want["score"])
    shot = tmp_path / "app.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        assert im.size[0] >= 1400 and im.size[1] > 800
    print(f"screenshot: {shot}")


@pytest.mark.parametrize("name, message", [
    # the page itself refuses a file that does not say it is an image, before uploading it
    ("notes.txt", "Invalid file type: notes.txt. Only image/* allowed."),
    # a JPEG cut short is uploaded and refused by the app, which names it
    ("cut.jpg", "cut.jpg could not be decoded"),
])
def test_browser_shows_a_message_for_a_bad_upload(page, bad_uploads, name, message):
    page.locator("#input-image input[type=file]").set_input_files(str(bad_uploads / name))
    page.get_by_text(message).first.wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
