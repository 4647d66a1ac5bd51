"""Batch samplers: which images each batch holds, and the image size it is made at.

The DataModule owns its samplers (the CLI sets `use_distributed_sampler: false`) so that
evaluation shards are never padded with repeated images under DDP, and so that the
training sampler can draw one size per batch (multi-resolution training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


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
