"""The LightningModule: wires model, targets, loss, metrics and the optimiser together.

It holds no math of its own: boxes, targets, loss and metrics live in their modules.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
import torch
from torchmetrics import MeanMetric

from yolov3.anchors import anchor_set_name, as_anchors, describe_anchors
from yolov3.checkpoint_io import read_hyperparameters
from yolov3.constants import DATA_KEY, DEFAULT_ANCHORS
from yolov3.ema import ModelEMA
from yolov3.hparams import (GROUPS, LEGACY_NAMES, EvalConfig, LossConfig, OptimConfig, as_config, as_plain,
                            grouped_hparams)
from yolov3.loss import LOSS_TERMS, YoloLoss
from yolov3.metrics import CourseAccuracy, DetectionMAP
from yolov3.model import YOLOv3
from yolov3.nonfinite import NonFiniteGuard
from yolov3.letterbox import stack_regions
from yolov3.postprocess import postprocess
from yolov3.pretrained import BackboneFreeze, load_pretrained
from yolov3.schedule import build_schedule, refit_schedule
from yolov3.targets import build_targets

log = logging.getLogger("yolov3")

class YoloLitModule(L.LightningModule):
    """YOLOv3 trained with the course's recipe.

    Args:
        num_classes: number of classes (20 for VOC).
        width: channel multiplier of the model (1.0 = the course's 61.6 M parameters).
        anchors: (3 scales, 3 anchors, (w, h)) as fractions of the image, or a set's name
            ("coco": COCO / 416, the default; "course": the course's rounded copy, to
            fine-tune a course model: yolov3.anchors.as_anchors). Checkpoints keep them.
        optim: Adam and its OneCycleLR schedule, and the EMA of the weights
            (yolov3.hparams.OptimConfig). The schedule is yolov3.schedule.OneCycle (torch's
            OneCycleLR, safe at every run length); a resumed fit's is rebuilt for its own
            length and settings at the start of training (on_train_start). With optim.ema,
            validation, test and predict run the EMA (`ema.module`), training runs `model`;
            checkpoints hold the EMA as "model.*" (what Detector and export read) and the
            training weights under "ema" (yolov3.ema.ModelEMA.write_checkpoint), so a
            resumed fit continues exactly.
        loss: the loss terms' weights and forms (yolov3.hparams.LossConfig).
        evaluation: the accuracies' threshold and the mAP's detection settings
            (yolov3.hparams.EvalConfig).
            Each group is a dataclass or a dict of its fields (None: the defaults); the
            hyper-parameters hold them as dicts, so checkpoints load with weights_only=True.
        channels_last: run convolutions in NHWC layout, except those with fewer than 16
            output channels, which only reduced widths have (YOLOv3.use_channels_last;
            measured on our 2-core CPU by bench/train_throughput.py, docs/benchmarks.md;
            NHWC is also the layout tensor cores prefer under mixed precision).
        max_nonfinite_steps: a training step whose loss or gradients are not finite changes
            no weight, no BatchNorm statistic and no optimiser state (it still counts in the
            learning-rate schedule); it is logged with its images and counted in
            train/nonfinite_steps. This many such steps in a row stop training with
            TrainingDiverged. Under fp16 mixed precision, non-finite gradients with a finite
            loss are the GradScaler's overflow skips and are left to it (not counted).
        pretrained: weights a fresh fit starts from (yolov3.pretrained.load_pretrained): a
            Darknet darknet53.conv.74 or yolov3.weights, or this project's .ckpt or
            .safetensors (output convolutions re-initialised for another class count). Read
            at the start of fit only, not when resuming (--ckpt_path) or loading a checkpoint.
        freeze_backbone_epochs: keep the backbone (Darknet-53) fixed for this many epochs:
            no gradient, BatchNorm statistics frozen (yolov3.pretrained.BackboneFreeze).

    Raises ValueError for anchors not of shape (3, 3, 2) or not positive, an unknown objectness loss or
    max_nonfinite_steps < 1 or freeze_backbone_epochs < 0; TypeError for a group of the wrong type or with unknown fields.
    """

    def __init__(
        self,
        num_classes: int = 20,
        width: float = 1.0,
        anchors: list[list[list[float]]] | str | None = None,
        optim: OptimConfig = OptimConfig(),
        loss: LossConfig = LossConfig(),
        evaluation: EvalConfig = EvalConfig(),
        channels_last: bool = True,
        max_nonfinite_steps: int = 10,
        pretrained: str | None = None,
        freeze_backbone_epochs: int = 0,
    ) -> None:
        super().__init__()
        self.optim = as_config(OptimConfig, optim)
        self.loss = as_config(LossConfig, loss)
        self.evaluation = as_config(EvalConfig, evaluation)
        # plain types only (not the dataclasses), whether built by the CLI or in Python
        self.save_hyperparameters({
            "num_classes": num_classes, "width": width, "anchors": anchors,
            **{name: as_plain(getattr(self, name)) for name in GROUPS},
            "channels_last": channels_last, "max_nonfinite_steps": max_nonfinite_steps,
            "pretrained": pretrained, "freeze_backbone_epochs": freeze_backbone_epochs,
        })
        self.model = YOLOv3(num_classes=num_classes, width=width)
        if self.loss.objectness_prior is not None:
            self.model.init_objectness_bias(self.loss.objectness_prior)
        if channels_last:
            self.model.use_channels_last()
        self.register_buffer("anchors", as_anchors(anchors if anchors is not None else DEFAULT_ANCHORS, "model.anchors"))
        self.loss_fn = YoloLoss(self.loss.weights, self.loss.objectness)
        accuracy_threshold = self.evaluation.accuracy_threshold
        self.train_acc = CourseAccuracy(accuracy_threshold)
        self.val_acc = CourseAccuracy(accuracy_threshold)
        self.test_acc = CourseAccuracy(accuracy_threshold)
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()
        self.val_map = DetectionMAP(num_classes)
        self.test_map = DetectionMAP(num_classes, coco=True)
        self.test_results: dict | None = None  # the last test's full results (per-class AP, PR curves)
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self._guard = NonFiniteGuard(self.model, max_nonfinite_steps)
        self.pretrained, self.pretrained_report = pretrained, None
        self._freeze = BackboneFreeze(self.model, freeze_backbone_epochs)
        o = self.optim
        self.ema = ModelEMA(self.model, o.ema_decay, o.ema_tau) if o.ema else None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's load_from_checkpoint, which also reads checkpoints written before the
        settings were grouped: their flat hyper-parameters (max_lr, eval_iou_threshold, ...)
        are mapped onto the groups (yolov3.hparams.grouped_hparams) and given as arguments,
        since Lightning would drop names the constructor does not take. Arguments given
        here still win. (A URL or an open file is handed to Lightning as it is.)"""
        is_file = isinstance(checkpoint_path, (str, os.PathLike)) and Path(checkpoint_path).is_file()
        stored = read_hyperparameters(checkpoint_path) if is_file else {}
        if any(key in LEGACY_NAMES for key in stored):
            groups = grouped_hparams(stored)
            kwargs = {**{name: groups[name] for name in GROUPS if name in groups}, **kwargs}
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 3, S, S) uint8 or float in [0, 1] -> three (B, 3, s, s, 5+C) heads."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        if self.model.first_layer_channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self._network()(images)

    def _network(self) -> torch.nn.Module:
        """The training weights while training; the EMA's, when on, in evaluation."""
        return self.model if self.training or self.ema is None else self.ema.module

    def _step(self, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, dict]:
        outputs = self(batch["images"])
        grids = [tuple(o.shape[2:4]) for o in outputs]
        targets = build_targets(batch["targets"], outputs[0].shape[0], grids, self.anchors, self.loss.ignore_threshold)
        total, parts = self.loss_fn(outputs, targets, self.anchors)
        return outputs, targets, total, parts

    def on_fit_start(self) -> None:
        """A fresh fit starts from `pretrained`; a resumed one has its weights from the checkpoint.
        The EMA of a new fit starts from the weights as they are then (pretrained ones included)."""
        if self.pretrained and self.trainer.ckpt_path is None:
            report = self.pretrained_report = load_pretrained(self.model, self.pretrained)
            if self.trainer.is_global_zero:
                log.info("%s", report.summary())
                theirs = report.anchors
                if theirs is not None and not torch.allclose(theirs, self.anchors.cpu(), atol=1e-4, rtol=0):
                    log.warning("the pretrained weights were trained with %s and this fit uses %s: their box "
                                "sizes will be relearnt (--model.anchors %s keeps theirs)", describe_anchors(theirs),
                                describe_anchors(self.anchors.cpu()), anchor_set_name(theirs) or "<their 18 values>")
        if self.ema is not None and self.ema.updates == 0:
            self.ema.reset(self.model)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._freeze.before_batch(self.current_epoch)
        self._guard.before_forward()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs, targets, total, parts = self._step(batch)
        if not self._guard.check_loss(total, batch["paths"], self.global_step):
            return total  # backward still runs (every DDP process must join it); the step is dropped
        bs = outputs[0].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for k in LOSS_TERMS:
            self.log(f"train/loss_{k}", parts[k], batch_size=bs)
        self.train_acc.update([o.detach() for o in outputs], targets)
        return total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._freeze.before_step()
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        dropped = self._guard.before_step(self.trainer.strategy, check_grads=scaler is None)
        if dropped:
            self.log("train/nonfinite_steps", float(self._guard.total), reduce_fx="max")
        if self.ema is not None:
            self.ema.before_step(dropped, scaler)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:  # only a step that changed the weights (ModelEMA.after_step)
            self.ema.after_step(self.model, getattr(self.trainer.precision_plugin, "scaler", None))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A fit resumed in its own run folder keeps the metrics history up to the checkpoint.
        With the EMA, the weights go back where the module keeps them (ModelEMA.read_checkpoint);
        without, the module takes the checkpoint's "model.*", which are the EMA's if it had one.
        The anchors stay this module's (built from the checkpoint's hyper-parameters unless a
        config or the command line set others), not the buffer the state_dict would put back."""
        state = checkpoint.get("state_dict") or {}
        theirs = state.get("anchors")
        if isinstance(theirs, torch.Tensor) and theirs.shape == self.anchors.shape and not torch.allclose(
                theirs.to(self.anchors), self.anchors, atol=1e-6, rtol=0):
            log.warning("this run uses %s; the checkpoint was trained with %s (model.anchors: set by the config, "
                        "the command line or the module's arguments)", describe_anchors(self.anchors.cpu()),
                        describe_anchors(theirs.cpu()))
            state["anchors"] = self.anchors.detach().to(theirs)
        if self.ema is not None:
            self.ema.read_checkpoint(checkpoint)
        if self._trainer is not None and self.trainer.state.fn == "fit":
            for logger in self.trainer.loggers:
                if hasattr(logger, "resume_at"):
                    logger.resume_at(int(checkpoint.get("global_step", 0)))

    def on_train_epoch_end(self) -> None:
        self._log_acc("train", self.train_acc)

    def _eval_step(self, batch: dict, acc: CourseAccuracy, loss: MeanMetric, det_map: DetectionMAP | None) -> None:
        outputs, targets, total, _ = self._step(batch)
        acc.update(outputs, targets)
        loss.update(total, weight=outputs[0].shape[0])
        if det_map is not None:
            detections, truth = self.detect(outputs, batch)
            det_map.update(detections, truth, batch["labels"], batch["difficult"], batch["indices"])

    def detect(self, outputs: list[torch.Tensor], batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Evaluation detections of a batch and its ground-truth boxes, both in original image
        pixels (letterbox undone, clipped to the image): per image (K, 6) and (G, 4). Detections
        that cover none of the image (wholly in the letterbox's padding) are dropped, as the
        Detector drops them (before NMS, and Letterbox.undo_detections after): a zero-area box
        could only be a false positive. Ground-truth boxes are all kept."""
        h = self.evaluation
        size = tuple(batch["images"].shape[-2:])
        dets = postprocess(outputs, self.anchors, size, h.conf_threshold, h.iou_threshold, h.max_detections,
                           h.score_mode, h.max_candidates, regions=stack_regions(batch["letterbox"]))
        detections, truth = [], []
        for det, boxes, lb in zip(dets, batch["boxes"], batch["letterbox"], strict=True):
            detections.append(lb.undo_detections(det))
            truth.append(lb.undo_boxes(boxes.to(det)))
        return detections, truth

    def _map_now(self) -> bool:
        """Whether this validation computes mAP: every n-th epoch and the last one of a fit,
        always for `validate` on its own; never in the sanity check or with n = 0."""
        n = self.evaluation.map_every_n_epochs
        if n <= 0 or self.trainer.sanity_checking:
            return False
        if self.trainer.state.fn != "fit":
            return True
        last = self.trainer.max_epochs is not None and self.current_epoch + 1 >= self.trainer.max_epochs
        return (self.current_epoch + 1) % n == 0 or last

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.val_acc, self.val_loss, self.val_map if self._map_now() else None)

    def on_validation_epoch_end(self) -> None:
        self._end_eval("val", self.val_acc, self.val_loss, self.val_map)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, self.test_acc, self.test_loss, self.test_map)

    def on_test_epoch_end(self) -> None:
        self._end_eval("test", self.test_acc, self.test_loss, self.test_map)

    def _end_eval(self, stage: str, acc: CourseAccuracy, loss: MeanMetric, det_map: DetectionMAP) -> None:
        self.log(f"{stage}/loss", loss.compute(), prog_bar=stage == "val")
        loss.reset()
        self._log_acc(stage, acc)
        if det_map.update_count > 0:
            # compute() gathers every process's detections, so each logs the same value
            results = det_map.compute()
            det_map.reset()
            self.log(f"{stage}/map_07", results["map_07"], prog_bar=stage == "val")
            self.log(f"{stage}/map_2010", results["map_2010"])
            if "coco_map" in results:
                self.log(f"{stage}/coco_map", results["coco_map"])
                self.log(f"{stage}/coco_map_50", results["coco_map_50"])
            if stage == "test":
                self.test_results = results

    def _log_acc(self, stage: str, metric: CourseAccuracy) -> None:
        # compute() syncs the integer counts across processes, so no sync_dist is needed.
        values = metric.compute()
        metric.reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=stage == "val")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record what inference needs from the data side (plain types, so the checkpoint
        still loads with weights_only=True): class names, eval size, training sizes and the
        evaluation letterbox's style; with
        the EMA, put its weights first (see optim)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "image_size"):
            checkpoint[DATA_KEY] = {"class_names": list(dm.class_names), "image_size": int(dm.image_size),
                                    "train_sizes": [int(s) for s in dm.train_sizes],
                                    "letterbox": getattr(dm, "letterbox", "yolo")}
        if self.ema is not None:  # "model.*" = the EMA, for every reader of the checkpoint
            self.ema.write_checkpoint(checkpoint)

    def configure_optimizers(self):
        h = self.optim
        params = [p for p in self.parameters() if p.requires_grad]
        # The fused kernel is the same Adam in one pass over all parameters: on this project's
        # 2-core CPU 6 ms a step for the width-0.125 model against 18 ms for the per-tensor loop.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
        optimizer = torch.optim.Adam(params, lr=h.max_lr / h.div_factor, weight_decay=h.weight_decay, fused=fused)
        # OneCycle: torch's OneCycleLR, made safe for lengths where its phases are degenerate (yolov3.schedule)
        scheduler = build_schedule(optimizer, h, self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        """A resumed fit: Lightning has put the checkpoint's optimiser and schedule state over
        the ones configure_optimizers built for this run; where this run is longer or shorter
        (max_epochs, max_steps, another training set, batches, accumulation) or its optimiser
        settings differ, the schedule is rebuilt for this run at the step reached and the
        weight decay set back (yolov3.schedule.refit_schedule), before the first step."""
        refit = refit_schedule(self.trainer, self.optim)
        if refit is not None and self.trainer.is_global_zero:
            log.info("%s", refit.message())
