"""Mosaic and the training pipeline, checked through the pixels.

Every box of the source images is painted in a colour that encodes its id (its label), on
a grey background, with gaps between boxes. After augmentation a box's colour can be
found again, so the tests check the boxes against what is really in the picture.
"""

import numpy as np
import pytest
import torch

from yolov3.data.augment import AugmentConfig, TrainTransform, mosaic
from yolov3.data.sample import Sample

# Well-separated colours (max-abs distance >= 128 from each other and from the greys).
PALETTE = np.array([
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255),
    (0, 0, 0), (255, 255, 255), (255, 0, 128), (0, 128, 255), (128, 255, 0), (255, 128, 0),
], dtype=np.int16)
TOL = 36  # a pixel belongs to colour k if every channel is within TOL of it


def colour_sample(rng, first_id, n_boxes=3):
    """A grey image with `n_boxes` non-touching painted boxes, ids first_id.. (used as labels)."""
    h, w = rng.integers(160, 320, size=2)
    img = np.full((h, w, 3), 128, np.uint8)
    boxes = []
    col = w // n_boxes
    for k in range(n_boxes):  # one box per column band, with a margin, so boxes never touch
        bw, bh = rng.integers(12, col - 8), rng.integers(12, h // 2)
        x1, y1 = k * col + 4 + rng.integers(0, col - bw - 7), rng.integers(0, h - bh)
        img[y1 : y1 + bh, x1 : x1 + bw] = PALETTE[first_id + k]
        boxes.append([x1, y1, x1 + bw, y1 + bh])
    return Sample(img, np.array(boxes, np.float32), np.arange(first_id, first_id + n_boxes))


def colour_masks(image):
    """(H, W, 3) -> (12, H, W) bool: which pixels show each palette colour."""
    diff = np.abs(image[None].astype(np.int16) - PALETTE[:, None, None, :]).max(-1)
    return diff <= TOL


def four_sources(rng):
    return [colour_sample(rng, 3 * k) for k in range(4)]


def full_area_after(sources, size, box_id):
    """Area of box `box_id` once its image is resized so the longer side is `size`."""
    s = sources[box_id // 3]
    h, w = s.image.shape[:2]
    scale = size / max(h, w)
    sx, sy = max(1, round(w * scale)) / w, max(1, round(h * scale)) / h
    x1, y1, x2, y2 = s.boxes[box_id % 3]
    return (x2 - x1) * sx * (y2 - y1) * sy


@pytest.mark.parametrize("seed", range(6))
def test_mosaic_boxes_match_their_pixels_and_the_survival_rule(seed):
    """Zoom fixed at 1 (area factor 1), so every box's uncut area is known: a kept box must
    sit tightly on its colour and keep enough of it; a dropped box must really be (nearly)
    gone, too small or too thin."""
    cfg = AugmentConfig(mosaic_scale=(1.0, 1.0), translate=0.2, min_box_size=3, min_area_ratio=0.25,
                        max_aspect_ratio=8)
    rng = np.random.default_rng(seed)
    size = 256
    kept_total = dropped_total = 0
    for _ in range(25):
        sources = four_sources(rng)
        out = mosaic(sources, size, rng, cfg)
        assert out.image.shape == (size, size, 3) and out.image.dtype == np.uint8
        masks = colour_masks(out.image)
        kept = set(out.labels.tolist())
        assert len(kept) == len(out.labels)  # a box is never duplicated
        for box, box_id in zip(out.boxes, out.labels):
            x1, y1, x2, y2 = box
            assert 0 <= x1 < x2 <= size and 0 <= y1 < y2 <= size
            mask = masks[box_id]
            ys, xs = np.nonzero(mask)
            inside = (xs >= x1 - 1.5) & (xs < x2 + 1.5) & (ys >= y1 - 1.5) & (ys < y2 + 1.5)
            assert inside.mean() > 0.99, "the box does not cover its colour"
            area = (x2 - x1) * (y2 - y1)
            perimeter = 2 * ((x2 - x1) + (y2 - y1))
            assert mask.sum() >= area - perimeter, "the box is larger than what is left of its colour"
            assert mask.sum() >= cfg.min_area_ratio * full_area_after(sources, size, box_id) - perimeter
        for box_id in set(range(12)) - kept:
            mask = masks[box_id]
            visible = mask.sum()
            if visible == 0:
                continue
            ys, xs = np.nonzero(mask)
            w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
            perimeter = 2 * (w + h)
            too_little = visible <= cfg.min_area_ratio * full_area_after(sources, size, box_id) + perimeter
            too_small = min(w, h) <= cfg.min_box_size + 1
            too_thin = max(w / h, h / w) >= cfg.max_aspect_ratio * 0.75
            assert too_little or too_small or too_thin, f"box {box_id} was dropped but {visible} px of it show"
        kept_total += len(kept)
        dropped_total += 12 - len(kept)
    assert kept_total > 20 and dropped_total > 20  # both branches of the rule were exercised


def test_mosaic_with_zoom_rotation_and_shear_keeps_boxes_on_their_colour():
    cfg = AugmentConfig(mosaic_scale=(0.5, 1.5), degrees=15, shear=5, translate=0.1)
    rng = np.random.default_rng(42)
    kept = 0
    for _ in range(60):
        sources = four_sources(rng)
        out = mosaic(sources, 192, rng, cfg)
        masks = colour_masks(out.image)
        for box, box_id in zip(out.boxes, out.labels):
            x1, y1, x2, y2 = box
            ys, xs = np.nonzero(masks[box_id])
            assert len(xs) > 0, "a kept box whose colour is gone"
            inside = (xs >= x1 - 1.5) & (xs < x2 + 1.5) & (ys >= y1 - 1.5) & (ys < y2 + 1.5)
            assert inside.mean() > 0.99
            kept += 1
    assert kept > 100


def test_tiles_are_resized_to_the_output_size_and_placed_around_the_centre():
    """Zoom 1, no shift: the output is the canvas window [S/2, 3S/2]^2. Each source is one
    box filling the whole image, so each tile's visible part can be predicted exactly from
    the centre (read off the first, square, tile) and the tile sizes (longer side = S)."""
    size = 128
    cfg = AugmentConfig(mosaic_scale=(1.0, 1.0), translate=0.0, min_area_ratio=0.0, max_aspect_ratio=1000)
    shapes = [(300, 300), (40, 80), (128, 128), (500, 250)]  # (h, w) -> tiles 128x128, 64x128, 128x128, 128x64
    sources = []
    for k, (h, w) in enumerate(shapes):
        img = np.zeros((h, w, 3), np.uint8) + PALETTE[k].astype(np.uint8)
        sources.append(Sample(img, np.array([[0, 0, w, h]], np.float32), np.array([k])))
    for seed in range(10):
        out = mosaic(sources, size, np.random.default_rng(seed), cfg)
        masks = colour_masks(out.image)
        ys, xs = np.nonzero(masks[0])  # tile 0 ends at the centre and reaches past the window's corner
        assert xs.min() == 0 and ys.min() == 0
        cx, cy = xs.max() + 1, ys.max() + 1
        expected = {
            0: (0, 0, cx, cy),
            1: (cx, max(cy - 64, 0), min(cx + 128, size), cy),
            2: (0, cy, cx, size),
            3: (cx, cy, min(cx + 64, size), size),
        }
        boxes = {int(label): box for box, label in zip(out.boxes, out.labels)}
        for k, (x1, y1, x2, y2) in expected.items():
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            ys, xs = np.nonzero(masks[k])
            assert abs(xs.min() - x1) <= 1 and abs(xs.max() + 1 - x2) <= 1, (seed, k)
            assert abs(ys.min() - y1) <= 1 and abs(ys.max() + 1 - y2) <= 1, (seed, k)
            np.testing.assert_allclose(boxes[k], [x1, y1, x2, y2], atol=1.0)


class CountingPool:
    """A pool of samples that counts how often mosaic partners are drawn from it."""

    def __init__(self, samples):
        self.samples, self.draws = samples, 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        self.draws += 1
        return self.samples[i]


def test_mosaic_share_is_the_configured_probability():
    rng = np.random.default_rng(0)
    samples = [Sample(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), np.array([[2, 2, 20, 20]]), np.array([0]))
               for _ in range(5)]
    pool = CountingPool(samples)
    transform = TrainTransform(AugmentConfig(mosaic_prob=0.75, jitter_prob=0.0, blur_prob=0, gray_prob=0,
                                             clahe_prob=0), seed=123)
    n = 10_000
    for i in range(n):
        transform(samples[i % 5], 32, pool)
    share = pool.draws / 3 / n
    assert abs(share - 0.75) <= 0.02, share
    # and it is random, not a counter: runs of non-mosaic samples vary in length
    pool2 = CountingPool(samples)
    flags = []
    for i in range(400):
        before = pool2.draws
        transform(samples[i % 5], 32, pool2)
        flags.append(pool2.draws > before)
    gaps = np.diff(np.flatnonzero(flags))
    assert len(set(gaps.tolist())) > 3


def test_no_mosaic_without_a_pool_or_with_probability_zero():
    rng = np.random.default_rng(1)
    s = colour_sample(rng, 0)
    pool = CountingPool([s] * 3)
    t = TrainTransform(AugmentConfig(mosaic_prob=0.0), seed=0)
    for _ in range(50):
        t(s, 64, pool)
    assert pool.draws == 0
    t = TrainTransform(AugmentConfig(mosaic_prob=1.0), seed=0)
    out = t(s, 64)  # no pool (e.g. a single image): falls back to the single-image path
    assert out.image.shape == (64, 64, 3)


def test_transform_is_reproducible_and_seeds_differ():
    rng = np.random.default_rng(2)
    samples = four_sources(rng)
    cfg = AugmentConfig(mosaic_prob=0.75)

    def run(seed):
        t = TrainTransform(cfg, seed=seed)
        return [t(samples[i % 4], 96, samples) for i in range(12)]

    a, b, c = run(7), run(7), run(8)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.image, y.image)
        np.testing.assert_array_equal(x.boxes, y.boxes)
    assert any(not np.array_equal(x.image, z.image) for x, z in zip(a, c))


def test_photometric_extras_keep_boxes_and_shape():
    rng = np.random.default_rng(4)
    s = colour_sample(rng, 0)
    cfg = AugmentConfig(mosaic_prob=0.0, affine_prob=0.0, hflip=0.0, blur_prob=1.0, gray_prob=1.0, clahe_prob=1.0)
    out = TrainTransform(cfg, seed=0)(s, 128)
    assert out.image.shape == (128, 128, 3)
    assert np.ptp(out.image.astype(int), axis=-1).max() <= 1  # grayscale: the channels agree
    assert len(out.boxes) == 3


@pytest.mark.parametrize("field,value", [
    ("mosaic_prob", 1.2), ("mosaic_scale", (0.0, 1.0)), ("min_area_ratio", -0.1),
    ("max_aspect_ratio", 0.5), ("degrees", 200), ("blur_prob", 2.0), ("translate", -1),
])
def test_invalid_mosaic_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**{field: value})


def test_hflip_moves_boxes_with_pixels():
    rng = np.random.default_rng(5)
    s = colour_sample(rng, 0)
    cfg = AugmentConfig(mosaic_prob=0.0, affine_prob=0.0, hflip=1.0, jitter_prob=0.0)
    out = TrainTransform(cfg, seed=0)(s, 160)
    masks = colour_masks(out.image)
    for box, box_id in zip(out.boxes, out.labels):
        ys, xs = np.nonzero(masks[box_id])
        assert abs(xs.min() - box[0]) <= 1.5 and abs(xs.max() + 1 - box[2]) <= 1.5


def test_mosaic_of_images_without_boxes():
    rng = np.random.default_rng(6)
    empty = [Sample(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8), np.zeros((0, 4)), np.zeros(0)) for _ in range(4)]
    out = mosaic(empty, 64, rng, AugmentConfig())
    assert out.boxes.shape == (0, 4) and out.labels.shape == (0,) and out.difficult.shape == (0,)


def test_difficult_flags_follow_their_boxes():
    rng = np.random.default_rng(7)
    sources = four_sources(rng)
    for s in sources:
        s.difficult = s.labels % 2 == 1  # odd ids are "difficult"
    cfg = AugmentConfig(mosaic_scale=(1.0, 1.0))
    for _ in range(20):
        out = mosaic(sources, 128, rng, cfg)
        np.testing.assert_array_equal(out.difficult, out.labels % 2 == 1)


def test_mosaic_output_is_a_torch_friendly_array():
    rng = np.random.default_rng(8)
    out = TrainTransform(AugmentConfig(mosaic_prob=1.0), seed=0)(colour_sample(rng, 0), 96, four_sources(rng))
    t = torch.from_numpy(out.image).permute(2, 0, 1)  # contiguous, uint8, no negative strides
    assert t.shape == (3, 96, 96) and out.boxes.dtype == np.float32
