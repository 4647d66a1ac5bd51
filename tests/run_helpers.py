"""Helpers that tests/test_runs.py runs in child processes (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os
import signal
import sys
import time

from lightning.pytorch.callbacks import Callback


class KillAtStep(Callback):
    """SIGKILLs its own process as training step YOLOV3_KILL_AT_STEP starts, as a lost machine
    would: no exception, no handler, no clean-up."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == int(os.environ.get("YOLOV3_KILL_AT_STEP", "-1")):
            os.kill(os.getpid(), signal.SIGKILL)


def slow_writer(path: str, marker: str) -> None:
    """Write a checkpoint with save_atomic, slowly (1 ms per 4 kB), so a test can kill the
    process half way; `marker` is the value stored, to tell the versions apart."""
    import torch

    from yolov3 import checkpoint_io

    checkpoint_io._CHUNK = 4096
    real = checkpoint_io._write_bytes

    def slow(f, data):
        for start in range(0, len(data), 4096):
            real(f, data[start : start + 4096])
            f.flush()
            time.sleep(0.001)

    checkpoint_io._write_bytes = slow
    checkpoint_io.save_atomic({"marker": marker, "weights": torch.arange(500_000, dtype=torch.float32)}, path)


if __name__ == "__main__":
    slow_writer(sys.argv[1], sys.argv[2])
