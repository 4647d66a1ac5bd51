"""The course's YOLOv3: a Darknet-53 body and three prediction heads, as a plain nn.Module.

The layer lists below (backbone, then neck and heads) are the course's configuration, kept
as data so the network can be read top to bottom. Module names and nesting follow the course
code (`layers.N.conv`, `layers.N.bn`, `layers.N.layers.K...`, `layers.N.pred...`), so a
state_dict saved by the course's model loads into this one.

Shapes: input (B, 3, S, S) float in [0, 1] with S a multiple of 32; outputs a list of three
tensors (B, 3, S/32, S/32, 5+C), (B, 3, S/16, S/16, 5+C), (B, 3, S/8, S/8, 5+C), whose last
axis is (objectness logit, tx, ty, tw, th, class logits...).
"""

from __future__ import annotations

import math

import torch
from torch import nn

# (out_channels, kernel, stride) is a conv block; ("B", n) n residual blocks;
# "S" a prediction branch (residual pair without skip, 1x1 conv, head); "U" an upsample
# whose output is concatenated with the backbone's output at the stride it upsamples to.
BACKBONE_CONFIG: list = [  # Darknet-53: a stem conv, then 5 stages (stride-2 conv + residual blocks)
    (32, 3, 1),
    (64, 3, 2),
    ("B", 1),
    (128, 3, 2),
    ("B", 2),
    (256, 3, 2),
    ("B", 8),
    (512, 3, 2),
    ("B", 8),
    (1024, 3, 2),
    ("B", 4),
]
NECK_CONFIG: list = [  # the feature pyramid, each "S" ending in a head (stride 32 first)
    (512, 1, 1),
    (1024, 3, 1),
    "S",
    (256, 1, 1),
    "U",
    (256, 1, 1),
    (512, 3, 1),
    "S",
    (128, 1, 1),
    "U",
    (128, 1, 1),
    (256, 3, 1),
    "S",
]

NUM_ANCHORS = 3
# Convolutions with fewer output channels stay NCHW under channels_last (YOLOv3.use_channels_last).
CHANNELS_LAST_MIN = 16


def scale_channels(channels: int, width: float) -> int:
    """Channel count at a width multiplier: rounded to a multiple of 8, at least 8.

    Width 1.0 returns the count unchanged, so the full model is exactly the course's.
    """
    if width == 1.0:
        return channels
    return max(8, int(round(channels * width / 8.0)) * 8)


class CNNBlock(nn.Module):
    """Conv + BatchNorm + LeakyReLU(0.1); with bn_act=False a plain conv with bias.

    The course's block creates its BatchNorm even when bn_act=False and never uses it;
    the parameter count the project is held to (61,626,499) includes those three unused
    BatchNorms. We keep them, frozen (requires_grad=False, so optimisers and DDP ignore
    them), so that count and course state_dicts both match.
    """

    def __init__(self, in_channels: int, out_channels: int, bn_act: bool = True, **conv_kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=not bn_act, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels)
        self.leaky = nn.LeakyReLU(0.1)
        self.use_bn_act = bn_act
        if not bn_act:
            self.bn.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_bn_act:
            return self.leaky(self.bn(self.conv(x)))
        return self.conv(x)


class ResidualBlock(nn.Module):
    """num_repeats x (1x1 conv to C/2, 3x3 conv back to C), each added to its input if use_residual."""

    def __init__(self, channels: int, use_residual: bool = True, num_repeats: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                CNNBlock(channels, channels // 2, kernel_size=1),
                CNNBlock(channels // 2, channels, kernel_size=3, padding=1),
            )
            for _ in range(num_repeats)
        )
        self.use_residual = use_residual
        self.num_repeats = num_repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x) if self.use_residual else layer(x)
        return x


class ScalePrediction(nn.Module):
    """3x3 conv to 2C then 1x1 conv to 3*(5+num_classes); output (B, 3, H, W, 5+num_classes)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pred = nn.Sequential(
            CNNBlock(in_channels, 2 * in_channels, kernel_size=3, padding=1),
            CNNBlock(2 * in_channels, (num_classes + 5) * NUM_ANCHORS, bn_act=False, kernel_size=1),
        )
        self.num_classes = num_classes

    def init_objectness_bias(self, prior: float) -> None:
        """Set each anchor's objectness bias to logit(prior), so every cell starts at
        sigmoid = prior instead of about 0.5 (RetinaNet's prior, Lin et al. 2017, sec. 4.1).
        The class biases are left alone: the class term is a softmax, which a common shift
        does not change. Raises ValueError unless 0 < prior < 1."""
        if not 0.0 < prior < 1.0:
            raise ValueError(f"objectness prior must be in (0, 1), got {prior}")
        conv = self.pred[-1].conv
        with torch.no_grad():
            conv.bias.view(NUM_ANCHORS, self.num_classes + 5)[:, 0] = math.log(prior / (1.0 - prior))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        # (B, 3*(5+C), H, W) -> (B, 3, H, W, 5+C); the channel order (anchor-major) is the course's.
        return self.pred(x).reshape(b, NUM_ANCHORS, self.num_classes + 5, h, w).permute(0, 1, 3, 4, 2)


class YOLOv3(nn.Module):
    """YOLOv3 with the course's Darknet-53 configuration.

    The network is one nn.ModuleList, `layers`, in forward order (so the state_dict keys are
    the course's `layers.N...`); its parts are named by index, worked out once from the
    configuration when the model is built (see parts()):

        backbone          Darknet-53, layers 0-10: backbone.stem (layer 0), then
                          backbone.stage1 ... backbone.stage5, each a stride-2 conv and its
                          residual blocks (output strides 2, 4, 8, 16, 32)
        neck              the feature pyramid: neck.s32, neck.s16, neck.s8, the layers
                          between the backbone (or the previous head) and each head; the
                          last layer of each is that head's input
        head32/16/8       the three ScalePredictions, in output order (strides: `strides`)

    Attributes set at build: strides (output strides in output order, constants.STRIDES),
    head_layers (index of each head, same order), routes (upsample layer index -> index of
    the backbone layer whose output is concatenated to it: the pyramid's lateral, Darknet's
    "route", connections).

    Args:
        num_classes: number of object classes C (20 for VOC).
        width: channel multiplier (1.0 is the course's model; 0.25 has about 1/16 of the
            parameters) for CPU training or the mission's "reduced kernels" case.
        in_channels: image channels.
    """

    def __init__(self, num_classes: int = 20, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.num_classes = num_classes
        self.width = width
        self.layers = nn.ModuleList()
        self._parts: dict[str, tuple[int, ...]] = {}
        self.strides: tuple[int, ...] = ()
        self.head_layers: tuple[int, ...] = ()
        self.routes: dict[int, int] = {}
        self._build(in_channels)

    def _conv(self, in_channels: int, item: tuple[int, int, int]) -> CNNBlock:
        """The CNNBlock of a config item (out_channels, kernel, stride), at the model's width."""
        out, k, s = item
        return CNNBlock(in_channels, scale_channels(out, self.width), kernel_size=k, stride=s,
                        padding=1 if k == 3 else 0)

    def _build(self, in_channels: int) -> None:
        """Append the layers of the configuration and name the parts (see the class docstring)."""
        layers = self.layers
        stages: dict[str, tuple[int, ...]] = {}  # backbone.stem, backbone.stage1...
        branches: dict[str, tuple[int, ...]] = {}  # neck.s32...
        stage_out: dict[int, tuple[int, int]] = {}  # stride -> (index, channels) of the backbone's output there
        c, stride, start = in_channels, 1, 0

        def stage_name() -> str:
            return "backbone.stem" if stride == 1 else f"backbone.stage{int(math.log2(stride))}"

        for item in BACKBONE_CONFIG:
            if item[0] == "B":
                layers.append(ResidualBlock(c, num_repeats=item[1]))
            else:
                if item[2] == 2:  # the downsampling conv starts a stage
                    stages[stage_name()] = tuple(range(start, len(layers)))
                    start, stride = len(layers), stride * 2
                layers.append(self._conv(c, item))
                c = layers[-1].conv.out_channels
            stage_out[stride] = (len(layers) - 1, c)
        stages[stage_name()] = tuple(range(start, len(layers)))
        backbone, start = tuple(range(len(layers))), len(layers)
        for item in NECK_CONFIG:
            if isinstance(item, tuple):
                layers.append(self._conv(c, item))
                c = layers[-1].conv.out_channels
            elif item == "S":
                layers += [ResidualBlock(c, use_residual=False, num_repeats=1), CNNBlock(c, c // 2, kernel_size=1)]
                c = c // 2
                branches[f"neck.s{stride}"] = tuple(range(start, len(layers)))
                layers.append(ScalePrediction(c, self.num_classes))
                self.strides += (stride,)
                self.head_layers += (len(layers) - 1,)
                start = len(layers)
            elif item == "U":
                layers.append(nn.Upsample(scale_factor=2))
                stride //= 2
                # concatenated with the backbone's output at the new stride (256+512=768,
                # 128+256=384 channels at full width)
                source, source_channels = stage_out[stride]
                self.routes[len(layers) - 1] = source
                c = c + source_channels
            else:  # pragma: no cover - the configuration is fixed
                raise ValueError(f"unknown config item {item!r}")
        neck = tuple(i for part in branches.values() for i in part)
        heads = {f"head{s}": (i,) for s, i in zip(self.strides, self.head_layers)}
        self._parts = {"backbone": backbone, **stages, "neck": neck, **branches, **heads}
        self._route_sources = frozenset(self.routes.values())

    def parts(self) -> dict[str, tuple[int, ...]]:
        """Part name -> the indices of its layers in `layers`, ascending (names in the class
        docstring). The module path of layer i is f"layers.{i}"."""
        return dict(self._parts)

    def output_path(self, part: str) -> str:
        """The module path ("layers.N") of the layer whose output is `part`'s output: its
        last layer. Raises ValueError for an unknown name, and for "neck", which has three
        outputs (neck.s32, neck.s16, neck.s8)."""
        if part == "neck" or part not in self._parts:
            raise ValueError(f"{part!r} is not a part with one output: use one of "
                             f"{', '.join(p for p in self._parts if p != 'neck')}")
        return f"layers.{self._parts[part][-1]}"

    def init_objectness_bias(self, prior: float) -> None:
        """Start every head at sigmoid(objectness) = prior (ScalePrediction.init_objectness_bias
        on each of the three)."""
        for i in self.head_layers:
            self.layers[i].init_objectness_bias(prior)

    def use_channels_last(self, enabled: bool = True, min_channels: int = CHANNELS_LAST_MIN) -> None:
        """Lay out the weights of convolutions with at least `min_channels` output channels
        in NHWC (channels_last), the others in NCHW; enabled=False puts every weight in NCHW.

        Activations follow the weights (a convolution with NHWC weights gives NHWC output,
        BatchNorm and LeakyReLU keep their input's layout), so only the first convolution's
        layout decides the input's (`first_layer_channels_last`). Why not all NHWC: on the
        CPU, PyTorch's NHWC BatchNorm vectorises over channels and is 3-5x slower than NCHW
        at 4-8 channels, which only reduced widths have (bench/train_throughput.py); at
        width >= 0.5 every layer has 16 or more channels and the whole model is NHWC.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nhwc = enabled and module.out_channels >= min_channels
                fmt = torch.channels_last if nhwc else torch.contiguous_format
                module.weight.data = module.weight.data.contiguous(memory_format=fmt)

    @property
    def first_layer_channels_last(self) -> bool:
        """Whether the first convolution's weight is NHWC (then the input should be too)."""
        return self.layers[0].conv.weight.is_contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (B, 3, S, S) float, S a multiple of 32 -> three (B, 3, S/stride, S/stride, 5+C) tensors."""
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input height and width must be multiples of 32, got {tuple(x.shape[-2:])}")
        heads, routes, sources = self.head_layers, self.routes, self._route_sources
        outputs: list[torch.Tensor] = []
        kept: dict[int, torch.Tensor] = {}  # backbone outputs the upsamples will concatenate
        for i, layer in enumerate(self.layers):
            if i in heads:  # a head reads x and leaves it to the next branch
                outputs.append(layer(x))
                continue
            x = layer(x)
            if i in sources:
                kept[i] = x
            elif i in routes:
                x = torch.cat([x, kept.pop(routes[i])], dim=1)
        return outputs


def count_parameters(model: nn.Module) -> int:
    """Total number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
