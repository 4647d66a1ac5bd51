import numpy as np
import torch

from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from yolov3.data.dataset import collate
from yolov3.data.samplers import EvalBatchSampler, TrainBatchSampler


def test_collate_targets_are_normalised_cxcywh_with_image_index():
    items = []
    for i, boxes in enumerate([[[0, 0, 32, 64]], [], [[16, 16, 48, 48], [60, 0, 64, 8]]]):
        items.append({
            "image": torch.zeros(3, 64, 64, dtype=torch.uint8),
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.arange(len(boxes)),
            "difficult": torch.zeros(len(boxes), dtype=torch.bool),
            "path": f"{i}.jpg", "orig_size": (64, 64),
        })
    batch = collate(items)
    assert batch["images"].shape == (3, 3, 64, 64)
    expected = torch.tensor([
        [0, 0, 0.25, 0.5, 0.5, 1.0],
        [2, 0, 0.5, 0.5, 0.5, 0.5],
        [2, 1, 62 / 64, 4 / 64, 4 / 64, 8 / 64],
    ])
    torch.testing.assert_close(batch["targets"], expected)
    # per-image fields come back image by image, an image without boxes included
    for key in ("boxes", "labels", "difficult"):
        assert len(batch[key]) == 3
        for got, item in zip(batch[key], items):
            assert got.dtype == item[key].dtype and torch.equal(got, item[key])


class _Items(torch.utils.data.Dataset):
    """Images with 0-3 boxes each, for the loader test below."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        n = i % 4
        return {"image": torch.full((3, 32, 32), i, dtype=torch.uint8),
                "boxes": torch.arange(4 * n, dtype=torch.float32).reshape(n, 4) + i,
                "labels": torch.full((n,), i), "difficult": torch.arange(n) % 2 == 1,
                "path": f"{i}.jpg", "orig_size": (32, 32)}


def test_collate_in_worker_processes_gives_the_same_batches():
    data = _Items()
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]
    same = torch.utils.data.DataLoader(data, batch_sampler=batches, collate_fn=collate)
    workers = torch.utils.data.DataLoader(data, batch_sampler=batches, collate_fn=collate, num_workers=2)
    for a, b in zip(same, workers, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
        for key in ("boxes", "labels", "difficult"):
            assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True))


def test_train_sampler_is_seeded_and_shards_are_disjoint():
    a = list(TrainBatchSampler(50, 4, [320, 416], seed=1))
    b = list(TrainBatchSampler(50, 4, [320, 416], seed=1))
    assert a == b and len(a) == 12
    assert all(len(batch) == 4 and len({s for _, s, _, _ in batch}) == 1 for batch in a)
    s = TrainBatchSampler(50, 4, [320, 416], seed=1)
    first, second = list(s), list(s)  # each pass is the next epoch
    assert first == a and second != a
    s.set_epoch(1)
    assert list(s) == second
    shards = [list(TrainBatchSampler(50, 4, [320], seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    idx = [[i for batch in sh for i, _, _, _ in batch] for sh in shards]
    assert len(shards[0]) == len(shards[1])
    assert not set(idx[0]) & set(idx[1])


def test_eval_sampler_covers_every_image_once_without_padding():
    for n, world in [(7, 2), (10, 3), (5, 1)]:
        seen = [i for r in range(world) for batch in EvalBatchSampler(n, 2, 416, world, r) for i, _ in batch]
        assert sorted(seen) == list(range(n))


def test_datamodule_batches_from_both_layouts(synth_root):
    for layout, train, test in (("kaggle", "train.csv", "test.csv"), ("voc", "2007-trainval", "2007-test")):
        dm = YoloDataModule(root=str(synth_root), layout=layout, train_split=train, test_split=test,
                            image_size=64, batch_size=4, num_workers=0, val_fraction=0.25)
        dm.setup("fit")
        dm.setup("test")
        assert len(dm.train_set) == 18 and len(dm.val_set) == 6 and len(dm.test_set) == 8
        batch = next(iter(dm.train_dataloader()))
        assert batch["images"].shape == (4, 3, 64, 64) and batch["images"].dtype == torch.uint8
        t = batch["targets"]
        assert t.shape[1] == 6 and (t[:, 4:] > 0).all() and (t[:, 2:4] >= 0).all() and (t[:, 2:4] <= 1).all()
        test_batch = next(iter(dm.test_dataloader()))
        # evaluation letterbox is undoable back to the original boxes
        src = dm.test_set.source[0]
        lb = test_batch["letterbox"][0]
        back = (test_batch["boxes"][0].numpy() - [lb.pad_x, lb.pad_y] * 2) / ([lb.scale_x, lb.scale_y] * 2)
        assert batch["letterbox"] is None  # training geometry is never undone
        np.testing.assert_allclose(back, src.boxes, atol=1e-3)


def test_workers_get_different_augmentations(synth_root):
    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=1, num_workers=2, val_fraction=0.25)
    dm.setup("fit")
    # the same image requested from two workers must come out differently augmented
    loader = torch.utils.data.DataLoader(
        dm.train_set, batch_sampler=[[(0, 64)]] * 4, num_workers=2, collate_fn=collate,
        worker_init_fn=dm.train_dataloader().worker_init_fn)
    images = [b["images"] for b in loader]
    assert any(not torch.equal(images[0], im) for im in images[1:])


def test_fit_sees_a_new_order_every_epoch(synth_root):
    """Lightning never calls set_epoch on a batch sampler: check the order really changes."""
    import lightning as L

    from yolov3.lit import YoloLitModule

    seen: list[list[str]] = []

    class Record(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append([])

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[-1].extend(batch["paths"])

    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, callbacks=[Record()])
    trainer.fit(YoloLitModule(width=0.0625), datamodule=dm)
    assert len(seen) == 3 and all(len(e) == 16 for e in seen)
    assert seen[0] != seen[1] and seen[1] != seen[2]


def test_train_sampler_resumes_at_a_position():
    full = TrainBatchSampler(50, 4, [320, 416], seed=1)
    epochs = [list(full) for _ in range(3)]
    calls = iter([(1, 5), None, None])
    resumed = TrainBatchSampler(50, 4, [320, 416], seed=1, position=lambda: next(calls))
    assert list(resumed) == epochs[1][5:]  # the rest of epoch 1, same indices, sizes and seeds
    assert list(resumed) == epochs[2]  # then the next epoch, whole
    at_end = TrainBatchSampler(50, 4, [320, 416], seed=1, position=lambda: (0, 12))
    assert list(at_end) == epochs[1]  # a checkpoint that closed epoch 0 resumes with epoch 1


def test_augmentation_does_not_depend_on_the_number_of_workers(synth_root):
    batches = {}
    for workers in (0, 2):
        dm = YoloDataModule(root=str(synth_root), image_size=64, train_sizes=[64, 96], batch_size=3,
                            num_workers=workers, val_fraction=0.25, seed=4, augment=AugmentConfig(mosaic_prob=0.75))
        dm.setup("fit")
        batches[workers] = list(dm.train_dataloader())
    assert len(batches[0]) == len(batches[2]) == 6
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["targets"], b["targets"])
