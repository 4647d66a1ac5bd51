"""Detections that lie in the letterbox's padding (issue 20, part 7a).

On a very elongated image the grey bands are most of the network's input; a detection there,
undone and clipped to the image, becomes a box of zero width or height. It is not a detection
of the image: Letterbox.undo_detections drops it, and the Detector (so detect's JSON and
pictures and the app), CAM and evaluation (YoloLitModule.detect -> DetectionMAP) share the rule.

The fixed detections are in the input pixels of a 400 x 10 image letterboxed to 64: scale
0.16 in x, 2 / 10 = 0.2 in y (the resized height is round(1.6) = 2 px), the image at input
rows 31-33 (pad_y = 31).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from yolov3.letterbox import Letterbox

W, H, SIZE = 400, 10, 64
DETS = torch.tensor([[8.0, 2.0, 40.0, 20.0, 0.9, 5.0],    # wholly above the image: dropped
                     [8.0, 20.0, 40.0, 40.0, 0.8, 5.0],   # crosses it: kept, clipped to y 0-10
                     [8.0, 40.0, 40.0, 60.0, 0.7, 1.0],   # wholly below: dropped
                     [8.0, 10.0, 40.0, 31.0, 0.6, 2.0]])  # ends on the image's top edge: dropped
KEPT = [[50.0, 0.0, 250.0, 10.0, 0.8, 5.0]]  # x 8 / 0.16, 40 / 0.16; y clipped
CELLS = torch.tensor([[0, 0, 0, 0], [1, 1, 2, 3], [2, 2, 7, 7], [0, 1, 1, 1]])  # (scale, anchor, row, col)


def reference(det: np.ndarray, lb: Letterbox) -> list[list[float]]:
    """Row by row: undo, clip, keep when width and height are above zero."""
    kept = []
    for x1, y1, x2, y2, *rest in det.tolist():
        x1, x2 = (min(max((v - lb.pad_x) / lb.scale_x, 0.0), lb.width) for v in (x1, x2))
        y1, y2 = (min(max((v - lb.pad_y) / lb.scale_y, 0.0), lb.height) for v in (y1, y2))
        if x2 > x1 and y2 > y1:
            kept.append([x1, y1, x2, y2, *rest])
    return kept


def test_letterbox_fit_is_as_the_module_docstring_says() -> None:
    lb = Letterbox.fit(W, H, SIZE)
    assert (lb.pad_x, lb.pad_y, lb.resized) == (0, 31, (64, 2))
    assert lb.scale_x == pytest.approx(0.16) and lb.scale_y == pytest.approx(0.2)
    assert lb.on_image(DETS[:, :4]).tolist() == [False, True, False, False]
    np.testing.assert_allclose(lb.undo_detections(DETS).numpy(), KEPT, atol=1e-4)


def test_undo_detections_against_a_row_by_row_reference() -> None:
    rng = np.random.default_rng(0)
    for w, h in [(400, 10), (10, 400), (1000, 3), (3, 1000), (640, 480), (97, 31)]:
        for size in (64, 416):
            lb = Letterbox.fit(w, h, size)
            xy = rng.uniform(-0.1 * size, 1.1 * size, (200, 2))
            wh = rng.uniform(0.5, 0.4 * size, (200, 2))
            det = np.concatenate((xy, xy + wh, rng.uniform(0, 1, (200, 1)), rng.integers(0, 20, (200, 1))), 1)
            got = lb.undo_detections(torch.from_numpy(det).float()).numpy()
            want = np.array(reference(det.astype(np.float32), lb), np.float32).reshape(-1, 6)
            assert got.shape == want.shape, (w, h, size)
            np.testing.assert_allclose(got, want, atol=1e-3 * max(w, h))
            assert (got[:, 2] > got[:, 0]).all() and (got[:, 3] > got[:, 1]).all()


@pytest.fixture
def padding_detections(monkeypatch):
    """Every image's detections are DETS, whatever the network says (the Detector's postprocess)."""
    import yolov3.detector as detector_mod

    def postprocess(outputs, *args, return_cells=False, **kwargs):
        dets = [DETS.clone() for _ in range(outputs[0].shape[0])]
        return (dets, [CELLS.clone() for _ in dets]) if return_cells else dets

    monkeypatch.setattr(detector_mod, "postprocess", postprocess)


def test_the_detector_drops_them(tiny_checkpoint, padding_detections) -> None:
    from yolov3.detector import Detector

    detector = Detector.load(tiny_checkpoint, size=SIZE)
    (det,) = detector([np.zeros((H, W, 3), np.uint8)])
    np.testing.assert_allclose(det, KEPT, atol=1e-4)


def test_detect_writes_no_zero_size_box(tmp_path, tiny_checkpoint, padding_detections) -> None:
    from yolov3.commands.detect import run_detect

    path = tmp_path / "strip.png"
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path)
    summary = run_detect([str(path)], str(tiny_checkpoint), str(tmp_path / "out"), size=SIZE)
    rows = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert summary["detections"] == 1 and len(rows) == 1
    assert rows[0]["bbox"] == [50.0, 0.0, 200.0, 10.0] and rows[0]["score"] == 0.8 and rows[0]["category_id"] == 5


def test_the_app_drops_them(tmp_path, tiny_checkpoint, padding_detections) -> None:
    from yolov3.commands.app import DetectorApp
    from yolov3.detector import Detector

    path = tmp_path / "strip.png"
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(path)
    p = DetectorApp(Detector.load(tiny_checkpoint, size=SIZE)).predict(path, conf=0.25, size=SIZE)
    np.testing.assert_allclose(p.detections, KEPT, atol=1e-4)
    assert [r["bbox"] for r in p.records] == [[50.0, 0.0, 200.0, 10.0]]


def test_cam_drops_them_and_keeps_each_map_with_its_detection(tiny_checkpoint) -> None:
    from yolov3.cam import explain
    from yolov3.detector import Detector

    detector = Detector.load(tiny_checkpoint, size=SIZE)
    detector.decode = lambda outputs, infos=None: ([DETS.clone()], [CELLS.clone()])
    (result,) = explain(detector, [np.zeros((H, W, 3), np.uint8)], "gradcam", "head")
    np.testing.assert_allclose(result.detections, KEPT, atol=1e-4)
    assert len(result.cams) == 1 and result.cams[0].cell == (1, 1, 2, 3)
    np.testing.assert_allclose(result.cams[0].box, KEPT[0][:4], atol=1e-4)
    assert result.cams[0].heatmap.shape == (H, W)


def test_evaluation_drops_them_so_they_cost_no_precision(monkeypatch) -> None:
    """The dropped detection scored above the true one: kept, as a zero-area false positive
    ranked first, it would halve VOC07 AP of the class (precision 1/2 at recall 1)."""
    import yolov3.lit as lit_mod
    from yolov3.metrics import DetectionMAP

    monkeypatch.setattr(lit_mod, "postprocess", lambda outputs, *a, **k: [DETS.clone()])
    module = lit_mod.YoloLitModule(width=0.0625)
    lb = Letterbox.fit(W, H, SIZE)
    truth_in_input = torch.tensor([[8.0, 31.0, 40.0, 33.0]])  # the kept box, in input pixels
    batch = {"images": torch.zeros(1, 3, SIZE, SIZE), "boxes": [truth_in_input], "letterbox": [lb]}
    detections, truth = module.detect([], batch)
    np.testing.assert_allclose(detections[0].numpy(), KEPT, atol=1e-4)
    np.testing.assert_allclose(truth[0].numpy(), [KEPT[0][:4]], atol=1e-4)
    det_map = DetectionMAP(20)
    det_map.update(detections, truth, [torch.tensor([5])], [torch.tensor([False])], [0])
    assert float(det_map.compute()["map_07"]) == pytest.approx(1.0)


def test_padding_candidates_are_dropped_before_nms_by_the_same_rule() -> None:
    """postprocess(regions=...) drops, before NMS and max_detections, exactly the boxes that
    Letterbox.on_image rejects: a box in the padding neither suppresses nor displaces one on
    the image (with max_detections 1 the kept box is the image's, though it scores lower)."""
    from yolov3.postprocess import Candidates, inside_regions
    from yolov3.letterbox import stack_regions

    lb = Letterbox.fit(W, H, SIZE)
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(400, 2, generator=gen) * SIZE
    wh = torch.rand(400, 2, generator=gen) * 20
    boxes = torch.cat((xy, xy + wh), 1)
    boxes = torch.cat((boxes, DETS[:, :4]))  # the hand-made edge cases too
    n = boxes.shape[0]
    cand = Candidates(torch.zeros(n, dtype=torch.long), torch.arange(n), boxes, torch.rand(n, generator=gen),
                      torch.zeros(n, dtype=torch.long))
    kept = inside_regions(cand, stack_regions([lb]))
    assert torch.equal(kept.cell, torch.arange(n)[lb.on_image(boxes)])
    assert 0 < kept.cell.numel() < n


def test_max_detections_count_only_boxes_on_the_image(monkeypatch) -> None:
    import yolov3.postprocess as post

    # two candidates of different classes: the padding one scores higher
    boxes = DETS[[0, 1], :4]
    fake = post.Candidates(torch.zeros(2, dtype=torch.long), torch.arange(2), boxes, torch.tensor([0.9, 0.8]),
                           torch.tensor([5, 6]))
    monkeypatch.setattr(post, "select_candidates", lambda *a, **k: fake)
    outputs = [torch.zeros(1, 3, 2, 2, 25)]
    without = post.postprocess(outputs, torch.ones(1, 3, 2), (SIZE, SIZE), max_detections=1)[0]
    assert without[0, 4].item() == pytest.approx(0.9)  # the padding box took the one place
    from yolov3.letterbox import stack_regions

    with_regions = post.postprocess(outputs, torch.ones(1, 3, 2), (SIZE, SIZE), max_detections=1,
                                    regions=stack_regions([Letterbox.fit(W, H, SIZE)]))[0]
    assert with_regions.shape[0] == 1 and with_regions[0, 4].item() == pytest.approx(0.8)
