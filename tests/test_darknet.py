"""Darknet .weights files: the model's convolution order against yolov3.cfg, the files' sizes,
writing and reading back, and the files refused (truncated, trailing bytes, another width)."""

import struct

import numpy as np
import pytest
import torch

from yolov3.darknet import (DarknetError, DarknetHeader, backbone_specs, conv_specs, file_size, is_darknet,
                            read_darknet, read_header, write_darknet)
from yolov3.model import CNNBlock, YOLOv3


def yolov3_cfg(num_classes: int) -> list[tuple]:
    """Darknet's yolov3.cfg, section by section (107 layers): ("conv", filters, size, stride),
    ("output", filters) (the linear 1x1 convolution with a bias), ("shortcut", from),
    ("route", layers), ("upsample",), ("yolo",). Route and shortcut offsets are the cfg's."""
    layers: list[tuple] = [("conv", 32, 3, 1)]
    for channels, blocks in [(64, 1), (128, 2), (256, 8), (512, 8), (1024, 4)]:
        layers.append(("conv", channels, 3, 2))
        for _ in range(blocks):
            layers += [("conv", channels // 2, 1, 1), ("conv", channels, 3, 1), ("shortcut", -3)]
    for channels, route in [(512, None), (256, 61), (128, 36)]:
        if route is not None:
            layers += [("route", (-4,)), ("conv", channels, 1, 1), ("upsample",), ("route", (-1, route))]
        layers += [("conv", channels, 1, 1), ("conv", 2 * channels, 3, 1)] * 2 + [("conv", channels, 1, 1)]
        layers += [("conv", 2 * channels, 3, 1), ("output", 3 * (5 + num_classes)), ("yolo",)]
    return layers


def reference_convs(cfg: list[tuple]) -> list[tuple[int, int, int, int, bool]]:
    """(in, out, kernel, stride, batch_norm) of each convolution, by Darknet's channel rules:
    a route concatenates its layers' outputs, a shortcut, an upsample and yolo keep theirs."""
    out: list[int] = []
    convs = []
    c = 3
    for i, layer in enumerate(cfg):
        if layer[0] == "conv":
            convs.append((c, layer[1], layer[2], layer[3], True))
            c = layer[1]
        elif layer[0] == "output":
            convs.append((c, layer[1], 1, 1, False))
            c = layer[1]
        elif layer[0] == "route":
            c = sum(out[j if j >= 0 else i + j] for j in layer[1])
        out.append(c)
    return convs


def reference_forward(cfg: list[tuple], blocks: list[CNNBlock], x: torch.Tensor) -> list[torch.Tensor]:
    """The cfg's network run layer by layer as Darknet runs it, its i-th convolution being
    blocks[i]: returns the three yolo layers' inputs."""
    blocks = iter(blocks)
    out: list[torch.Tensor] = []
    heads = []
    for i, layer in enumerate(cfg):
        kind = layer[0]
        if kind in ("conv", "output"):
            x = next(blocks)(x)
        elif kind == "shortcut":
            x = x + out[i + layer[1]]
        elif kind == "route":
            x = torch.cat([out[j if j >= 0 else i + j] for j in layer[1]], dim=1)
        elif kind == "upsample":
            x = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        elif kind == "yolo":
            heads.append(x)
        out.append(x)
    assert next(blocks, None) is None
    return heads


def blocks_of(model: YOLOv3) -> list[CNNBlock]:
    return [m for m in model.modules() if isinstance(m, CNNBlock)]


def test_the_cfg_transcription_has_darknets_layer_numbers():
    cfg = yolov3_cfg(80)
    assert len(cfg) == 107
    assert cfg[61] == cfg[36] == ("shortcut", -3) and cfg[74] == ("shortcut", -3)
    assert [i for i, layer in enumerate(cfg) if layer[0] == "yolo"] == [82, 94, 106]
    assert sum(layer[0] == "conv" for layer in cfg[:75]) == 52  # darknet53.conv.74: layers 0-74


@pytest.mark.parametrize("num_classes", [80, 20])
def test_module_order_is_yolov3_cfg_order(num_classes):
    with torch.device("meta"):  # shapes only, nothing allocated
        model = YOLOv3(num_classes)
    mine = [(b.conv.in_channels, b.conv.out_channels, b.conv.kernel_size[0], b.conv.stride[0], b.use_bn_act)
            for b in blocks_of(model)]
    assert mine == reference_convs(yolov3_cfg(num_classes))
    assert [(s.in_channels, s.out_channels, s.kernel, s.batch_norm) for s in conv_specs(model)] == \
        [(i, o, k, bn) for i, o, k, _, bn in mine]


def test_the_model_computes_the_cfg_network():
    """Order of the convolutions and of the routes' concatenations: the model's forward is
    the cfg's network with the model's convolutions taken in module order."""
    torch.manual_seed(0)
    model = YOLOv3(num_classes=3, width=0.0625).eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        ours = model(x)
        theirs = reference_forward(yolov3_cfg(3), blocks_of(model), x)
    for head, raw in zip(ours, theirs, strict=True):
        b, _, h, w = raw.shape
        torch.testing.assert_close(head, raw.reshape(b, 3, 8, h, w).permute(0, 1, 3, 4, 2), rtol=0, atol=1e-6)


def test_file_sizes_follow_from_the_layer_shapes():
    with torch.device("meta"):
        coco, voc = YOLOv3(80), YOLOv3(20)
    values = {name: sum(s.num_values for s in specs) for name, specs in
              [("coco", conv_specs(coco)), ("voc", conv_specs(voc)), ("backbone", backbone_specs(coco))]}
    assert values == {"coco": 62_001_757, "backbone": 40_620_640,
                      # the output convolutions have (1024 + 512 + 256 inputs + a bias) x 3 x 60 fewer values
                      "voc": 62_001_757 - 1795 * 3 * 60}
    assert file_size(conv_specs(coco)) == 248_007_048  # yolov3.weights
    assert file_size(backbone_specs(coco)) == 162_482_580  # darknet53.conv.74
    assert len(backbone_specs(coco)) == 52 and len(conv_specs(coco)) == 75
    assert conv_specs(voc, num_classes=80) == conv_specs(coco)


def small_model(seed: int, num_classes: int = 3, width: float = 0.0625) -> YOLOv3:
    """A small model whose BatchNorm statistics are not the defaults, so reading them matters."""
    torch.manual_seed(seed)
    model = YOLOv3(num_classes=num_classes, width=width)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return model.eval()


def test_a_written_file_reads_back_into_a_fresh_model_with_identical_outputs(tmp_path):
    source, fresh = small_model(0), small_model(1)
    path = tmp_path / "small.weights"
    written = write_darknet(source, path, header=DarknetHeader(0, 2, 0, seen=1234))
    assert path.stat().st_size == written == file_size(conv_specs(source))
    weights = read_darknet(path, fresh)
    assert weights.header == DarknetHeader(0, 2, 0, 1234) and weights.num_classes == 3
    fresh.load_state_dict(weights.state, strict=False)
    for key, value in weights.state.items():
        assert torch.equal(value, source.state_dict()[key]), key
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(source(x), fresh(x), strict=True):
            assert torch.equal(a, b)


def test_output_convolutions_are_stored_in_darknets_channel_order(tmp_path):
    """Darknet: per anchor (tx, ty, tw, th, objectness, classes); the course: objectness first."""
    model = small_model(0)
    path = tmp_path / "small.weights"
    write_darknet(model, path)
    last = conv_specs(model)[-1]
    data = np.fromfile(path, dtype="<f4", offset=20)
    start = sum(s.num_values for s in conv_specs(model)[:-1])
    stored_bias = torch.from_numpy(data[start:start + last.out_channels].copy()).view(3, 8)
    bias = model.state_dict()[f"{last.name}.conv.bias"].view(3, 8)
    assert torch.equal(stored_bias[:, 4], bias[:, 0])  # objectness
    assert torch.equal(stored_bias[:, :4], bias[:, 1:5])  # box
    assert torch.equal(stored_bias[:, 5:], bias[:, 5:])  # classes


def test_a_backbone_file_holds_the_backbone_only(tmp_path):
    model = small_model(0)
    path = tmp_path / "darknet53.conv.74"
    assert write_darknet(model, path, backbone_only=True) == file_size(backbone_specs(model)) == path.stat().st_size
    weights = read_darknet(path, small_model(1, num_classes=20))
    assert weights.num_classes is None and len(weights.convs) == 52
    backbone = {f"layers.{i}" for i in model.parts()["backbone"]}
    assert {".".join(k.split(".")[:2]) for k in weights.state} == backbone


def test_the_class_count_of_a_whole_network_file_is_read_from_its_size(tmp_path):
    path = tmp_path / "other.weights"
    write_darknet(small_model(0, num_classes=7), path)
    weights = read_darknet(path, small_model(1, num_classes=3))
    assert weights.num_classes == 7
    assert weights.state["layers.15.pred.1.conv.weight"].shape[0] == 3 * 12


@pytest.mark.parametrize("major, minor, header_size", [(0, 1, 16), (0, 2, 20), (1, 0, 20)])
def test_seen_is_int32_before_version_0_2_and_int64_from_it(tmp_path, major, minor, header_size):
    model = small_model(0)
    path = tmp_path / "v.weights"
    seen = 70_000 if header_size == 16 else 5 * 2**32 + 7  # does not fit an int32
    write_darknet(model, path, header=DarknetHeader(major, minor, 3, seen))
    assert path.stat().st_size == file_size(conv_specs(model), DarknetHeader(major, minor)) == \
        header_size + 4 * sum(s.num_values for s in conv_specs(model))
    assert read_header(path) == DarknetHeader(major, minor, 3, seen)
    assert read_darknet(path, small_model(1)).header.seen == seen


@pytest.fixture
def written(tmp_path):
    model = small_model(0)
    path = tmp_path / "yolov3.weights"
    write_darknet(model, path)
    return model, path


def test_a_file_cut_in_its_last_layer_is_refused_naming_it(written):
    model, path = written
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DarknetError, match=rf"{path}: truncated: .* inside layers\.29\.pred\.1 .*75 of 75.* 10 bytes short"):
        read_darknet(path, model)


def test_a_file_cut_in_the_backbone_is_refused_naming_the_layer(written):
    model, path = written
    specs = conv_specs(model)
    end = 20 + 4 * (sum(s.num_values for s in specs[:30]) + 5)  # 5 values into the 31st convolution
    path.write_bytes(path.read_bytes()[:end])
    with pytest.raises(DarknetError, match=rf"truncated: the file ends inside {specs[30].name} \(convolution 31 of 75\)"):
        read_darknet(path, model)


@pytest.mark.parametrize("extra", [4, 6])
def test_trailing_bytes_are_refused(written, extra):
    model, path = written
    path.write_bytes(path.read_bytes() + bytes(extra))
    with pytest.raises(DarknetError, match=rf"{path}: {extra} bytes after the last convolution, layers\.29\.pred\.1"):
        read_darknet(path, model)


def test_a_file_for_another_width_is_refused_with_the_sizes_expected(written):
    _, path = written
    wider = small_model(1, width=0.125)
    with pytest.raises(DarknetError, match=rf"{path}: .*layers\..*for this model \(width 0.125\) a backbone-only file has"):
        read_darknet(path, wider)


def test_headers_that_are_not_darknets_are_refused(tmp_path):
    path = tmp_path / "x.weights"
    path.write_bytes(struct.pack("<3i", 0, 2, 0))
    with pytest.raises(DarknetError, match="too short"):
        read_header(path)
    path.write_bytes(struct.pack("<3iq", 1000, 2, 0, 0))
    with pytest.raises(DarknetError, match="not a Darknet"):
        read_header(path)


def test_darknet_files_are_recognised_by_name_or_header(written, tmp_path):
    _, path = written
    renamed = tmp_path / "backbone.bin"
    renamed.write_bytes(path.read_bytes())
    (tmp_path / "x.ckpt").write_bytes(b"PK\x03\x04" + bytes(20))
    assert is_darknet(path) and is_darknet(renamed)  # by its name; by its header
    assert not is_darknet(tmp_path / "x.ckpt")
