"""Darknet `.weights` files (darknet53.conv.74, yolov3.weights): read and written in the
model's convolution order.

Format (Darknet's parser.c, save_weights / load_weights), little-endian: a header of three
int32 (major, minor, revision) and `seen`, the number of images trained on (int64 when
major * 10 + minor >= 2, else int32); then, for each convolution in the cfg's order, either
BatchNorm beta, gamma, running mean, running variance (out_channels float32 each) and the
weights, or the bias and the weights. Weights are (out, in, k, k) float32 in C order,
PyTorch's layout. The file stores no shapes: only the network's convolutions, in order,
say where one ends and the next begins, so a wrong network shows as a wrong file size.

Order: this model's CNNBlocks in module order (depth first through `layers`) are the
convolutions of Darknet's yolov3.cfg in cfg order. The backbone's 52 are Darknet-53's; in
each pyramid level the course's five neck convolutions, the head's 3x3 and output
convolutions, then the 1x1 convolution before the upsample, which reads the fifth neck
convolution's output (the cfg's `route -4`), and the upsample's output is concatenated
before the backbone's (`route -1, 61` and `route -1, 36`), as the course's forward does.
tests/test_darknet.py checks this against a transcription of yolov3.cfg.

Output convolutions: within each anchor Darknet's channels are (tx, ty, tw, th,
objectness, classes), the course's (objectness, tx, ty, tw, th, classes). Reading and
writing permute them, so a file written here is a Darknet file and the other way round.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolov3.model import NUM_ANCHORS, CNNBlock

# Darknet reads `seen` as a size_t (8 bytes) from version 0.2 on, as an int before.
_SEEN_INT64_FROM = 2


class DarknetError(ValueError):
    """A `.weights` file that does not fit the network; the message names the file and the layer."""


@dataclass(frozen=True)
class DarknetHeader:
    """The header of a `.weights` file; `size` is its length in bytes (20 or 16)."""

    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def size(self) -> int:
        return 20 if self.major * 10 + self.minor >= _SEEN_INT64_FROM else 16

    def to_bytes(self) -> bytes:
        seen = struct.pack("<q" if self.size == 20 else "<i", self.seen)
        return struct.pack("<3i", self.major, self.minor, self.revision) + seen


@dataclass(frozen=True)
class ConvSpec:
    """One convolution as a `.weights` file holds it.

    name: the CNNBlock's module path in YOLOv3 ("layers.0", "layers.15.pred.1");
    batch_norm: False for the output convolutions (a bias instead of a BatchNorm).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    batch_norm: bool

    @property
    def num_values(self) -> int:
        """float32 values the file holds for it: 4 per output channel with BatchNorm
        (beta, gamma, mean, variance), else 1 (the bias), plus the weights."""
        return (4 if self.batch_norm else 1) * self.out_channels + self.out_channels * self.in_channels * self.kernel ** 2

    def keys(self) -> tuple[str, ...]:
        """The state_dict keys of its values, in file order."""
        if self.batch_norm:
            return tuple(f"{self.name}.{k}" for k in ("bn.bias", "bn.weight", "bn.running_mean", "bn.running_var",
                                                       "conv.weight"))
        return f"{self.name}.conv.bias", f"{self.name}.conv.weight"

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes of keys(), in the same order."""
        weight = (self.out_channels, self.in_channels, self.kernel, self.kernel)
        return ((self.out_channels,),) * (4 if self.batch_norm else 1) + (weight,)


@dataclass
class DarknetWeights:
    """What read_darknet found: the header, the file's convolutions in order, their tensors
    by the model's state_dict keys (output convolutions in the course's channel order), and
    the class count of the file's output convolutions (None for a backbone-only file)."""

    header: DarknetHeader
    convs: list[ConvSpec]
    state: dict[str, torch.Tensor]
    num_classes: int | None


def is_darknet(path: str | os.PathLike) -> bool:
    """Whether a file is a Darknet `.weights` file: by Darknet's names for them (`*.weights`,
    `*.conv.<n>` like darknet53.conv.74), or by a header whose major version is 0 (every
    Darknet release's), which no checkpoint, safetensors or ONNX file starts with."""
    path = Path(path)
    if path.suffix.lower() == ".weights" or re.search(r"\.conv\.\d+$", path.name):
        return True
    with open(path, "rb") as f:
        head = f.read(16)
    return len(head) >= 16 and head[:4] == bytes(4) and head[8:9] != b"{"  # safetensors: length, then '{'


def conv_specs(model: nn.Module, num_classes: int | None = None) -> list[ConvSpec]:
    """The model's convolutions in module order (= Darknet's cfg order, see the module
    docstring). num_classes: the class count the output convolutions are given for
    (a file's); None: the model's. Works on a model built on the meta device."""
    specs = []
    for name, module in model.named_modules():
        if isinstance(module, CNNBlock):
            conv = module.conv
            out = conv.out_channels
            if not module.use_bn_act and num_classes is not None:
                out = NUM_ANCHORS * (5 + num_classes)
            specs.append(ConvSpec(name, conv.in_channels, out, conv.kernel_size[0], module.use_bn_act))
    return specs


def backbone_specs(model: nn.Module) -> list[ConvSpec]:
    """The backbone's convolutions (Darknet-53's 52 at any width): what darknet53.conv.74 holds."""
    backbone = {f"layers.{i}" for i in model.parts()["backbone"]}
    return [s for s in conv_specs(model) if ".".join(s.name.split(".")[:2]) in backbone]


def file_size(specs: list[ConvSpec], header: DarknetHeader = DarknetHeader()) -> int:
    """Bytes of a `.weights` file holding `specs` after `header`."""
    return header.size + 4 * sum(s.num_values for s in specs)


def _channel_order(num_classes: int, to_darknet: bool) -> torch.Tensor:
    """Index that puts an output convolution's channels in Darknet's order (to_darknet) or the course's."""
    k = 5 + num_classes
    within = [1, 2, 3, 4, 0] if to_darknet else [4, 0, 1, 2, 3]
    within += list(range(5, k))
    return torch.tensor([a * k + c for a in range(NUM_ANCHORS) for c in within])


def _output_classes(spec: ConvSpec) -> int:
    return spec.out_channels // NUM_ANCHORS - 5


def write_darknet(model: nn.Module, path: str | os.PathLike, backbone_only: bool = False,
                  header: DarknetHeader = DarknetHeader()) -> int:
    """Write the model's convolutions (only the backbone's with backbone_only: a
    darknet53.conv.74) as a Darknet `.weights` file; returns the bytes written."""
    state = model.state_dict()
    specs = backbone_specs(model) if backbone_only else conv_specs(model)
    with open(path, "wb") as f:
        f.write(header.to_bytes())
        for spec in specs:
            for key in spec.keys():
                value = state[key].detach().to("cpu", torch.float32)
                if not spec.batch_norm:
                    value = value[_channel_order(_output_classes(spec), to_darknet=True)]
                f.write(value.contiguous().numpy().astype("<f4").tobytes())
    return file_size(specs, header)


def read_header(path: str | os.PathLike) -> DarknetHeader:
    """The header of a `.weights` file. Raises DarknetError (naming the file) for a file
    too short for one or whose version numbers are not a Darknet file's."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 16:
        raise DarknetError(f"{path}: {len(head)} bytes is too short for a Darknet .weights header")
    major, minor, revision = struct.unpack("<3i", head[:12])
    if not all(0 <= v < 1000 for v in (major, minor, revision)):
        # Darknet reads versions >= 1000 as files with transposed weights, which no release wrote
        raise DarknetError(f"{path}: not a Darknet .weights file (header version {major}.{minor}.{revision})")
    header = DarknetHeader(major, minor, revision)
    if len(head) < header.size:
        raise DarknetError(f"{path}: {len(head)} bytes is too short for a Darknet .weights header")
    (seen,) = struct.unpack("<q" if header.size == 20 else "<i", head[12:header.size])
    return DarknetHeader(major, minor, revision, seen)


def file_layout(model: nn.Module, path: str | os.PathLike, header: DarknetHeader) -> tuple[list[ConvSpec], int | None]:
    """The convolutions a file of this size holds for this model: the backbone's alone (a
    darknet53.conv.74) or all of them, with the class count that makes the output
    convolutions fill the file. A size that fits neither gives the whole network at the
    nearest class count, so reading it names the layer where the file goes wrong."""
    values, odd = divmod(os.path.getsize(path) - header.size, 4)
    backbone = backbone_specs(model)
    if not odd and values == sum(s.num_values for s in backbone):
        return backbone, None
    specs = conv_specs(model)
    fixed = sum(s.num_values for s in specs if s.batch_norm)
    per_channel = sum(s.in_channels * s.kernel ** 2 + 1 for s in specs if not s.batch_norm)
    channels = (values - fixed) / (NUM_ANCHORS * per_channel)
    num_classes = max(1, round(channels) - 5)
    return conv_specs(model, num_classes), num_classes


def read_darknet(path: str | os.PathLike, model: nn.Module) -> DarknetWeights:
    """Read a `.weights` file for this model (its width decides every shape): a
    backbone-only file (darknet53.conv.74) or the whole network with any class count
    (yolov3.weights: 80). Nothing is loaded into the model.

    Raises FileNotFoundError; DarknetError, naming the file and the layer, for a file that
    ends inside a layer or before the last one (truncated), or has bytes after it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Darknet weights file not found")
    header = read_header(path)
    specs, num_classes = file_layout(model, path, header)
    data = np.fromfile(path, dtype="<f4", offset=header.size)
    available, odd = len(data), (os.path.getsize(path) - header.size) % 4
    state: dict[str, torch.Tensor] = {}
    offset = 0
    for index, spec in enumerate(specs, 1):
        if offset + spec.num_values > available:
            raise DarknetError(
                f"{path}: truncated: the file ends inside {spec.name} (convolution {index} of {len(specs)}), "
                f"{4 * (offset + spec.num_values - available) - odd} bytes short of its end; "
                + _expected(model, header))
        for key, shape in zip(spec.keys(), spec.shapes(), strict=True):
            n = int(np.prod(shape))
            value = torch.from_numpy(data[offset:offset + n].astype(np.float32)).reshape(shape)
            if not spec.batch_norm:
                value = value[_channel_order(_output_classes(spec), to_darknet=False)]
            state[key] = value
            offset += n
    extra = 4 * (available - offset) + odd
    if extra:
        raise DarknetError(f"{path}: {extra} bytes after the last convolution, {specs[-1].name} "
                           f"(convolution {len(specs)} of {len(specs)}); " + _expected(model, header))
    return DarknetWeights(header, specs, state, num_classes)


def _expected(model: nn.Module, header: DarknetHeader) -> str:
    """What a file for this model should weigh (part of the errors' message)."""
    width = getattr(model, "width", 1.0)
    return (f"for this model (width {width}) a backbone-only file has {file_size(backbone_specs(model), header):,} "
            f"bytes and a whole-network file {file_size(conv_specs(model, 80), header):,} bytes for 80 classes "
            f"({file_size(conv_specs(model), header):,} for {model.num_classes})")
