import os

import pytest

# Keep the suite on the two cores we have without oversubscription from worker threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic dataset in the Kaggle layout (and VOCdevkit), shared by the session."""
    from yolov3.data.synthetic import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, 24, 8, seed=0, voc_xml=True, min_side=96, max_side=160)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised width-0.0625 model saved as a checkpoint (no data record)."""
    import torch

    from yolov3.lit import YoloLitModule

    torch.manual_seed(0)
    module = YoloLitModule(width=0.0625)
    path = tmp_path_factory.mktemp("w") / "tiny.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="session")
def trained_detector():
    """The small detector of tiny_detector.py, trained once per session (about 60 s) and
    checked to have learned (held-out mAP, see tiny_detector.check_learned)."""
    from tiny_detector import check_learned, fixture_seed, train_tiny_detector

    seed = fixture_seed()
    detector = train_tiny_detector(seed=seed)
    _FIXTURE["seed"], _FIXTURE["map"] = seed, check_learned(detector, seed)
    # a fingerprint of the weights: it shows whether two runs (kernel settings, machines)
    # trained the same model or another one
    _FIXTURE["weights"] = sum(float(p.detach().double().abs().sum()) for p in detector.model.parameters())
    return detector


_FIXTURE: dict = {}


def pytest_terminal_summary(terminalreporter):
    if _FIXTURE:
        terminalreporter.write_line(f"trained fixture: seed {_FIXTURE['seed']}, held-out mAP@0.5 "
                                    f"{_FIXTURE['map']:.4f}, sum |w| {_FIXTURE['weights']:.9e}")


@pytest.fixture(scope="session")
def trained_weights(trained_detector, tmp_path_factory):
    """trained_detector exported as safetensors (input size 96, classes disc/square/triangle)."""
    path = tmp_path_factory.mktemp("trained") / "shapes.safetensors"
    trained_detector.save_safetensors(path)
    return path


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """Two-object images like the fixture's training data as a Kaggle-layout dataset:
    train.csv and test.csv, 24 images each (PNG, 72-140 px a side)."""
    import numpy as np
    from PIL import Image
    from tiny_detector import two_objects

    root = tmp_path_factory.mktemp("shapes_dataset")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    rng = np.random.default_rng(2024)
    for split in ("train", "test"):
        rows = ["image,label"]
        for k in range(24):
            h, w = int(rng.integers(72, 141)), int(rng.integers(72, 141))
            image, boxes, labels = two_objects(rng, h, w)
            stem = f"{split}_{k:03d}"
            Image.fromarray(image).save(root / "images" / f"{stem}.png")
            # the shapes cover pixels x1..x2 inclusive: edges at x1 and x2 + 1
            lines = [f"{c} {(x1 + x2 + 1) / 2 / w:.6f} {(y1 + y2 + 1) / 2 / h:.6f} {(x2 - x1 + 1) / w:.6f} "
                     f"{(y2 - y1 + 1) / h:.6f}" for (x1, y1, x2, y2), c in zip(boxes.tolist(), labels.tolist())]
            (root / "labels" / f"{stem}.txt").write_text("\n".join(lines) + "\n")
            rows.append(f"{stem}.png,{stem}.txt")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def shape_images(tmp_path_factory):
    """Four held-out images like trained_detector's training data, as files (PNG and JPEG)."""
    import numpy as np
    from PIL import Image

    from tiny_detector import two_objects

    d = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(7)
    paths = []
    for k, (h, w) in enumerate([(100, 120), (96, 96), (120, 90), (110, 130)]):
        image, _, _ = two_objects(rng, h, w)
        paths.append(d / f"shapes_{k}.{'png' if k % 2 else 'jpg'}")
        Image.fromarray(image).save(paths[-1], quality=95)
    return paths


@pytest.fixture(scope="session")
def bad_uploads(tmp_path_factory, shape_images):
    """The three bad uploads of the app issue: a text file, a JPEG cut in its data (header
    intact), and a real 10,000 x 10,000 image (a PNG of one grey, small on disk)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("bad_uploads")
    (d / "notes.txt").write_text("not a picture\n")
    good = shape_images[0].read_bytes()
    assert shape_images[0].suffix == ".jpg"
    (d / "cut.jpg").write_bytes(good[: len(good) * 6 // 10])
    Image.new("L", (10_000, 10_000), 128).save(d / "huge.png", compress_level=1)
    return d


# `make test-fast` runs `pytest -m "not slow"`: what needs no training, no Lightning run, no
# second process, no server and no browser, in under a minute on 2 CPU cores. `make test`
# runs everything. A test is slow when it uses the trained fixture (60 s to train once per
# session) or sits in one of these modules (each trains, serves or spawns).
SLOW_FIXTURES = {"trained_detector", "trained_weights"}
SLOW_MODULES = {"test_ddp", "test_runs", "test_demo", "test_space", "test_deploy", "test_app_server",
                "test_real_photos", "test_nonfinite", "test_configs", "test_eval_integration", "test_cuda"}


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: trains, serves, spawns processes or uses the trained fixture "
                                       "(deselect with -m 'not slow': make test-fast)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
