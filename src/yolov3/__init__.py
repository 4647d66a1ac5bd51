"""YOLOv3 (Darknet-53, three scales) for PASCAL VOC, trained with PyTorch Lightning."""

__version__ = "0.1.0"
