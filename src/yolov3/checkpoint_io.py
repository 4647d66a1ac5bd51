"""Checkpoint files: written atomically, read without running code.

One place for both directions, used by training (through checkpoint_plugin.SafeCheckpointIO,
Lightning's CheckpointIO plugin, so `--ckpt_path` of fit, validate and test goes through it)
and by Detector.load. No Lightning here: a Space that serves a checkpoint has none.

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
from pathlib import Path
from typing import Any

import torch

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
