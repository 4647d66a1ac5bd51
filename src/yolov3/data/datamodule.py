"""The LightningDataModule: splits from config, transforms, samplers and collate.

The DataModule owns its samplers (the CLI sets `use_distributed_sampler: false`) so that
evaluation shards are never padded with repeated images under DDP: every image is counted
exactly once across processes. The training sampler is where multi-resolution batching
plugs in: it yields index lists, and each batch's image size travels with its indices.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from yolov3.boxes import xyxy_to_cxcywh
from yolov3.constants import VOC_CLASSES
from yolov3.data import timing
from yolov3.data.augment import AugmentConfig, EvalTransform, TrainTransform
from yolov3.data.cache import DiskImageCache, cache_mode, shrink, with_image
from yolov3.data.records import DetectionSource
from yolov3.data.sample import Sample
from yolov3.data.sources import open_source

log = logging.getLogger("yolov3.data")


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
    since they are letterboxed from the full image).
    """

    def __init__(self, source: Sequence[Sample], train: bool, augment: AugmentConfig | None = None,
                 cache_images: bool | str = False, seed: int = 0, max_side: int | None = None,
                 cache_dir: str | Path | None = None) -> None:
        self.source = source
        self.train = train
        self.transform = TrainTransform(augment, seed=seed) if train else EvalTransform()
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
    """The DetectionSource under `source` (itself or a _Subset of it) and the map from
    source indices to its indices; ValueError for sources without files (lists of Samples)."""
    if isinstance(source, _Subset) and isinstance(source.source, DetectionSource):
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


class TrainBatchSampler(Sampler[list[tuple[int, int, bool, int]]]):
    """Shuffled batches for one process, with the image size each batch is made at.

    Yields lists of (index, size, mosaic allowed, augmentation seed); mosaic is allowed in
    epochs before `mosaic_epochs` (None: always), so the last epochs can train on whole
    images only. The seed of each sample comes from (seed, rank, epoch, batch, position), so
    the data of step k is the same whatever the number of workers, and after a resume.

    The permutation is drawn from (seed, epoch), split across `num_replicas` processes
    (each gets an equal number of whole batches), and every batch gets one size from
    `sizes` drawn from the same seeded generator, so all workers and all processes agree.
    Each pass over the sampler advances the epoch by one: Lightning calls set_epoch only on
    a loader's sampler, never on its batch sampler, so without this every epoch would
    replay the same order. set_epoch pins the epoch. `position`, when given, is asked at the
    start of each pass and may answer (epoch, batches already done in it): the DataModule
    answers once after loading a checkpoint, so a resumed run continues at the next batch.
    """

    def __init__(self, num_samples: int, batch_size: int, sizes: Sequence[int], seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = True,
                 mosaic_epochs: int | None = None,
                 position: Callable[[], tuple[int, int] | None] | None = None) -> None:
        if num_samples < 1:
            raise ValueError("the training split is empty")
        self.num_samples, self.batch_size, self.sizes = num_samples, batch_size, list(sizes)
        self.seed, self.num_replicas, self.rank, self.drop_last = seed, num_replicas, rank, drop_last
        self.mosaic_epochs = mosaic_epochs
        self.position = position
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches_per_replica(self) -> int:
        per_replica = self.num_samples // self.num_replicas
        if self.drop_last:
            return max(1, per_replica // self.batch_size)
        return math.ceil(math.ceil(self.num_samples / self.num_replicas) / self.batch_size)

    def __len__(self) -> int:
        return self._batches_per_replica()

    def __iter__(self) -> Iterator[list[tuple[int, int, bool, int]]]:
        done = 0
        where = self.position() if self.position is not None else None
        if where is not None:
            self.epoch, done = where
            if done >= len(self):  # the checkpoint closed its epoch: start the next one
                self.epoch, done = self.epoch + 1, 0
        epoch = self.epoch
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        mosaic = self.mosaic_epochs is None or epoch < self.mosaic_epochs
        self.epoch += 1
        perm = torch.randperm(self.num_samples, generator=g)
        n_batches = self._batches_per_replica()
        needed = n_batches * self.batch_size * self.num_replicas
        if needed > self.num_samples:  # wrap around so every process gets full batches
            perm = perm.repeat(math.ceil(needed / self.num_samples))
        perm = perm[:needed].view(self.num_replicas, n_batches, self.batch_size)[self.rank]
        size_idx = torch.randint(len(self.sizes), (n_batches,), generator=g)
        for b, (batch, si) in enumerate(zip(perm.tolist(), size_idx.tolist())):
            if b < done:  # already trained on before the checkpoint this run resumed from
                continue
            size = self.sizes[si]
            seeds = np.random.SeedSequence([self.seed, self.rank, epoch, b]).generate_state(len(batch)).tolist()
            yield [(i, size, mosaic, s) for i, s in zip(batch, seeds)]


class EvalBatchSampler(Sampler[list[tuple[int, int]]]):
    """In-order batches of this process's shard (rank, rank + world, ...), never padded."""

    def __init__(self, num_samples: int, batch_size: int, size: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, num_samples, num_replicas))
        self.batch_size, self.size = batch_size, size

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.indices), self.batch_size):
            yield [(i, self.size) for i in self.indices[start : start + self.batch_size]]


def stream_seed(seed: int, rank: int) -> int:
    """A seed for process `rank`'s augmentation stream, derived from the run seed."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    # torch gives worker k the seed base + k, base drawn from the loader's generator (seeded
    # from the run seed and the rank), so augmentations are reproducible and differ between
    # workers and between processes.
    info = torch.utils.data.get_worker_info()
    seed = torch.initial_seed() % 2**31
    np.random.seed(seed)
    dataset = info.dataset if info is not None else None
    if isinstance(dataset, DetectionDataset) and isinstance(dataset.transform, TrainTransform):
        dataset.transform.set_seed(seed)


class YoloDataModule(L.LightningDataModule):
    """PASCAL VOC (either on-disk layout) or the synthetic set, for YOLOv3.

    Args:
        root: dataset folder (Kaggle layout: images/, labels/, train.csv, test.csv; or a
            VOCdevkit folder with VOC2007/ VOC2012/).
        layout: "auto", "kaggle" or "voc".
        train_split, val_split, test_split: a CSV name (Kaggle) or "2007-trainval+2012-trainval"
            style (VOCdevkit). With val_split None, `val_fraction` of train is held out (seeded).
        image_size: evaluation size (validation and test), and the training size unless
            `train_sizes` is given.
        train_sizes: sizes (multiples of 32) to draw one per training batch from: the batch
            sampler draws them from the seed, so every DataLoader worker makes its batch at
            that size and every DDP process makes step k at the same size.
        batch_size, eval_batch_size, num_workers: loader settings.
        skip_bad: skip unreadable images / bad label files (each logged) instead of failing.
        cache_images: keep the decoded (and, for training, shrunk) images: "none" (or false),
            "ram" (or true; per process and per worker: small sets) or "disk" (training set
            only: one memory-mapped file shared by all workers and DDP processes; see
            data/cache.py). The batches are the same either way.
        cache_dir: where "disk" keeps its files (default: <root>/.yolov3-cache).
        class_names: the label names (default: the 20 VOC classes).
        augment: training augmentation settings (mosaic, geometry, flip, colour).
        seed: seeds the split, the shuffling, the batch sizes and the augmentation (each
            process and each worker gets its own stream derived from it).
    """

    def __init__(
        self,
        root: str = "data/PASCAL_VOC",
        layout: str = "auto",
        train_split: str = "train.csv",
        val_split: str | None = None,
        test_split: str = "test.csv",
        val_fraction: float = 0.05,
        image_size: int = 416,
        train_sizes: list[int] | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        skip_bad: bool = False,
        cache_images: bool | str = False,
        cache_dir: str | None = None,
        class_names: list[str] | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        for s in [image_size, *(train_sizes or [])]:
            if s % 32 or s < 32:
                raise ValueError(f"image sizes must be positive multiples of 32, got {s}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root = root
        self.layout = layout
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.val_fraction = val_fraction
        self.image_size = image_size
        self.train_sizes = list(train_sizes) if train_sizes else [image_size]
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.skip_bad = skip_bad
        self.cache_images = cache_mode(cache_images)
        self.cache_dir = cache_dir
        self.class_names = tuple(class_names) if class_names else VOC_CLASSES
        self.augment = augment or AugmentConfig()
        self.seed = seed
        self.pin_memory = pin_memory
        self.train_set: DetectionDataset | None = None
        self.val_set: DetectionDataset | None = None
        self.test_set: DetectionDataset | None = None
        self._resume_at: tuple[int, int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _open(self, split: str) -> DetectionSource:
        return open_source(self.root, split, layout=self.layout, class_names=self.class_names, skip_bad=self.skip_bad)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.train_set is None:
            train_src: Sequence[Sample] = self._open(self.train_split)
            if self.val_split:
                val_src: Sequence[Sample] = self._open(self.val_split)
            else:
                train_src, val_src = _holdout(train_src, self.val_fraction, self.seed)
            log.info("train: %d images, val: %d images", len(train_src), len(val_src))
            self.train_set = DetectionDataset(train_src, True, self.augment, self.cache_images, self.seed,
                                              max_side=max(self.train_sizes),
                                              cache_dir=self.cache_dir or Path(self.root) / ".yolov3-cache")
            self.val_set = DetectionDataset(val_src, False, cache_images=self._eval_cache)
        if stage in ("test", None) and self.test_set is None:
            self.test_set = DetectionDataset(self._open(self.test_split), False, cache_images=self._eval_cache)

    @property
    def _eval_cache(self) -> str:
        # evaluation letterboxes the full image: the disk cache (shrunk pixels) is for training only
        return "ram" if self.cache_images == "ram" else "none"

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: Dataset, batch_sampler: Sampler, seed: int = 0) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            worker_init_fn=_seed_worker,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        mosaic_epochs = None
        if self.trainer is not None and self.augment.close_mosaic_epochs > 0:
            mosaic_epochs = max(0, (self.trainer.max_epochs or 0) - self.augment.close_mosaic_epochs)
        sampler = TrainBatchSampler(len(self.train_set), self.batch_size, self.train_sizes, self.seed, world, rank,
                                    mosaic_epochs=mosaic_epochs, position=self._train_position)
        seed = stream_seed(self.seed, rank)
        self.train_set.transform.set_seed(seed)  # used as is when num_workers is 0
        # One OpenCV thread, set here so that worker processes inherit it (calling it inside a
        # forked worker can hang on the parent's thread pool). The parallelism is across
        # processes; in the training process (num_workers 0) the loader's work runs between
        # steps on the cores torch's threads use. Measured on the 2-core AMD EPYC: demo batches
        # of 8 at 192 px 32 -> 22 ms in-process; 416 px, batch 16, 2 workers 224 -> 257 img/s.
        cv2.setNumThreads(1)
        return self._loader(self.train_set, sampler, seed)

    def _train_position(self) -> tuple[int, int] | None:
        """The (epoch, batches done) a resumed fit continues from, once; else None."""
        where, self._resume_at = self._resume_at, None
        return where

    def state_dict(self) -> dict:
        """Saved in every checkpoint: where training is in the epoch's sequence of batches.
        A checkpoint written after training step i of epoch e (0-based within the epoch)
        records (e, i + 1); one written at the end of an epoch records (e, all its batches)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {"train_epoch": int(trainer.current_epoch), "train_batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        # Lightning restores this before it first iterates the training loader (which it does
        # while configuring the optimiser, before the loops' own state is back).
        if "train_epoch" in state:
            self._resume_at = (int(state["train_epoch"]), int(state["train_batches_done"]))

    def _eval_loader(self, dataset: DetectionDataset) -> DataLoader:
        world, rank = self._world()
        return self._loader(dataset, EvalBatchSampler(len(dataset), self.eval_batch_size, self.image_size, world, rank))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


class _Subset(Sequence):
    def __init__(self, source: Sequence[Sample], indices: list[int]) -> None:
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Sample:
        return self.source[self.indices[i]]


def _holdout(source: Sequence[Sample], fraction: float, seed: int) -> tuple[Sequence[Sample], Sequence[Sample]]:
    """Split off a seeded random `fraction` of a source for validation (at least one image)."""
    n = len(source)
    n_val = max(1, round(n * fraction)) if fraction > 0 else 0
    if n_val >= n:
        raise ValueError(f"val_fraction {fraction} leaves no training images out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    return _Subset(source, train_idx), _Subset(source, val_idx)

