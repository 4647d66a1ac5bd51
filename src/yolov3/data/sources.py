"""Which reader opens a dataset root: the two on-disk layouts of PASCAL VOC.

* ``KaggleVOC`` (data/kaggle.py): the Kaggle "PASCAL_VOC" layout (``images/``, ``labels/``
  with YOLO-style normalised ``class xc yc w h`` lines, ``train.csv`` / ``test.csv``).
* ``VOCDevkit`` (data/devkit.py): the native VOCdevkit layout (``VOC2007/``, ``VOC2012/``
  with XML annotations and ``ImageSets/Main/*.txt`` split files).

Both are DetectionSources (data/records.py) and yield the same ``Sample``. ``detect_layout``
tells the layouts apart; ``open_source`` opens a root with the reader for its layout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from yolov3.constants import VOC_CLASSES
from yolov3.data.devkit import VOCDevkit, looks_like_split_spec
from yolov3.data.kaggle import KaggleVOC
from yolov3.data.records import DetectionSource
from yolov3.data.sample import MAX_PIXELS, DataError

__all__ = ["detect_layout", "open_source"]


def _layouts_present(root: Path) -> list[str]:
    found = []
    if (root / "images").is_dir() and (root / "labels").is_dir():
        found.append("kaggle")
    voc_dirs = [
        d
        for base in (root, root / "VOCdevkit")
        if base.is_dir()
        for d in base.glob("VOC[0-9][0-9][0-9][0-9]")
        if d.is_dir()
    ]
    is_year_dir = re.fullmatch(r"VOC\d{4}", root.name) is not None and (root / "Annotations").is_dir()
    if voc_dirs or is_year_dir:
        found.append("voc")
    return found


def detect_layout(root: str | os.PathLike) -> str:
    """'kaggle' when root has images/ and labels/, 'voc' when it has VOC<year>/ (directly or
    under VOCdevkit/). DataError saying what was looked for if neither (or both) is found."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (or not a directory)")
    found = _layouts_present(root)
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{root}: cannot tell the dataset layout: expected either the Kaggle layout "
            f"(images/, labels/, train.csv, test.csv) or a VOCdevkit (VOC2007/, VOC2012/, "
            f"possibly under VOCdevkit/, each with JPEGImages/, Annotations/, ImageSets/Main/)"
        )
    raise DataError(
        f"{root}: holds both the Kaggle layout (images/, labels/) and VOC<year>/ directories; "
        f"pass layout='kaggle' or layout='voc'"
    )


def open_source(
    root: str | os.PathLike,
    split: str,
    layout: str = "auto",
    class_names: Sequence[str] = VOC_CLASSES,
    skip_bad: bool = False,
    max_pixels: int = MAX_PIXELS,
) -> DetectionSource:
    """Open root with the reader for its layout ('auto', 'kaggle' or 'voc').

    With 'auto' and a root that holds both layouts, the split string decides: a YEAR-SET spec
    ('2007-test') means VOC, anything else (a CSV name) means Kaggle.
    """
    if layout == "auto":
        root_p = Path(root)
        if root_p.is_dir() and len(_layouts_present(root_p)) == 2:
            layout = "voc" if looks_like_split_spec(split) else "kaggle"
        else:
            layout = detect_layout(root)
    if layout == "kaggle":
        return KaggleVOC(root, split, class_names=class_names, skip_bad=skip_bad, max_pixels=max_pixels)
    if layout == "voc":
        return VOCDevkit(root, split, class_names=class_names, skip_bad=skip_bad, max_pixels=max_pixels)
    raise ValueError(f"layout must be 'auto', 'kaggle' or 'voc', got {layout!r}")
