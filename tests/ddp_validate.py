"""Helper for test_ddp.py: validate a fixed random model with N CPU processes (gloo) and
write the metrics from rank 0. Run as a script: Lightning's ddp launcher re-runs it."""

import json
import sys

import lightning as L
import torch

from yolov3.data.datamodule import YoloDataModule
from yolov3.lit import YoloLitModule


def main(root: str, devices: int, out: str) -> None:
    L.seed_everything(0)
    model = YoloLitModule(width=0.0625, conf_threshold=0.5)
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
