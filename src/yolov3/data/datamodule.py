"""The LightningDataModule: splits from config, and the loaders over data/dataset.py and
data/samplers.py.

The DataModule owns its samplers (the CLI sets `use_distributed_sampler: false`) so that
evaluation shards are never padded with repeated images under DDP: every image is counted
exactly once across processes. The training sampler is where multi-resolution batching
plugs in: it yields index lists, and each batch's image size travels with its indices.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from yolov3.constants import VOC_CLASSES
from yolov3.data.augment import AugmentConfig, TrainTransform
from yolov3.data.cache import cache_mode
from yolov3.data.dataset import DetectionDataset, Subset, collate
from yolov3.data.records import DetectionSource
from yolov3.data.sample import Sample
from yolov3.data.samplers import EvalBatchSampler, TrainBatchSampler
from yolov3.data.sources import open_source
from yolov3.letterbox import letterbox_style
from yolov3.data.split_checks import check_eval_split, check_training_split, shared_images

log = logging.getLogger("yolov3.data")


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
        letterbox: how validation and test images are fitted into the input: "yolo" (grey
            padding, area-averaged shrinking: this project's) or "course" (black padding,
            bilinear: the course's test_transforms, for its checkpoints; yolov3.letterbox).

    setup checks what the splits hold (data/split_checks.py): a training split without a box
    is a DataError; an evaluation split without ground truth, classes without boxes, and
    images that two splits share (compared among the splits this DataModule has set up: fit
    compares train and val; test, after a fit in the same process, compares test with both)
    each get a warning, also kept in `split_notes`.
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
        letterbox: str = "yolo",
    ) -> None:
        super().__init__()
        letterbox_style(letterbox, "data.letterbox")  # ValueError for an unknown name
        self.letterbox = letterbox
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
        self.split_notes: list[str] = []
        self._names: dict[str, str] = {}

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
            self._check_fit_splits(train_src, val_src, training=stage != "validate")
            self.train_set = DetectionDataset(train_src, True, self.augment, self.cache_images, self.seed,
                                              max_side=max(self.train_sizes),
                                              cache_dir=self.cache_dir or Path(self.root) / ".yolov3-cache")
            self.val_set = DetectionDataset(val_src, False, cache_images=self._eval_cache, letterbox=self.letterbox)
        if stage in ("test", None) and self.test_set is None:
            test_src = self._open(self.test_split)
            self._check_test_split(test_src)
            self.test_set = DetectionDataset(test_src, False, cache_images=self._eval_cache, letterbox=self.letterbox)

    def _check_fit_splits(self, train_src: Sequence[Sample], val_src: Sequence[Sample], training: bool) -> None:
        """Boxes in the training split (DataError if none, when it is for training: `validate`
        only evaluates), ground truth in val, images both hold."""
        train_name = f"train split {self.train_split!r} of {self.root}"
        if self.val_split:
            val_name = f"val split {self.val_split!r} of {self.root}"
        else:
            val_name = f"val split (the {len(val_src)} image(s) held out of {self.train_split!r} of {self.root})"
            if len(val_src):
                train_name += f" (less the {len(val_src)} image(s) held out for validation)"
        if training:
            self.split_notes += check_training_split(train_src, train_name, self.class_names)
        if len(val_src):  # val_fraction 0: no validation at all, nothing to warn about
            self.split_notes += check_eval_split(val_src, val_name, self.class_names)
            self.split_notes += shared_images(train_src, train_name, val_src, val_name)
        self._names = {"train": train_name, "val": val_name}

    def _check_test_split(self, test_src: Sequence[Sample]) -> None:
        """Ground truth in the test split, and images it shares with the splits set up for a fit."""
        test_name = f"test split {self.test_split!r} of {self.root}"
        self.split_notes += check_eval_split(test_src, test_name, self.class_names)
        for which, other in (("train", self.train_set), ("val", self.val_set)):
            if other is not None and len(other):
                self.split_notes += shared_images(other.source, self._names[which], test_src, test_name)

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


def _holdout(source: Sequence[Sample], fraction: float, seed: int) -> tuple[Sequence[Sample], Sequence[Sample]]:
    """Split off a seeded random `fraction` of a source for validation (at least one image)."""
    n = len(source)
    n_val = max(1, round(n * fraction)) if fraction > 0 else 0
    if n_val >= n:
        raise ValueError(f"val_fraction {fraction} leaves no training images out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = sorted(perm[:n_val].tolist()), sorted(perm[n_val:].tolist())
    return Subset(source, train_idx), Subset(source, val_idx)

