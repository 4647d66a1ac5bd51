"""What the splits of a run hold, checked by the DataModule when it sets them up (after the
readers of data/records.py have checked each file):

* ``check_training_split``: a training split without a single box is a DataError (there is
  nothing to learn; it used to train and report mAP n/a), and classes without a box get one
  warning naming them.
* ``check_eval_split``: an evaluation split without ground truth gets one warning (its mAP will
  be n/a, not a score), and so do the classes it has no ground truth for (their AP is n/a and
  the mAP is the mean over the others).
* ``shared_images``: two splits of one run that hold the same picture (the same file, or a file
  with the same bytes: Record.digest) get one warning, since a score on training images
  measures memory, not detection. Not an error: validating on the training images can be
  meant (a check that the model fits at all).

Each returns its messages as well as logging them, so that callers can keep them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from yolov3.data.dataset import Subset
from yolov3.data.records import DetectionSource, Record
from yolov3.data.sample import DataError, printable

__all__ = ["check_eval_split", "check_training_split", "shared_images", "split_records"]

log = logging.getLogger("yolov3.data")

# how many shared images one warning quotes
_QUOTE = 5


def split_records(source: Sequence) -> list[Record] | None:
    """The Records behind a split: a DetectionSource's, or those a Subset of one (data/dataset.py)
    picks; None for other sequences (lists of Samples), which these checks leave alone."""
    if isinstance(source, DetectionSource):
        return source.records
    if isinstance(source, Subset) and isinstance(source.source, DetectionSource):
        return [source.source.records[i] for i in source.indices]
    return None


def _counts(records: list[Record], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(boxes per class, non-difficult boxes per class), each (num_classes,) int64."""
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, np.int64)
    difficult = np.concatenate([r.difficult for r in records]) if records else np.zeros(0, bool)
    return (np.bincount(labels, minlength=num_classes),
            np.bincount(labels[~difficult], minlength=num_classes))


def _absent(counts: np.ndarray, class_names: Sequence[str]) -> list[str]:
    return [class_names[c] for c in np.flatnonzero(counts == 0)]


def check_training_split(source: Sequence, name: str, class_names: Sequence[str]) -> list[str]:
    """Raise DataError "{name}: the training split has no boxes ..." (with how many images were
    read) when no image of the split has a box; otherwise return (and log as one warning) a
    message naming the classes without a box, if any. `name` says which split ("train split
    'train.csv' of data/VOC"). Difficult boxes count: training uses them."""
    records = split_records(source)
    if records is None:
        return []
    boxes, _ = _counts(records, len(class_names))
    if boxes.sum() == 0:
        raise DataError(
            f"{name}: the training split has no boxes: none of its {len(records)} image(s) has one "
            f"(every label file is empty, or every XML has no <object>); there is nothing to train on"
        )
    absent = _absent(boxes, class_names)
    if not absent:
        return []
    msg = (f"{name}: {len(absent)} of {len(class_names)} classes have no box in the training split, so the "
           f"model cannot learn them: {', '.join(absent)}")
    log.warning("%s", printable(msg))
    return [msg]


def check_eval_split(source: Sequence, name: str, class_names: Sequence[str]) -> list[str]:
    """Messages (each logged as a warning) for an evaluation split without ground truth (no
    box that is not difficult: VOC evaluation ignores difficult ones), or, when it has some,
    for the classes it has none of. Empty when neither applies."""
    records = split_records(source)
    if records is None:
        return []
    boxes, positives = _counts(records, len(class_names))
    if positives.sum() == 0:
        difficult = f" ({int(boxes.sum())} box(es), all difficult, which evaluation ignores)" if boxes.sum() else ""
        msg = (f"{name}: none of its {len(records)} image(s) has a ground-truth box{difficult}: "
               f"its mAP will be n/a (no ground truth), not a score")
    else:
        absent = _absent(positives, class_names)
        if not absent:
            return []
        msg = (f"{name}: {len(absent)} of {len(class_names)} classes have no ground truth here, so their AP is "
               f"n/a and the mAP is the mean over the other {len(class_names) - len(absent)}: {', '.join(absent)}")
    log.warning("%s", printable(msg))
    return [msg]


def shared_images(first: Sequence, first_name: str, second: Sequence, second_name: str) -> list[str]:
    """A message (logged as one warning) when images of `second` are also in `first`: the same
    file or the same bytes (Record.digest). Empty when they share none or either split has no
    Records with digests."""
    a, b = split_records(first), split_records(second)
    if a is None or b is None:
        return []
    in_first = {r.digest: r.image_path for r in a if r.digest is not None}
    pairs = [(in_first[r.digest], r.image_path) for r in b if r.digest in in_first]
    if not pairs:
        return []
    quoted = "; ".join(f"{q} is {p}" if q != p else str(q) for p, q in pairs[:_QUOTE])
    more = f" (and {len(pairs) - _QUOTE} more)" if len(pairs) > _QUOTE else ""
    msg = (f"{second_name} shares {len(pairs)} of its {len(b)} image(s) with {first_name} (the same file or "
           f"the same bytes): scores on them measure what the model remembers, not what it detects: "
           f"{quoted}{more}")
    log.warning("%s", printable(msg))
    return [msg]
