"""`yolov3 app`'s server: the page of yolov3.commands.app launched with a bounded queue, and
the command that loads the weights for it.

Everything here is about running the page for many requests on one machine: the queue's
limits (a refusal, worded, when it is full) and glibc's malloc arenas (memory that would
otherwise grow with the worker threads).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

from yolov3.commands.app import DetectorApp, find_examples
from yolov3.commands.requests import gradio
from yolov3.detector import Detector

log = logging.getLogger(__name__)

DEMO_WEIGHTS = Path("runs/demo/checkpoints/best.ckpt")
# a demo run without validation (data.val_fraction 0) writes only this one (yolov3.fit_checkpoints)
DEMO_LAST = DEMO_WEIGHTS.with_name("last.ckpt")
MAX_UPLOAD = "50mb"  # Gradio refuses larger files before they reach us


MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Have glibc's malloc keep at most `arenas` arenas (pools) for the threads started
    after this; True if set. Skipped where MALLOC_ARENA_MAX is set (the operator's choice)
    or the C library is not glibc.

    Gradio runs each request on one of its worker threads, and glibc gives threads their own
    arenas (up to 8 per core), each keeping the freed memory of the images and tensors that
    passed through it: over 1,000 requests after a warm-up (bench/app_load.py, 2 CPU
    cores) the server grew by 69 MB, steadily (6-9 MB per 100 requests); with two arenas
    by 13 MB, the last 300 requests none. Requests per second did not drop (one request at
    a time holds the model anyway).
    """
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    M_ARENA_MAX = -8  # glibc's malloc.h
    return bool(mallopt(M_ARENA_MAX, int(arenas)))


BUSY = "the server is busy: {waiting} requests are waiting, the most it queues; try again in a moment"


def _explain_queue_full(page) -> None:
    """Word Gradio's queue-full refusal for whoever reads it, and log it for the operator.

    Gradio answers "Queue is full. Max size is N and size is N." and logs nothing, so an
    operator never learns that users are being turned away. This wraps the push of this
    page's queue object (Gradio's internals: the app tests pin the message, so a Gradio
    release that changes them is noticed).
    """
    queue = getattr(page, "_queue", None)
    push = getattr(queue, "push", None)
    if push is None:  # another Gradio: its own message stays, which is still a refusal
        log.warning("cannot word the queue-full message on this Gradio version; Gradio's own is used")
        return

    async def push_explained(*args, **kwargs):
        ok, detail, state = await push(*args, **kwargs)
        if state == "queue_full":
            waiting = len(queue)
            detail = BUSY.format(waiting=waiting)
            log.warning("refused a request: %d waiting, the --max-queue limit (raise it, or "
                        "--concurrency, if this happens often)", waiting)
        return ok, detail, state

    queue.push = push_explained


def serve(app: DetectorApp, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1,
          max_queue: int = 16, block: bool = True):
    """Launch the page with Gradio's queue: `concurrency` requests run at once, up to
    `max_queue` wait. Returns Gradio's (app, url, share).

    A request beyond those is refused at once, never queued: the client is told the server
    is busy and to try again (HTTP 503 from /gradio_api/queue/join with BUSY's message;
    gradio_client raises QueueError, the page shows Gradio's "currently busy" notice), and
    the server's log says so. A queue without a bound would let waits grow without one.
    """
    gr = gradio()
    limit_malloc_arenas()
    page = app.build()
    page.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    _explain_queue_full(page)
    # system fonts: the page works on a machine without internet
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    allowed = sorted({str(Path(p).resolve().parent) for p in app.examples})
    return page.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, allowed_paths=allowed,
                       theme=theme, prevent_thread_lock=not block, show_error=True, quiet=False,
                       footer_links=["api"], ssr_mode=False)


def command(args: argparse.Namespace) -> None:
    weights = args.weights
    if weights is None:
        found = next((p for p in (DEMO_WEIGHTS, DEMO_LAST) if p.is_file()), None)
        if found is None:
            raise SystemExit(f"yolov3 app: no --weights given and no demo checkpoint at {DEMO_WEIGHTS} or "
                             f"{DEMO_LAST.name}. Run `make demo` first (it trains one on synthetic data in about 12 "
                             "minutes on a 2-core CPU), or pass --weights with a .ckpt checkpoint or a .safetensors "
                             "export.")
        weights = str(found)
    try:
        detector = Detector.load(weights, size=args.size, conf_threshold=args.conf, iou_threshold=args.iou,
                                 device=args.device, anchors=args.anchors, letterbox=args.letterbox)
        # detections from ONNX Runtime, explanations from the torch weights when there are any
        explainer = detector if detector.backend == "torch" else None
        if args.backend is not None:
            detector = detector.with_backend(args.backend)
        examples = find_examples(args.examples)
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"yolov3 app: {exc}") from None
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("the app listens on %s: anyone who can reach this machine can use it", args.host)
    print(detector.describe())
    print(f"{len(examples)} example images; serving on http://{args.host}:{args.port} (Ctrl+C stops)")
    serve(DetectorApp(detector, examples, explainer=explainer), host=args.host, port=args.port,
          concurrency=args.concurrency,
          max_queue=args.max_queue)
