"""Multi-resolution training: one size per batch, chosen by the seeded batch sampler and
honoured inside DataLoader workers; targets and anchors follow the size."""

import numpy as np
import pytest
import torch

from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from yolov3.data.dataset import DetectionDataset, collate
from yolov3.data.samplers import TrainBatchSampler
from yolov3.data.sample import Sample
from yolov3.lit import YoloLitModule
from yolov3.targets import build_targets

SIZES = list(range(320, 609, 32))


def border_samples():
    """Two images whose boxes touch every border and corner of the image."""
    rng = np.random.default_rng(0)
    out = []
    for h, w in ((300, 500), (480, 360)):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        boxes = [[0, 0, 40, 30], [w - 50, h - 60, w, h], [0, h - 20, w, h], [w - 10, 0, w, h], [100, 100, 200, 180]]
        out.append(Sample(img, np.array(boxes, np.float32), np.arange(5) % 20, path=f"border{w}.jpg"))
    return out


@pytest.fixture(scope="module")
def tiny_module():
    torch.manual_seed(0)
    return YoloLitModule(width=0.0625)


@pytest.mark.parametrize("size", SIZES)
def test_every_size_gives_matching_grids_and_a_training_step(size, tiny_module):
    # no geometric jitter, so the border boxes stay on the border
    cfg = AugmentConfig(mosaic_prob=0.0, affine_prob=0.0, hflip=0.0)
    dataset = DetectionDataset(border_samples(), train=True, augment=cfg, seed=0)
    batch = collate([dataset[(i, size)] for i in range(2)])
    assert batch["images"].shape == (2, 3, size, size)
    t = batch["targets"]
    assert len(t) == 10 and (t[:, 2:4] + t[:, 4:6] / 2 <= 1 + 1e-6).all()
    assert ((t[:, 2:4] + t[:, 4:6] / 2) > 1 - 1e-6).any()  # boxes really reach the right/bottom border
    model = tiny_module
    model.zero_grad()
    outputs, targets, loss, _ = model._step(batch)  # what training_step runs: forward, targets, loss
    grids = [tuple(o.shape[2:4]) for o in outputs]
    assert grids == [(size // 32,) * 2, (size // 16,) * 2, (size // 8,) * 2]
    assert [tg.shape[:4] for tg in targets] == [o.shape[:4] for o in outputs]
    # every box is a positive in each scale, whatever its position
    assert all(int((tg[..., 0] == 1).sum()) == len(t) for tg in targets)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_anchor_sizes_scale_with_the_image():
    """The same box as a fraction of the image gets the same anchor at every size, with its
    size in cells growing with the grid."""
    anchors = YoloLitModule(width=0.0625).anchors
    t = torch.tensor([[0, 3, 0.5, 0.5, 0.3, 0.4]])
    chosen = []
    for size in (320, 416, 608):
        grids = [(size // s,) * 2 for s in (32, 16, 8)]
        targets = build_targets(t, 1, grids, anchors)
        pos = (targets[0][..., 0] == 1).nonzero()
        assert len(pos) == 1
        chosen.append(int(pos[0, 1]))
        w_cells = targets[0][tuple(pos[0])][3]
        assert torch.isclose(w_cells, torch.tensor(0.3 * size / 32))
    assert len(set(chosen)) == 1


def test_batch_sampler_sizes_agree_across_processes_and_vary():
    per_rank = [list(TrainBatchSampler(400, 4, SIZES, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    sizes = [[b[0][1] for b in batches] for batches in per_rank]
    assert sizes[0] == sizes[1]  # every process makes step k at the same size (DDP steps stay in step)
    assert set(sizes[0]) == set(SIZES)  # 50 batches over 10 sizes: all of them are drawn
    assert all(len({s for _, s, _, _ in b}) == 1 for batches in per_rank for b in batches)


def test_two_workers_vary_the_size_within_one_epoch(synth_root):
    dm = YoloDataModule(root=str(synth_root), image_size=64, train_sizes=[64, 96, 128], batch_size=2,
                        num_workers=2, val_fraction=0.25, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.num_workers == 2
    seen = []
    for batch in loader:
        b, c, h, w = batch["images"].shape
        assert h == w and c == 3
        seen.append(h)
        t = batch["targets"]
        assert ((t[:, 2:4] >= 0) & (t[:, 2:4] <= 1)).all()
    assert len(seen) == 9 and len(set(seen)) > 1, seen
    # the sizes are the sampler's, in its order, whatever worker made each batch
    expected = [b[0][1] for b in TrainBatchSampler(18, 2, [64, 96, 128], seed=0)]
    assert seen == expected


def _worker_outputs(synth_root, seed):
    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=1, num_workers=2, val_fraction=0.25,
                        seed=seed, augment=AugmentConfig(mosaic_prob=0.75))
    dm.setup("fit")
    template = dm.train_dataloader()  # the loader the trainer gets: its worker seeding and generator
    loader = torch.utils.data.DataLoader(dm.train_set, batch_sampler=[[(0, 64)]] * 6, num_workers=2,
                                         collate_fn=collate, worker_init_fn=template.worker_init_fn,
                                         generator=template.generator)
    return [b["images"][0] for b in loader]


def test_workers_differ_and_runs_repeat(synth_root):
    a = _worker_outputs(synth_root, seed=0)
    # batches alternate between the two workers: the same image from each must differ
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[2], a[3])
    b = _worker_outputs(synth_root, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = _worker_outputs(synth_root, seed=1)
    assert any(not torch.equal(x, y) for x, y in zip(a, c))


def test_evaluation_stays_at_the_fixed_size(synth_root):
    dm = YoloDataModule(root=str(synth_root), image_size=96, train_sizes=[64, 128], batch_size=4, num_workers=0,
                        val_fraction=0.25)
    dm.setup("fit")
    assert {b["images"].shape[-1] for b in dm.val_dataloader()} == {96}


def test_mosaic_can_be_closed_for_the_last_epochs():
    sampler = TrainBatchSampler(20, 4, [64], seed=0, mosaic_epochs=2)
    flags = [{m for batch in sampler for _, _, m, _ in batch} for _ in range(4)]  # each pass is one epoch
    assert flags == [{True}, {True}, {False}, {False}]
    assert {m for batch in TrainBatchSampler(20, 4, [64]) for _, _, m, _ in batch} == {True}


def test_closed_mosaic_reaches_the_dataset(synth_root, monkeypatch):
    import lightning as L

    from yolov3.data.augment import TrainTransform

    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25,
                        augment=AugmentConfig(mosaic_prob=1.0, close_mosaic_epochs=1))
    dm.trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    dm.setup("fit")
    assert dm.train_dataloader().batch_sampler.mosaic_epochs == 2
    pools = []
    original = TrainTransform.__call__

    def spy(self, sample, size, pool=None):
        pools.append(pool is not None)
        return original(self, sample, size, pool)

    monkeypatch.setattr(TrainTransform, "__call__", spy)
    items = [dm.train_set[(0, 64, True)], dm.train_set[(0, 64, False)]]
    assert pools == [True, False] and all(it["image"].shape == (3, 64, 64) for it in items)
