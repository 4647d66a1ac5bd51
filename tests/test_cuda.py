"""The CUDA-only code paths: float16 autocast with a GradScaler, pinned host memory and
non-blocking copies to the GPU. Skipped, saying so, where no CUDA device is present (the
project's own machines and CI are CPU only; the bf16 fallback on the CPU is tested in
test_configs.py)."""

import lightning as L
import pytest
import torch

from yolov3.commands.lightning_cli import resolve_precision
from yolov3.data.augment import AugmentConfig
from yolov3.data.datamodule import YoloDataModule
from yolov3.lit import YoloLitModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (CPU-only machine)")


def _dm(root, pin=True):
    dm = YoloDataModule(root=str(root), image_size=64, train_sizes=[64, 96], batch_size=4, num_workers=0,
                        val_fraction=0.25, seed=3, augment=AugmentConfig(mosaic_prob=0.75), pin_memory=pin)
    dm.setup("fit")
    return dm


def test_16_mixed_stays_float16_on_cuda():
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"
    assert resolve_precision("16-mixed", "cuda") == "16-mixed"


def test_fp16_mixed_training_autocasts_and_scales_gradients(synth_root):
    torch.manual_seed(0)
    module = YoloLitModule(width=0.0625, loss={"objectness": "bce_iou", "objectness_prior": 0.01})
    before = [p.detach().clone() for p in module.parameters()]
    head_dtypes = []
    last_conv = [m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    last_conv.register_forward_hook(lambda mod, inp, out: head_dtypes.append(out.dtype))
    trainer = L.Trainer(accelerator="gpu", devices=1, precision="16-mixed", max_steps=4, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, enable_model_summary=False)
    trainer.fit(module, _dm(synth_root))
    scaler = trainer.precision_plugin.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert torch.isfinite(torch.tensor(scaler.get_scale())) and scaler.get_scale() > 0
    assert torch.float16 in head_dtypes  # the convolutions ran under float16 autocast
    changed = sum(not torch.equal(b, p.detach().cpu()) for b, p in zip(before, module.parameters()))
    assert changed > len(before) // 2  # steps were taken (a step or two may be skipped by the scaler)
    assert trainer.callback_metrics["train/loss"].isfinite()


def test_training_batches_are_pinned_and_copied_without_blocking(synth_root, monkeypatch):
    batch = next(iter(_dm(synth_root).train_dataloader()))
    assert batch["images"].is_pinned() and batch["targets"].is_pinned()
    assert not next(iter(_dm(synth_root, pin=False).train_dataloader()))["images"].is_pinned()

    module = YoloLitModule(width=0.0625)
    copies, to = [], torch.Tensor.to

    def spy(self, *args, **kwargs):
        copies.append(kwargs.get("non_blocking", False))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    moved = module.transfer_batch_to_device(batch, torch.device("cuda", 0), 0)
    torch.cuda.synchronize()
    monkeypatch.undo()
    assert copies and all(copies)  # every tensor of the batch went with non_blocking=True
    assert moved["images"].is_cuda and moved["targets"].is_cuda
    assert torch.equal(moved["images"].cpu(), batch["images"]) and torch.equal(moved["targets"].cpu(), batch["targets"])
