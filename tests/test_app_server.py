"""The app as users meet it: a real `yolov3 app` server (started and stopped here), its API
through gradio_client, and the page in Debian's Chromium driven by Playwright."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_server import CHROMIUM, CHROMIUM_ARGS, app_server
from yolov3.cli import main

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
    assert len(records) > 1 and which["value"] == 1 and "Grad-CAM" in status
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
        assert cells[:3] == [str(k - 1), want["category_name"], f"{want['score']:.4f}".rstrip("0")], cells
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
