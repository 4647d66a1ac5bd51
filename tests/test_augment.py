import numpy as np
import pytest
import torch

from yolov3.boxes import undo_letterbox
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
        lb = torch.tensor([info.scale_x, info.scale_y, info.pad_x, info.pad_y])
        back = undo_letterbox(torch.from_numpy(out.boxes), lb, torch.tensor(s.image.shape[1::-1]))
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
