"""ONNX export of a Detector's network, and ONNX Runtime as a stand-in for it.

The exported graph is the network alone: (B, 3, H, W) float32 in [0, 1] ("images", batch,
height and width dynamic, H and W multiples of 32) -> the three raw heads ("head_s32",
"head_s16", "head_s8", each (B, 3, H/stride, W/stride, 5 + C)). Letterboxing (yolov3.letterbox),
decoding and NMS (yolov3.postprocess) stay in Python, shared with the torch backend, so both backends give the
same detections for the same head outputs. The file's metadata holds what a Detector needs
besides weights (the same keys as the safetensors export: width, class names, evaluation
size, training sizes, score mode, NMS IoU, detections per image, and the anchors).

quantize_int8 turns such an export into an int8 one (ONNX Runtime's static quantisation,
calibrated on images the caller gives; yolov3.deploy picks and scores them). OnnxNetwork
runs either kind and reads the metadata through ONNX Runtime, so serving an export needs
onnxruntime but not the onnx package.

Explanations (Grad-CAM, EigenCAM) need gradients and the feature maps inside the network,
which an ONNX Runtime session does not give: they need the torch backend.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from yolov3.constants import STRIDES
from yolov3.model import YOLOv3

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = tuple(f"head_s{s}" for s in STRIDES)  # the model's outputs, in its order
# How int8 calibration sets activation ranges (quantize_int8); the first is the default.
CALIB_METHODS = ("minmax", "percentile")


def export_onnx(model: YOLOv3, metadata: dict[str, str], path: str | Path | None = None,
                opset: int = OPSET) -> bytes:
    """Export `model` to ONNX with `metadata` as the model's metadata_props.

    Writes `path` when given; returns the serialised model either way. The export runs on a
    float32 NCHW copy on the CPU, so the caller's model is left as it is. Uses the
    TorchScript-based exporter (`dynamo=False`): 2 s for the width-0.125 model on a 2-core
    CPU against 28 s for the dynamo exporter, and no onnxscript to install; the graphs gave
    the same outputs.
    """
    net = copy.deepcopy(model).float().cpu().eval()
    net.use_channels_last(False)
    example = torch.zeros(1, 3, 64, 64)
    dynamic = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name, stride in zip(OUTPUT_NAMES, STRIDES):
        dynamic[name] = {0: "batch", 2: f"height/{stride}", 3: f"width/{stride}"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the forward's "multiple of 32" check is a Python bool the tracer cannot record;
        # ONNX Runtime itself rejects shapes whose heads do not line up
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    data = set_metadata(buffer.getvalue(), metadata)
    if path is not None:
        Path(path).write_bytes(data)
    return data


def set_metadata(model: bytes, metadata: dict[str, str], replace: bool = False) -> bytes:
    """A serialised ONNX model with `metadata` set in its metadata_props (keys it already has
    are overwritten; with replace=True all others are dropped)."""
    import onnx

    proto = onnx.load_from_string(model)
    _set_props(proto, metadata, replace)
    return proto.SerializeToString()


def _set_props(proto, metadata: dict[str, str], replace: bool = False) -> None:
    """set_metadata on a loaded ModelProto, in place."""
    kept = {} if replace else {p.key: p.value for p in proto.metadata_props}
    kept.update(metadata)
    del proto.metadata_props[:]
    for key, value in kept.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def head_convs(proto) -> list[str]:
    """Names of the convolutions that give the heads (the last node before each head's
    reshape): int8 quantisation leaves them in float32 (see quantize_int8)."""
    producer = {out: node for node in proto.graph.node for out in node.output}
    names = []
    for name in OUTPUT_NAMES:
        node = producer[name]
        while node.op_type != "Conv":
            node = producer[node.input[0]]
        names.append(node.name)
    return names


def quantize_int8(model: bytes, calibration: Iterable[np.ndarray], path: str | Path | None = None,
                  method: str = CALIB_METHODS[0]) -> bytes:
    """Static int8 quantisation of an export_onnx model with ONNX Runtime; the serialised
    result (written to `path` too when given), with the input model's metadata plus
    "precision": "int8" and "calibration_images".

    calibration: (B, 3, H, W) float32 batches in [0, 1], preprocessed as inference does
    (Detector.preprocess: letterboxed to the detector's size); the ranges of every
    activation over them fix the activations' scales. Weights are int8 per output channel,
    activations uint8 (QDQ format: ONNX Runtime fuses the pairs into integer kernels when it
    loads the model). The three head convolutions stay float32: their outputs are the raw
    box offsets and logits, whose range is wide and whose rounding would move every box and
    score. method: "minmax" or "percentile" (the 99.999th percentile of each activation).

    Raises ValueError when `calibration` gives no images.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quant_pre_process, quantize_static)

    batches = iter(calibration)
    first = next(batches, None)
    if first is None:
        raise ValueError("int8 calibration needs images, and none were given")
    batches = itertools.chain([first], batches)
    seen = 0

    class Reader(CalibrationDataReader):
        def get_next(self):
            nonlocal seen
            batch = next(batches, None)
            if batch is None:
                return None
            batch = np.ascontiguousarray(batch, dtype=np.float32)
            seen += len(batch)
            return {INPUT_NAME: batch}

    proto = onnx.load_from_string(model)
    methods = dict(zip(CALIB_METHODS, (CalibrationMethod.MinMax, CalibrationMethod.Percentile)))
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}, not {method!r}")
    with tempfile.TemporaryDirectory(prefix="yolov3-int8-") as tmp:
        source, prepared, target = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(model)
        # ONNX Runtime's recommended first step: shape inference and graph optimisation, so
        # that what is quantised is the graph that will run (symbolic shape inference
        # gives up on the dynamic height and width, and is not needed for convolutions)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print their progress
            quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=head_convs(onnx.load(str(prepared))), calibrate_method=methods[method])
        quantized = onnx.load(str(target))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update({"precision": "int8", "calibration_images": str(seen)})
    _set_props(quantized, meta, replace=True)
    data = quantized.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


class OnnxNetwork:
    """Runs an exported network with ONNX Runtime and answers like the YOLOv3 module it came
    from: called on a (B, 3, H, W) float tensor it returns the three heads as CPU tensors.

    Args:
        model: the ONNX file's path or its bytes.
        threads: intra-op threads for ONNX Runtime (None: its default, one per core).

    Attributes: metadata (the file's metadata_props, read by ONNX Runtime: reading an export
    needs no `onnx` package), num_classes (from the heads' static last dimension), width,
    precision ("fp32" or "int8") and num_parameters (None when the file does not say).

    Raises ValueError naming the file when ONNX Runtime cannot load it or it has not this
    project's input and heads.
    """

    backend = "onnxruntime"

    def __init__(self, model: str | Path | bytes, threads: int | None = None) -> None:
        import onnxruntime as ort

        label = "the exported model" if isinstance(model, bytes) else str(model)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own InvalidProtobuf, Fail, NoSuchFile, ...
            raise ValueError(f"{label}: not a readable ONNX model (ONNX Runtime: {type(exc).__name__}: "
                             f"{str(exc).strip()[:300]})") from None
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if inputs != [INPUT_NAME] or set(outputs) != set(OUTPUT_NAMES) or not isinstance(outputs["head_s32"][-1], int):
            raise ValueError(f"{label}: not an export of this project's YOLOv3 (inputs {inputs}, outputs "
                             f"{sorted(outputs)}; `yolov3 export` writes input {INPUT_NAME!r} and outputs "
                             f"{', '.join(OUTPUT_NAMES)})")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.num_classes = int(outputs["head_s32"][-1]) - 5
        self.width = float(self.metadata.get("width", "nan"))
        self.precision = self.metadata.get("precision", "fp32")
        self.num_parameters = int(self.metadata["parameters"]) if "parameters" in self.metadata else None

    def to(self, device) -> OnnxNetwork:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU here, not on {device}")
        return self

    def eval(self) -> OnnxNetwork:
        return self

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = np.ascontiguousarray(images.detach().to(torch.float32).cpu().numpy())
        return [torch.from_numpy(o) for o in self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})]
