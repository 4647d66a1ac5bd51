"""Fine-tuning: pretrained weights loaded with a report (Darknet files, checkpoints,
safetensors exports), and the backbone frozen for the first epochs."""

import lightning as L
import pytest
import torch

from yolov3.checkpoint_plugin import SafeCheckpointIO
from yolov3.darknet import conv_specs, write_darknet
from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from yolov3.detector import Detector
from yolov3.lit import YoloLitModule
from yolov3.model import YOLOv3
from yolov3.pretrained import BackboneFreeze, PretrainedError, load_pretrained

WIDTH = 0.0625
OUTPUTS = ["layers.15.pred.1", "layers.22.pred.1", "layers.29.pred.1"]


def model(seed: int, num_classes: int = 20) -> YOLOv3:
    torch.manual_seed(seed)
    return YOLOv3(num_classes=num_classes, width=WIDTH)


def same(a: YOLOv3, b: YOLOv3, layer: str) -> bool:
    """Whether every tensor of a layer (a CNNBlock path) is equal in both models."""
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(layer + "."))


def names(m: YOLOv3, part: str | None = None) -> list[str]:
    layers = {f"layers.{i}" for i in m.parts()[part]} if part else None
    return [s.name for s in conv_specs(m) if layers is None or ".".join(s.name.split(".")[:2]) in layers]


def test_yolov3_weights_load_all_but_the_output_convolutions(tmp_path):
    coco, target = model(0, num_classes=80), model(1)
    path = tmp_path / "yolov3.weights"
    write_darknet(coco, path)
    fresh = model(1)
    report = load_pretrained(target, path)
    assert report.kind == "darknet" and report.reinitialised == OUTPUTS and report.skipped == OUTPUTS
    assert report.loaded == [n for n in names(target) if n not in OUTPUTS] and len(report.loaded) == 72
    assert all(same(target, coco, n) for n in report.loaded)
    assert all(same(target, fresh, n) for n in OUTPUTS)
    line = report.summary()
    assert "80 classes not used" in line and "loaded 72 (backbone 52, neck 17, head32 1, head16 1, head8 1)" in line
    assert f"re-initialised 3 ({', '.join(OUTPUTS)})" in line


def test_darknet53_conv_74_loads_the_backbone(tmp_path):
    source, target, fresh = model(0), model(1), model(1)
    path = tmp_path / "darknet53.conv.74"
    write_darknet(source, path, backbone_only=True)
    report = load_pretrained(target, path)
    assert report.loaded == names(target, "backbone") and len(report.loaded) == 52
    assert report.reinitialised == [n for n in names(target) if n not in report.loaded] and not report.skipped
    assert all(same(target, source, n) for n in report.loaded)
    assert all(same(target, fresh, n) for n in report.reinitialised)
    assert "backbone only" in report.summary() and "re-initialised 23 (neck 17, head32 2" in report.summary()


def test_a_checkpoint_of_another_class_count_reinitialises_the_heads(tiny_checkpoint):
    source = Detector.load(tiny_checkpoint).model  # 20 classes
    target, fresh = model(1, num_classes=3), model(1, num_classes=3)
    report = load_pretrained(target, tiny_checkpoint)
    assert report.kind == "checkpoint" and report.reinitialised == OUTPUTS and report.skipped == OUTPUTS
    assert len(report.loaded) == 72 and all(same(target, source, n) for n in report.loaded)
    assert all(same(target, fresh, n) for n in OUTPUTS)
    assert "20 classes" in report.summary()


def test_a_safetensors_export_of_the_same_classes_loads_everything(tiny_checkpoint, tmp_path):
    detector = Detector.load(tiny_checkpoint)
    path = tmp_path / "tiny.safetensors"
    detector.save_safetensors(path)
    target = model(1)
    report = load_pretrained(target, path)
    assert report.kind == "safetensors" and len(report.loaded) == 75 and not report.reinitialised
    assert not report.skipped
    assert all(same(target, detector.model, n) for n in report.loaded)


def test_another_width_is_an_error_naming_file_and_layer(tiny_checkpoint):
    wider = YOLOv3(width=0.5)  # 16 channels at layer 0 (0.0625 and 0.125 both have the minimum, 8)
    with pytest.raises(PretrainedError, match=rf"{tiny_checkpoint}: layer layers\.0: layers\.0\.conv\.weight has shape "
                                         r"\(8, 3, 3, 3\) in the file and \(16, 3, 3, 3\) .*width is 0.0625"):
        load_pretrained(wider, tiny_checkpoint)


def test_an_onnx_export_and_a_missing_file_are_refused(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07" + bytes(30))
    with pytest.raises(PretrainedError, match="ONNX export holds no trainable weights"):
        load_pretrained(model(0), onnx)
    with pytest.raises(PretrainedError, match="nothing.weights: pretrained weights file not found"):
        load_pretrained(model(0), tmp_path / "nothing.weights")


def test_the_module_reads_no_weights_when_built():
    # load_from_checkpoint, validate, test and the Detector build the module too
    YoloLitModule(width=WIDTH, pretrained="/no/such/file.weights", freeze_backbone_epochs=1)
    with pytest.raises(ValueError, match="freeze_backbone_epochs"):
        YoloLitModule(width=WIDTH, freeze_backbone_epochs=-1)


def _adam_steps(m: YOLOv3, freeze: BackboneFreeze, epoch: int, steps: int = 2) -> None:
    """A few training steps as the LightningModule takes them: every parameter in Adam with weight decay."""
    optimizer = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=0.1)
    m.train()
    for _ in range(steps):
        freeze.before_batch(epoch)
        sum(o.square().mean() for o in m(torch.rand(2, 3, 32, 32))).backward()
        freeze.before_step()
        optimizer.step()
        optimizer.zero_grad()


@pytest.mark.parametrize("distributed", [False, True])
def test_a_frozen_backbone_moves_neither_weights_nor_statistics(monkeypatch, distributed):
    if distributed:  # DDP: requires_grad stays True and the gradients are dropped before the step
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    m = model(0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    freeze = BackboneFreeze(m, epochs=1)
    _adam_steps(m, freeze, epoch=0)
    backbone = tuple(f"layers.{i}." for i in m.parts()["backbone"])
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, before[k])}
    assert not {k for k in changed if k.startswith(backbone)}  # weights (decay too) and BatchNorm buffers
    assert {"layers.15.pred.1.conv.weight", "layers.11.bn.running_mean"} <= changed
    assert all(p.requires_grad == distributed for k, p in m.named_parameters() if k.startswith(backbone))
    _adam_steps(m, freeze, epoch=1)  # thawed
    assert all(p.requires_grad for k, p in m.named_parameters() if k.startswith(backbone))
    assert not torch.equal(m.layers[0].conv.weight, before["layers.0.conv.weight"])
    assert not torch.equal(m.layers[0].bn.running_mean, before["layers.0.bn.running_mean"])


class Snapshots(L.Callback):
    """The model's state at the start and at the end of each training epoch."""

    def __init__(self) -> None:
        self.start: list[dict] = []
        self.end: list[dict] = []

    @staticmethod
    def _state(module) -> dict:
        return {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_train_epoch_start(self, trainer, module) -> None:
        self.start.append(self._state(module))

    def on_train_epoch_end(self, trainer, module) -> None:
        self.end.append(self._state(module))


def _fit(synth_root, tmp_path, ckpt_path=None, **module_args):
    dm = YoloDataModule(root=str(synth_root), image_size=64, batch_size=4, num_workers=0, val_fraction=0.25,
                        augment=AugmentConfig(mosaic_prob=0.0))
    module = YoloLitModule(width=WIDTH, evaluation={"map_every_n_epochs": 0}, **module_args)
    snaps = Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, plugins=[SafeCheckpointIO(background=False)],
                        default_root_dir=tmp_path, callbacks=[snaps])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return trainer, module, snaps


@pytest.mark.slow
def test_fit_starts_from_the_backbone_file_frozen_then_thawed(synth_root, tmp_path, caplog):
    source = model(5, num_classes=80)
    path = tmp_path / "darknet53.conv.74"
    write_darknet(source, path, backbone_only=True)
    with caplog.at_level("INFO", logger="yolov3"):
        trainer, module, snaps = _fit(synth_root, tmp_path, pretrained=str(path), freeze_backbone_epochs=1)
    assert len(module.pretrained_report.loaded) == 52
    assert "pretrained weights" in caplog.text and "loaded 52 (backbone 52)" in caplog.text
    backbone = tuple(f"layers.{i}." for i in module.model.parts()["backbone"])
    first, after = snaps.start[0], snaps.end[0]
    assert all(torch.equal(first[k], v) for k, v in source.state_dict().items() if k.startswith(backbone))
    # epoch 0: the backbone (weights, BatchNorm statistics) fixed, the rest trained
    assert all(torch.equal(first[k], after[k]) for k in first if k.startswith(backbone))
    assert not torch.equal(first["layers.15.pred.1.conv.weight"], after["layers.15.pred.1.conv.weight"])
    # epoch 1: the backbone trains too
    assert not torch.equal(snaps.start[1]["layers.0.conv.weight"], snaps.end[1]["layers.0.conv.weight"])
    assert not torch.equal(snaps.start[1]["layers.0.bn.running_mean"], snaps.end[1]["layers.0.bn.running_mean"])

    # a resumed fit takes its weights from the checkpoint and does not read the file again
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)
    path.unlink()
    resumed_trainer, resumed, _ = _fit(synth_root, tmp_path / "resume", ckpt_path=ckpt, pretrained=str(path))
    assert resumed.pretrained_report is None


@pytest.mark.slow
def test_fit_cli_refuses_a_truncated_file_in_one_line(synth_root, tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    from yolov3.commands.cli import main

    path = tmp_path / "darknet53.conv.74"
    write_darknet(YOLOv3(width=0.125), path, backbone_only=True)  # demo.yaml's width
    path.write_bytes(path.read_bytes()[:-100])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["yolov3"])
    config = str(Path(__file__).parent.parent / "configs" / "demo.yaml")
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", config, "--data.root", str(synth_root), "--data.val_fraction", "0.25",
              "--data.cache_images", "false", "--trainer.max_epochs", "1", "--model.pretrained", str(path)])
    message = str(info.value.code)
    assert message.startswith(f"yolov3 fit: {path}: truncated: the file ends inside layers.10.layers.3.1 ")
    assert "\n" not in message
