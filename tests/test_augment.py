import numpy as np
import pytest
import torch

from yolov3.data.augment import AugmentConfig, TrainTransform, letterbox
from yolov3.data.sample import Sample


def painted_sample(rng, h=150, w=230):
    """Grey image with three rectangles, each painted in a colour that encodes its id."""
    img = np.full((h, w, 3), 128, np.uint8)
    boxes, colours = [], [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    col = w // 3
    for k, c in enumerate(colours):  # one rectangle per column, so they never overlap
        bw, bh = rng.integers(20, col - 10), rng.integers(20, 60)
        x1, y1 = k * col + rng.integers(0, col - bw), rng.integers(0, h - bh)
        img[y1 : y1 + bh, x1 : x1 + bw] = c
        boxes.append([x1, y1, x1 + bw, y1 + bh])
    return Sample(img, np.array(boxes, np.float32), np.arange(3)), colours


def test_letterbox_undo_roundtrip():
    rng = np.random.default_rng(0)
    for size in (64, 256, 416):
        s, _ = painted_sample(rng)
        out, info = letterbox(s, size)
        assert out.image.shape == (size, size, 3)
        back = info.undo_boxes(torch.from_numpy(out.boxes))
        np.testing.assert_allclose(back.numpy(), s.boxes, atol=1e-3)


def test_letterbox_boxes_land_on_painted_pixels():
    rng = np.random.default_rng(1)
    s, colours = painted_sample(rng)
    out, _ = letterbox(s, 320)
    for box, c in zip(out.boxes, colours):
        x1, y1, x2, y2 = box.round().astype(int)
        inner = out.image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3)
        assert (np.abs(inner.astype(int) - c).max(1) < 40).mean() > 0.95


def test_train_transform_keeps_boxes_on_their_colour():
    # No colour jitter, so each surviving box must still cover its own colour.
    cfg = AugmentConfig(jitter_prob=0.0, affine_prob=1.0)
    t = TrainTransform(cfg, seed=0)
    rng = np.random.default_rng(2)
    kept = 0
    for _ in range(30):
        s, colours = painted_sample(rng)
        out = t(s, 192)
        assert out.image.shape == (192, 192, 3)
        assert len(out.boxes) == len(out.labels) == len(out.difficult)
        for box, label in zip(out.boxes, out.labels):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 192
            cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
            px = out.image[min(cy, 191), min(cx, 191)].astype(int)
            assert np.abs(px - colours[label]).max() < 60
            kept += 1
    assert kept > 45  # most boxes survive a mild zoom/shift


def test_train_transform_reproducible_with_seed():
    rng = np.random.default_rng(3)
    s, _ = painted_sample(rng)
    a = TrainTransform(seed=5)(s, 128)
    b = TrainTransform(seed=5)(s, 128)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize("field,value", [("hue", 0.6), ("hflip", 1.5), ("scale", (1.2, 0.8))])
def test_invalid_augment_config_is_refused(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


# --- colour jitter: the one-pass matrix against the steps applied one by one ---------------

def _reference_jitter(image: np.ndarray, factors: dict, order: list) -> np.ndarray:
    """Each op's definition applied in turn to float pixels, slowly and literally."""
    x = image.astype(np.float64)
    luma = np.array([0.299, 0.587, 0.114])
    for op in order:
        f = factors[op]
        if op == "brightness":
            x = f * x
        elif op == "contrast":
            x = f * x + (1 - f) * (x @ luma).mean()
        elif op == "saturation":
            x = f * x + (1 - f) * (x @ luma)[..., None]
        elif op == "hue":
            # Rodrigues' rotation of every pixel vector about the grey axis
            k = np.ones(3) / np.sqrt(3)
            t = 2 * np.pi * f
            x = x * np.cos(t) + np.cross(k, x) * np.sin(t) + np.outer(x @ k, k).reshape(x.shape) * (1 - np.cos(t))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", range(6))
def test_colour_jitter_matrix_equals_the_steps_in_turn(seed):
    import cv2

    from yolov3.data.colour import JITTER_OPS, colour_jitter_matrix

    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    factors = {"brightness": rng.uniform(0.5, 1.5), "contrast": rng.uniform(0.5, 1.5),
               "saturation": rng.uniform(0, 2), "hue": rng.uniform(-0.5, 0.5)}
    order = [JITTER_OPS[i] for i in rng.permutation(4)]
    matrix = colour_jitter_matrix(factors, order, image.reshape(-1, 3).mean(0))
    got = cv2.transform(image, matrix.astype(np.float32))
    want = _reference_jitter(image, factors, order)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float32 matrix, rounding


def test_colour_jitter_ops_do_what_their_names_say():
    from yolov3.data.colour import colour_jitter_matrix

    grey = np.array([90.0, 90.0, 90.0])
    red = np.array([200.0, 40.0, 40.0])

    def apply(op, f, rgb, mean=None):
        m = colour_jitter_matrix({op: f}, [op], rgb if mean is None else mean)
        return m[:, :3] @ rgb + m[:, 3]

    np.testing.assert_allclose(apply("brightness", 0.0, red), 0.0)
    np.testing.assert_allclose(apply("saturation", 0.0, red), np.full(3, red @ [0.299, 0.587, 0.114]))
    np.testing.assert_allclose(apply("contrast", 0.0, red, mean=grey), grey)  # all pixels -> the mean luma
    np.testing.assert_allclose(apply("hue", 0.23, grey), grey)  # greys have no hue to turn
    np.testing.assert_allclose(apply("hue", 1 / 3, red), [40, 200, 40], atol=1e-9)  # a third: R -> G -> B -> R
    np.testing.assert_allclose(apply("hue", 1.0, red), red, atol=1e-9)  # a full turn
    with pytest.raises(ValueError, match="unknown colour jitter op"):
        colour_jitter_matrix({"gamma": 1.2}, ["gamma"], grey)


def test_colour_jitter_draws_within_the_configured_ranges():
    from yolov3.data.augment import AugmentConfig
    from yolov3.data.colour import colour_jitter

    image = np.full((8, 8, 3), 100, dtype=np.uint8)
    cfg = AugmentConfig(brightness=0.3, contrast=0.0, saturation=0.0, hue=0.0)
    values = {int(colour_jitter(image, np.random.default_rng(s), cfg)[0, 0, 0]) for s in range(200)}
    assert min(values) >= 70 and max(values) <= 130 and max(values) - min(values) > 40
    off = AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    assert colour_jitter(image, np.random.default_rng(0), off) is image
