"""What every bench script shares: the machine's description, the printed table and the
JSON file of results."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch


def describe_machine(device: str = "cpu") -> str:
    """The GPU's name, or the CPU's architecture with its core count and torch's thread count."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def report(title: str, columns: Sequence[tuple[str, str, str]], rows: Sequence[dict], out: str | Path,
           **meta) -> None:
    """Print `title`, then a right-aligned table with one line per row, then write
    {**meta, "rows": rows} to `out` as JSON.

    columns: (key in the row, header, format spec such as ".3f" or "").
    """
    cells = [[format(r[key], spec) for key, _, spec in columns] for r in rows]
    widths = [max([len(head)] + [len(c[i]) for c in cells]) for i, (_, head, _) in enumerate(columns)]
    print(title)
    print("  ".join(head.rjust(w) for (_, head, _), w in zip(columns, widths)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": list(rows)}, indent=2))
    print(f"wrote {out}")
