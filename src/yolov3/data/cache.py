"""Decoded training images, shrunk once to the largest training size, kept in RAM or on disk.

Training never needs more pixels than its largest size S: mosaic tiles and letterboxes are
resized to at most S. So the first stage of the training pipeline is `shrink`: the decoded
image is resized so its longer side is at most S, never enlarged. Decoding
is most of the cost of a training sample (a mosaic decodes four files), so the shrunk
images can be kept:

- ``ram``: in a dict per process (and per DataLoader worker): for small sets only;
- ``disk``: `DiskImageCache`, one flat uint8 file of all shrunk images plus an index,
  memory-mapped read-only, so every worker and DDP process shares the one copy in the
  operating system's page cache (the same idea as ultralytics' ``cache=disk``, which keeps
  one .npy per image). Full VOC (16,551 images of about 500 x 375) costs about 9.3 GB of disk
  at S >= 500, since nothing is enlarged.

Either way a sample's pixels are exactly those the uncached pipeline makes (the same decode
and the same `shrink`), so a seeded run gives the same batches with or without a cache.

The disk cache is rebuilt, with a progress bar, when an image file's size or modification
time changes (only the changed images are decoded again; the others are copied), when the
list of images or S changes (a new cache folder), or when its files are damaged. Building
holds a file lock, so DDP processes that open it together wait for one builder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from rich.progress import Progress

from yolov3.data import timing
from yolov3.data.sample import DataError, Sample
from yolov3.letterbox import longest_side_to

log = logging.getLogger("yolov3.data")

CACHE_MODES = ("none", "ram", "disk")
FORMAT_VERSION = 1
_MAX_THREADS = min(16, (os.cpu_count() or 1) + 2)


def cache_mode(value: bool | str | None) -> str:
    """The cache mode named by a config value: True -> "ram" (the old boolean), False/None -> "none"."""
    if value is True:
        return "ram"
    if value is False or value is None:
        return "none"
    mode = str(value).lower()
    if mode not in CACHE_MODES:
        raise ValueError(f"cache_images must be one of {CACHE_MODES} (or true/false), got {value!r}")
    return mode


def shrink_image(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """(H, W, 3) uint8 -> the same image with its longer side at most max_side (new sides
    rounded); unchanged (the same array) when it already fits or max_side is None.

    Area averaging where the image shrinks below half its size (bilinear would alias there),
    bilinear above: VOC's 500 px photos at S = 416 take 0.2 ms a shrink instead of 1.5 ms, which
    the uncached pipeline pays on every draw.
    """
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image
    new_w, new_h, scale = longest_side_to(w, h, max_side)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR)


def with_image(sample: Sample, image: np.ndarray, orig_w: int, orig_h: int) -> Sample:
    """sample with `image`, the same picture as an orig_w x orig_h one at another size, and
    its boxes scaled per axis by the realised new_w / orig_w and new_h / orig_h."""
    new_h, new_w = image.shape[:2]
    if (new_w, new_h) == (orig_w, orig_h):
        return Sample(image, sample.boxes, sample.labels, sample.difficult, sample.path)
    sx, sy = new_w / orig_w, new_h / orig_h
    boxes = sample.boxes * np.array([sx, sy, sx, sy], dtype=np.float32)
    return Sample(image, boxes, sample.labels, sample.difficult, sample.path)


def shrink(sample: Sample, max_side: int | None) -> Sample:
    """The training pipeline's first stage: the image shrunk by `shrink_image`, boxes scaled."""
    h, w = sample.image.shape[:2]
    with timing.stage("resize"):
        return with_image(sample, shrink_image(sample.image, max_side), w, h)


def _fingerprint(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return st.st_size, st.st_mtime_ns


class DiskImageCache:
    """The shrunk images of a file-backed source, on disk, memory-mapped.

    Args:
        directory: the cache root; this source and size get a folder of their own in it
            (named by a hash of the image paths and max_side).
        paths: the source's image files, in index order.
        load: index -> (H, W, 3) uint8 RGB, the decoded image (the source's own loader, so
            its checks and messages apply while building).
        max_side: the largest training size S; images are stored shrunk to it.
        progress: show a progress bar while building (default: when stderr is a terminal).

    `cache[i]` is image i, (h, w, 3) uint8, read-only. Opening checks every file's size and
    modification time against the index and re-decodes what changed. Raises DataError when
    the cache folder cannot be created or written (naming it).
    """

    def __init__(self, directory: str | Path, paths: Sequence[str | Path], load: Callable[[int], np.ndarray],
                 max_side: int, progress: bool | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.max_side = int(max_side)
        key = hashlib.sha1(json.dumps([FORMAT_VERSION, self.max_side, [str(p.resolve()) for p in self.paths]])
                           .encode("utf-8", "surrogateescape")).hexdigest()[:16]
        self.folder = Path(directory) / f"images-{self.max_side}-{key}"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = open(self.folder / "lock", "a+")  # noqa: SIM115  # held for the whole check/build
        except OSError as exc:
            raise DataError(f"{self.folder}: cannot create the image cache here ({exc.strerror or exc}); "
                            f"set data.cache_dir to a writable folder") from None
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._open_or_build(load, sys.stderr.isatty() if progress is None else progress)
        self._array: np.ndarray | None = None

    # ---------------------------------------------------------------- build

    def _read_index(self) -> dict | None:
        try:
            index = json.loads((self.folder / "index.json").read_text())
        except (OSError, ValueError):
            return None
        data = self.folder / str(index.get("data", ""))
        ok = (index.get("version") == FORMAT_VERSION and index.get("max_side") == self.max_side
              and len(index.get("entries", [])) == len(self.paths) and data.is_file()
              and data.stat().st_size == index.get("bytes"))
        return index if ok else None

    def _open_or_build(self, load: Callable[[int], np.ndarray], progress: bool) -> None:
        fingerprints = [_fingerprint(p) for p in self.paths]
        old = self._read_index()
        reuse = [False] * len(self.paths)
        if old is not None:
            reuse = [[e["size"], e["mtime_ns"]] == list(fp) for e, fp in zip(old["entries"], fingerprints)]
            if all(reuse):
                self._set_index(old)
                log.info("%s: using the cached images (%d, %.1f MB)", self.folder, len(self.paths), self.nbytes / 1e6)
                return
        self._build(load, fingerprints, old, reuse, progress)

    def _build(self, load: Callable[[int], np.ndarray], fingerprints: list[tuple[int, int]], old: dict | None,
               reuse: list[bool], progress: bool) -> None:
        todo = [i for i, r in enumerate(reuse) if not r]
        old_data = np.memmap(self.folder / old["data"], dtype=np.uint8, mode="r") if old and old["bytes"] else None
        name = f"pixels-{uuid.uuid4().hex[:12]}.u8"
        entries, offset, t0 = [], 0, time.perf_counter()
        log.info("%s: caching %d of %d images shrunk to %d px (%d reused)", self.folder, len(todo),
                 len(self.paths), self.max_side, len(self.paths) - len(todo))

        def shrunk(i: int) -> np.ndarray:
            return np.ascontiguousarray(shrink_image(load(i), self.max_side))

        try:
            with open(self.folder / name, "wb") as out, ThreadPoolExecutor(_MAX_THREADS) as pool, \
                    _progress(progress, len(todo), f"caching images ({self.max_side} px)") as advance:
                made = _in_order(pool, shrunk, todo, ahead=4 * _MAX_THREADS)  # decoded in threads
                for i, (path, (size, mtime)) in enumerate(zip(self.paths, fingerprints)):
                    if reuse[i]:
                        e = old["entries"][i]
                        pixels = np.asarray(old_data[e["offset"]:e["offset"] + e["h"] * e["w"] * 3])
                        h, w = e["h"], e["w"]
                    else:
                        image = next(made)
                        h, w = image.shape[:2]
                        pixels = image.reshape(-1)
                        advance()
                    out.write(memoryview(pixels))
                    entries.append({"size": size, "mtime_ns": mtime, "offset": offset, "h": h, "w": w})
                    offset += h * w * 3
                out.flush()
                os.fsync(out.fileno())
            index = {"version": FORMAT_VERSION, "max_side": self.max_side, "data": name, "bytes": offset,
                     "paths": [str(p) for p in self.paths], "entries": entries}
            tmp = self.folder / "index.json.partial"
            tmp.write_text(json.dumps(index))
            os.replace(tmp, self.folder / "index.json")  # readers see the old index or the new one
        except OSError as exc:
            (self.folder / name).unlink(missing_ok=True)
            raise DataError(f"{self.folder}: cannot write the image cache ({exc.strerror or exc}); "
                            f"set data.cache_dir to a folder with space") from None
        except BaseException:
            (self.folder / name).unlink(missing_ok=True)
            raise
        del old_data
        for stale in self.folder.glob("pixels-*.u8"):
            if stale.name != name:
                stale.unlink(missing_ok=True)
        log.info("%s: %d images, %.1f MB, built in %.1f s", self.folder, len(entries), offset / 1e6,
                 time.perf_counter() - t0)
        self._set_index(index)

    def _set_index(self, index: dict) -> None:
        self.data_path = self.folder / index["data"]
        self.nbytes = int(index["bytes"])
        self._entries = np.array([(e["offset"], e["h"], e["w"]) for e in index["entries"]], dtype=np.int64).reshape(-1, 3)

    # ---------------------------------------------------------------- read

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._array is None:  # opened lazily: in each DataLoader worker, not pickled to it
            self._array = np.memmap(self.data_path, dtype=np.uint8, mode="r") if self.nbytes else np.zeros(0, np.uint8)
        offset, h, w = (int(v) for v in self._entries[i])
        return self._array[offset:offset + h * w * 3].reshape(h, w, 3)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_array"] = None
        return state


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[int], np.ndarray], items: list[int],
              ahead: int) -> Iterator[np.ndarray]:
    """fn over items in the pool, yielded in order, with at most `ahead` results pending
    (pool.map would decode everything at once and hold what the writer has not taken yet)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _progress:
    """A rich progress bar (when shown) as a context manager yielding an `advance()` callable."""

    def __init__(self, show: bool, total: int, what: str) -> None:
        self.show, self.total, self.what = show and total > 0, total, what

    def __enter__(self) -> Callable[[], None]:
        if not self.show:
            return lambda: None
        self._bar = Progress(transient=True)
        self._bar.start()
        task = self._bar.add_task(self.what, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.show:
            self._bar.stop()
