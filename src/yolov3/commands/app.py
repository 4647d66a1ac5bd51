"""The page of `yolov3 app` (commands/server.py serves it): Gradio, to detect, inspect and
explain, over the one Detector.

The page takes an image (upload, webcam or clipboard; examples below it), runs the
detector with the confidence, NMS IoU and input size set by sliders, and shows the
annotated image, a table of detections, their COCO-results JSON (the rows `yolov3 detect`
writes to detections.json) and, when asked, a class activation map: Grad-CAM of one
detection or EigenCAM of the whole image.

There is no inference code here: preprocessing, forward, decode and NMS are the
Detector's (yolov3.detector), CAM is yolov3.cam.explain, drawing is yolov3.viz, reading
uploads is commands/requests.py. This module wires the page and serialises model use.

`DetectorApp.predict` is plain Python (no Gradio), so it is tested directly; `build`
makes the page.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolov3.cam import ImageCAM, explain
from yolov3.commands.detect import coco_records
from yolov3.commands.requests import (MAX_PIXELS, MAX_SIDE, NOT_A_FILE, UploadError, image_data_or_not, detection_index,
                                      not_a_file, setting_value, png_file, save_data_url, described, gradio,
                                      read_upload)
from yolov3.data.sample import expand_sources
from yolov3.anchors import describe_anchors
from yolov3.viz import draw_boxes, render_cam

log = logging.getLogger("yolov3.commands.app")

DEMO_EXAMPLES = Path("runs/demo/examples")
SIZE_RANGE = (320, 608, 32)  # input size slider: min, max, step (min reaches down to the training sizes)
CAM_NONE, CAM_GRAD, CAM_EIGEN = "none", "Grad-CAM (one detection)", "EigenCAM (whole image)"
CAM_CHOICES = (CAM_NONE, CAM_GRAD, CAM_EIGEN)
TABLE_HEADERS = ["#", "class", "score", "x1", "y1", "x2", "y2"]
NO_EXPLAINER = ("explanations need the torch backend (Grad-CAM and EigenCAM use the network's gradients and "
                "feature maps, which {backend} does not give); serve .ckpt or .safetensors weights for them")


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



class DetectorApp:
    """The app's logic over one loaded Detector.

    Args:
        detector: weights and default settings; requests get a configured copy of it
            (Detector.configured), which shares the model.
        examples: image files offered as examples on the page.
        max_pixels, max_side: the upload limits (see read_upload).
        explainer: the torch Detector that explanations run on (Grad-CAM and EigenCAM need
            gradients and feature maps, which ONNX Runtime does not give). Default: the
            detector itself when it is a torch one, else none, and the page says that
            explanations need torch weights.
    """

    def __init__(self, detector, examples: Sequence[str | Path] = (), max_pixels: int = MAX_PIXELS,
                 max_side: int = MAX_SIDE, explainer=None) -> None:
        self.detector = detector
        if explainer is None and detector.backend == "torch":
            explainer = detector
        if explainer is not None and explainer.backend != "torch":
            raise ValueError(f"explanations need a torch detector, not an {explainer.backend} one")
        self.explainer = explainer
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
        """Markdown for the model panel: name, width, parameters, classes, weights' origin,
        backend, and the VOC07 scores an int8 export records."""
        d, m = self.detector, self.detector.model
        params = f"{d.num_parameters:,} parameters · " if d.num_parameters else ""
        source = d.source or "(weights given in memory)"
        kind = d.origin or "in memory"
        sizes = f"trained at {', '.join(map(str, d.train_sizes))} px, " if d.train_sizes else ""
        runs = f"{d.backend} ({d.precision}) on {d.device}"
        explain = ("explanations on torch" if self.explainer is not None else
                   "**no explanations**: Grad-CAM and EigenCAM need the torch weights (.ckpt or .safetensors)")
        text = (f"**YOLOv3** (Darknet-53 backbone, 3 scales) · width {m.width:g} · {params}"
                f"{sizes}default input {d.size} px · runs on {runs} · {explain}\n\n"
                f"**{m.num_classes} classes:** {', '.join(d.class_names)}\n\n"
                f"**Weights:** `{source}` ({kind}) · {describe_anchors(d.anchors.cpu())} · scores {d.score_mode}")
        meta = getattr(m, "metadata", {})
        if "map_07_int8" in meta:
            text += (f"\n\n**int8 check:** VOC07 mAP {float(meta['map_07_int8']):.4f} against "
                     f"{float(meta['map_07_fp32']):.4f} in float32 on {meta.get('eval_split', 'the test split')}")
        return text

    def predict(self, path: str | Path | None, conf: float | None = None, iou: float | None = None,
                size: int | None = None, cam: str = CAM_NONE, which: int | None = 0,
                name: str | None = None) -> Prediction:
        """Detect (and explain) one uploaded image. Raises UploadError for unusable input.

        conf, iou, size: default to the loaded detector's (whose NMS IoU and score mode come
        from the weights' evaluation settings, see Detector.load); which: the detection
        Grad-CAM explains (an index into the detections, by score). API calls can send any
        JSON for any of them: whatever is not a setting's type and range (or not a file for
        `path`) is refused with an UploadError that names the setting.
        """
        if cam not in CAM_CHOICES:
            raise UploadError(f"CAM must be one of {', '.join(CAM_CHOICES)}, not {cam!r}")
        if cam != CAM_NONE and self.explainer is None:
            raise UploadError(NO_EXPLAINER.format(backend=self.detector.backend))
        lo, hi, step = self.size_range
        conf = setting_value(self.detector.conf_threshold if conf is None else conf, "confidence", 0.0, 1.0)
        iou = setting_value(self.detector.iou_threshold if iou is None else iou, "NMS IoU", 0.0, 1.0)
        size = setting_value(self.detector.size if size is None else size, "input size", lo, hi)
        if size != int(size) or int(size) % step:
            raise UploadError(f"input size must be a multiple of {step} from {lo} to {hi}, not {size:g}")
        size = int(size)
        which = detection_index(which)
        if isinstance(path, (str, Path)) and not str(path).strip():
            path = None  # an empty string from an API call: the same as no image
        if path is not None and not isinstance(path, (str, Path)):
            raise UploadError(not_a_file(described(path)))
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
                explainer = self.explainer.configured(size=size, conf_threshold=float(conf), iou_threshold=float(iou))
                result = explain(explainer, [image], method, "head", eigencam=cam == CAM_EIGEN)[0]
                dets = result.detections
        if cam == CAM_EIGEN:
            overlay = render_cam(image, result, names, "eigencam")[0][1]
        elif cam == CAM_GRAD and len(result.cams):
            k = which
            if not 0 <= k < len(result.cams):
                notes.append(f"there is no detection #{k} (there are {len(result.cams)}); explaining #0")
                k = 0
            one = ImageCAM(result.detections[k:k + 1], [result.cams[k]], None, result.eigen_layers)
            overlay = render_cam(image, one, names, "gradcam")[0][1]
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
        gr = gradio()

        def path_only(payload, cache_dir):
            """The uploaded file's path, the file unopened and unchanged.

            Gradio's own preprocessing would decode the file (a file that is not an image
            would then fail inside Gradio instead of reaching read_upload and its message)
            and rotate it by its EXIF orientation tag, while boxes everywhere in this
            project are in the stored pixels (as `yolov3 detect` gives them). An image sent
            inline as a data: URL is written to a file as sent, for the same reasons.
            """
            if payload is None:
                return None
            if NOT_A_FILE in (payload.meta or {}):
                raise gr.Error(not_a_file(payload.meta[NOT_A_FILE]), title="Cannot use this input",
                               print_exception=False)
            url = payload.url or ""
            if url.startswith("data:"):
                return save_data_url(url, cache_dir)
            return payload.path

        def as_sent(payload):
            """A setting's value as the request sent it: predict checks each one and names
            the setting in its message (Gradio's slider check names neither the slider nor
            the range, and a string would fail inside it with a TypeError)."""
            return payload

        names = self.detector.class_names
        lo, hi, step = self.size_range  # includes the detector's own size, the slider's default

        def run(path, conf, iou, size, cam, which):
            try:
                p = self.predict(path, conf, iou, size, cam, which)
            except (UploadError, ValueError) as exc:
                log.info("refused: %s", exc)  # one line in the server's log, no traceback
                raise gr.Error(str(exc), title="Cannot use this input", print_exception=False) from None
            table = _table(p.table(names))
            keep = detection_index(which) if detection_index(which) < len(p.detections) else 0
            cache_dir = annotated.GRADIO_CACHE
            # Plain values only, never gr.update(...) or a component: Gradio builds a new
            # component for each such update and keeps it in the session's state under a new
            # id when the component is also an input (as `which` is): one more component,
            # with its config, kept per request for as long as the session lives.
            return (png_file(p.image, cache_dir, "detections.png"), table, png_file(p.cam, cache_dir, "cam.png"),
                    p.records, p.note, keep)

        with gr.Blocks(title="YOLOv3 detector") as page:
            gr.Markdown("## YOLOv3 · detect, inspect, explain")
            with gr.Row():
                with gr.Column(scale=1):
                    image = gr.Image(label="image", type="filepath", sources=["upload", "webcam", "clipboard"],
                                     elem_id="input-image")
                    # on this instance only (a gr.Image subclass would make Gradio write a .pyi
                    # stub next to this module at import time)
                    image.preprocess = functools.partial(path_only, cache_dir=image.GRADIO_CACHE)
                    image.data_model = image_data_or_not()
                    conf = gr.Slider(0.01, 1.0, value=self.detector.conf_threshold, step=0.01, label="confidence")
                    iou = gr.Slider(0.05, 0.95, value=self.detector.iou_threshold, step=0.05, label="NMS IoU")
                    size = gr.Slider(lo, hi, value=self.detector.size, step=step, label="input size")
                    cam = gr.Radio(list(CAM_CHOICES), value=CAM_NONE, label="explain (class activation map)",
                                   interactive=self.explainer is not None,
                                   info=None if self.explainer is not None else NO_EXPLAINER.format(
                                       backend=self.detector.backend))
                    # a number (the # column of the table), not a dropdown of the detections:
                    # updating a dropdown's choices per request grows the server (see run)
                    which = gr.Number(value=0, precision=0, minimum=0, label="detection to explain (Grad-CAM)",
                                      info="its # in the detections table")
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
            for control in inputs[1:]:
                control.preprocess = as_sent
            outputs = [annotated, table, overlay, records, status, which]
            button.click(run, inputs, outputs, api_name="detect")
            image.upload(run, inputs, outputs, api_name=False)

            def rerun(path, *settings):
                """A changed explanation or detection re-runs the image, if there is one; with
                none, the outputs are empty (plain values, not gr.skip(): see run)."""
                if path is not None:
                    return run(path, *settings)
                return None, _table([]), None, [], "", settings[-1]

            for control in (cam, which):
                control.input(rerun, inputs, outputs, api_name=False)
            if self.examples:
                gr.Examples(self.examples, inputs=[image], label="examples (click one, then Detect)")
        return page


def _table(rows):
    """The detections table's value: a DataFrame, which keeps the headers when there are no rows."""
    import pandas as pd  # a dependency of Gradio, imported with it

    return pd.DataFrame(list(rows), columns=TABLE_HEADERS)


def find_examples(paths: Sequence[str] = ()) -> list[str]:
    """Example images: those given (files, folders, globs), else the demo's synthetic test images."""
    if paths:
        return [str(p) for p in expand_sources(paths)]
    if DEMO_EXAMPLES.is_dir():
        return [str(p) for p in expand_sources([str(DEMO_EXAMPLES)])]
    return []
