"""Letterbox: the one apply/undo of the input fitting, against slow per-pixel references."""

import cv2
import numpy as np
import pytest
import torch

from yolov3.letterbox import PAD_VALUE, Letterbox


@pytest.mark.parametrize("w,h,size", [(500, 300, 416), (300, 500, 416), (64, 64, 96), (1, 700, 64), (97, 33, 32)])
def test_fit_puts_the_longer_side_on_the_input_and_centres_the_padding(w, h, size):
    lb = Letterbox.fit(w, h, size)
    new_w, new_h = lb.resized
    assert max(new_w, new_h) == size and min(new_w, new_h) >= 1
    assert abs(new_w / new_h - w / h) <= max(1 / new_h, w / h / new_w) * 1.01  # aspect kept to a pixel
    assert (lb.pad_x, lb.pad_y) == ((size - new_w) // 2, (size - new_h) // 2)
    assert lb.scale_x == pytest.approx(new_w / w) and lb.scale_y == pytest.approx(new_h / h)


def _bilinear(img: np.ndarray, u: float, v: float) -> np.ndarray:
    """The image sampled at continuous pixel coordinates (u, v) (pixel centres at integers),
    edges repeated: the slow, obvious reference of a bilinear resize."""
    h, w = img.shape[:2]
    u, v = min(max(u, 0.0), w - 1.0), min(max(v, 0.0), h - 1.0)
    x0, y0 = int(np.floor(u)), int(np.floor(v))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = u - x0, v - y0
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("w,h,size", [(50, 30, 100), (21, 40, 64)])
def test_apply_image_places_every_pixel_where_the_mapping_says(w, h, size):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    lb = Letterbox.fit(w, h, size)
    out = lb.apply_image(img)
    new_w, new_h = lb.resized
    assert out.shape == (size, size, 3)
    inside = np.zeros((size, size), bool)
    inside[lb.pad_y : lb.pad_y + new_h, lb.pad_x : lb.pad_x + new_w] = True
    assert (out[~inside] == PAD_VALUE).all()
    for i in range(lb.pad_y, lb.pad_y + new_h):  # x_in = x * scale + pad, at pixel centres
        for j in range(lb.pad_x, lb.pad_x + new_w):
            u = (j - lb.pad_x + 0.5) / lb.scale_x - 0.5
            v = (i - lb.pad_y + 0.5) / lb.scale_y - 0.5
            assert np.abs(out[i, j].astype(float) - _bilinear(img.astype(float), u, v)).max() <= 1.5, (i, j)
    with pytest.raises(ValueError, match=f"{w}x{h}"):
        lb.apply_image(np.zeros((h + 1, w, 3), np.uint8))


def test_boxes_go_and_come_back_and_undo_clips_to_the_image():
    rng = np.random.default_rng(1)
    for _ in range(20):
        w, h = (int(v) for v in rng.integers(8, 900, 2))
        lb = Letterbox.fit(w, h, int(rng.choice([160, 416, 608])))
        xy = rng.uniform(0, [w, h], (10, 2))
        boxes = np.concatenate((xy, xy + rng.uniform(0, [w, h], (10, 2)) * 0.3), 1).clip(0, [w, h, w, h])
        back = lb.undo_boxes(torch.from_numpy(lb.apply_boxes(boxes.astype(np.float32))))
        np.testing.assert_allclose(back.numpy(), boxes, atol=1e-3 * max(w, h))
        whole = lb.undo_boxes(torch.tensor([[0.0, 0.0, lb.size, lb.size]]))  # the padding is cut off
        np.testing.assert_allclose(whole.numpy(), [[0, 0, w, h]], atol=1e-4)


def test_undo_map_reads_the_input_coordinate_back_on_the_image():
    lb = Letterbox.fit(120, 60, 96)
    # on a stride-4 grid: cell k covers input pixels 4k .. 4k + 3, its centre is at x_in = 4k + 2
    grid = ((torch.arange(24, dtype=torch.float32) * 4 + 2) / 96)[None, :].expand(24, 24)
    out = lb.undo_map(grid)
    assert out.shape == (60, 120) and out.dtype == np.float32
    expected = ((np.arange(120) + 0.5) * lb.scale_x + lb.pad_x) / 96
    np.testing.assert_allclose(out[30, 4:-4], expected[4:-4], atol=0.01)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="0x10"):
        Letterbox.fit(0, 10, 416)


@pytest.mark.parametrize("h, w", [(375, 500), (500, 333), (281, 500), (100, 60), (416, 416), (1000, 417), (17, 900)])
def test_course_style_is_the_courses_test_transforms(h, w):
    """The "course" letterbox equals the course's test_transforms (albumentations LongestMaxSize
    then PadIfNeeded with BORDER_CONSTANT) to the bit; "yolo" does not (grey, area)."""
    albumentations = pytest.importorskip("albumentations")
    course = albumentations.Compose([albumentations.LongestMaxSize(max_size=416),
                                     albumentations.PadIfNeeded(min_height=416, min_width=416,
                                                                border_mode=cv2.BORDER_CONSTANT)])
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    box = Letterbox.fit(w, h, 416)
    assert np.array_equal(box.apply_image(image, style="course"), course(image=image)["image"])
    if (h, w) != (416, 416):
        assert not np.array_equal(box.apply_image(image), course(image=image)["image"])
    with pytest.raises(ValueError, match="unknown letterbox style 'black'"):
        box.apply_image(image, style="black")
