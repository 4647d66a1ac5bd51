"""Start and stop a real `yolov3 app` server for the app tests (and the screenshot in docs/app.md).

The server is the command a user runs, in its own process, on a free loopback port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, headless as root, on a machine without internet (no background calls out).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def app_server(weights: str | Path, args: Sequence[str] = (), timeout: float = 120.0,
               log: Path | None = None) -> Iterator[str]:
    """Run `yolov3 app --weights W --port P ...` until the block ends; yields its URL.

    Raises RuntimeError with the server's output if it exits or does not answer in time.
    """
    with app_server_process(weights, args, timeout, log) as (url, _):
        yield url


@contextmanager
def app_server_process(weights: str | Path, args: Sequence[str] = (), timeout: float = 120.0,
                       log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """app_server, yielding (URL, the server's process) for those that watch the process
    (its memory, in bench/app_load.py)."""
    port = free_port()
    cmd = [sys.executable, "-m", "yolov3", "app", "--weights", str(weights), "--port", str(port), *args]
    with server_process(cmd, port, timeout=timeout, log=log) as served:
        yield served


@contextmanager
def server_process(cmd: Sequence[str], port: int, env: dict | None = None, cwd: Path | None = None,
                   timeout: float = 120.0, log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `cmd` (a Gradio server that listens on loopback at `port`) until the block ends;
    yields (its URL, its process). Raises RuntimeError with the server's output if it exits
    or does not answer in time."""
    url = f"http://127.0.0.1:{port}"
    env = {**(os.environ if env is None else env), "GRADIO_ANALYTICS_ENABLED": "False",
           "NO_PROXY": "127.0.0.1,localhost"}
    out = open(log, "w+") if log else subprocess.DEVNULL
    proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(map(str, cmd))}` exited with {proc.returncode}: {_read(log)}")
            try:
                with urllib.request.urlopen(f"{url}/gradio_api/info", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"`{' '.join(map(str, cmd))}` did not answer in {timeout:.0f} s: {_read(log)}")
            time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def _read(log: Path | None) -> str:
    return Path(log).read_text()[-3000:] if log and Path(log).exists() else "(no log kept)"
