"""What the web app costs on top of the Detector: one request through a real `yolov3 app`
server (gradio_client: upload, queue, preprocessing, drawing, PNG encoding, download)
against the same work in process (DetectorApp.predict) and the bare Detector call, in the
same run, on the same images and settings.

Starts `yolov3 app` with the demo checkpoint on a free loopback port (the tests' helper),
sends each of --images synthetic test images (written to a temporary folder as JPEG) once
per case after one warm-up request, and reports mean seconds per image. Also times the
server's start-up (process start to the first answered /gradio_api/info).

Prints a table and writes bench/results/app.json.

    python bench/app.py [--weights runs/demo/checkpoints/best.ckpt] [--sizes 192 416] [--images 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_server import app_server  # noqa: E402

from yolov3.commands.app import CAM_EIGEN, CAM_GRAD, CAM_NONE, DetectorApp  # noqa: E402
from yolov3.data.sample import load_rgb  # noqa: E402
from yolov3.data.synthetic import render_image  # noqa: E402
from yolov3.detector import Detector  # noqa: E402
from common import describe_machine, report  # noqa: E402


def mean_seconds(fn, items) -> float:
    fn(items[0])  # warm-up
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) / len(items)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="runs/demo/checkpoints/best.ckpt")
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 416])
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--out", default="bench/results/app.json")
    args = p.parse_args()
    if not Path(args.weights).is_file():
        raise SystemExit(f"{args.weights}: no such checkpoint (run `make demo` first)")
    from gradio_client import Client, handle_file
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_"))
    paths = []
    for i in range(args.images):
        paths.append(tmp / f"bench_{i:03d}.jpg")
        Image.fromarray(render_image(0, "test", i).image).save(paths[-1], quality=95)
    detector = Detector.load(args.weights)
    app = DetectorApp(detector)
    rows = []
    t0 = time.perf_counter()
    with app_server(args.weights) as url:
        startup = time.perf_counter() - t0
        client = Client(url, verbose=False)
        for size in args.sizes:
            bare = detector.configured(size=size)
            detector_s = mean_seconds(lambda path: bare([load_rgb(path)]), paths)
            for cam in (CAM_NONE, CAM_GRAD, CAM_EIGEN):
                local = mean_seconds(lambda path: app.predict(str(path), 0.25, 0.45, size, cam, 0), paths)
                remote = mean_seconds(lambda path: client.predict(handle_file(str(path)), 0.25, 0.45, size, cam, 0,
                                                                  api_name="/detect"), paths)
                rows.append({"size": size, "cam": cam, "detector_s": round(detector_s, 4),
                             "predict_s": round(local, 4), "server_s": round(remote, 4),
                             "server_vs_detector": round(remote / detector_s, 2)})
    machine = describe_machine()
    report(f"seconds per image, {machine}; weights {args.weights}; server start-up {startup:.1f} s",
           [("size", "size", ""), ("cam", "explain", ""), ("detector_s", "Detector", ".3f"), ("predict_s", "predict", ".3f"),
            ("server_s", "server", ".3f"), ("server_vs_detector", "server/Detector", ".1f")],
           rows, args.out, machine=machine, weights=args.weights, images=args.images, startup_s=round(startup, 2))


if __name__ == "__main__":
    main()
