"""The web app under load: many clients at once against a real `yolov3 app` server on
loopback, through gradio_client (what an API user runs; the page's JavaScript client speaks
the same protocol).

Three phases, each against its own server (the tests' helper starts `yolov3 app`):

1. latency, once per --concurrency value: --clients clients, started together, each sends
   --requests requests one after the other (the default 100 x 3 = 300 requests).
   --max-queue is --clients, so every request fits in the queue; the figures are seconds
   from a client's call to its answer (upload, queue wait, detection, download), p50/p95/max,
   with the number that failed (errors) or got no answer within --timeout (hung).
2. memory, on the concurrency-1 server after phase 1 (its warm-up): --memory-requests
   requests from --memory-clients clients, in ten rounds; the server's resident memory
   (VmRSS) is read before, after each round and at the end. The bound check: growth over
   the requests at most --max-growth-mb. Gradio's file cache on disk (uploads, output
   images) is reported too.
3. a full queue: --max-queue --small-queue at concurrency 1, --clients clients each sending
   one request at once. Those beyond the queue must be refused at once (gradio_client's
   QueueError), the rest answered; none may fail otherwise or go unanswered.

Every phase is bounded: a fixed number of clients, --timeout seconds per request, and a
deadline for the phase. The bench exits with status 1 when a check fails.

Weights: --weights, by default the demo checkpoint (`make demo` writes it). Without it, the
tests' small detector (tests/tiny_detector.py, about a minute on 2 CPU cores) is trained and
loaded instead, and the table says so: the load figures are about the server, but seconds
per request depend on the model.

Prints a table and writes bench/results/app_load.json. Linux only (memory from /proc).

    python bench/app_load.py [--weights W] [--clients 100] [--requests 3] [--concurrency 1 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from app_server import app_server_process  # noqa: E402

from common import describe_machine, report  # noqa: E402

DEMO = Path("runs/demo/checkpoints/best.ckpt")


def rss_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of a process in MB, from /proc/<pid>/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def weights_to_use(arg: str | None, tmp: Path) -> tuple[str, str]:
    """(weights path, a line saying what they are). The demo checkpoint, else the tests'
    small detector trained here; a --weights that is not a file stops the bench."""
    if arg is not None:
        if not Path(arg).is_file():
            raise SystemExit(f"{arg}: no such weights file (a .ckpt or .safetensors of this project)")
        return arg, arg
    if DEMO.is_file():
        return str(DEMO), str(DEMO)
    print(f"{DEMO} not found (`make demo` writes it); training the tests' small detector instead "
          f"(tests/tiny_detector.py, about a minute on 2 CPU cores)...", flush=True)
    from tiny_detector import train_tiny_detector

    path = tmp / "tiny_detector.safetensors"
    train_tiny_detector(seed=0).save_safetensors(path)
    return str(path), "the tests' small detector (tests/tiny_detector.py, no demo checkpoint here)"


class Clients:
    """n gradio_client clients of one server, each in its own thread, started together.

    run(work) calls work(client_index, client) in every thread and waits until all are
    done or the deadline passes; threads still running then are counted as hung (they are
    daemon threads and die with the bench).
    """

    def __init__(self, url: str, n: int) -> None:
        from gradio_client import Client

        self.clients = [None] * n
        errors = []

        def connect(k):
            try:
                self.clients[k] = Client(url, verbose=False)
            except Exception as exc:  # noqa: BLE001 (any failure to connect is a finding)
                errors.append(f"client {k}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=connect, args=(k,), daemon=True) for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors or any(c is None for c in self.clients):
            raise SystemExit(f"could not connect {n} clients to {url}: {errors[:3]}")

    def run(self, work, deadline_s: float) -> int:
        """Returns the number of threads still running at the deadline."""
        start = threading.Barrier(len(self.clients))

        def body(k):
            start.wait()
            work(k, self.clients[k])

        threads = [threading.Thread(target=body, args=(k,), daemon=True) for k in range(len(self.clients))]
        for t in threads:
            t.start()
        end = time.monotonic() + deadline_s
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        return sum(t.is_alive() for t in threads)


def send(client, path: Path, settings: tuple, timeout: float) -> tuple[str, float, str]:
    """One request: ("ok" | "refused" | "error" | "hung", seconds, message)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    t0 = time.perf_counter()
    try:
        job = client.submit(handle_file(str(path)), *settings, api_name="/detect")
        job.result(timeout=timeout)
        return "ok", time.perf_counter() - t0, ""
    except QueueError as exc:
        return "refused", time.perf_counter() - t0, str(exc)
    except TimeoutError:
        return "hung", time.perf_counter() - t0, f"no answer in {timeout:.0f} s"
    except (AppError, Exception) as exc:  # noqa: BLE001 (every other outcome is an error here)
        return "error", time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def load_phase(clients: Clients, images: list[Path], settings: tuple, per_client: int, timeout: float) -> dict:
    outcomes: list = []
    lock = threading.Lock()

    def work(k, client):
        for i in range(per_client):
            result = send(client, images[(k * per_client + i) % len(images)], settings, timeout)
            with lock:
                outcomes.append(result)

    t0 = time.perf_counter()
    hung_threads = clients.run(work, deadline_s=timeout * per_client + 60)
    wall = time.perf_counter() - t0
    seconds = [s for kind, s, _ in outcomes if kind == "ok"]
    count = {kind: sum(o[0] == kind for o in outcomes) for kind in ("ok", "refused", "error", "hung")}
    count["hung"] += (len(clients.clients) * per_client) - len(outcomes)  # never came back at all
    messages = sorted({m for kind, _, m in outcomes if kind != "ok"})
    return {"requests": len(clients.clients) * per_client, "answered": count["ok"], "refused": count["refused"],
            "errors": count["error"], "hung": count["hung"], "hung_threads": hung_threads,
            "p50_s": round(percentile(seconds, 50), 2), "p95_s": round(percentile(seconds, 95), 2),
            "max_s": round(max(seconds, default=float("nan")), 2), "wall_s": round(wall, 1),
            "per_s": round(count["ok"] / wall, 2), "messages": messages[:5],
            "max_refusal_s": round(max((s for kind, s, _ in outcomes if kind == "refused"), default=0.0), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help=f"default {DEMO}, else the tests' small detector")
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--requests", type=int, default=3, help="per client in the latency phase")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    p.add_argument("--memory-requests", type=int, default=1000)
    p.add_argument("--memory-clients", type=int, default=10)
    p.add_argument("--max-growth-mb", type=float, default=50.0,
                   help="bound on the server's RSS growth over --memory-requests (default 50)")
    p.add_argument("--small-queue", type=int, default=8, help="--max-queue of the full-queue phase")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds one request may take")
    p.add_argument("--images", type=int, default=20, help="distinct synthetic test images, sent in turn")
    p.add_argument("--out", default="bench/results/app_load.json")
    args = p.parse_args()
    if not Path("/proc/self/status").exists():
        raise SystemExit("this bench reads the server's memory from /proc: run it on Linux")
    try:
        import gradio_client  # noqa: F401
    except ImportError:
        raise SystemExit("gradio_client is not installed: `pip install -e .` installs it with gradio") from None
    if args.memory_requests % (10 * args.memory_clients):
        raise SystemExit(f"--memory-requests must be a multiple of 10 x --memory-clients "
                         f"({10 * args.memory_clients}): it runs in ten equal rounds")
    from PIL import Image

    from yolov3.data.synthetic import render_image
    from yolov3.detector import Detector

    tmp = Path(tempfile.mkdtemp(prefix="bench_app_load_"))
    weights, weights_note = weights_to_use(args.weights, tmp)
    detector = Detector.load(weights)
    settings = (detector.conf_threshold, detector.iou_threshold, detector.size, "none", 0)
    del detector
    images = []
    for i in range(args.images):
        images.append(tmp / f"load_{i:03d}.jpg")
        Image.fromarray(render_image(0, "test", i).image).save(images[-1], quality=90)
    # the servers' Gradio cache in a folder of this run, so its growth on disk can be read
    cache = tmp / "gradio_cache"
    os.environ["GRADIO_TEMP_DIR"] = str(cache)

    rows, memory, checks = [], {}, []
    for concurrency in args.concurrency:
        server_args = ["--concurrency", str(concurrency), "--max-queue", str(args.clients)]
        with app_server_process(weights, server_args, log=tmp / f"server_c{concurrency}.log") as (url, proc):
            clients = Clients(url, args.clients)
            rss_start = rss_mb(proc.pid)[0]
            print(f"concurrency {concurrency}: {args.clients} clients x {args.requests} requests...", flush=True)
            row = load_phase(clients, images, settings, args.requests, args.timeout)
            rows.append({"phase": "latency", "concurrency": concurrency, "max_queue": args.clients,
                         "clients": args.clients, **row})
            checks.append((f"latency at concurrency {concurrency}: 0 errors, 0 hung, 0 refused",
                           row["errors"] == row["hung"] == row["refused"] == 0))
            if concurrency == args.concurrency[0]:
                few = Clients(url, args.memory_clients)
                per_round = args.memory_requests // 10 // args.memory_clients
                cache_before = folder_mb(cache)
                before = rss_mb(proc.pid)[0]
                samples = [round(before, 1)]
                print(f"memory: {args.memory_requests} requests from {args.memory_clients} clients "
                      f"(RSS {before:.0f} MB after {row['requests']} requests of warm-up)...", flush=True)
                mem_rows = []
                for _ in range(10):
                    mem_rows.append(load_phase(few, images, settings, per_round, args.timeout))
                    samples.append(round(rss_mb(proc.pid)[0], 1))
                after, peak = rss_mb(proc.pid)
                growth = after - before
                bad = sum(r["errors"] + r["hung"] + r["refused"] for r in mem_rows)
                memory = {"concurrency": concurrency, "requests": args.memory_requests,
                          "rss_at_start_mb": round(rss_start, 1), "rss_before_mb": round(before, 1),
                          "rss_after_mb": round(after, 1), "rss_peak_mb": round(peak, 1),
                          "growth_mb": round(growth, 1), "bound_mb": args.max_growth_mb,
                          "rss_per_round_mb": samples, "failed_requests": bad,
                          "growth_last_half_mb": round(samples[-1] - samples[5], 1),
                          "cache_growth_mb": round(folder_mb(cache) - cache_before, 1)}
                checks.append((f"RSS growth over {args.memory_requests} requests {growth:.1f} MB "
                               f"<= {args.max_growth_mb:g} MB", growth <= args.max_growth_mb))
                checks.append((f"memory phase: 0 failed of {args.memory_requests}", bad == 0))

    server_args = ["--concurrency", "1", "--max-queue", str(args.small_queue)]
    with app_server_process(weights, server_args, log=tmp / "server_queue.log") as (url, proc):
        clients = Clients(url, args.clients)
        print(f"full queue: {args.clients} clients at once, --max-queue {args.small_queue}...", flush=True)
        row = load_phase(clients, images, settings, 1, args.timeout)
        rows.append({"phase": "full queue", "concurrency": 1, "max_queue": args.small_queue,
                     "clients": args.clients, **row})
        checks.append(("full queue: every request answered or refused, 0 errors, 0 hung",
                       row["errors"] == row["hung"] == 0 and row["answered"] + row["refused"] == row["requests"]))
        checks.append(("full queue: some refused (more clients than the queue holds)", row["refused"] > 0))

    machine = describe_machine()
    title = (f"seconds from call to answer per request, {args.clients} gradio_client clients on loopback "
             f"(clients and server on the same machine), {machine}; weights {weights_note}; "
             f"input size {settings[2]}")
    report(title, [("phase", "phase", ""), ("concurrency", "conc", ""), ("max_queue", "queue", ""),
                   ("requests", "requests", ""), ("answered", "answered", ""), ("refused", "refused", ""),
                   ("errors", "errors", ""), ("hung", "hung", ""), ("p50_s", "p50 s", ".2f"),
                   ("p95_s", "p95 s", ".2f"), ("max_s", "max s", ".2f"), ("max_refusal_s", "refusal s", ".2f"),
                   ("per_s", "req/s", ".2f")],
           rows, args.out, machine=machine, weights=weights_note, settings=list(settings), memory=memory,
           checks=[{"check": c, "passed": ok} for c, ok in checks])
    if memory:
        print(f"server RSS (MB): {memory['rss_at_start_mb']:.0f} at start, {memory['rss_before_mb']:.0f} after "
              f"warm-up, {memory['rss_after_mb']:.0f} after {memory['requests']} more requests "
              f"(growth {memory['growth_mb']:+.1f}, of which {memory['growth_last_half_mb']:+.1f} in the last "
              f"half; peak {memory['rss_peak_mb']:.0f}); per round {memory['rss_per_round_mb']}; Gradio's "
              f"cache on disk grew {memory['cache_growth_mb']:.1f} MB")
    messages = sorted({m for r in rows for m in r["messages"]})
    if messages:
        print("messages clients got:", *messages, sep="\n  ")
    for check, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    if not all(ok for _, ok in checks):
        print(f"the servers' logs are in {tmp}")
        sys.exit(1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
