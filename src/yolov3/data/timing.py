"""Optional per-stage timing of the data pipeline, off unless a bench turns it on.

    from yolov3.data import timing
    timing.enable()
    ... run the pipeline in this process (num_workers=0) ...
    timing.totals()   # {"decode": seconds, "resize": seconds, ...}

Stages nest (the survival filter runs inside the affine); each stage's total excludes the
time of stages inside it, so the totals add up to the time spent in all of them. Off, a
stage costs one attribute check.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

_totals: defaultdict[str, float] | None = None
_stack: list[list] = []  # [name, start, time spent in nested stages]
_owner: int | None = None  # only the thread that called enable() is timed (builders use threads)


def enable() -> None:
    """Start (or restart) collecting, from zero."""
    global _totals, _owner
    _totals = defaultdict(float)
    _owner = threading.get_ident()
    _stack.clear()


def disable() -> None:
    global _totals
    _totals = None
    _stack.clear()


def totals() -> dict[str, float]:
    """Seconds spent in each stage since `enable`, nested stages excluded."""
    return dict(_totals or {})


class stage:
    """`with stage("decode"): ...` adds the block's own time to the "decode" total."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        if _totals is not None and threading.get_ident() == _owner:
            _stack.append([self.name, time.perf_counter(), 0.0])

    def __exit__(self, *exc: object) -> None:
        if _totals is None or not _stack or threading.get_ident() != _owner:
            return
        name, start, nested = _stack.pop()
        elapsed = time.perf_counter() - start
        _totals[name] += elapsed - nested
        if _stack:
            _stack[-1][2] += elapsed
