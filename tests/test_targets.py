"""build_targets against slow, obviously-correct loops over boxes: `reference` (our documented rule) and
`course_reference` (the course's rule), with one test per documented difference between the two."""

import math

import numpy as np
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


def course_reference(targets, batch_size, grid_sizes, anchors, ignore_threshold=0.5):
    """The course's rule (ERA V1 session 13, YOLO_V3/yolo_v3_utils/pascal_voc_dataset.py __getitem__), written
    out here as a per-box loop: each box in turn walks all anchors of all scales from best to worst shape IoU;
    a slot whose objectness is 0 becomes its positive if the box has none at that scale yet, else is marked -1
    when the IoU is above the threshold. A slot holding -1 is not 0, so it counts as taken. The cell is
    int(S * x) in float64, unclamped: a centre at 1.0 indexes out of range (IndexError)."""
    num_anchors = anchors.shape[1]
    out = [torch.zeros(batch_size, num_anchors, gh, gw, 6) for gh, gw in grid_sizes]
    flat_anchors = anchors.reshape(-1, 2).tolist()
    for b, c, cx, cy, w, h in targets.tolist():
        ious = [shape_iou_scalar(w, h, aw, ah) for aw, ah in flat_anchors]
        has_anchor = [False] * len(grid_sizes)
        for k in sorted(range(len(ious)), key=lambda k: (-ious[k], k)):
            s, a = divmod(k, num_anchors)
            gh, gw = grid_sizes[s]
            gj, gi = int(gh * cy), int(gw * cx)
            t = out[s][int(b)]
            if t[a, gj, gi, 0] != 0:  # positive or ignore: either blocks this box
                continue
            if not has_anchor[s]:
                t[a, gj, gi] = torch.tensor([1, cx * gw - gi, cy * gh - gj, w * gw, h * gh, c])
                has_anchor[s] = True
            elif ious[k] > ignore_threshold:
                t[a, gj, gi, 0] = -1
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
    """Difference (c): a centre at 1.0 goes to the last cell with offset 1.0; the course's rule raises IndexError."""
    targets = torch.tensor(
        [[0, 3, 1.0, 1.0, 0.1, 0.1], [0, 4, 0.0, 0.0, 0.05, 0.05], [1, 5, 1.0, 0.0, 0.3, 0.2]]
    )
    grids = [(13, 13), (26, 26), (52, 52)]
    out = build_targets(targets, 2, grids, ANCHORS)
    for t, want in zip(out, reference(targets, 2, grids, ANCHORS)):
        torch.testing.assert_close(t, want, atol=1e-5, rtol=0)
    for t, g in zip(out, (13, 26, 52)):
        # every box has exactly one positive per scale, in the corner cells, with offsets 1.0 on the far edges
        assert int((t[..., 0] == 1).sum()) == 3
        for b, gj, gi, offsets in ((0, g - 1, g - 1, (1.0, 1.0)), (0, 0, 0, (0.0, 0.0)), (1, 0, g - 1, (1.0, 0.0))):
            cell = t[b, :, gj, gi]
            pos = cell[cell[:, 0] == 1]
            assert pos.shape[0] == 1
            assert (pos[0, 1:3] - torch.tensor(offsets)).abs().max() < 1e-6
    for row in (targets[:1], targets[2:]):
        with pytest.raises(IndexError):
            course_reference(row, 2, grids, ANCHORS)
    course_reference(targets[1:2], 2, grids, ANCHORS)  # the (0, 0) corner is fine for the course too


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


# ---------------------------------------------------------------- the documented differences from the course

GRIDS_416 = [(13, 13), (26, 26), (52, 52)]


def positives(t):
    """{(anchor, gj, gi): class} of the positives of one image's (A, gh, gw, 6) target."""
    return {tuple(k): int(t[tuple(k)][5]) for k in (t[..., 0] == 1).nonzero().tolist()}


def test_course_reference_agrees_where_no_difference_applies():
    """The two references agree with build_targets on boxes that each have their own cell at every scale
    (distinct 13x13 cells imply distinct finer cells), so the tests below isolate the listed differences."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        cells = torch.randperm(169, generator=gen)[:12]
        rows = []
        for n, cell in enumerate(cells.tolist()):
            cx, cy = ((torch.tensor([cell % 13, cell // 13]) + 0.05 + 0.9 * torch.rand(2, generator=gen)) / 13).tolist()
            w, h = (torch.rand(2, generator=gen) * 0.9 + 0.02).tolist()
            rows.append([n % 2, n % 20, cx, cy, w, h])
        targets = torch.tensor(rows)
        got = build_targets(targets, 2, GRIDS_416, ANCHORS)
        for g, c in zip(got, course_reference(targets, 2, GRIDS_416, ANCHORS)):
            torch.testing.assert_close(g, c, atol=1e-5, rtol=0)


def test_two_boxes_per_cell_agree_with_course_without_ignore_marks():
    """Rounds and box-by-box give the same claims for two boxes in a cell: only (a) and three or more boxes
    per cell separate the rules. ignore_threshold=1.0 switches ignore marks (difference a) off."""
    gen = torch.Generator().manual_seed(4)
    for _ in range(20):
        rows = []
        for b in range(2):
            for n in range(2):  # two boxes in the same cell of every scale
                w, h = (torch.rand(2, generator=gen) * 0.5 + 0.01).tolist()
                rows.append([b, n, 0.505 + 0.01 * n, 0.505 + 0.01 * n, w, h])
        targets = torch.tensor(rows)
        got = build_targets(targets, 2, GRIDS_416, ANCHORS, ignore_threshold=1.0)
        for g, c in zip(got, course_reference(targets, 2, GRIDS_416, ANCHORS, ignore_threshold=1.0)):
            torch.testing.assert_close(g, c, atol=1e-5, rtol=0)


def test_ignore_mark_does_not_block_a_later_claim():
    """Difference (a). At the 26x26 scale, box 1 (0.10 x 0.11, class 1) is best at anchor 1 (IoU 0.66) and marks
    anchor 0 (IoU 0.58 > 0.5) ignore; box 2 (class 2) *is* anchor 0 (30x61 / 416, IoU 1) in the same cell. The
    course's rule blocks box 2 on the -1 and gives it anchor 2 (IoU 0.26); ours gives it anchor 0 in both box
    orders, while the course's outcome depends on the order."""
    box1 = [0, 1, 0.52, 0.52, 0.10, 0.11]
    box2 = [0, 2, 0.53, 0.53, 30 / 416, 61 / 416]
    a = ANCHORS[1].tolist()
    ious1 = [shape_iou_scalar(0.10, 0.11, *x) for x in a]
    ious2 = [shape_iou_scalar(30 / 416, 61 / 416, *x) for x in a]
    assert ious1[1] > ious1[0] + 0.05 and ious1[0] > 0.55 and ious2[0] > 0.999  # the case is as described
    for rows in ([box1, box2], [box2, box1]):
        targets = torch.tensor(rows)
        got = build_targets(targets, 1, GRIDS_416, ANCHORS)
        for g, w in zip(got, reference(targets, 1, GRIDS_416, ANCHORS)):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
        assert positives(got[1][0]) == {(1, 13, 13): 1, (0, 13, 13): 2}
        assert not (got[1][..., 0] == -1).any()  # box 1's ignore mark lost to box 2's positive
    course_first = course_reference(torch.tensor([box1, box2]), 1, GRIDS_416, ANCHORS)[1][0]
    assert positives(course_first) == {(1, 13, 13): 1, (2, 13, 13): 2}  # box 2 lost its perfect anchor
    assert course_first[0, 13, 13, 0] == -1
    course_second = course_reference(torch.tensor([box2, box1]), 1, GRIDS_416, ANCHORS)[1][0]
    assert positives(course_second) == {(1, 13, 13): 1, (0, 13, 13): 2}


def test_crowded_cell_claims_go_in_rounds():
    """Difference (b). Three boxes in one 26x26 cell, no ignore marks involved (every IoU but the best is < 0.5):
    box 1 (class 1) is anchor 1 (62x45), box 2 (class 2, 60x48) ranks anchors 1, 0, 2, box 3 (class 3) is
    anchor 0 (30x61). Rounds: box 1 takes anchor 1 and box 3 anchor 0 in round 1, box 2 is left with anchor 2.
    Box by box (the course): box 2 takes anchor 0 before box 3 tries, and box 3 is left with anchor 2."""
    rows = [[0, 1, 0.505, 0.505, 62 / 416, 45 / 416], [0, 2, 0.515, 0.515, 60 / 416, 48 / 416],
            [0, 3, 0.525, 0.525, 30 / 416, 61 / 416]]
    a = ANCHORS[1].tolist()
    ranks = []
    for _, _, _, _, w, h in rows:
        ious = [shape_iou_scalar(w, h, *x) for x in a]
        assert sorted(ious)[1] < 0.45 and sorted(ious)[2] > 0.9  # one clear best, no ignore marks
        ranks.append(sorted(range(3), key=lambda k: -ious[k]))
    assert ranks == [[1, 0, 2], [1, 0, 2], [0, 1, 2]]
    targets = torch.tensor(rows)
    got = build_targets(targets, 1, GRIDS_416, ANCHORS)
    for g, w in zip(got, reference(targets, 1, GRIDS_416, ANCHORS)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    assert positives(got[1][0]) == {(1, 13, 13): 1, (2, 13, 13): 2, (0, 13, 13): 3}
    course = course_reference(targets, 1, GRIDS_416, ANCHORS)[1][0]
    assert positives(course) == {(1, 13, 13): 1, (0, 13, 13): 2, (2, 13, 13): 3}
    assert not (got[1][..., 0] == -1).any() and not (course[..., 0] == -1).any()


# Difference (d), as measured and stated in yolov3.targets: the k in 1..S-1 for which a centre at x = k / S
# falls in cell k - 1 instead of k, in float32 (ours) and in the course's float64.
FLOAT32_BELOW = {(38, 27), (76, 27), (76, 54)}
FLOAT64_BELOW = {(26, 15), (52, 15), (52, 30), (76, 53)}


@pytest.mark.parametrize("grids", [(10, 20, 40), (13, 26, 52), (19, 38, 76)])
def test_centre_on_cell_border_follows_float32_floor(grids):
    """Difference (d): centre (k / S, k / S) for every k in 1..S-1 lands in cell floor(float32(k/S) * S) computed
    in float32, which is k except at FLOAT32_BELOW; the course's int(S * (k / S)) in float64 is k except at
    FLOAT64_BELOW."""
    for size in grids:
        ks = list(range(1, size))
        targets = torch.tensor([[n, 0, k / size, k / size, 0.05, 0.05] for n, k in enumerate(ks)])
        (t,) = build_targets(targets, len(ks), [(size, size)], ANCHORS[:1])
        for n, k in enumerate(ks):
            want = int(np.floor(np.float32(k / size) * np.float32(size)))
            assert want == (k - 1 if (size, k) in FLOAT32_BELOW else k)
            assert int(size * (k / size)) == (k - 1 if (size, k) in FLOAT64_BELOW else k)
            cells = (t[n, ..., 0] == 1).nonzero().tolist()
            assert len(cells) == 1 and cells[0][1:] == [want, want], (size, k, cells)
            offset = t[n][tuple(cells[0])][1:3]
            assert ((offset >= 0) & (offset <= 1)).all()
