"""Real photos: the VOCdevkit reader on the 60-photo VOC2012 sample (when present), and the
real-photo check script (bench/real_photos.py) end to end on a VOCdevkit layout the tests write."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from yolov3.constants import VOC_CLASSES
from yolov3.data.devkit import VOCDevkit

SAMPLE = Path(__file__).parent.parent.parent / "shared" / "data" / "voc2012_sample"
BENCH = Path(__file__).parent.parent / "bench"


@pytest.mark.skipif(not (SAMPLE / "VOC2012").is_dir(),
                    reason=f"the real VOC2012 sample is not at {SAMPLE} (it is not part of the project)")
def test_the_voc2012_sample_reads_as_the_devkit_sees_it():
    """60 photos, 152 objects (25 difficult), all 20 classes (the sample's README), and every
    box the XML's [xmin - 1, ymin - 1, xmax, ymax] inside its image."""
    src = VOCDevkit(SAMPLE, "2012-train")
    assert len(src) == 60
    labels = np.concatenate([r.labels for r in src.records])
    difficult = np.concatenate([r.difficult for r in src.records])
    assert len(labels) == 152 and int(difficult.sum()) == 25 and set(labels.tolist()) == set(range(20))
    for rec in src.records:
        root = ET.parse(SAMPLE / "VOC2012" / "Annotations" / f"{rec.image_path.stem}.xml").getroot()
        xml = [[float(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
               for o in root.findall("object")]
        expected = np.array(xml, np.float32).reshape(-1, 4) - [1, 1, 0, 0]
        expected = np.clip(expected, 0, [rec.width, rec.height, rec.width, rec.height])
        np.testing.assert_array_equal(rec.boxes, expected)
        assert [VOC_CLASSES[c] for c in rec.labels] == [o.findtext("name").strip() for o in root.findall("object")]


def test_real_photo_check_runs_on_any_vocdevkit_root(synth_root, tmp_path, monkeypatch, capsys):
    """The check's script on a VOCdevkit layout (the synthetic set's), cut to a few steps:
    it trains and tests on the same split, prints the table with the bars and writes JSON."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["real_photos.py"])
    monkeypatch.syspath_prepend(str(BENCH))
    import real_photos

    out = tmp_path / "real.json"
    row = real_photos.main(["--root", str(synth_root), "--split", "2007-test", "--out", str(out),
                            "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
                            "--model.evaluation.map_every_n_epochs", "1", "--data.image_size", "64",
                            "--data.train_sizes", "[64]", "--model.width", "0.0625",
                            "--model.loss.objectness", "bce_iou", "--model.loss.objectness_prior", "0.01"])
    printed = capsys.readouterr().out
    assert "Real-photo check: 8 images" in printed and "VOC07 mAP >= 0.6" in printed
    saved = json.loads(out.read_text())
    assert saved["rows"][0] == row and saved["images"] == 8 and saved["split"] == "2007-test"
    assert row["objectness_loss"] == "bce_iou" and row["objectness_prior"] == "0.01" and row["steps"] == 2
    assert 0 <= row["map_07"] <= 1 and row["meets_bars"] is False  # two steps memorise nothing
    assert (tmp_path / "runs" / "real_photos" / "curves.png").stat().st_size > 0
