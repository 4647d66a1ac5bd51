import pytest
import torch
from torch import nn

from yolov3.constants import STRIDES
from yolov3.model import ResidualBlock, ScalePrediction, YOLOv3, count_parameters, scale_channels


def test_exact_parameter_count_full_width():
    assert count_parameters(YOLOv3(num_classes=20)) == 61_626_499


def test_frozen_unused_batchnorms_are_the_only_non_trainable_params():
    m = YOLOv3()
    frozen = sum(p.numel() for p in m.parameters() if not p.requires_grad)
    assert frozen == 3 * 2 * 75  # the course's unused BN in each head's last conv


def test_parts_index_the_courses_layer_list():
    """The named parts are indices into the course's `layers` (whose state_dict keys stay
    layers.N...): Darknet-53 is layers 0-10, the heads 15, 22 and 29, and the upsamples 17
    and 24 concatenate the outputs of stages 4 and 3 (the two 8-block stages)."""
    m = YOLOv3(num_classes=3, width=0.125)
    parts = m.parts()
    assert len(m.layers) == 30 and parts["backbone"] == tuple(range(11)) and parts["backbone.stem"] == (0,)
    assert [parts[f"backbone.stage{k}"] for k in range(1, 6)] == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]
    assert m.strides == STRIDES and m.head_layers == (15, 22, 29)
    assert [parts[f"head{s}"] for s in STRIDES] == [(15,), (22,), (29,)]
    assert all(isinstance(m.layers[i], ScalePrediction) for i in m.head_layers)
    assert m.routes == {17: 8, 24: 6}
    assert all(m.layers[i].num_repeats == 8 for i in m.routes.values())
    assert all(isinstance(m.layers[i], nn.Upsample) for i in m.routes)
    # every layer is in exactly one of the finest parts; the neck is its three branches
    finest = [n for n in parts if n not in ("backbone", "neck")]
    assert sorted(i for n in finest for i in parts[n]) == list(range(30))
    assert parts["neck"] == parts["neck.s32"] + parts["neck.s16"] + parts["neck.s8"]
    assert [m.output_path(f"neck.s{s}") for s in STRIDES] == ["layers.14", "layers.21", "layers.28"]
    assert m.output_path("backbone") == m.output_path("backbone.stage5") == "layers.10"
    with pytest.raises(ValueError, match="neck.s32"):
        m.output_path("neck")
    with pytest.raises(ValueError, match="backbone.stage3"):
        m.output_path("torso")
    keys = list(YOLOv3().state_dict())
    assert len(keys) == 453 and keys[0] == "layers.0.conv.weight" and "layers.6.layers.7.1.conv.weight" in keys
    assert keys[-1] == "layers.29.pred.1.bn.num_batches_tracked"


def test_parts_outputs_are_at_their_strides():
    """Each backbone stage k outputs stride 2^k, each neck.s<s> stride s with the channels
    its head takes (a forward pass with hooks on the parts' last layers)."""
    m = YOLOv3(num_classes=3, width=0.125).eval()
    names = [f"backbone.stage{k}" for k in range(1, 6)] + [f"neck.s{s}" for s in STRIDES]
    shapes = {}
    handles = [m.get_submodule(m.output_path(n)).register_forward_hook(
        lambda _m, _i, out, n=n: shapes.__setitem__(n, tuple(out.shape))) for n in names]
    with torch.no_grad():
        m(torch.rand(1, 3, 64, 128))
    for h in handles:
        h.remove()
    for k in range(1, 6):
        assert shapes[f"backbone.stage{k}"][2:] == (64 >> k, 128 >> k)
        assert isinstance(m.get_submodule(m.output_path(f"backbone.stage{k}")), ResidualBlock)
    for s, head in zip(STRIDES, m.head_layers):
        assert shapes[f"neck.s{s}"][1:] == (m.layers[head].pred[0].conv.in_channels, 64 // s, 128 // s)


@pytest.mark.parametrize("size", [320, 416, 608])
def test_head_shapes(size):
    m = YOLOv3(num_classes=20, width=0.125).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, size, size))
    assert [tuple(o.shape) for o in out] == [(2, 3, size // s, size // s, 25) for s in (32, 16, 8)]


def test_full_width_head_shapes_at_416():
    m = YOLOv3().eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 416, 416))
    assert [tuple(o.shape) for o in out] == [(1, 3, 13, 13, 25), (1, 3, 26, 26, 25), (1, 3, 52, 52, 25)]


def test_other_class_counts_and_rectangular_input():
    m = YOLOv3(num_classes=3, width=0.125).eval()
    with torch.no_grad():
        out = m(torch.rand(1, 3, 256, 320))
    assert [tuple(o.shape) for o in out] == [(1, 3, 8, 10, 8), (1, 3, 16, 20, 8), (1, 3, 32, 40, 8)]


def test_rejects_size_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        YOLOv3(width=0.125)(torch.rand(1, 3, 100, 100))


@pytest.mark.parametrize("width", [0.1, 0.125, 0.3, 0.5])
def test_width_scales_every_layer(width):
    """Layer by layer against the full model: each convolution's output channels are the full
    model's at this width (scale_channels: a multiple of 8, at least 8) or, for the layers
    that halve their input (residual bottlenecks, the heads' 1x1), half of their scaled input;
    the head predictions (3 anchors x (5 + 20)) are unchanged, and so are kernels and strides.
    The forward pass of test_head_shapes checks that the inputs match. Parameters then shrink
    about as width^2."""
    def convs(model):
        return [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    full, narrow = convs(YOLOv3(width=1.0)), convs(YOLOv3(width=width))
    assert len(full) == len(narrow) == 75
    head = 3 * (5 + 20)
    for f, n in zip(full, narrow):
        want = {head} if f.out_channels == head else {scale_channels(f.out_channels, width),
                                                      scale_channels(2 * f.out_channels, width) // 2}
        assert n.out_channels in want and (n.kernel_size, n.stride) == (f.kernel_size, f.stride)
        assert f.out_channels == head or n.out_channels < f.out_channels
    ratio = count_parameters(YOLOv3(width=width)) / 61_626_499
    assert 0.8 * width**2 < ratio < 1.5 * width**2, ratio


def test_gradients_reach_every_trainable_parameter():
    m = YOLOv3(width=0.125)
    out = m(torch.rand(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def _layouts(model: YOLOv3) -> dict[str, bool]:
    """Conv name -> whether its weight is NHWC (1x1 kernels are both layouts: left out)."""
    return {n: m.weight.is_contiguous(memory_format=torch.channels_last) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)}


@pytest.mark.parametrize("width", [0.125, 0.25, 1.0])
def test_channels_last_keeps_only_narrow_convs_nchw(width):
    m = YOLOv3(width=width)
    m.use_channels_last()
    convs = {n: c for n, c in m.named_modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size != (1, 1)}
    layouts = _layouts(m)
    assert {n for n, nhwc in layouts.items() if not nhwc} == {n for n, c in convs.items() if c.out_channels < 16}
    assert m.first_layer_channels_last == (convs["layers.0.conv"].out_channels >= 16)
    m.use_channels_last(False)
    assert not any(_layouts(m).values()) and not m.first_layer_channels_last


@pytest.mark.parametrize("width", [0.125, 1.0])
def test_channels_last_computes_the_same_function(width):
    torch.manual_seed(0)
    ref = YOLOv3(num_classes=3, width=width)
    mixed = YOLOv3(num_classes=3, width=width)
    mixed.load_state_dict(ref.state_dict())
    mixed.use_channels_last()
    # eval mode: BatchNorm over a batch of 2 small images is ill-conditioned enough that two
    # kernel orders alone move train-mode gradients by about 1 %
    ref.eval(), mixed.eval()
    x = torch.rand(2, 3, 64, 96)
    ref_out = ref(x)
    out = mixed(x.contiguous(memory_format=torch.channels_last) if mixed.first_layer_channels_last else x)
    for a, b in zip(ref_out, out):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
    # gradients too: the layout changes only how the kernels walk memory
    sum(o.sum() for o in ref_out).backward()
    sum(o.sum() for o in out).backward()
    for (name, p), q in zip(ref.named_parameters(), mixed.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-3, msg=name)
