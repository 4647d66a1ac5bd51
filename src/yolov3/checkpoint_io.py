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
load_foreign_checkpoint reads checkpoints of other code bases (a course's Lightning files,
whose hyper-parameters hold objects of its classes) with yolov3.unpickle: classes become
inert stand-ins, calls other than rebuilding tensors and containers are refused.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import torch

from yolov3 import unpickle

PARTIAL_SUFFIX = ".partial"
_CHUNK = 8 << 20  # bytes per write call


class CheckpointError(ValueError):
    """A checkpoint file that cannot or must not be loaded; the message names the file."""


class _RefusedByWeightsOnly(CheckpointError):
    """load_checkpoint's refusal of a file that weights_only cannot unpickle (load_foreign_checkpoint
    reads those with the restricted unpickler); `for_globals`: it named globals it does not admit."""

    def __init__(self, message: str, for_globals: bool) -> None:
        super().__init__(message)
        self.for_globals = for_globals


class ForeignCheckpoint(NamedTuple):
    """A checkpoint read by load_foreign_checkpoint.

    content: the checkpoint dict; objects of classes outside yolov3.unpickle's admitted set are
    inert stand-ins (yolov3.unpickle.StandIn: `.qualname`, `.state`, ...), tensors are real.
    stand_ins: the sorted qualified names ("module.Name") replaced by stand-ins; () when
    torch.load(weights_only=True) read the file.
    """

    content: dict
    stand_ins: tuple[str, ...]


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
    return _load_weights_only(path, path, map_location, mmap)


def _load_weights_only(source: Path | BinaryIO, path: Path, map_location: Any, mmap: bool) -> dict:
    """torch.load(source, weights_only=True) with load_checkpoint's errors (naming `path`)."""
    try:
        ckpt = torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # torch's message ends with advice to pass weights_only=False, i.e. to run the
        # file's code: exactly what must not be done with a file one did not write.
        lines = str(exc).strip().splitlines()
        detail = next((line.strip() for line in lines if "global" in line.lower() and "Unsupported" in line), "")
        if not detail:  # not a pickle of ours at all (text, another format): nothing was refused
            what = next((line.strip() for line in lines if "Unsupported" in line or "invalid" in line.lower()), "")
            raise _RefusedByWeightsOnly(f"{path}: not a readable checkpoint ({what or 'unknown format'})",
                                        for_globals=False) from None
        raise _RefusedByWeightsOnly(
            f"{path}: refused: unpickling this checkpoint would build objects other than tensors and "
            f"plain data, which can run code{' (' + detail + ')' if detail else ''}. Checkpoints of this "
            "project never need that; load only files you trust, or export weights with `yolov3 export`.",
            for_globals=True,
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:  # truncated, not a zip, foreign format
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    return ckpt


def load_foreign_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> ForeignCheckpoint:
    """Read a checkpoint that may hold objects of classes not importable here, without running code.

    For checkpoints of other code bases, e.g. a course's Lightning `.ckpt` whose hyper-parameters
    hold its loss module, optimiser class and scheduler: weights_only refuses those whole. First
    load_checkpoint's torch.load(weights_only=True); only if that cannot unpickle the file,
    yolov3.unpickle's restricted unpickler, which replaces other classes by inert stand-ins and
    refuses any call beyond rebuilding tensors, containers and plain values (both reads from one
    open file). Raises FileNotFoundError when the file is missing; CheckpointError naming the file
    when it is not a readable checkpoint, does not hold a dict, or unpickling it would call
    something ("refused: unpickling <file> would call <module.name> ...").
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    with open(path, "rb") as f:
        try:
            return ForeignCheckpoint(_load_weights_only(f, path, map_location, mmap=False), ())
        except _RefusedByWeightsOnly as exc:
            first = exc
        f.seek(0)
        try:
            content, stand_ins = unpickle.load_restricted(f, map_location)
        except unpickle.RefusedCall as exc:
            why = f" ({exc.why})" if exc.why else ""
            raise CheckpointError(
                f"{path}: refused: unpickling {path.name} would call {exc.target}{why}, and a call other than "
                "rebuilding tensors and containers can run any code: the file is not read. Classes alone are "
                "fine (they become stand-ins); a checkpoint needs no other calls."
            ) from None
        except unpickle.Refused as exc:
            raise CheckpointError(f"{path}: refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a hostile or broken pickle fails in many ways; all get the name
            if not first.for_globals:  # not a pickle weights_only could parse either: its words are clearer
                raise first from None
            raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {_describe(content)}, not a dict)")
    return ForeignCheckpoint(content, stand_ins)


def _describe(obj: Any) -> str:
    return obj.qualname if isinstance(obj, unpickle.StandIn) else type(obj).__name__


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
