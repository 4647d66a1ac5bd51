"""Take the screenshot in docs/app.md of `yolov3 app`: the demo checkpoint, one of the demo's
example images, Grad-CAM of its first detection, in Debian's Chromium.

    python scripts/app_screenshot.py [--weights runs/demo/checkpoints/best.ckpt] [--out docs/app.png]

Needs `make demo` (checkpoint and runs/demo/examples) and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_server import CHROMIUM, CHROMIUM_ARGS, app_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="runs/demo/checkpoints/best.ckpt")
    parser.add_argument("--image", default=None, help="image to upload (default: the third demo example)")
    parser.add_argument("--out", default="docs/app.png")
    args = parser.parse_args()
    image = args.image or sorted(Path("runs/demo/examples").glob("*.jpg"))[2]
    from playwright.sync_api import sync_playwright

    with app_server(args.weights) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector("#detect-button", timeout=60_000)
        page.get_by_label("Grad-CAM (one detection)").check()
        page.locator("#input-image input[type=file]").set_input_files(str(image))
        page.get_by_text("with Grad-CAM").first.wait_for(timeout=60_000)
        page.get_by_text("model", exact=True).click()  # open the model panel
        page.wait_for_selector("#model-info", timeout=10_000)
        page.wait_for_timeout(500)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
