"""The Dataset of the DataModule: a source's samples made at a requested size, and collate.

Items are asked for as (index, size[, mosaic allowed, seed]) by the batch samplers
(data/samplers.py), so each batch's image size travels with its indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from yolov3.boxes import xyxy_to_cxcywh
from yolov3.data import timing
from yolov3.data.augment import AugmentConfig, EvalTransform, TrainTransform
from yolov3.data.cache import DiskImageCache, cache_mode, shrink, with_image
from yolov3.data.records import DetectionSource
from yolov3.data.sample import Sample


class DetectionDataset(Dataset):
    """Applies a transform at a requested size to a source's samples.

    Items are requested as (index, size) or, for training, (index, size, mosaic allowed);
    each returns a dict with "image" (3, S, S) uint8,
    "boxes" (N, 4) float xyxy pixels at S, "labels" (N,), "difficult" (N,), "path", and
    "orig_size" (w, h) of the stored image and, for evaluation, "letterbox" (the
    yolov3.letterbox.Letterbox that undoes the transform; training geometry is never undone).

    Training samples are first shrunk so their longer side is at most `max_side` (the largest
    training size; see data/cache.py). cache_images: "none" (or False), "ram" (or True: a
    dict of loaded samples per process) or "disk" (training sets of a file-backed source
    only: a DiskImageCache in `cache_dir`; evaluation sets then read their files each time,
    since they are letterboxed from the full image). letterbox: the evaluation letterbox's
    style (yolov3.letterbox.LETTERBOX_STYLES; training has its own geometry).
    """

    def __init__(self, source: Sequence[Sample], train: bool, augment: AugmentConfig | None = None,
                 cache_images: bool | str = False, seed: int = 0, max_side: int | None = None,
                 cache_dir: str | Path | None = None, letterbox: str = "yolo") -> None:
        self.source = source
        self.train = train
        self.transform = TrainTransform(augment, seed=seed) if train else EvalTransform(letterbox)
        self.max_side = max_side if train else None
        mode = cache_mode(cache_images)
        self._cache: dict[int, tuple[Sample, tuple[int, int]]] | None = {} if mode == "ram" else None
        self._disk: DiskImageCache | None = None
        if mode == "disk" and train:
            if max_side is None or cache_dir is None:
                raise ValueError("cache_images='disk' needs max_side and cache_dir")
            base, self._base_index = _file_backed(source)
            self._records = base.records
            self._disk = DiskImageCache(cache_dir, [r.image_path for r in base.records], lambda i: base[i].image,
                                        max_side)

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, index: int) -> tuple[Sample, tuple[int, int]]:
        """Sample `index` as the transform gets it (shrunk for training) and its stored (w, h)."""
        if self._disk is not None:
            rec = self._records[self._base_index[index]]
            image = self._disk[self._base_index[index]]
            # copies: the record's arrays are read-only, and the batch's tensors are made from them
            sample = Sample(image, rec.boxes.copy(), rec.labels.copy(), rec.difficult.copy(), str(rec.image_path))
            return with_image(sample, image, rec.width, rec.height), (rec.width, rec.height)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = self.source[index]
        h, w = sample.image.shape[:2]
        loaded = (shrink(sample, self.max_side) if self.train else sample), (w, h)
        if self._cache is not None:
            self._cache[index] = loaded
        return loaded

    def _sample(self, index: int) -> Sample:
        return self._load(index)[0]

    def __getitem__(self, item: tuple[int, int] | tuple[int, int, bool] | tuple[int, int, bool, int]) -> dict:
        index, size = item[0], item[1]
        allow_mosaic = item[2] if len(item) > 2 else True
        if len(item) > 3 and self.train:
            # the sampler's per-sample seed: the augmentation depends on the sample's place in
            # the run only, not on which worker makes it, so a resumed run replays it exactly
            self.transform.set_seed(item[3])
        sample, orig_size = self._load(index)
        out: dict = {"index": index, "path": sample.path, "orig_size": orig_size}
        if self.train:
            s = self.transform(sample, size, pool=_Loaded(self) if allow_mosaic else None)
        else:
            s, out["letterbox"] = self.transform(sample, size)
        with timing.stage("collate"):
            out.update(
                image=torch.from_numpy(s.image).permute(2, 0, 1).contiguous(),
                boxes=torch.from_numpy(s.boxes),
                labels=torch.from_numpy(s.labels),
                difficult=torch.from_numpy(s.difficult),
            )
        return out


def _file_backed(source: Sequence[Sample]) -> tuple[DetectionSource, list[int]]:
    """The DetectionSource under `source` (itself or a Subset of it) and the map from
    source indices to its indices; ValueError for sources without files (lists of Samples)."""
    if isinstance(source, Subset) and isinstance(source.source, DetectionSource):
        return source.source, list(source.indices)
    if isinstance(source, DetectionSource):
        return source, list(range(len(source)))
    raise ValueError(f"cache_images='disk' needs a source read from files, got {type(source).__name__}")


class _Loaded(Sequence):
    """The dataset's samples as loaded (through its cache), for drawing mosaic partners."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        return self.dataset._sample(index)


def _per_image(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same tensors, as views of one concatenated tensor (split along dim 0)."""
    return list(torch.cat(tensors).split([len(t) for t in tensors]))


def collate(items: list[dict]) -> dict:
    """Stack a batch. "targets" is (M, 6): image index, class, cx, cy, w, h as fractions of
    the batch's image size, the format build_targets takes."""
    with timing.stage("collate"):
        # default_collate stacks straight into shared memory in a worker process, so the batch
        # is not copied again on its way to the training process
        images = default_collate([it["image"] for it in items])
    size_h, size_w = images.shape[-2:]
    with timing.stage("targets"):
        rows = []
        for i, it in enumerate(items):
            b = it["boxes"].float()
            if b.numel() == 0:
                continue
            cxcywh = xyxy_to_cxcywh(b) / torch.tensor([size_w, size_h, size_w, size_h], dtype=b.dtype)
            rows.append(torch.cat((torch.full((len(b), 1), float(i)), it["labels"].float()[:, None], cxcywh), 1))
        targets = torch.cat(rows) if rows else torch.zeros(0, 6)
    return {
        "images": images,
        "targets": targets,
        # per-image views of one tensor each: a worker then passes 3 shared-memory blocks to
        # the training process instead of 3 per image
        "boxes": _per_image([it["boxes"] for it in items]),
        "labels": _per_image([it["labels"] for it in items]),
        "difficult": _per_image([it["difficult"] for it in items]),
        "paths": [it["path"] for it in items],
        "indices": torch.tensor([it.get("index", -1) for it in items], dtype=torch.long),
        "orig_sizes": torch.tensor([it["orig_size"] for it in items]),
        # evaluation only: one Letterbox per image (training batches have none)
        "letterbox": [it["letterbox"] for it in items] if all("letterbox" in it for it in items) else None,
    }


class Subset(Sequence):
    """The samples of `source` at `indices`, in that order (a split held out of a source)."""

    def __init__(self, source: Sequence[Sample], indices: list[int]) -> None:
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.source[self.indices[i]]
