"""`yolov3 space`: the folder it writes, its requirements installed into a fresh virtualenv,
its app.py started there and asked through gradio_client, against `yolov3 detect`."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

gradio_client = pytest.importorskip("gradio_client", reason="gradio_client is a dev dependency (make test installs it)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (it is in constraints.txt)")

from app_server import free_port, server_process  # noqa: E402

from yolov3.commands.cli import main  # noqa: E402
from yolov3.detector import Detector  # noqa: E402
from yolov3.commands.space import RUNTIME, TORCH_CPU_INDEX  # noqa: E402

SETTINGS = {"conf": 0.3, "iou": 0.5, "size": 128}


@pytest.fixture(scope="module")
def space(trained_weights, shape_images, tmp_path_factory):
    """The default Space (int8 ONNX) of the fixture, calibrated on the four shape images."""
    out = tmp_path_factory.mktemp("space") / "my-space"
    main(["space", "--weights", str(trained_weights), "--out", str(out), "--examples", *map(str, shape_images[2:]),
          "--data", str(shape_images[0].parent), "--calib", "4", "--title", "Shapes"])
    return out


def test_the_folder_has_what_a_gradio_space_needs(space, shape_images):
    import gradio

    readme = (space / "README.md").read_text()
    header = readme.split("---\n")[1]
    fields = dict(line.split(": ", 1) for line in header.strip().splitlines())
    assert fields["sdk"] == "gradio" and fields["app_file"] == "app.py"
    assert fields["sdk_version"] == gradio.__version__ and fields["title"] == '"Shapes"'
    assert "hf upload" in readme and "int8" in readme
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert f"--extra-index-url {TORCH_CPU_INDEX}" in requirements
    pins = dict(line.split("==") for line in requirements if "==" in line)
    assert set(pins) == set(RUNTIME)  # no Lightning, albumentations or onnx at run time
    assert "+" not in pins["torch"]
    assert sorted(p.name for p in (space / "examples").iterdir()) == sorted(p.name for p in shape_images[2:])
    assert (space / "yolov3" / "detector.py").is_file() and not list(space.glob("yolov3/**/__pycache__"))
    served = Detector.load(space / "model.onnx")
    assert (served.backend, served.precision) == ("onnxruntime", "int8")
    assert "*.onnx filter=lfs" in (space / ".gitattributes").read_text()


def test_space_refuses_bad_arguments_with_a_message(trained_weights, space, shape_images, tmp_path):
    cases = [
        (["--out", str(space)], "not an empty folder"),
        (["--out", str(tmp_path / "a")], "needs calibration images"),
        (["--out", str(tmp_path / "b"), "--format", "onnx", "--backend", "torch"],
         "the torch backend runs torch weights"),
        (["--out", str(tmp_path / "c"), "--format", "onnx", "--examples", str(tmp_path / "none.png")], "none.png"),
    ]
    for args, message in cases:
        if "--examples" not in args:
            args += ["--examples", str(shape_images[0])]
        with pytest.raises(SystemExit) as exc:
            main(["space", "--weights", str(trained_weights), *args])
        assert message in str(exc.value), args
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abc")
    with pytest.raises(SystemExit, match="float32"):  # an int8 export is not served as float32
        main(["space", "--weights", str(space / "model.onnx"), "--out", str(tmp_path / "d"), "--format", "onnx",
              "--examples", str(shape_images[0])])
    with pytest.raises(SystemExit, match="served as it is"):  # nothing to calibrate in an int8 export
        main(["space", "--weights", str(space / "model.onnx"), "--out", str(tmp_path / "e"),
              "--examples", str(shape_images[0]), "--data", str(shape_images[0].parent)])
    with pytest.raises(SystemExit, match="--data apply to --format onnx-int8 only"):
        main(["space", "--weights", str(trained_weights), "--out", str(tmp_path / "f"), "--format", "onnx",
              "--examples", str(shape_images[0]), "--data", str(shape_images[0].parent)])


def test_a_safetensors_space_on_onnxruntime_ships_both_weights(trained_weights, shape_images, tmp_path):
    """Detections from an ONNX file exported at build time (exporting at start-up would need
    the onnx package, which the Space does not install), explanations from the safetensors."""
    import runpy

    out = tmp_path / "st-space"
    main(["space", "--weights", str(trained_weights), "--out", str(out), "--format", "safetensors",
          "--backend", "onnxruntime", "--examples", str(shape_images[0])])
    assert {"model.onnx", "model.safetensors"} <= {p.name for p in out.iterdir()}
    assert "safetensors" in (out / "requirements.txt").read_text()
    app = runpy.run_path(str(out / "app.py"), run_name="not_main")["app"]  # built, not served
    assert app.detector.backend == "onnxruntime" and app.detector.source.endswith("model.onnx")
    assert app.explainer is not None and app.explainer.source.endswith("model.safetensors")
    explained = app.predict(str(out / "examples" / shape_images[0].name), conf=0.3, cam="Grad-CAM (one detection)")
    assert explained.cam is not None


def _find_links() -> list[str]:
    """Where this machine keeps local wheels (torch's CPU build), as the Makefile finds them."""
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    got = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                         capture_output=True, text=True)
    return links + (got.stdout.split() if got.returncode == 0 else [])


@pytest.fixture(scope="module")
def space_python(space, tmp_path_factory):
    """A fresh virtualenv with the Space's requirements.txt installed (and nothing else): its python.

    uv installs offline first, from its cache (which `make test`'s own install has filled)
    and the local wheels, with requirements.txt as written; torch's CPU index is then never
    asked. Where that fails, uv (or pip, without uv) installs online from the package
    registry without the index line (this machine reaches PyPI only, and has torch locally).
    """
    venv = tmp_path_factory.mktemp("space_venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    links = [a for link in _find_links() for a in ("--find-links", link)]
    requirements = space / "requirements.txt"
    t0 = time.perf_counter()
    attempts = []
    if importlib.util.find_spec("uv"):
        uv = [sys.executable, "-m", "uv", "pip", "install", "-q", "--python", str(python), *links]
        attempts += [uv + ["--offline", "-r", str(requirements)]]
    plain = venv.parent / "requirements-no-index.txt"
    plain.write_text("".join(line + "\n" for line in requirements.read_text().splitlines()
                             if not line.startswith("--extra-index-url")))
    if importlib.util.find_spec("uv"):
        attempts += [uv + ["-r", str(plain)]]
    else:
        subprocess.run([str(python), "-m", "ensurepip", "-q"], check=True)
        attempts += [[str(python), "-m", "pip", "install", "-q", *links, "-r", str(plain)]]
    for cmd in attempts:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            break
    else:
        pytest.fail(f"could not install the Space's requirements: {done.stderr[-2000:]}")
    print(f"installed the Space's requirements in {time.perf_counter() - t0:.1f} s")
    return python


def test_the_space_runs_from_its_folder_and_gives_what_yolov3_detect_gives(space, space_python, shape_images,
                                                                            tmp_path):
    # the package is not installed in the Space's environment: app.py runs the folder's copy
    assert subprocess.run([str(space_python), "-c", "import yolov3"], cwd=tmp_path).returncode != 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["GRADIO_SERVER_PORT"] = str(port)
    log = tmp_path / "space.log"
    with server_process([str(space_python), "app.py"], port, env=env, cwd=space, timeout=180, log=log) as (url, _):
        client = gradio_client.Client(url, verbose=False)
        image = space / "examples" / shape_images[2].name
        _, table, cam, records, status, _ = client.predict(
            gradio_client.handle_file(str(image)), SETTINGS["conf"], SETTINGS["iou"], SETTINGS["size"], "none", 0,
            api_name="/detect")
        with pytest.raises(Exception, match="explanations need the torch backend"):
            client.predict(gradio_client.handle_file(str(image)), SETTINGS["conf"], SETTINGS["iou"],
                           SETTINGS["size"], "Grad-CAM (one detection)", 0, api_name="/detect")
    main(["detect", str(image), "--weights", str(space / "model.onnx"), "--out", str(tmp_path / "d"),
          "--conf", str(SETTINGS["conf"]), "--iou", str(SETTINGS["iou"]), "--size", str(SETTINGS["size"])])
    expected = json.loads((tmp_path / "d" / "detections.json").read_text())
    assert len(expected) >= 1 and len(records) == len(expected)
    for got, want in zip(records, expected):
        assert got["category_name"] == want["category_name"]
        assert abs(got["score"] - want["score"]) < 1e-4
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=0.01)
    assert cam is None and f"{len(expected)} detections" in status
