"""Detector: load weights, preprocess, forward, decode, NMS. The one inference path that
the CLI, the demo report and the app all call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from yolov3.boxes import postprocess
from yolov3.constants import DEFAULT_ANCHORS, VOC_CLASSES
from yolov3.data.augment import letterbox
from yolov3.data.sample import Sample
from yolov3.model import YOLOv3


class Detector:
    """Runs a YOLOv3 on RGB images and returns boxes in original image pixels.

    Args:
        model: the network (eval mode is set here).
        anchors: (3, 3, 2) anchors as fractions of the image.
        class_names: names for the class indices.
        size: input size (multiple of 32) the images are letterboxed to.
        conf_threshold, iou_threshold, max_detections: post-processing settings.
    """

    def __init__(self, model: YOLOv3, anchors: torch.Tensor | None = None, class_names=VOC_CLASSES,
                 size: int = 416, conf_threshold: float = 0.25, iou_threshold: float = 0.45,
                 max_detections: int = 100, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.anchors = (anchors if anchors is not None else torch.tensor(DEFAULT_ANCHORS)).to(self.device)
        self.class_names = tuple(class_names)
        self.size, self.conf_threshold, self.iou_threshold = size, conf_threshold, iou_threshold
        self.max_detections = max_detections

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Detector:
        """Load a Lightning checkpoint safely (torch.load(weights_only=True): no code runs)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        hp = ckpt.get("hyper_parameters", {})
        model = YOLOv3(num_classes=hp.get("num_classes", 20), width=hp.get("width", 1.0))
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        model.load_state_dict(state)
        anchors = ckpt["state_dict"].get("anchors")
        return cls(model, anchors=anchors, **kwargs)

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """images: list of (H, W, 3) uint8 RGB -> per image (K, 6) float32 array of
        x1, y1, x2, y2 (original pixels), score, class."""
        if not images:
            return []
        batch, infos = [], []
        for img in images:
            boxed, info = letterbox(Sample(img, np.zeros((0, 4)), np.zeros(0)), self.size)
            batch.append(torch.from_numpy(boxed.image).permute(2, 0, 1))
            infos.append(info)
        x = torch.stack(batch).to(self.device).float().div_(255.0)
        outputs = self.model(x)
        dets = postprocess(outputs, self.anchors, (self.size, self.size), self.conf_threshold,
                           self.iou_threshold, self.max_detections)
        results = []
        for det, info, img in zip(dets, infos, images):
            d = det.float().cpu().numpy()
            if len(d):
                d[:, :4] = info.undo(d[:, :4])
                h, w = img.shape[:2]
                d[:, [0, 2]] = d[:, [0, 2]].clip(0, w)
                d[:, [1, 3]] = d[:, [1, 3]].clip(0, h)
            results.append(d.astype(np.float32))
        return results
