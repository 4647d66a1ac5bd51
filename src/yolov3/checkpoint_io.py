"""Checkpoint files: written atomically, read without running code.

One place for both directions, used by training (as Lightning's CheckpointIO plugin, so
`--ckpt_path` of fit, validate and test goes through it) and by Detector.load.

Writing: the checkpoint is serialised to `<name>.partial` in the same folder, flushed to
disk, then renamed over `<name>` (os.replace is atomic within one file system). A process
killed at any moment leaves either the previous file or the new one, never a torn one.
Lightning's own writer goes through fsspec, whose temporary file lives in the system's
temporary folder: when that is another file system (common on GPU machines: /tmp on local
disk, runs on a mounted volume) the final move is a copy into the destination, which a
kill can leave half written.

Reading: torch.load(weights_only=True) always. A checkpoint of this project holds only
tensors and plain types, so nothing legitimate needs more; a file whose unpickling would
build other objects (and so could run code) is refused with CheckpointError.
"""

from __future__ import annotations

import io
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

PARTIAL_SUFFIX = ".partial"
_CHUNK = 8 << 20  # bytes per write call


class CheckpointError(ValueError):
    """A checkpoint file that cannot or must not be loaded; the message names the file."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict:
    """Read a checkpoint written by torch.save without executing anything from it.

    Returns the checkpoint dict; with mmap its tensors are mapped from the file, read only
    when used. Raises FileNotFoundError when the file is missing and
    CheckpointError when it is not a readable checkpoint or would need code to unpickle
    (the message names the file and what it tried to build).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message ends with advice to pass weights_only=False, i.e. to run the
        # file's code: exactly what must not be done with a file one did not write.
        lines = str(exc).strip().splitlines()
        detail = next((line.strip() for line in lines if "global" in line.lower() and "Unsupported" in line), "")
        if not detail:  # not a pickle of ours at all (text, another format): nothing was refused
            what = next((line.strip() for line in lines if "Unsupported" in line or "invalid" in line.lower()), "")
            raise CheckpointError(f"{path}: not a readable checkpoint ({what or 'unknown format'})") from None
        raise CheckpointError(
            f"{path}: refused: unpickling this checkpoint would build objects other than tensors and "
            f"plain data, which can run code{' (' + detail + ')' if detail else ''}. Checkpoints of this "
            "project never need that; load only files you trust, or export weights with `yolov3 export`."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:  # truncated, not a zip, foreign format
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def read_hyperparameters(path: str | os.PathLike) -> dict:
    """The hyper-parameters a checkpoint file stores ({} if none), without reading its
    tensors (memory-mapped: cheap also for a 740 MB checkpoint). Raises as load_checkpoint."""
    return dict(load_checkpoint(path, mmap=True).get("hyper_parameters") or {})


def _write_bytes(f, data: memoryview) -> None:
    """Write in chunks (the tests slow this down to kill a writer half way)."""
    for start in range(0, len(data), _CHUNK):
        f.write(data[start : start + _CHUNK])


def save_atomic(checkpoint: dict, path: str | os.PathLike) -> None:
    """torch.save `checkpoint` to `path` so that a reader never sees a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    with open(tmp, "wb") as f:
        _write_bytes(f, buffer.getbuffer())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some file systems cannot fsync a directory; the rename is still atomic
        pass


def _cpu_copy(obj: Any) -> Any:
    """A snapshot of a checkpoint: every tensor copied to host memory, containers rebuilt."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return type(obj)((k, _cpu_copy(v)) for k, v in obj.items())  # OrderedDict stays one
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


class SafeCheckpointIO(CheckpointIO):
    """Lightning CheckpointIO: atomic writes (save_atomic), code-free reads (load_checkpoint).

    Args:
        background: write in a background thread. Training waits only while the checkpoint
            is copied to host memory (tensors only: the full model with Adam state, 740 MB,
            in about 0.3 s on our CPU), not while it is serialised and written, which costs
            seconds (bench/checkpoint_cost.py). A write waits for the one before it, and
            teardown (end of fit) for the last, so files still appear in order; an error
            in the background is raised by the next call.
    """

    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _write(self, checkpoint: dict, path) -> None:
        try:
            save_atomic(checkpoint, path)
        except BaseException as exc:  # surfaced by the next call
            self._error = exc

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"SafeCheckpointIO takes no storage_options, got {storage_options!r}")
        self._wait()
        if not self.background:
            save_atomic(checkpoint, path)
            return
        snapshot = _cpu_copy(checkpoint)  # training goes on changing the live tensors
        self._pending = threading.Thread(target=self._write, args=(snapshot, path), name="checkpoint-writer")
        self._pending.start()

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        self._wait()
        # weights_only=False from a caller is not honoured: see the module docstring.
        return load_checkpoint(path, map_location=map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path) -> None:
        self._wait()
        Path(path).unlink(missing_ok=True)

    def teardown(self) -> None:
        self._wait()
