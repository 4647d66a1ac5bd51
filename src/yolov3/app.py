"""`yolov3 app`: a Gradio page to detect, inspect and explain, over the one Detector.

The page takes an image (upload, webcam or clipboard; examples below it), runs the
detector with the confidence, NMS IoU and input size set by sliders, and shows the
annotated image, a table of detections, their COCO-results JSON (the rows `yolov3 detect`
writes to detections.json) and, when asked, a class activation map: Grad-CAM of one
detection or EigenCAM of the whole image.

There is no inference code here: preprocessing, forward, decode and NMS are the
Detector's (yolov3.detector), CAM is yolov3.cam.explain, drawing is yolov3.viz. This
module reads uploads (refusing what is not an image or too big, with a message), wires
the page and serialises model use.

`DetectorApp.predict` is plain Python (no Gradio), so it is tested directly; `build`
makes the page and `serve` launches it with Gradio's queue.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from yolov3.data.sample import DataError, image_size, load_rgb

log = logging.getLogger("yolov3.app")

DEMO_WEIGHTS = Path("runs/demo/checkpoints/best.ckpt")
DEMO_EXAMPLES = Path("runs/demo/examples")
# Refused above this many pixels: decoding alone would need > 120 MB and seconds, and the
# network sees at most 608 x 608 anyway. Images with a longer side than MAX_SIDE are
# downscaled first (the boxes are then in the downscaled image's pixels, as shown).
MAX_PIXELS = 40_000_000
MAX_SIDE = 4096
MAX_UPLOAD = "50mb"  # Gradio refuses larger files before they reach us
SIZE_RANGE = (320, 608, 32)  # input size slider: min, max, step (min reaches down to the training sizes)
CAM_NONE, CAM_GRAD, CAM_EIGEN = "none", "Grad-CAM (one detection)", "EigenCAM (whole image)"
CAM_CHOICES = (CAM_NONE, CAM_GRAD, CAM_EIGEN)
TABLE_HEADERS = ["#", "class", "score", "x1", "y1", "x2", "y2"]


class UploadError(ValueError):
    """An upload the app cannot use; the message says which file and why."""


def read_upload(path: str | Path | None, max_pixels: int = MAX_PIXELS, max_side: int = MAX_SIDE,
                name: str | None = None) -> tuple[np.ndarray, str]:
    """An uploaded file -> ((H, W, 3) uint8 RGB, a note for the user; "" when nothing was done).

    The header is read first, so a file that is not an image, or is too big, is refused
    before any decoding. Raises UploadError naming the file (`name`, else the path's name).
    """
    if path is None:
        raise UploadError("no image: upload one, take a webcam snapshot or pick an example")
    label = name or Path(path).name
    try:
        with warnings.catch_warnings():  # PIL's bomb warning: our own limit below says more
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            w, h = image_size(path)
    except DataError as exc:
        raise UploadError(f"{label} is not an image this app can read ({_reason(exc)})") from None
    if w * h > max_pixels:
        raise UploadError(f"{label} is {w} x {h} pixels ({w * h / 1e6:.0f} MP); the app takes images up to "
                          f"{max_pixels / 1e6:.0f} MP. Downscale it first, or use `yolov3 detect`, "
                          f"which has no limit.")
    try:
        image = load_rgb(path)
    except DataError as exc:
        raise UploadError(f"{label} could not be decoded ({_reason(exc)})") from None
    if max(w, h) <= max_side:
        return image, ""
    import cv2

    scale = max_side / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(image, new, interpolation=cv2.INTER_AREA)
    return image, (f"{label} was downscaled from {w} x {h} to {new[0]} x {new[1]} pixels (longer side at most "
                   f"{max_side}); boxes are in the downscaled image's pixels.")


def _reason(exc: DataError) -> str:
    """The part of a DataError after "<path>: " (the app names the file by its upload name)."""
    text = str(exc)
    return text.split(": ", 1)[1] if ": " in text else text


@dataclass
class Prediction:
    """What one request gives.

    image: (H, W, 3) uint8 the annotated image; detections: (K, 6) float32 x1, y1, x2, y2
    (pixels of the image as read), score, class; records: detections.json rows;
    cam: (H, W, 3) uint8 overlay or None; note: text for the status line.
    """

    image: np.ndarray
    detections: np.ndarray
    records: list[dict]
    cam: np.ndarray | None
    note: str

    def table(self, class_names: Sequence[str]) -> list[list]:
        """One row per detection: index, class name, score, x1, y1, x2, y2 (rounded for reading)."""
        return [[k, class_names[int(c)], round(float(s), 4), *(round(float(v), 1) for v in (x1, y1, x2, y2))]
                for k, (x1, y1, x2, y2, s, c) in enumerate(self.detections.tolist())]

    def choices(self, class_names: Sequence[str]) -> list[tuple[str, int]]:
        """(label, index) per detection for the "which detection" selector."""
        return [(f"#{k} {class_names[int(c)]} {s:.2f}", k) for k, (*_, s, c) in enumerate(self.detections.tolist())]


class DetectorApp:
    """The app's logic over one loaded Detector.

    Args:
        detector: weights and default settings; requests get a configured copy of it
            (Detector.configured), which shares the model.
        examples: image files offered as examples on the page.
        max_pixels, max_side: the upload limits (see read_upload).
    """

    def __init__(self, detector, examples: Sequence[str | Path] = (), max_pixels: int = MAX_PIXELS,
                 max_side: int = MAX_SIDE) -> None:
        self.detector = detector
        self.examples = [str(p) for p in examples]
        self.max_pixels, self.max_side = max_pixels, max_side
        lo, hi, step = SIZE_RANGE
        # weights trained below 320 (the demo's 160-224) work at their own sizes, not at 320+
        small = [s for s in (*detector.train_sizes, detector.size) if s % step == 0]
        self.size_range = (min(lo, *small), max(hi, *small), step)
        # One model, one request at a time: CAM hooks the shared modules, and on a CPU two
        # forwards at once only split the same cores. Gradio's queue orders the rest.
        self._lock = threading.Lock()

    def info(self) -> str:
        """Markdown for the model panel: name, width, parameters, classes, weights' origin."""
        d, m = self.detector, self.detector.model
        params = sum(p.numel() for p in m.parameters())
        source = d.source or "(weights given in memory)"
        kind = ("safetensors export" if source.endswith(".safetensors") else
                "Lightning checkpoint, read with torch.load(weights_only=True)")
        sizes = f"trained at {', '.join(map(str, d.train_sizes))} px, " if d.train_sizes else ""
        return (f"**YOLOv3** (Darknet-53 backbone, 3 scales) · width {m.width:g} · {params:,} parameters · "
                f"{sizes}default input {d.size} px · device {d.device}\n\n"
                f"**{m.num_classes} classes:** {', '.join(d.class_names)}\n\n"
                f"**Weights:** `{source}` ({kind})")

    def predict(self, path: str | Path | None, conf: float | None = None, iou: float | None = None,
                size: int | None = None, cam: str = CAM_NONE, which: int | None = 0,
                name: str | None = None) -> Prediction:
        """Detect (and explain) one uploaded image. Raises UploadError for unusable input.

        conf, iou, size: default to the loaded detector's (whose NMS IoU and score mode come
        from the weights' evaluation settings, see Detector.load); which: the detection
        Grad-CAM explains (an index into the detections, by score).
        """
        from yolov3.cam import ImageCAM, explain, render
        from yolov3.detect import coco_records
        from yolov3.viz import draw_boxes

        if cam not in CAM_CHOICES:
            raise UploadError(f"CAM must be one of {', '.join(CAM_CHOICES)}, not {cam!r}")
        lo, hi, step = self.size_range
        size = int(size or self.detector.size)
        conf = self.detector.conf_threshold if conf is None else conf
        iou = self.detector.iou_threshold if iou is None else iou
        if not (lo <= size <= hi and size % step == 0):
            raise UploadError(f"input size must be a multiple of {step} from {lo} to {hi}, not {size}")
        if not (0.0 <= conf <= 1.0 and 0.0 <= iou <= 1.0):
            raise UploadError(f"confidence and NMS IoU must be in [0, 1], got {conf} and {iou}")
        image, note = read_upload(path, self.max_pixels, self.max_side, name)
        detector = self.detector.configured(size=size, conf_threshold=float(conf), iou_threshold=float(iou))
        names = detector.class_names
        notes = [note] if note else []
        t0 = time.perf_counter()
        overlay = None
        with self._lock:
            if cam == CAM_NONE:
                dets = detector([image])[0]
            else:
                method = "gradcam" if cam == CAM_GRAD else "eigencam"
                result = explain(detector, [image], method, "head", eigencam=cam == CAM_EIGEN)[0]
                dets = result.detections
        if cam == CAM_EIGEN:
            overlay = render(image, result, names, "eigencam")[0][1]
        elif cam == CAM_GRAD and len(result.cams):
            k = int(which or 0)
            if not 0 <= k < len(result.cams):
                notes.append(f"there is no detection #{k} (there are {len(result.cams)}); explaining #0")
                k = 0
            one = ImageCAM(result.detections[k:k + 1], [result.cams[k]], None, result.eigen_layers)
            overlay = render(image, one, names, "gradcam")[0][1]
        elif cam == CAM_GRAD:
            notes.append("no detections to explain: lower the confidence")
        seconds = time.perf_counter() - t0
        annotated = draw_boxes(image, dets[:, :4], dets[:, 5].astype(int), names, scores=dets[:, 4])
        label = name or Path(path).name  # read_upload has refused a missing path
        records = coco_records(dets, names, 0, label)
        h, w = image.shape[:2]
        notes.insert(0, f"{len(dets)} detections in {label} ({w} x {h}) at input size {size}, "
                        f"{seconds:.2f} s{' with ' + cam if cam != CAM_NONE else ''}.")
        return Prediction(annotated, dets, records, overlay, " ".join(notes))

    # ------------------------------------------------------------------------- page

    def build(self):
        """The Gradio page (gr.Blocks); its one API endpoint is /detect."""
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        import gradio as gr

        def path_only(payload, _image_preprocess=None):
            """The uploaded file's path, unopened: a file that is not an image then reaches
            read_upload (and its message) instead of failing inside Gradio's own decoding."""
            if payload is None or (payload.url or "").startswith("data:"):
                return _image_preprocess(payload)
            return payload.path

        names = self.detector.class_names
        lo, hi, step = self.size_range  # includes the detector's own size, the slider's default

        def run(path, conf, iou, size, cam, which):
            try:
                p = self.predict(path, conf, iou, size, cam, which)
            except (UploadError, ValueError) as exc:
                log.info("refused: %s", exc)  # one line in the server's log, no traceback
                raise gr.Error(str(exc), title="Cannot use this input", print_exception=False) from None
            import pandas as pd  # a dependency of Gradio

            table = pd.DataFrame(p.table(names), columns=TABLE_HEADERS)  # keeps the headers when empty
            choices = p.choices(names) or [("no detections", 0)]
            keep = which if isinstance(which, int) and 0 <= which < len(p.detections) else 0
            return (p.image, table, p.cam, p.records, p.note, gr.Dropdown(choices=choices, value=keep))

        with gr.Blocks(title="YOLOv3 detector") as page:
            gr.Markdown("## YOLOv3 · detect, inspect, explain")
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(label="image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                     elem_id="input-image")
                    # on this instance only (a gr.Image subclass would make Gradio write a .pyi
                    # stub next to this module at import time)
                    image.preprocess = functools.partial(path_only, _image_preprocess=image.preprocess)
                    conf = gr.Slider(0.01, 1.0, value=self.detector.conf_threshold, step=0.01, label="confidence")
                    iou = gr.Slider(0.05, 0.95, value=self.detector.iou_threshold, step=0.05, label="NMS IoU")
                    size = gr.Slider(lo, hi, value=self.detector.size, step=step, label="input size")
                    cam = gr.Radio(list(CAM_CHOICES), value=CAM_NONE, label="explain (class activation map)")
                    which = gr.Dropdown(choices=[("#0", 0)], value=0, label="detection to explain (Grad-CAM)",
                                        allow_custom_value=True)
                    button = gr.Button("Detect", variant="primary", elem_id="detect-button")
                with gr.Column(scale=2):
                    annotated = gr.Image(label="detections", type="numpy", format="png", interactive=False,
                                         elem_id="annotated")
                    status = gr.Markdown(elem_id="status")
                    table = gr.Dataframe(headers=TABLE_HEADERS, label="detections (pixels of the image)",
                                         interactive=False, elem_id="table")
                    overlay = gr.Image(label="class activation map", type="numpy", format="png",
                                       interactive=False, elem_id="cam")
                    with gr.Accordion("detections.json rows (COCO results, as `yolov3 detect` writes)", open=False):
                        records = gr.JSON(label="records")
            with gr.Accordion("model", open=False):
                gr.Markdown(self.info(), elem_id="model-info")
            inputs = [image, conf, iou, size, cam, which]
            outputs = [annotated, table, overlay, records, status, which]
            button.click(run, inputs, outputs, api_name="detect")
            image.upload(run, inputs, outputs, api_name=False)

            def rerun(path, *settings):
                """A changed explanation or detection re-runs the image, if there is one yet."""
                return tuple(gr.skip() for _ in outputs) if path is None else run(path, *settings)

            for control in (cam, which):
                control.input(rerun, inputs, outputs, api_name=False)
            if self.examples:
                gr.Examples(self.examples, inputs=[image], label="examples (click one, then Detect)")
        return page


def find_examples(paths: Sequence[str] = ()) -> list[str]:
    """Example images: those given (files, folders, globs), else the demo's synthetic test images."""
    from yolov3.detect import expand_sources

    if paths:
        return [str(p) for p in expand_sources(paths)]
    if DEMO_EXAMPLES.is_dir():
        return [str(p) for p in expand_sources([str(DEMO_EXAMPLES)])]
    return []


def serve(app: DetectorApp, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1,
          max_queue: int = 16, block: bool = True):
    """Launch the page with Gradio's queue: `concurrency` requests run at once, up to
    `max_queue` wait (later ones are told the queue is full). Returns Gradio's (app, url, share)."""
    import gradio as gr

    page = app.build()
    page.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    # system fonts: the page works on a machine without internet
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    allowed = sorted({str(Path(p).resolve().parent) for p in app.examples})
    return page.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, allowed_paths=allowed,
                       theme=theme, prevent_thread_lock=not block, show_error=True, quiet=False,
                       footer_links=["api"], ssr_mode=False)
