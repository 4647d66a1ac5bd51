"""Helper for test_ddp.py: validate with N CPU processes (gloo) and write the metrics from
rank 0. Run as a script: Lightning's ddp launcher re-runs it.

The accuracies come from a fixed random model. The mAP comes from an "oracle" whose head
outputs are made from each image's own targets plus noise seeded by the image's dataset
index, so detections are good but imperfect, and identical however images are sharded.
"""

import json
import sys

import lightning as L
import torch

from yolov3.data.datamodule import YoloDataModule
from yolov3.lit import YoloLitModule


class OracleDetections(YoloLitModule):
    """The evaluation path (decode, NMS, letterbox undo, DetectionMAP, gather) fed with head
    outputs that encode the targets: real detections without training a model."""

    def detect(self, outputs, batch):
        targets = self._last_targets
        fake = []
        for t, anchor in zip(targets, self.anchors):
            b, a, gh, gw, _ = t.shape
            logits = torch.zeros(b, a, gh, gw, 5 + self.hparams.num_classes)
            pos = t[..., 0] == 1
            logits[..., 0] = torch.where(pos, 4.0, -6.0)
            logits[..., 1:3] = torch.logit(t[..., 1:3].clamp(0.02, 0.98))
            anchor_cells = anchor * torch.tensor([gw, gh])
            logits[..., 3:5] = torch.log(t[..., 3:5].clamp(min=1e-3) / anchor_cells.view(1, a, 1, 1, 2))
            logits[..., 5:] = 6.0 * torch.nn.functional.one_hot(t[..., 5].long(), self.hparams.num_classes)
            # noise per channel (objectness, x/y, w/h, classes), fixed by the image, not the shard
            scale = torch.tensor([1.5, 0.4, 0.4, 0.2, 0.2] + [1.5] * self.hparams.num_classes)
            for i, index in enumerate(batch["indices"].tolist()):
                g = torch.Generator().manual_seed(1000 * index + gh)
                logits[i] += scale * torch.randn(logits[i].shape, generator=g)
            fake.append(logits)
        return super().detect(fake, batch)

    def _step(self, batch):
        outputs, targets, total, parts = super()._step(batch)
        self._last_targets = targets
        return outputs, targets, total, parts


def main(root: str, devices: int, out: str) -> None:
    L.seed_everything(0)
    model = OracleDetections(width=0.0625, evaluation={"accuracy_threshold": 0.5})
    dm = YoloDataModule(root=root, image_size=64, batch_size=1, num_workers=0, val_fraction=0.3)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    metrics = trainer.validate(model, datamodule=dm, verbose=False)[0]
    if trainer.global_rank == 0:
        with open(out, "w") as f:
            json.dump({**{k: float(v) for k, v in metrics.items()}, "val_images": len(dm.val_set)}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
