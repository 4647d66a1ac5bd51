"""build_targets against a slow, obviously-correct loop over boxes."""

import math

import pytest
import torch

from yolov3.constants import DEFAULT_ANCHORS
from yolov3.targets import build_targets

ANCHORS = torch.tensor(DEFAULT_ANCHORS)


def shape_iou_scalar(w1, h1, w2, h2):
    inter = min(w1, w2) * min(h1, h2)
    return inter / (w1 * h1 + w2 * h2 - inter)


def reference(targets, batch_size, grid_sizes, anchors, ignore_threshold=0.5):
    """The documented rule, one box and one anchor at a time."""
    out = []
    rows = targets.tolist()
    for s, (gh, gw) in enumerate(grid_sizes):
        t = torch.zeros(batch_size, 3, gh, gw, 6)
        a = anchors[s].tolist()
        info = []
        for b, c, cx, cy, w, h in rows:
            ious = [shape_iou_scalar(w, h, aw, ah) for aw, ah in a]
            order = sorted(range(3), key=lambda k: (-ious[k], k))
            gi = min(max(int(math.floor(cx * gw)), 0), gw - 1)
            gj = min(max(int(math.floor(cy * gh)), 0), gh - 1)
            info.append((int(b), c, cx, cy, w, h, ious, order, gi, gj))
        assigned = [None] * len(rows)
        taken = set()
        for r in range(3):
            for k, (b, c, cx, cy, w, h, ious, order, gi, gj) in enumerate(info):
                if assigned[k] is not None:
                    continue
                key = (b, order[r], gj, gi)
                if key not in taken:
                    taken.add(key)
                    assigned[k] = order[r]
        for k, (b, c, cx, cy, w, h, ious, order, gi, gj) in enumerate(info):
            for anc in range(3):
                if anc != assigned[k] and ious[anc] > ignore_threshold and (b, anc, gj, gi) not in taken:
                    t[b, anc, gj, gi, 0] = -1
        for k, (b, c, cx, cy, w, h, ious, order, gi, gj) in enumerate(info):
            if assigned[k] is not None:
                t[b, assigned[k], gj, gi] = torch.tensor([1, cx * gw - gi, cy * gh - gj, w * gw, h * gh, c])
        out.append(t)
    return out


def random_batch(gen, batch_size, max_boxes, crowd=False):
    rows = []
    for b in range(batch_size):
        n = int(torch.randint(0, max_boxes + 1, (1,), generator=gen))
        for _ in range(n):
            w, h = (torch.rand(2, generator=gen) * 0.9 + 0.02).tolist()
            if crowd:  # many boxes in the same few cells: exercises the contested-slot rounds
                cx, cy = (0.5 + 0.02 * torch.rand(2, generator=gen)).tolist()
            else:
                cx, cy = torch.rand(2, generator=gen).tolist()
            c = int(torch.randint(0, 20, (1,), generator=gen))
            rows.append([b, c, cx, cy, w, h])
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)


@pytest.mark.parametrize("size", [320, 416, 608])
@pytest.mark.parametrize("crowd", [False, True])
def test_matches_loop_reference(size, crowd):
    gen = torch.Generator().manual_seed(size + crowd)
    grids = [(size // s, size // s) for s in (32, 16, 8)]
    for _ in range(5):
        targets = random_batch(gen, 4, 12, crowd=crowd)
        got = build_targets(targets, 4, grids, ANCHORS)
        want = reference(targets, 4, grids, ANCHORS)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_rectangular_grids_match_reference():
    gen = torch.Generator().manual_seed(7)
    grids = [(10, 13), (20, 26), (40, 52)]
    targets = random_batch(gen, 3, 10)
    for g, w in zip(build_targets(targets, 3, grids, ANCHORS), reference(targets, 3, grids, ANCHORS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_border_boxes_do_not_index_out_of_range():
    targets = torch.tensor(
        [[0, 3, 1.0, 1.0, 0.1, 0.1], [0, 4, 0.0, 0.0, 0.05, 0.05], [1, 5, 1.0, 0.0, 0.3, 0.2]]
    )
    out = build_targets(targets, 2, [(13, 13), (26, 26), (52, 52)], ANCHORS)
    for t, g in zip(out, (13, 26, 52)):
        # every box has exactly one positive per scale, in the corner cells
        assert int((t[..., 0] == 1).sum()) == 3
        assert t[0, :, g - 1, g - 1, 0].max() == 1
        assert t[0, :, 0, 0, 0].max() == 1
        assert t[1, :, 0, g - 1, 0].max() == 1
        pos = t[t[..., 0] == 1]
        assert (pos[:, 1:3] >= 0).all() and (pos[:, 1:3] <= 1).all()


def test_one_positive_per_scale_and_class_kept():
    targets = torch.tensor([[0, 7, 0.3, 0.6, 0.2, 0.4]])
    out = build_targets(targets, 1, [(13, 13), (26, 26), (52, 52)], ANCHORS)
    for t in out:
        pos = t[t[..., 0] == 1]
        assert pos.shape[0] == 1
        assert pos[0, 5] == 7
    # the box (0.2 x 0.4 of the image) matches the stride-32 anchor 156x198/416 best
    assert out[0][0, 1, 7, 3, 0] == 1


def test_empty_batch():
    out = build_targets(torch.zeros(0, 6), 2, [(4, 4), (8, 8), (16, 16)], ANCHORS)
    assert [tuple(t.shape) for t in out] == [(2, 3, 4, 4, 6), (2, 3, 8, 8, 6), (2, 3, 16, 16, 6)]
    assert all(t.abs().sum() == 0 for t in out)
