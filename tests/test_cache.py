"""The training pipeline's shrink stage, the RAM and disk image caches, and stage timing."""

import logging
import os
import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from yolov3.data import timing
from yolov3.data.augment import AugmentConfig
from yolov3.data.cache import DiskImageCache, cache_mode, shrink, shrink_image
from yolov3.data.datamodule import YoloDataModule
from yolov3.data.sample import DataError, Sample, load_rgb


def test_shrink_scales_the_longer_side_down_and_the_boxes_per_axis():
    image = np.random.default_rng(0).integers(0, 255, (150, 301, 3), dtype=np.uint8)
    sample = Sample(image, np.array([[10.0, 20.0, 301.0, 150.0]]), np.array([3]))
    out = shrink(sample, 100)
    assert out.image.shape == (50, 100, 3)  # 301 -> 100, 150 * 100 / 301 = 49.8 -> 50
    # per axis by the realised sides, so the far edges stay on the far edges
    np.testing.assert_allclose(out.boxes, [[10 * 100 / 301, 20 * 50 / 150, 100.0, 50.0]], rtol=1e-6)
    assert out.labels.tolist() == [3]
    # never enlarged, and untouched when it fits
    assert shrink_image(image, 400) is image and shrink_image(image, None) is image
    assert shrink(sample, 301).image is image


def test_cache_mode_reads_the_old_boolean_and_refuses_unknown_names():
    assert (cache_mode(True), cache_mode(False), cache_mode(None), cache_mode("Disk")) == ("ram", "none", "none", "disk")
    with pytest.raises(ValueError, match="cache_images must be one of .*'mmap'"):
        cache_mode("mmap")


def _dm(root, cache, cache_dir, workers=0, mosaic=0.75):
    dm = YoloDataModule(root=str(root), image_size=64, train_sizes=[64, 96], batch_size=3, num_workers=workers,
                        val_fraction=0.25, seed=7, cache_images=cache, cache_dir=str(cache_dir),
                        augment=AugmentConfig(mosaic_prob=mosaic))
    dm.setup("fit")
    return dm


def _batches(dm, epochs=2):
    out = []
    loader = dm.train_dataloader()
    for _ in range(epochs):
        out += list(loader)
    return out


def test_the_caches_give_the_same_batches_as_decoding_each_time(synth_root, tmp_path):
    # synth_root's images have sides 96-160 px, so most are shrunk to the largest size, 96
    runs = {cache: _batches(_dm(synth_root, cache, tmp_path / "c")) for cache in ("none", "ram", "disk")}
    runs["disk, 2 workers"] = _batches(_dm(synth_root, "disk", tmp_path / "c", workers=2))
    ref = runs["none"]
    assert len(ref) == 12
    for name, batches in runs.items():
        assert len(batches) == len(ref), name
        for a, b in zip(ref, batches):
            assert torch.equal(a["images"], b["images"]), name
            assert torch.equal(a["targets"], b["targets"]), name
            assert a["paths"] == b["paths"] and torch.equal(a["orig_sizes"], b["orig_sizes"]), name
    # the stored size of the image is still reported, not the shrunk one
    dm = _dm(synth_root, "disk", tmp_path / "c")
    item = dm.train_set[(0, 64, False)]
    assert item["orig_size"] == Image.open(item["path"]).size


def test_evaluation_sets_never_see_shrunk_pixels(synth_root, tmp_path):
    dm = _dm(synth_root, "disk", tmp_path / "c")
    item = dm.val_set[(0, 64)]
    w, h = item["orig_size"]
    # the letterbox is measured on the stored image: its scale maps the longer side to 64
    assert item["letterbox"].scale_x == pytest.approx(round(w * 64 / max(w, h)) / w)


class Counting:
    """A loader that counts decodes (by index) and reads the file itself."""

    def __init__(self, paths):
        self.paths, self.calls = paths, []

    def __call__(self, i):
        self.calls.append(i)
        return load_rgb(self.paths[i])


def _images(tmp_path, n=5):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (60 + 10 * i, 90, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def test_disk_cache_is_built_once_and_redecodes_only_changed_files(tmp_path):
    paths = _images(tmp_path)
    load = Counting(paths)
    cache = DiskImageCache(tmp_path / "cache", paths, load, max_side=64)
    assert sorted(load.calls) == [0, 1, 2, 3, 4]
    for i, p in enumerate(paths):
        assert np.array_equal(cache[i], shrink_image(load_rgb(p), 64))
        assert max(cache[i].shape[:2]) <= 64

    load.calls.clear()
    DiskImageCache(tmp_path / "cache", paths, load, max_side=64)
    assert load.calls == []  # nothing changed: nothing decoded

    # a changed file (same size in pixels, other content, newer mtime) is decoded again
    new = np.full((80, 90, 3), 200, dtype=np.uint8)
    Image.fromarray(new).save(paths[2])
    os.utime(paths[2], ns=(time.time_ns(), time.time_ns() + 10**9))
    again = DiskImageCache(tmp_path / "cache", paths, load, max_side=64)
    assert load.calls == [2]
    assert np.array_equal(again[2], shrink_image(new, 64))
    for i in (0, 1, 3, 4):
        assert np.array_equal(again[i], cache[i])
    assert len(list(again.folder.glob("pixels-*.u8"))) == 1  # the old data file is gone

    # another size is another cache; a damaged index is rebuilt rather than trusted
    load.calls.clear()
    other = DiskImageCache(tmp_path / "cache", paths, load, max_side=32)
    assert sorted(load.calls) == [0, 1, 2, 3, 4] and other.folder != again.folder
    (again.folder / "index.json").write_text("{not json")
    load.calls.clear()
    DiskImageCache(tmp_path / "cache", paths, load, max_side=64)
    assert sorted(load.calls) == [0, 1, 2, 3, 4]


def test_disk_cache_pickles_without_its_mapping(tmp_path):
    paths = _images(tmp_path, 2)
    cache = DiskImageCache(tmp_path / "cache", paths, Counting(paths), max_side=64)
    first = cache[1].copy()
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._array is None and np.array_equal(clone[1], first)
    assert len(pickle.dumps(cache)) < first.nbytes  # the pixels do not travel to workers
    with pytest.raises(ValueError):
        cache[1][0, 0, 0] = 1  # read-only: a transform cannot change the cache in place


def test_disk_cache_errors_name_the_folder(tmp_path, synth_root):
    paths = _images(tmp_path, 1)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DataError, match=f"{blocker}/images-64-.*: cannot create the image cache here.*data.cache_dir"):
        DiskImageCache(blocker, paths, Counting(paths), max_side=64)
    missing = tmp_path / "gone.png"
    with pytest.raises(DataError, match=f"{missing}: cannot read image"):
        DiskImageCache(tmp_path / "cache", [*paths, missing], Counting(paths), max_side=64)
    # a decoding failure while building names the image (the source's own message)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{bad}: cannot read image"):
        DiskImageCache(tmp_path / "cache", [*paths, bad], Counting([*paths, bad]), max_side=64)
    assert not list((tmp_path / "cache").rglob("pixels-*.u8"))  # nothing half-written is left


def test_disk_cache_needs_a_file_backed_source():
    from yolov3.data.dataset import DetectionDataset

    samples = [Sample(np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), np.zeros(0))]
    with pytest.raises(ValueError, match="needs a source read from files, got list"):
        DetectionDataset(samples, True, cache_images="disk", max_side=64, cache_dir="unused")


def test_stage_times_exclude_nested_stages():
    timing.enable()
    try:
        with timing.stage("outer"):
            time.sleep(0.05)
            with timing.stage("inner"):
                time.sleep(0.1)
        totals = timing.totals()
    finally:
        timing.disable()
    assert 0.045 <= totals["outer"] < 0.09 and 0.095 <= totals["inner"] < 0.2
    with timing.stage("off"):
        pass
    assert timing.totals() == {}


def test_the_pipeline_reports_every_stage(synth_root, tmp_path, caplog):
    dm = _dm(synth_root, "none", tmp_path, mosaic=1.0)
    timing.enable()
    try:
        batch = next(iter(dm.train_dataloader()))
        totals = timing.totals()
    finally:
        timing.disable()
    assert batch["images"].shape[0] == 3
    for name in ("read", "decode", "resize", "mosaic/affine", "colour", "survival filter", "targets", "collate"):
        assert totals.get(name, 0) > 0, name


def test_disk_cache_build_is_logged(tmp_path, caplog):
    paths = _images(tmp_path, 2)
    with caplog.at_level(logging.INFO, logger="yolov3.data"):
        DiskImageCache(tmp_path / "cache", paths, Counting(paths), max_side=64)
    assert "caching 2 of 2 images shrunk to 64 px (0 reused)" in caplog.text
    assert "2 images" in caplog.text and "built in" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="yolov3.data"):
        DiskImageCache(tmp_path / "cache", paths, Counting(paths), max_side=64)
    assert "using the cached images (2," in caplog.text and "caching" not in caplog.text
