"""The course's "mAP" (evaluation.course_ap, evaluate_voc's ap_course / map_course): known curves,
a slow reference that follows the course's own loop (ERA V1 session 13, mean_average_precision in
YOLO_V3/yolo_v3_utils/utils.py) on random data, and the README's worked example, parsed from the
README so the text and the code cannot drift apart."""

import math
import random
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluation import accumulate, dets, evaluate, gt, iou_ref, random_case

from yolov3.evaluation import EvalArrays, best_ground_truth, course_ap, detection_outcomes, evaluate_voc, voc_ap

# --------------------------------------------------------------------------------------------
# Reference: the course's loop, written again with plain lists
# --------------------------------------------------------------------------------------------


def course_iou(d, g):
    """The course's intersection_over_union on corners: float32, 1e-6 added to the union."""
    d, g = torch.tensor(d, dtype=torch.float32), torch.tensor(g, dtype=torch.float32)
    w = (torch.min(d[2], g[2]) - torch.max(d[0], g[0])).clamp(0)
    h = (torch.min(d[3], g[3]) - torch.max(d[1], g[1])).clamp(0)
    inter = w * h
    return inter / (abs((d[2] - d[0]) * (d[3] - d[1])) + abs((g[2] - g[0]) * (g[3] - g[1])) - inter + 1e-6)


def course_map_ref(det_list, gts, num_classes, thr=0.5, faithful=False):
    """dets: per image lists of [x1, y1, x2, y2, score, class]; gts: per image (boxes, labels,
    difficult), images in id order. Returns (per-class AP with NaN where skipped, mean).

    faithful=False: exact arithmetic (float64, IoU without epsilon, no epsilons in recall and
    precision), which evaluate_voc must match to rounding. faithful=True: the course's own
    arithmetic (float32 tensors, its epsilons), which may differ by the documented <= 2e-6.
    """
    eps = 1e-6 if faithful else 0.0
    dtype = torch.float32 if faithful else torch.float64
    iou = course_iou if faithful else iou_ref
    # as get_evaluation_bboxes builds them: [image, class, score, box], in loader order; the
    # difficult flag does not exist for the course
    pred_boxes = [[i, int(d[5]), d[4], *d[:4]] for i, rows in enumerate(det_list) for d in rows]
    true_boxes = [[i, lab, 1.0, *b] for i, (boxes, labels, _) in enumerate(gts) for b, lab in zip(boxes, labels)]
    aps = [math.nan] * num_classes
    for c in range(num_classes):
        detections = [d for d in pred_boxes if d[1] == c]
        ground_truths = [g for g in true_boxes if g[1] == c]
        taken = {img: [False] * n for img, n in Counter(g[0] for g in ground_truths).items()}
        detections.sort(key=lambda d: d[2], reverse=True)  # stable: ties keep the loader order
        if not ground_truths:
            continue
        tp, fp = [], []
        for d in detections:
            same_image = [g for g in ground_truths if g[0] == d[0]]
            best, best_idx = 0, None
            for idx, g in enumerate(same_image):
                v = float(iou(d[3:], g[3:]))
                if v > best:
                    best, best_idx = v, idx
            if best > thr and not taken[d[0]][best_idx]:
                taken[d[0]][best_idx] = True
                tp.append(1.0), fp.append(0.0)
            else:
                tp.append(0.0), fp.append(1.0)
        tp_cum = torch.cumsum(torch.tensor(tp, dtype=dtype), 0)
        fp_cum = torch.cumsum(torch.tensor(fp, dtype=dtype), 0)
        recalls = torch.cat((torch.tensor([0.0], dtype=dtype), tp_cum / (len(ground_truths) + eps)))
        precisions = torch.cat((torch.tensor([1.0], dtype=dtype), tp_cum / (tp_cum + fp_cum + eps)))
        aps[c] = float(torch.trapz(precisions, recalls))
    defined = [a for a in aps if not math.isnan(a)]
    return aps, sum(defined) / len(defined) if defined else math.nan


def evaluate_case(det_list, gts, num_classes):
    return evaluate([dets(*rows) for rows in det_list], [gt(b, lab, d) for b, lab, d in gts], num_classes)


# --------------------------------------------------------------------------------------------
# course_ap
# --------------------------------------------------------------------------------------------


def test_course_ap_is_the_trapezoid_from_recall_0_precision_1():
    # TP, FP, TP with 2 positives: (0, 1) (.5, 1) (.5, .5) (1, 2/3)
    assert course_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]) == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2, abs=1e-12)
    # VOC2010+ lifts the dip to 2/3 with its envelope
    assert voc_ap([0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3], False) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)
    # FP first: the vertical drop (0, 1) -> (0, 0) has no area, then a triangle to (1, 1/2)
    assert course_ap([0.0, 1.0], [0.0, 0.5]) == pytest.approx(0.25, abs=1e-12)
    assert course_ap([], []) == 0.0
    assert course_ap(torch.tensor([1.0]), torch.tensor([1.0])) == 1.0


def test_difficult_boxes_are_ordinary_positives_for_the_course():
    # the same case as test_evaluation's difficult test: VOC scores 1, the course counts the
    # difficult box (2 positives) and the second detection on it is a duplicate, an FP
    g = [gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=[True, False])]
    d = [dets([0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.85, 0], [20, 20, 30, 30, 0.8, 0])]
    r = evaluate(d, g)
    assert r["ap_2010"][0] == 1.0
    assert r["ap_course"][0] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2, abs=1e-12)
    # a class whose only box is difficult: no VOC AP, a course AP (here a missed box: 0)
    r = evaluate([dets()], [gt([[0, 0, 10, 10]], [1], difficult=[True])], num_classes=2)
    assert math.isnan(r["ap_2010"][1]) and r["ap_course"][1] == 0.0 and math.isnan(r["ap_course"][0])
    assert r["map_course"] == 0.0 and math.isnan(r["map_2010"])
    assert math.isnan(evaluate([], [], num_classes=2)["map_course"])


def test_detection_map_reports_map_course():
    out = accumulate([dets([0, 0, 10, 10, 0.9, 0], [30, 30, 40, 40, 0.8, 0])], [gt([[0, 0, 10, 10]], [0])]).compute()
    assert out["map_course"] == pytest.approx(1.0, abs=1e-12)  # the FP comes after recall 1: no area
    assert isinstance(out["map_course"], float) and out["map_course"] == out["voc"]["map_course"]


# --------------------------------------------------------------------------------------------
# Against the course's loop on random data
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_course_loop_on_random_data(seed):
    """Integer boxes and quarter scores (test_evaluation.random_case): difficult boxes, exact
    IoU and score ties, several images and classes. Ties need no care: the course's stable sort
    keeps the loader order, which is evaluate_voc's tie rule for ids in loader order."""
    rng = random.Random(seed)
    det_list, gts = random_case(rng, 3)
    r = evaluate_case(det_list, gts, 3)
    aps, mean = course_map_ref(det_list, gts, 3)
    np.testing.assert_allclose(r["ap_course"], aps, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(r["map_course"], mean, rtol=0, atol=1e-12, equal_nan=True)


def continuous_case(rng: random.Random, num_classes: int):
    """Real-valued boxes and distinct scores: no IoU or score ties, so the course's float32 IoU
    with its epsilon takes the same decisions as exact arithmetic."""
    gts, det_list = [], []
    for _ in range(rng.randint(2, 6)):
        boxes = [[x, y, x + rng.uniform(5, 60), y + rng.uniform(5, 60)]
                 for x, y in ((rng.uniform(0, 100), rng.uniform(0, 100)) for _ in range(rng.randint(1, 6)))]
        labels = [rng.randrange(num_classes) for _ in boxes]
        rows = []
        for b, lab in zip(boxes, labels):
            for _ in range(rng.randint(0, 3)):
                j = [v + rng.gauss(0, 4) for v in b]
                j[2], j[3] = max(j[2], j[0] + 1), max(j[3], j[1] + 1)
                rows.append([*j, rng.random(), lab if rng.random() < 0.8 else rng.randrange(num_classes)])
        gts.append((boxes, labels, [rng.random() < 0.25 for _ in boxes]))
        det_list.append(rows)
    return det_list, gts


@pytest.mark.parametrize("seed", range(20))
def test_within_the_course_epsilons_of_its_own_arithmetic(seed):
    """The course's float32 and epsilons lower its AP by at most 2e-6 (course_ap's note); the
    rest of its float32 rounding stays far below that on curves of this length."""
    det_list, gts = continuous_case(random.Random(1000 + seed), 3)
    r = evaluate_case(det_list, gts, 3)
    aps, mean = course_map_ref(det_list, gts, 3, faithful=True)
    defined = ~np.isnan(r["ap_course"])
    np.testing.assert_array_equal(defined, ~np.isnan(aps))
    gap = r["ap_course"][defined] - np.asarray(aps)[defined]
    assert np.all(np.abs(gap) <= 2e-6 + 5e-7), gap
    assert abs(r["map_course"] - mean) <= 2e-6 + 5e-7


@pytest.mark.parametrize("seed", range(20))
def test_never_above_voc2010_on_the_same_verdicts(seed):
    """With no difficult box both protocols take the same TP/FP decisions and positives; the
    trapezoid over the raw curve then never exceeds the area under its envelope."""
    det_list, gts = random_case(random.Random(seed), 3)
    gts = [(b, lab, [False] * len(b)) for b, lab, _ in gts]
    r = evaluate_case(det_list, gts, 3)
    defined = ~np.isnan(r["ap_2010"])
    np.testing.assert_array_equal(defined, ~np.isnan(r["ap_course"]))
    assert np.all(r["ap_course"][defined] <= r["ap_2010"][defined] + 1e-12)


# --------------------------------------------------------------------------------------------
# The README's worked example
# --------------------------------------------------------------------------------------------

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = '### The course\'s "mAP" and the VOC protocol'

GROUND_TRUTH = {"g1": (1, [10, 10, 50, 50], False), "g2": (1, [100, 20, 140, 80], True),
                "g3": (2, [20, 20, 60, 60], False), "g4": (2, [100, 100, 120, 120], False)}
DETECTIONS = [("d1", 0.95, 2, [100, 100, 120, 110]), ("d2", 0.90, 1, [10, 10, 50, 42]),
              ("d3", 0.80, 1, [100, 20, 140, 65]), ("d4", 0.70, 2, [20, 20, 60, 44]),
              ("d5", 0.60, 1, [10, 10, 50, 32])]


def readme_section() -> str:
    text = README.read_text()
    assert text.count(HEADING) == 1, f"README.md: the heading {HEADING!r} must appear once"
    section = text.split(HEADING, 1)[1]
    return re.split(r"\n#{1,3} ", section, maxsplit=1)[0]


def table_rows(section: str, first_header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with `| first_header |`."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def example_arrays() -> EvalArrays:
    gts = list(GROUND_TRUTH.values())
    return EvalArrays(images=np.array([1, 2]), det_image=np.array([d[2] for d in DETECTIONS]),
                      det_boxes=np.array([d[3] for d in DETECTIONS], float),
                      det_scores=np.array([d[1] for d in DETECTIONS]), det_classes=np.zeros(len(DETECTIONS), int),
                      gt_image=np.array([g[0] for g in gts]), gt_boxes=np.array([g[1] for g in gts], float),
                      gt_classes=np.zeros(len(gts), int), gt_difficult=np.array([g[2] for g in gts]))


def test_readme_example_aps_are_the_library_s():
    r = evaluate_voc(example_arrays(), 1)
    # the course's PR points, put under the VOC2010+ envelope: the difficult box alone
    course_rec, course_prec = [0, 1 / 4, 2 / 4, 3 / 4, 3 / 4], [0, 1 / 2, 2 / 3, 3 / 4, 3 / 5]
    assert r["ap_course"][0] == pytest.approx(course_ap(course_rec, course_prec), abs=1e-12)
    expected = {"VOC07 (11-point)": r["ap_07"][0], "VOC2010+ (all-point)": r["ap_2010"][0],
                "course-style": r["ap_course"][0],
                "the course's points under the VOC2010+ envelope": voc_ap(course_rec, course_prec, False)}
    rows = dict(table_rows(readme_section(), "AP@0.5"))
    assert rows.keys() == expected.keys()
    for name, value in expected.items():
        assert rows[name] == f"{value:.4f}", name
    # the example teaches: all three differ clearly
    assert min(abs(a - b) for a, b in [(r["ap_07"][0], r["ap_2010"][0]), (r["ap_07"][0], r["ap_course"][0]),
                                       (r["ap_2010"][0], r["ap_course"][0])]) > 0.01


def test_readme_example_boxes_and_verdicts_are_the_library_s():
    section = readme_section()
    prose = " ".join(section.split())  # the ground truth is listed in wrapped prose
    for name, (image, box, difficult) in GROUND_TRUTH.items():
        assert f"{name} `{box}`" in prose, name
        assert (f"`{box}`, marked `difficult`" in prose) == difficult, name
    assert "image 1 has g1 `[10, 10, 50, 50]` and g2 " in prose and "image 2 has g3 " in prose
    arrays = example_arrays()
    best_iou, best_gt = best_ground_truth(arrays.det_image, arrays.det_boxes, arrays.gt_image, arrays.gt_boxes, 3)
    order = np.argsort(-arrays.det_scores)
    voc_tp, ignored = detection_outcomes(best_iou, best_gt, arrays.gt_difficult, order, 0.5)
    course_tp, _ = detection_outcomes(best_iou, best_gt, np.zeros(4, bool), order, 0.5)
    names = list(GROUND_TRUTH)
    rows = table_rows(section, "det")
    assert [row[0] for row in rows] == [d[0] for d in DETECTIONS]
    for k, (row, (name, score, image, box)) in enumerate(zip(rows, DETECTIONS)):
        voc = "ignored" if ignored[k] else "TP" if voc_tp[k] else "FP"
        want = [name, f"{score:.2f}", str(image), f"`{box}`", f"{names[best_gt[k]]}, {best_iou[k]:.2f}", voc,
                "TP" if course_tp[k] else "FP"]
        assert row == want, name
    # the PR points after each detection; "–" where VOC drops an ignored detection
    r = evaluate_voc(arrays, 1)
    voc_points = iter(zip(r["recall"][0], r["precision"][0]))
    course_cum = np.cumsum(course_tp)
    pr = {row[0]: row[1:] for row in table_rows(section, "after")}
    for k in range(len(DETECTIONS)):
        if ignored[k]:
            assert pr["VOC"][k] == "–"
        else:
            rec, prec = (Fraction(v) for v in pr["VOC"][k].split(", "))
            assert (float(rec), float(prec)) == pytest.approx(next(voc_points), abs=1e-12)
        rec, prec = (Fraction(v) for v in pr["course"][k].split(", "))
        assert float(rec) == pytest.approx(course_cum[k] / 4, abs=1e-12)
        assert float(prec) == pytest.approx(course_cum[k] / (k + 1), abs=1e-12)
