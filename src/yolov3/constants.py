"""Constants shared across the package: the VOC class list, the two anchor sets (COCO / 416 and
the course's rounded copy), the heads' strides, the default input size and the checkpoint key
of the data settings."""

# The standard alphabetical VOC order; class index i in every label file means VOC_CLASSES[i].
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The COCO anchors of YOLOv3 in pixels at 416, grouped by output scale: index 0 is the
# stride-32 head (largest objects), 1 stride 16, 2 stride 8. Dividing by 416 makes them
# fractions of the image side, so the same anchors serve every input size.
COCO_ANCHORS_416: tuple[tuple[tuple[int, int], ...], ...] = (
    ((116, 90), (156, 198), (373, 326)),
    ((30, 61), (62, 45), (59, 119)),
    ((10, 13), (16, 30), (33, 23)),
)
DEFAULT_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = tuple(
    tuple((w / 416.0, h / 416.0) for w, h in scale) for scale in COCO_ANCHORS_416
)
# The course's anchors: the same COCO anchors / 416 rounded to two decimals, as the course's
# code has them (config.py ANCHORS of the ERA V1 session-13 YOLOv3, github.com/jyanivaddi/dl_hub
# YOLO_V3/config.py). Its models learnt their box sizes against these, so they must be decoded
# with them: the smallest differs from COCO / 416 by 20 % ((0.02, 0.03) for (0.024, 0.031)).
COURSE_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((0.28, 0.22), (0.38, 0.48), (0.9, 0.78)),
    ((0.07, 0.15), (0.15, 0.11), (0.14, 0.29)),
    ((0.02, 0.03), (0.04, 0.07), (0.08, 0.06)),
)
# The named anchor sets (`--anchors coco` / `--anchors course`): the one place that defines them.
ANCHOR_SETS: dict[str, tuple[tuple[tuple[float, float], ...], ...]] = {
    "coco": DEFAULT_ANCHORS, "course": COURSE_ANCHORS,
}
# The output strides of yolov3.model.YOLOv3, in its output order (YOLOv3.strides, worked out
# from the layer configuration, equals this); the anchor groups above follow the same order.
STRIDES: tuple[int, ...] = (32, 16, 8)

# Key of the checkpoint entry with what inference needs from the data side (class names,
# eval image size, training sizes); written by YoloLitModule.on_save_checkpoint.
DATA_KEY = "yolov3_data"
DEFAULT_SIZE = 416  # input size when neither the user nor the weights say otherwise
