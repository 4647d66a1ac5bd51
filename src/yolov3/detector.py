"""Detector: load weights, preprocess, forward, decode, NMS. The one inference path that
the CLI, the demo report and the app all call."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from yolov3.anchors import as_anchors, describe_anchors
from yolov3.checkpoint_io import load_foreign_checkpoint
from yolov3.constants import DATA_KEY, DEFAULT_ANCHORS, DEFAULT_SIZE, VOC_CLASSES
from yolov3.course import COURSE_SETTINGS, read_course_checkpoint
from yolov3.data.augment import letterbox
from yolov3.data.sample import Sample
from yolov3.hparams import grouped_hparams
from yolov3.letterbox import Letterbox, letterbox_style, stack_regions
from yolov3.model import YOLOv3
from yolov3.onnx_backend import CALIB_METHODS, OnnxNetwork, export_onnx, quantize_int8
from yolov3.postprocess import postprocess


# The post-processing settings a training run evaluated with, by their name in the
# LightningModule's `evaluation` hyper-parameters (yolov3.hparams.EvalConfig) -> the Detector
# argument they become. Detector.load takes them from the checkpoint (or a safetensors export
# of it) unless the caller gives a value, so validation, test, detect, cam and the app all
# score and suppress boxes the same way.
# The confidence threshold is deliberately not among them: evaluation's conf_threshold
# (0.005) serves the VOC protocol, which integrates precision over every score, while a
# detection shown to a person needs a cut (0.25 unless the caller says otherwise).
EVAL_SETTINGS = {"score_mode": "score_mode", "iou_threshold": "iou_threshold", "max_detections": "max_detections"}


class Detector:
    """Runs a YOLOv3 on RGB images and returns boxes in original image pixels.

    Args:
        model: the network (eval mode is set here).
        anchors: (3, 3, 2) anchors as fractions of the image.
        class_names: names for the class indices.
        size: input size (multiple of 32) the images are letterboxed to.
        conf_threshold, iou_threshold, max_detections: post-processing settings.
        source: where the weights came from (shown by the CLI and the app).
        origin: what that file was recognised as, in words (Detector.load says it).
        letterbox: how images are fitted into the input (yolov3.letterbox.LETTERBOX_STYLES:
            "yolo", this project's; "course", the course's black padding and bilinear resize).
        train_sizes: the input sizes the weights were trained at, when known (the app's
            size slider reaches down to them).
        max_candidates: per image, only the highest-scoring candidates enter NMS (None: all);
            evaluation at a low threshold sets it, as training's evaluation does.
    """

    def __init__(self, model: YOLOv3, anchors: torch.Tensor | None = None, class_names=None,
                 size: int = DEFAULT_SIZE, conf_threshold: float = 0.25, iou_threshold: float = 0.45,
                 max_detections: int = 100, device: str | torch.device = "cpu", score_mode: str = "obj_cls",
                 source: str = "", train_sizes: tuple[int, ...] = (), max_candidates: int | None = None,
                 origin: str = "", letterbox: str = "yolo") -> None:
        if size % 32 or size < 32:
            raise ValueError(f"size must be a positive multiple of 32, got {size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.anchors = as_anchors(anchors if anchors is not None else DEFAULT_ANCHORS).to(self.device)
        if class_names is None:
            class_names = VOC_CLASSES if model.num_classes == 20 else [str(c) for c in range(model.num_classes)]
        if len(class_names) != model.num_classes:
            raise ValueError(f"{source + ': ' if source else ''}{len(class_names)} class names for a model with "
                             f"{model.num_classes} classes")
        self.class_names = tuple(class_names)
        self.size, self.conf_threshold, self.iou_threshold = size, conf_threshold, iou_threshold
        self.max_detections, self.score_mode = max_detections, score_mode
        self.source, self.origin = source, origin
        letterbox_style(letterbox)  # ValueError for an unknown name
        self.letterbox = letterbox
        self.train_sizes = tuple(int(s) for s in train_sizes)
        self.max_candidates = max_candidates

    def configured(self, size: int | None = None, conf_threshold: float | None = None,
                   iou_threshold: float | None = None) -> Detector:
        """A copy with other settings that shares this one's model (no weights are copied).

        For callers that change settings per request (the app): each request gets its own
        Detector, so concurrent requests never see each other's settings.
        """
        return self._replace(size=size or self.size,
                             conf_threshold=self.conf_threshold if conf_threshold is None else conf_threshold,
                             iou_threshold=self.iou_threshold if iou_threshold is None else iou_threshold)

    def _replace(self, **changes) -> Detector:
        """A new Detector with this one's arguments, `changes` replacing some of them."""
        args = dict(model=self.model, anchors=self.anchors, class_names=self.class_names, size=self.size,
                    conf_threshold=self.conf_threshold, iou_threshold=self.iou_threshold,
                    max_detections=self.max_detections, device=self.device, score_mode=self.score_mode,
                    source=self.source, train_sizes=self.train_sizes, max_candidates=self.max_candidates,
                    origin=self.origin, letterbox=self.letterbox)
        return Detector(**{**args, **changes})

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> Detector:
        """Load weights from a Lightning checkpoint (.ckpt), a safetensors export (.safetensors)
        or an ONNX export (.onnx, run by ONNX Runtime: see from_onnx).

        The course's checkpoint files load too (yolov3.course: its save_checkpoint `.pth.tar`,
        its Lightning `.ckpt`, a bare state_dict), recognised from their content, not their
        name; `origin` says what a file was recognised as.

        None can run code: checkpoints go through torch.load(weights_only=True), and a
        Lightning checkpoint that pickled objects of other classes (the course's) through a
        restricted unpickler that puts inert stand-ins in their place and refuses any file
        whose unpickling would call a function (checkpoint_io.load_foreign_checkpoint).
        A setting left out or given as None takes what the weights say, when they say it
        (checkpoints of this project's training and their exports do): anchors -> theirs;
        size -> the size they were evaluated at (else DEFAULT_SIZE); score_mode,
        iou_threshold, max_detections -> the evaluation's (EVAL_SETTINGS; else "obj_cls",
        0.45, 100); letterbox -> theirs (else "yolo"). A course file says none of these: it
        gets the course's (course.COURSE_SETTINGS: its rounded anchors, objectness-only scores,
        NMS 0.45, 416, black padding and bilinear resizing).
        A value given wins; `anchors` may be a set's name ("coco", "course": anchors.as_anchors).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: weights file not found (train with `make demo` or `yolov3 fit`; "
                                    "`yolov3 export` writes .safetensors and .onnx files from a checkpoint)")
        kind = weights_format(path)
        if kind == "safetensors":
            return cls.from_safetensors(path, **kwargs)
        if kind == "onnx":
            return cls.from_onnx(path, **kwargs)
        return cls.from_checkpoint(path, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Detector:
        """Load a Lightning checkpoint of this project's training or one of the course's files
        (see load); no code of the file runs. Raises CheckpointError (a ValueError) for an
        unreadable or refused file, ValueError for one with no YOLOv3 in it; both name it."""
        loaded = load_foreign_checkpoint(path)  # FileNotFoundError, CheckpointError (a ValueError)
        ckpt = loaded.content
        course = read_course_checkpoint(ckpt, path, loaded.stand_ins)
        if course is not None:
            model = _strict_model(course.num_classes, course.width, course.state, path)
            data = {k: v for k, v in COURSE_SETTINGS.items() if k != "anchors"}
            origin = "; ".join((course.kind, *course.notes))
            return cls._with_data_defaults(model, COURSE_SETTINGS["anchors"], path, data, kwargs, origin)
        if not isinstance(ckpt.get("state_dict"), dict):
            raise ValueError(f"{path}: neither a checkpoint of this project nor one of the course's (no YOLOv3 "
                             f"state_dict in it; its keys: {', '.join(map(str, list(ckpt)[:8]))})")
        hp = grouped_hparams(ckpt.get("hyper_parameters", {}))  # older checkpoints: flat names
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model = _strict_model(hp.get("num_classes", 20), hp.get("width", 1.0), state, path)
        anchors = ckpt["state_dict"].get("anchors")
        data = dict(ckpt.get(DATA_KEY) or {})
        evaluation = hp.get("evaluation") or {}
        data.update({arg: evaluation[key] for key, arg in EVAL_SETTINGS.items() if evaluation.get(key) is not None})
        return cls._with_data_defaults(model, anchors, path, data, kwargs, "a checkpoint of this project's training")

    @classmethod
    def from_safetensors(cls, path: str | Path, **kwargs) -> Detector:
        """Load an export written by save_safetensors (tensors plus width / class names metadata)."""
        st = _safetensors()
        try:
            with st.safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensors = st.torch.load_file(str(path))
        except (st.SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
        data = _data_from_metadata(meta, path, "safetensors")
        anchors = tensors.pop("anchors", None)
        model = _strict_model(len(data["class_names"]), data["width"], tensors, path)
        return cls._with_data_defaults(model, anchors, path, data, kwargs, _export_origin("a safetensors", data))

    @classmethod
    def from_onnx(cls, path: str | Path, threads: int | None = None, **kwargs) -> Detector:
        """Load an export written by save_onnx; the network runs in ONNX Runtime on the CPU
        (`threads`: its intra-op threads, default one per core). Pre- and post-processing
        are the torch backend's. Raises ValueError for a file that is not such an export."""
        network = OnnxNetwork(path, threads=threads)
        meta = network.metadata
        data = _data_from_metadata(meta, path, "ONNX")
        if len(data["class_names"]) != network.num_classes:
            raise ValueError(f"{path}: its metadata names {len(data['class_names'])} classes and its heads "
                             f"predict {network.num_classes}")
        anchors = torch.tensor(json.loads(meta["anchors"]), dtype=torch.float32) if "anchors" in meta else None
        return cls._with_data_defaults(network, anchors, path, data, kwargs,
                                       _export_origin(f"an {network.precision} ONNX", data))

    @property
    def backend(self) -> str:
        """"torch" or "onnxruntime": what runs the network."""
        return getattr(self.model, "backend", "torch")

    @property
    def num_parameters(self) -> int | None:
        """The network's parameter count (an ONNX export says it in its metadata; None if not)."""
        if self.backend == "torch":
            return sum(p.numel() for p in self.model.parameters())
        return self.model.num_parameters

    @property
    def precision(self) -> str:
        """What the network computes in: "fp32" (torch weights and ONNX exports) or "int8"
        (a quantised ONNX export); a torch model cast to another dtype says that dtype."""
        if self.backend != "torch":
            return self.model.precision
        dtype = next(self.model.parameters()).dtype
        return "fp32" if dtype == torch.float32 else str(dtype).removeprefix("torch.")

    def metadata(self) -> dict[str, str]:
        """What an export records besides the weights, as strings (JSON values)."""
        return {"width": str(self.model.width), "class_names": json.dumps(list(self.class_names)),
                "parameters": str(self.num_parameters),
                "image_size": json.dumps(self.size), "train_sizes": json.dumps(list(self.train_sizes)),
                "score_mode": json.dumps(self.score_mode), "iou_threshold": json.dumps(self.iou_threshold),
                "max_detections": json.dumps(self.max_detections), "format": "yolov3 detector v1",
                "exported_from": json.dumps(self.origin), "letterbox": json.dumps(self.letterbox)}

    def _require_torch_weights(self) -> None:
        """Exports write the torch weights; raise ValueError (naming the file) without them."""
        if self.backend != "torch":
            raise ValueError(f"{self.source}: exporting needs torch weights and this is an ONNX export; "
                             "export from the .ckpt or .safetensors file")

    def save_onnx(self, path: str | Path | None = None, calibration: Iterable[np.ndarray] | None = None,
                  calib_method: str = CALIB_METHODS[0], batch_size: int = 8) -> bytes:
        """Export the network to ONNX (opset 17, dynamic batch and size; yolov3.onnx_backend)
        with this detector's metadata and anchors; writes `path` when given and returns the
        bytes. Needs the torch backend (the weights).

        calibration: RGB images ((H, W, 3) uint8, any sizes) to quantise the export to int8
        with (onnx_backend.quantize_int8): they are preprocessed as detection does (letterboxed
        to this detector's size), `batch_size` at a time. None: a float32 export.
        """
        self._require_torch_weights()
        meta = {**self.metadata(), "anchors": json.dumps(self.anchors.detach().cpu().tolist())}
        if calibration is None:
            return export_onnx(self.model, meta, path)
        batches = (self.preprocess(chunk)[0].cpu().numpy() for chunk in _chunks(calibration, batch_size))
        return quantize_int8(export_onnx(self.model, meta), batches, path, method=calib_method)

    def with_backend(self, backend: str, threads: int | None = None) -> Detector:
        """This detector on another backend ("torch" or "onnxruntime"), same settings. Going
        to onnxruntime exports the network in memory (a few seconds); going back to torch
        needs the weights, so it is only possible from a torch detector."""
        if backend == self.backend:
            return self
        if backend != "onnxruntime":
            raise ValueError(f"{self.source}: an {self.backend} export cannot run on the {backend} backend "
                             "(it holds no torch weights); load the .ckpt or .safetensors weights")
        network = OnnxNetwork(self.save_onnx(), threads=threads)
        return self._replace(model=network, anchors=self.anchors.cpu(), device="cpu")

    @classmethod
    def _with_data_defaults(cls, model: YOLOv3, anchors, path: Path, data: dict, kwargs: dict,
                            origin: str) -> Detector:
        """Build with what the weights say (anchors, class names, eval size, training sizes,
        evaluation settings) as defaults; a keyword given as None counts as not given."""
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.setdefault("anchors", anchors)  # read (names, lists) and checked by __init__
        kwargs.setdefault("size", int(data.get("image_size", DEFAULT_SIZE)))
        for arg in EVAL_SETTINGS.values():
            if arg in data:
                kwargs.setdefault(arg, data[arg])
        if data.get("class_names"):
            kwargs.setdefault("class_names", data["class_names"])
        kwargs.setdefault("train_sizes", tuple(data.get("train_sizes", ())))
        kwargs.setdefault("letterbox", data.get("letterbox", "yolo"))
        kwargs.setdefault("source", str(path))
        kwargs.setdefault("origin", origin)
        return cls(model, **kwargs)

    def describe(self) -> str:
        """One line on what was loaded and how it decodes, for the commands' output."""
        return (f"weights {self.source or '(in memory)'}: {self.origin or 'a YOLOv3'}; {self.model.num_classes} "
                f"classes, {describe_anchors(self.anchors.cpu())}, scores {self.score_mode}, input {self.size}"
                f"{'' if self.letterbox == 'yolo' else f', {self.letterbox} letterbox'}")

    def save_safetensors(self, path: str | Path) -> None:
        """Write the weights, anchors, width, class names, sizes and the post-processing
        settings (score mode, NMS IoU, detections per image) as one safetensors file."""
        self._require_torch_weights()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors["anchors"] = self.anchors.detach().cpu().contiguous()
        # the bytes written as any file here is (safetensors' save_file makes it owner-only, 0600)
        Path(path).write_bytes(_safetensors().torch.save(tensors, metadata=self.metadata()))

    def preprocess(self, images: list[np.ndarray]) -> tuple[torch.Tensor, list[Letterbox]]:
        """images: list of (H, W, 3) uint8 RGB -> (B, 3, S, S) float in [0, 1] on the
        detector's device (letterboxed to S = self.size) and one Letterbox per image."""
        batch, infos = [], []
        for img in images:
            boxed, info = letterbox(Sample(img, np.zeros((0, 4)), np.zeros(0)), self.size, style=self.letterbox)
            batch.append(torch.from_numpy(boxed.image).permute(2, 0, 1))
            infos.append(info)
        # out of place: explanations (yolov3.cam) may ask for gradients from this tensor on
        return torch.stack(batch).to(self.device).float() / 255.0, infos

    def decode(self, outputs: list[torch.Tensor], infos: list[Letterbox] | None = None,
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Head outputs -> per image (K, 6) detections in input pixels and (K, 4) long
        (scale, anchor, row, column) cells they came from, with this detector's settings;
        with the images' Letterboxes, none lies wholly in the padding (postprocess regions)."""
        regions = stack_regions(infos) if infos is not None else None
        return postprocess([o.detach() for o in outputs], self.anchors, (self.size, self.size), self.conf_threshold,
                           self.iou_threshold, self.max_detections, self.score_mode, self.max_candidates,
                           return_cells=True, regions=regions)

    @staticmethod
    def to_original(det: torch.Tensor, info: Letterbox) -> np.ndarray:
        """(K, 6) detections in input pixels -> (K', 6) float32 array in original pixels, clipped,
        K' <= K: a detection that covers none of the image once clipped (it lies in the letterbox's
        padding; it would be a box of zero width or height) is not one of the image and is
        dropped (Letterbox.undo_detections, the rule evaluation and CAM share)."""
        return info.undo_detections(det.detach().float().cpu()).numpy().astype(np.float32)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """images: list of (H, W, 3) uint8 RGB -> per image (K, 6) float32 array of
        x1, y1, x2, y2 (original pixels, each box of positive width and height: see
        to_original), score, class."""
        if not images:
            return []
        x, infos = self.preprocess(images)
        dets, _ = self.decode(self.model(x), infos)
        return [self.to_original(det, info) for det, info in zip(dets, infos)]


def _strict_model(num_classes: int, width: float, state: dict[str, torch.Tensor], path) -> YOLOv3:
    """A YOLOv3 of that shape holding exactly `state` (every key, no other); a ValueError
    naming the file says which keys are missing or unexpected or of another shape."""
    model = YOLOv3(num_classes=int(num_classes), width=float(width))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ValueError(f"{path}: its weights do not fit a YOLOv3 of {num_classes} classes and width {width} "
                         f"({detail[:400]})") from None
    return model


def _export_origin(kind: str, data: dict) -> str:
    """"a safetensors export of this project", and what it was made from when it says."""
    made_from = data.get("exported_from")
    return f"{kind} export of this project" + (f", made from {made_from}" if made_from else "")


def _safetensors():
    """The safetensors package, imported when a .safetensors file is read or written: a Space
    serving ONNX weights does not install it."""
    import safetensors
    import safetensors.torch  # noqa: F401 (the submodule, as safetensors.torch)

    return safetensors


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), read lazily."""
    items = iter(items)
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def _data_from_metadata(meta: dict[str, str], path, kind: str) -> dict:
    """An export's metadata -> width, class names and the sizes / settings it records.
    Raises ValueError naming the file if this project's keys are missing or unreadable."""
    if "width" not in meta or "class_names" not in meta:
        raise ValueError(f"{path}: {kind} file without this project's metadata (width, class_names)")
    try:
        data = {"width": float(meta["width"]), "class_names": json.loads(meta["class_names"])}
        keys = ("image_size", "train_sizes", "exported_from", "letterbox", *EVAL_SETTINGS.values())
        data.update({k: json.loads(meta[k]) for k in keys if k in meta})
    except ValueError as exc:
        raise ValueError(f"{path}: unreadable metadata in this {kind} file ({exc})") from None
    return data


def weights_format(path: str | Path) -> str:
    """"checkpoint", "safetensors" or "onnx", from the file's first bytes (so a file named
    otherwise still loads as what it is), else from its suffix: torch checkpoints are zip
    archives ("PK") or, in the legacy format, pickles (0x80); a safetensors file starts with
    an 8-byte header length and then '{'; an ONNX model is a protobuf whose first field is
    ir_version (0x08)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "checkpoint"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x08":
        return "onnx"
    return {".safetensors": "safetensors", ".onnx": "onnx"}.get(path.suffix.lower(), "checkpoint")
