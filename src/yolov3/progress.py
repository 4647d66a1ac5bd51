"""Plain progress lines for long work whose output is not a terminal.

A live progress bar (rich, tqdm) redraws one line in place: on a terminal that is the right
display, but written to a file, a pipe, CI's log or a notebook's subprocess it shows
nothing until the work ends. Off a terminal the long commands print instead one ordinary
line every so often, flushed at once, e.g.::

    synth 480/1800 images (27%) 40.2 img/s eta 33s

On a terminal nothing changes: the commands draw what they drew before.

The interval is `progress_every` seconds (PROGRESS_ENV, else 30 s; 0: a line for every
step). Standard library only: the synthetic writer's worker processes import this module.
The trainer's version of these lines is yolov3.train_progress.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

# Seconds between two lines when neither the command nor the environment says otherwise.
DEFAULT_EVERY = 30.0
PROGRESS_ENV = "YOLOV3_PROGRESS_EVERY"


def progress_every(value: float | None = None, source: str = "progress_every") -> float:
    """Seconds between plain progress lines: `value` when given, else $YOLOV3_PROGRESS_EVERY,
    else DEFAULT_EVERY (30). 0 prints a line for every step. ValueError naming `source` (or
    the environment variable) when the value is negative or not a number."""
    if value is None:
        text = os.environ.get(PROGRESS_ENV, "").strip()
        if not text:
            return DEFAULT_EVERY
        source = f"${PROGRESS_ENV}"
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{source}={text!r} is not a number of seconds") from None
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{source} must be a number of seconds >= 0 (0: a line every step), got {value:g}")
    return value


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether `stream` (default sys.stdout) shows a live progress bar as it is drawn: a TTY,
    or a Jupyter kernel's output (rich draws there too). False for a file, a pipe, or a
    missing or closed stream."""
    stream = sys.stdout if stream is None else stream
    if stream is None:
        return False
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def format_duration(seconds: float) -> str:
    """A duration for a progress line: 45s, 3m12s, 2h05m, 3d04h ('?' when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def rate_unit(unit: str) -> str:
    """The per-second unit of a count: images -> img/s, anything else -> <unit>/s."""
    return "img/s" if unit == "images" else f"{unit}/s"


def write_line(line: str, stream: TextIO | None = None) -> None:
    """Print one progress line and flush it, so that a file or pipe has it at once."""
    stream = sys.stdout if stream is None else stream
    if stream is None:
        return
    stream.write(line + "\n")
    stream.flush()


class ProgressLines:
    """Plain progress lines for `total` items of work.

    advance(n) counts n more items done and prints a line when `every` seconds have passed
    since the last one (or since the start: the first line comes after `every` seconds; with
    every 0, on every advance); finish() prints the final count if a line was printed before
    and the last one did not show it. A line::

        <label> <done>/<total> <unit> (<percent>%) <rate> img/s eta <duration>

    rate = done / seconds since the start, eta = (total - done) / rate. `clock` returns
    seconds (time.monotonic); `stream` None writes to sys.stdout as it is at that moment.
    """

    def __init__(self, label: str, total: int, unit: str = "images", every: float | None = None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit = label, int(total), unit
        self.every = progress_every(every)
        self.stream, self.clock = stream, clock
        self.done = 0
        self.start = self.last = clock()
        self.printed = 0  # the count of the last line printed; 0 before the first
        self.lines = 0

    def line(self) -> str:
        """The line for the count now."""
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else math.inf
        pct = 100 * self.done / self.total if self.total > 0 else 100.0
        text = f"{self.label} {self.done}/{self.total} {self.unit} ({pct:.0f}%)"
        if math.isfinite(rate):
            text += f" {rate:.1f} {rate_unit(self.unit)}"
        if self.done < self.total:
            eta = (self.total - self.done) / rate if rate > 0 else math.inf
            text += f" eta {format_duration(eta)}"
        else:
            text += f" in {format_duration(elapsed)}"
        return text

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every:
            self._print(now)

    def finish(self) -> None:
        if self.lines and self.printed != self.done:
            self._print(self.clock())

    def _print(self, now: float) -> None:
        write_line(self.line(), self.stream)
        self.last, self.printed = now, self.done
        self.lines += 1


@contextmanager
def counting(label: str, total: int, unit: str = "images", *, bar: bool = True, every: float | None = None,
             stream: TextIO | None = None) -> Iterator[Callable[[int], None]]:
    """Progress of `total` items as a context that yields `advance(n)`.

    Off a terminal (see is_terminal; `stream` default sys.stdout): ProgressLines, the final
    count printed at a normal exit if any line was. On a terminal: a transient rich bar when
    `bar` (drawn on the terminal, gone when done), or nothing.
    """
    if not is_terminal(stream):
        lines = ProgressLines(label, total, unit, every, stream)
        yield lines.advance
        lines.finish()
        return
    if not bar:
        yield lambda n=1: None
        return
    from rich.progress import Progress  # only on a terminal; importing rich costs ~0.1 s

    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n=1: progress.advance(task, n)
