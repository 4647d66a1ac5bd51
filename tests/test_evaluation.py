"""VOC AP and COCO mAP: hand-computed cases for every rule, and a slow devkit-style reference
compared with the vectorised evaluation on random data. Inputs go in as in training, through
DetectionMAP.update, whose states are the flat arrays evaluate_voc and coco_map take."""

import math
import random

import numpy as np
import pytest
import torch

from yolov3.coco_eval import coco_map
from yolov3.evaluation import voc_ap
from yolov3.metrics import DetectionMAP

# --------------------------------------------------------------------------------------------
# Reference: the VOC devkit's voc_eval written as plain loops (continuous boxes, no +1)
# --------------------------------------------------------------------------------------------


def iou_ref(d, g):
    iw = max(0.0, min(d[2], g[2]) - max(d[0], g[0]))
    ih = max(0.0, min(d[3], g[3]) - max(d[1], g[1]))
    inter = iw * ih
    union = (d[2] - d[0]) * (d[3] - d[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / union if union > 0 else 0.0


def ap_ref(rec, prec, use_07):
    if use_07:
        # the thresholds of py-faster-rcnn's voc_eval.py (np.arange: 0.30000000000000004 ...)
        return sum(max([p for r, p in zip(rec, prec) if r >= t], default=0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def voc_eval_ref(dets, gts, cls, thr=0.5):
    """dets: per image list of [x1, y1, x2, y2, score, class] (images in id order); gts: per image
    list of (box, label, difficult). Returns (ap07, ap2010), NaN without positives."""
    recs = [[(b, dif) for b, lab, dif in g if lab == cls] for g in gts]
    matched = [[False] * len(r) for r in recs]
    npos = sum(not dif for r in recs for _, dif in r)
    # Python's sort is stable: ties keep (image order, row order), the documented rule
    order = sorted(((d[4], i, d[:4]) for i, img in enumerate(dets) for d in img if d[5] == cls), key=lambda t: -t[0])
    tp, fp = [], []
    for _, i, box in order:
        ovmax, jmax = -math.inf, -1
        for j, (g, _) in enumerate(recs[i]):
            ov = iou_ref(box, g)
            if ov > ovmax:
                ovmax, jmax = ov, j
        t = f = 0
        if ovmax > thr:
            if not recs[i][jmax][1]:
                if not matched[i][jmax]:
                    t, matched[i][jmax] = 1, True
                else:
                    f = 1
        else:
            f = 1
        tp.append(t)  # the devkit keeps ignored detections as tp = fp = 0 rows
        fp.append(f)
    if npos == 0:
        return math.nan, math.nan
    rec, prec, ct, cf = [], [], 0, 0
    for t, f in zip(tp, fp):
        ct, cf = ct + t, cf + f
        rec.append(ct / npos)
        prec.append(ct / max(ct + cf, np.finfo(np.float64).eps))
    return ap_ref(rec, prec, True), ap_ref(rec, prec, False)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def gt(boxes, labels, difficult=None):
    return {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4), "labels": np.asarray(labels, dtype=np.int64),
            "difficult": np.zeros(len(labels), bool) if difficult is None else np.asarray(difficult, bool)}


def dets(*rows):
    return np.asarray(rows, dtype=np.float64).reshape(-1, 6)


def accumulate(det_list, gt_list, num_classes=1, image_ids=None, coco=False):
    """A DetectionMAP fed the images in one batch; image ids 0..N-1 unless given."""
    m = DetectionMAP(num_classes, coco=coco)
    m.update(det_list, [g["boxes"] for g in gt_list], [g["labels"] for g in gt_list],
             [g.get("difficult", np.zeros(len(g["labels"]), bool)) for g in gt_list],
             range(len(det_list)) if image_ids is None else image_ids)
    return m


def evaluate(det_list, gt_list, num_classes=1, image_ids=None):
    """evaluate_voc's result (per-class AP, PR curves) for the images."""
    return accumulate(det_list, gt_list, num_classes, image_ids).compute()["voc"]


def arrays(det_list, gt_list):
    """The images as EvalArrays (ids 0..N-1)."""
    return accumulate(det_list, gt_list).arrays()


# --------------------------------------------------------------------------------------------
# voc_ap
# --------------------------------------------------------------------------------------------


def test_voc_ap_11_point_and_all_point_on_a_known_curve():
    # TP, FP, TP, FP, FP, TP with 4 positives
    rec = [0.25, 0.25, 0.5, 0.5, 0.5, 0.75]
    prec = [1 / 1, 1 / 2, 2 / 3, 2 / 4, 2 / 5, 3 / 6]
    # all-point: envelope 1 up to recall .25, 2/3 up to .5, 1/2 up to .75, nothing after
    assert voc_ap(rec, prec, False) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 0.5, abs=1e-12)
    # 11-point: t = 0, .1, .2 -> 1; .3, .4, .5 -> 2/3; .6, .7 -> 1/2; .8, .9, 1 -> 0
    assert voc_ap(rec, prec, True) == pytest.approx((3 * 1 + 3 * 2 / 3 + 2 * 0.5) / 11, abs=1e-12)


def test_voc_ap_uses_the_precision_envelope():
    # FP, TP, TP with 2 positives: precision 0, 1/2, 2/3 rises with recall
    rec, prec = [0.0, 0.5, 1.0], [0.0, 0.5, 2 / 3]
    # the envelope lifts the first half to 2/3; the raw curve would give .5 * .5 + .5 * 2/3
    assert voc_ap(rec, prec, False) == pytest.approx(2 / 3, abs=1e-12)
    assert voc_ap(rec, prec, True) == pytest.approx(2 / 3, abs=1e-12)


def test_voc_ap_11_point_thresholds_are_the_python_ports():
    """np.arange(0., 1.1, 0.1) as in voc_eval.py: a recall of exactly 3/10, 6/10 or 7/10
    does not reach t = 0.3, 0.6 or 0.7 (those thresholds are a hair above the decimals)."""
    assert voc_ap([0.1, 0.2, 3 / 10], [1.0, 1.0, 1.0], True) == pytest.approx(3 / 11, abs=1e-12)
    assert voc_ap([0.2, 0.4, 6 / 10], [1.0, 1.0, 1.0], True) == pytest.approx(6 / 11, abs=1e-12)
    assert voc_ap([0.5, 7 / 10], [1.0, 1.0], True) == pytest.approx(7 / 11, abs=1e-12)
    assert voc_ap([0.5, 0.8], [1.0, 1.0], True) == pytest.approx(9 / 11, abs=1e-12)  # 0.8 is reached


def test_voc07_ap_of_a_class_whose_recall_is_exactly_six_tenths():
    """End to end: 10 positives, 6 found with precision 1, recall 6 / 10 = 0.6 exactly. The
    ports give 6/11 (t = 0 .. 0.5); exact tenths would give 7/11."""
    boxes = [[20 * k, 0, 20 * k + 10, 10] for k in range(10)]
    found = np.array([[*boxes[k], 1.0 - k / 100, 0] for k in range(6)])
    r = evaluate([found], [gt(boxes, [0] * 10)])
    assert r["recall"][0][-1] == 0.6
    assert r["ap_07"][0] == pytest.approx(6 / 11, abs=1e-12)
    assert r["ap_2010"][0] == pytest.approx(0.6, abs=1e-12)


def test_voc_ap_empty_curve_is_zero():
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0


# --------------------------------------------------------------------------------------------
# Matching rules
# --------------------------------------------------------------------------------------------


def test_iou_exactly_at_threshold_is_not_a_match():
    g = [gt([[0, 0, 10, 10]], [0])]
    # inter 50, union 100: IoU exactly 0.5 in floating point
    r = evaluate([dets([0, 0, 10, 5, 0.9, 0])], g)
    assert r["num_tp"][0] == 0 and r["ap_2010"][0] == 0.0
    # inter 100, union 200: also exactly 0.5, from the other side
    assert evaluate([dets([0, 0, 20, 10, 0.9, 0])], g)["ap_2010"][0] == 0.0
    # IoU 0.6 matches
    assert evaluate([dets([0, 0, 10, 6, 0.9, 0])], g)["ap_2010"][0] == 1.0


def test_difficult_ground_truth_is_neither_tp_nor_fp_nor_a_positive():
    g = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=[True, False])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.85, 0], [20, 20, 30, 30, 0.8, 0])]
    r = evaluate(d, g)
    assert r["num_positives"][0] == 1
    assert r["num_detections"][0] == 1  # both detections on the difficult box are dropped
    np.testing.assert_allclose(r["precision"][0], [1.0])
    np.testing.assert_allclose(r["recall"][0], [1.0])
    # were they FPs, precision at the TP would be 1/3 and AP 1/3
    assert r["ap_07"][0] == 1.0 and r["ap_2010"][0] == 1.0


def test_each_ground_truth_is_matched_once_duplicates_are_fp():
    g = [gt([[0, 0, 10, 10]], [0]), gt([[0, 0, 10, 10]], [0])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]), dets([0, 0, 10, 10, 0.7, 0])]
    r = evaluate(d, g)
    np.testing.assert_allclose(r["precision"][0], [1, 1 / 2, 2 / 3])
    np.testing.assert_allclose(r["recall"][0], [0.5, 0.5, 1.0])
    assert r["ap_2010"][0] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-12)


def test_best_box_already_taken_is_fp_even_if_another_box_overlaps():
    # second detection: IoU 90/110 with box A (taken) and 80/120 with box B (free): devkit -> FP
    g = [gt([[0, 0, 10, 10], [3, 0, 13, 10]], [0, 0])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [1, 0, 11, 10, 0.8, 0])]
    r = evaluate(d, g)
    np.testing.assert_allclose(r["precision"][0], [1.0, 0.5])
    assert r["num_tp"][0] == 1


def test_equal_iou_goes_to_the_first_ground_truth_in_annotation_order():
    # the detection overlaps both boxes by 50/70; the first one decides the outcome
    boxes = [[0, 0, 6, 10], [4, 0, 10, 10]]
    d = [dets([1, 0, 9, 10, 0.9, 0])]
    r = evaluate(d, [gt(boxes, [0, 0], difficult=[True, False])])
    assert r["num_detections"][0] == 0  # ignored through the difficult first box
    r = evaluate(d, [gt(boxes, [0, 0], difficult=[False, True])])
    assert r["num_tp"][0] == 1


def test_score_ties_follow_image_id_then_row_order():
    g = [gt([[50, 50, 60, 60]], [0]), gt([[0, 0, 10, 10]], [0])]
    d = [dets([0, 0, 10, 10, 0.5, 0]), dets([0, 0, 10, 10, 0.5, 0])]  # image 0: FP, image 1: TP
    # image 0 first: FP then TP -> precision 0, 1/2 at recall 0, 1/2
    r = evaluate(d, g)
    np.testing.assert_allclose(r["precision"][0], [0.0, 0.5])
    # the same images with swapped ids: TP first -> precision 1, 1/2
    r = evaluate(d, g, image_ids=[7, 3])
    np.testing.assert_allclose(r["precision"][0], [1.0, 0.5])
    # within an image, the earlier row goes first
    r = evaluate([dets([0, 0, 10, 10, 0.5, 0], [50, 50, 60, 60, 0.5, 0])], [gt([[50, 50, 60, 60]], [0])])
    np.testing.assert_allclose(r["precision"][0], [0.0, 0.5])


def test_class_without_positives_is_nan_and_left_out_of_the_mean():
    # class 0 perfect; class 1 has only an FP; class 2 has only a difficult box
    g = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 2], difficult=[False, True])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [40, 40, 50, 50, 0.8, 1])]
    r = evaluate(d, g, num_classes=3)
    assert r["ap_07"][0] == 1.0 and math.isnan(r["ap_07"][1]) and math.isnan(r["ap_2010"][2])
    assert r["map_07"] == 1.0 and r["map_2010"] == 1.0
    assert math.isnan(evaluate([], [], num_classes=3)["map_07"])


def test_image_without_detections_still_counts_its_positives():
    g = [gt([[0, 0, 10, 10]], [0]), gt([[0, 0, 10, 10]], [0])]
    r = evaluate([dets([0, 0, 10, 10, 0.9, 0]), dets()], g)
    assert r["ap_2010"][0] == pytest.approx(0.5, abs=1e-12)
    assert r["ap_07"][0] == pytest.approx(6 / 11, abs=1e-12)  # t = 0 .. 0.5


def test_wrong_class_detection_is_fp_for_its_class():
    g = [gt([[0, 0, 10, 10]], [0]), gt([[0, 0, 10, 10]], [1])]
    d = [dets([0, 0, 10, 10, 0.9, 1]), dets([0, 0, 10, 10, 0.8, 1])]
    r = evaluate(d, g, num_classes=2)
    np.testing.assert_allclose(r["precision"][1], [0.0, 0.5])
    assert r["ap_2010"][1] == pytest.approx(0.5, abs=1e-12)
    assert r["ap_2010"][0] == 0.0  # the class-0 box was never found


def test_accepts_tensors_and_rejects_duplicate_image_ids():
    m = DetectionMAP(1)
    m.update([torch.tensor([[0, 0, 10, 10, 0.9, 0.0]])], [torch.tensor([[0, 0, 10, 10.0]])], [torch.tensor([0])],
             [torch.tensor([False])], torch.tensor([5]))
    assert m.compute()["map_2010"] == 1.0
    m.update([dets()], [np.zeros((0, 4))], [np.zeros(0, np.int64)], [np.zeros(0, bool)], [5])
    with pytest.raises(ValueError, match="image id 5 added twice"):
        m.compute()


def test_update_rejects_malformed_images():
    with pytest.raises(ValueError, match="one entry per image"):
        DetectionMAP(1).update([dets()], [], [], [], [0])
    with pytest.raises(ValueError, match="K, 6"):
        DetectionMAP(1).update([np.zeros((2, 5))], [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, bool)], [0])
    with pytest.raises(ValueError, match="same length"):
        DetectionMAP(1).update([dets()], [np.zeros((2, 4))], [np.zeros(1)], [np.zeros(2, bool)], [0])


# --------------------------------------------------------------------------------------------
# Against the reference on random data
# --------------------------------------------------------------------------------------------


def random_case(rng: random.Random, num_classes: int):
    """Integer boxes on a small grid, so exact IoU ties and IoUs of exactly 0.5 happen often."""
    gts, det_list = [], []
    for _ in range(rng.randint(1, 6)):
        boxes, labels, diff = [], [], []
        for _ in range(rng.randint(0, 5)):
            x, y = rng.randint(0, 12), rng.randint(0, 12)
            boxes.append([x, y, x + rng.randint(1, 8), y + rng.randint(1, 8)])
            labels.append(rng.randrange(num_classes))
            diff.append(rng.random() < 0.25)
        rows = []
        for b, lab in zip(boxes, labels):
            for _ in range(rng.randint(0, 3)):  # jittered copies, some with the wrong class
                j = [v + rng.randint(-1, 1) for v in b]
                j[2], j[3] = max(j[2], j[0] + 1), max(j[3], j[1] + 1)
                rows.append([*j, rng.randint(0, 4) / 4, lab if rng.random() < 0.8 else rng.randrange(num_classes)])
        for _ in range(rng.randint(0, 3)):  # strays
            x, y = rng.randint(0, 12), rng.randint(0, 12)
            rows.append([x, y, x + rng.randint(1, 8), y + rng.randint(1, 8), rng.randint(0, 4) / 4,
                         rng.randrange(num_classes)])
        rng.shuffle(rows)
        gts.append((boxes, labels, diff))
        det_list.append(rows)
    return det_list, gts


@pytest.mark.parametrize("seed", range(40))
def test_matches_devkit_reference_on_random_data(seed):
    rng = random.Random(seed)
    num_classes = 3
    det_list, gts = random_case(rng, num_classes)
    r = evaluate([dets(*rows) for rows in det_list], [gt(b, l, d) for b, l, d in gts], num_classes)
    ref_gts = [list(zip(b, l, d)) for b, l, d in gts]
    for c in range(num_classes):
        ref07, ref10 = voc_eval_ref(det_list, ref_gts, c)
        np.testing.assert_allclose([r["ap_07"][c], r["ap_2010"][c]], [ref07, ref10], rtol=0, atol=1e-12, equal_nan=True)


def test_result_is_independent_of_how_images_are_split_and_ordered():
    rng = random.Random(123)
    det_list, gts = random_case(rng, 3)
    det_list, gts = det_list * 4, gts * 4  # 4 copies: plenty of exact ties across images
    records = [(i, dets(*d), gt(*g)) for i, (d, g) in enumerate(zip(det_list, gts))]
    expected = evaluate([r[1] for r in records], [r[2] for r in records], 3, [r[0] for r in records])
    rng.shuffle(records)
    ranks = [DetectionMAP(3) for _ in range(3)]
    for k, m in enumerate(ranks):
        part = records[k::3]
        for i in range(0, len(part), 2):  # uneven batches
            batch = part[i:i + 2]
            m.update([r[1] for r in batch], [r[2]["boxes"] for r in batch], [r[2]["labels"] for r in batch],
                     [r[2]["difficult"] for r in batch], [r[0] for r in batch])
    merged = DetectionMAP(3)
    for m in ranks:
        merged.merge_state(m)  # what a gather does to the cat states
    got = merged.compute()["voc"]
    for key in ("ap_07", "ap_2010"):
        np.testing.assert_array_equal(got[key], expected[key])
    for c in range(3):
        np.testing.assert_array_equal(got["precision"][c], expected["precision"][c])


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def test_coco_perfect_detections_score_one():
    g = [gt([[0, 0, 10, 10], [20, 20, 50, 40]], [0, 1]), gt([[5, 5, 100, 80]], [1])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [20, 20, 50, 40, 0.8, 1]), dets([5, 5, 100, 80, 0.7, 1])]
    r = coco_map(arrays(d, g), num_classes=3)
    assert r["map_50_95"] == pytest.approx(1.0) and r["map_50"] == pytest.approx(1.0)
    assert math.isnan(r["ap_50_95"][2])  # no ground truth of class 2


def test_coco_known_case_counts_iou_thresholds():
    # IoU 0.725 = 145/200: a match at thresholds .50 .55 .60 .65 .70, a miss at .75 .. .95
    g = [gt([[0, 0, 20, 10]], [0])]
    d = [dets([0, 0, 20, 7.25, 0.9, 0])]
    r = coco_map(arrays(d, g), num_classes=1)
    assert r["map_50"] == pytest.approx(1.0)
    assert r["map_75"] == pytest.approx(0.0)
    assert r["map_50_95"] == pytest.approx(0.5)


def test_coco_difficult_is_ignored_not_fp():
    # the highest-scoring detection sits on a difficult box; as an FP it would halve precision
    g = [gt([[0, 0, 10, 10], [30, 30, 40, 40]], [0, 0], difficult=[True, False])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [30, 30, 40, 40, 0.8, 0])]
    assert coco_map(arrays(d, g), num_classes=1)["map_50_95"] == pytest.approx(1.0)
    # the same detections with the difficult box simply left out: the first one becomes an FP
    g_dropped = [gt([[30, 30, 40, 40]], [0])]
    assert coco_map(arrays(d, g_dropped), num_classes=1)["map_50_95"] == pytest.approx(0.5, abs=0.01)
    # a missed difficult box is not a positive: recall stays 1
    assert coco_map(arrays([d[0][1:]], g), num_classes=1)["map_50_95"] == pytest.approx(1.0)


def test_detection_map_computes_coco_on_its_arrays():
    out = accumulate([dets([0, 0, 10, 10, 0.9, 0])], [gt([[0, 0, 10, 10]], [0])], num_classes=2, coco=True).compute()
    r = out["coco"]
    assert r["map_50_95"] == pytest.approx(1.0) and math.isnan(r["ap_50"][1])
    assert out["coco_map"] == r["map_50_95"] and out["coco_map_50"] == r["map_50"]


def test_class_index_out_of_range_is_an_error():
    with pytest.raises(ValueError):
        evaluate([dets([0, 0, 10, 10, 0.9, 3])], [gt([[0, 0, 10, 10]], [0])], num_classes=2)
