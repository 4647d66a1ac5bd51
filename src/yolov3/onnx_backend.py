"""ONNX export of a Detector's network, and ONNX Runtime as a stand-in for it.

The exported graph is the network alone: (B, 3, H, W) float32 in [0, 1] ("images", batch,
height and width dynamic, H and W multiples of 32) -> the three raw heads ("head_s32",
"head_s16", "head_s8", each (B, 3, H/stride, W/stride, 5 + C)). Letterboxing, decoding and
NMS stay in Python (yolov3.boxes), shared with the torch backend, so both backends give the
same detections for the same head outputs. The file's metadata holds what a Detector needs
besides weights (the same keys as the safetensors export: width, class names, evaluation
size, training sizes, score mode, NMS IoU, detections per image, and the anchors).

Explanations (Grad-CAM, EigenCAM) need gradients and the feature maps inside the network,
which an ONNX Runtime session does not give: they need the torch backend.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import torch

from yolov3.model import YOLOv3

OPSET = 17
INPUT_NAME = "images"
OUTPUT_NAMES = ("head_s32", "head_s16", "head_s8")


def export_onnx(model: YOLOv3, metadata: dict[str, str], path: str | Path | None = None,
                opset: int = OPSET) -> bytes:
    """Export `model` to ONNX with `metadata` as the model's metadata_props.

    Writes `path` when given; returns the serialised model either way. The export runs on a
    float32 NCHW copy on the CPU, so the caller's model is left as it is. Uses the
    TorchScript-based exporter (`dynamo=False`): 2 s for the width-0.125 model on a 2-core
    CPU against 28 s for the dynamo exporter, and no onnxscript to install; the graphs gave
    the same outputs.
    """
    import onnx

    net = copy.deepcopy(model).float().cpu().eval()
    net.use_channels_last(False)
    example = torch.zeros(1, 3, 64, 64)
    dynamic = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name, stride in zip(OUTPUT_NAMES, (32, 16, 8)):
        dynamic[name] = {0: "batch", 2: f"height/{stride}", 3: f"width/{stride}"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the forward's "multiple of 32" check is a Python bool the tracer cannot record;
        # ONNX Runtime itself rejects shapes whose heads do not line up
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(net, (example,), buffer, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    data = proto.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file. Raises ValueError if it is not a readable ONNX model."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... depending on the damage
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    return {p.key: p.value for p in proto.metadata_props}


class OnnxNetwork:
    """Runs an exported network with ONNX Runtime and answers like the YOLOv3 module it came
    from: called on a (B, 3, H, W) float tensor it returns the three heads as CPU tensors.

    Args:
        model: the ONNX file's path or its bytes.
        num_classes, width: the network's (from the file's metadata).
        threads: intra-op threads for ONNX Runtime (None: its default, one per core).
    """

    backend = "onnxruntime"

    def __init__(self, model: str | Path | bytes, num_classes: int, width: float, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.num_classes, self.width = num_classes, width

    def to(self, device) -> OnnxNetwork:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the onnxruntime backend runs on the CPU here, not on {device}")
        return self

    def eval(self) -> OnnxNetwork:
        return self

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = np.ascontiguousarray(images.detach().to(torch.float32).cpu().numpy())
        return [torch.from_numpy(o) for o in self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})]

