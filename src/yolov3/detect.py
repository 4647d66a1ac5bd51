"""`yolov3 detect`: images in, annotated images and one COCO-results JSON out."""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from pathlib import Path

from yolov3.data.sample import DataError, load_rgb

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def expand_sources(sources: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order, no repeats.

    Raises FileNotFoundError naming a source that matches nothing.
    """
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if any(ch in src for ch in "*?["):
            found = [Path(m) for m in sorted(glob.glob(src, recursive=True)) if Path(m).suffix.lower() in IMAGE_SUFFIXES]
        elif p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
        if not found:
            raise FileNotFoundError(f"{src}: no images in it (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += found
    seen: set[Path] = set()
    return [p for p in paths if not (p.resolve() in seen or seen.add(p.resolve()))]


def coco_records(det, class_names: Sequence[str], image_id: int, file_name: str) -> list[dict]:
    """(K, 6) detections (x1, y1, x2, y2, score, class) -> COCO results rows: bbox [x, y, w, h]
    rounded to 0.01 px, score to 1e-5, plus file_name and category_name. The format of
    detections.json, and of the app's JSON output."""
    return [{"image_id": image_id, "file_name": file_name, "category_id": int(cls),
             "category_name": class_names[int(cls)],
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(score, 5)}
            for x1, y1, x2, y2, score, cls in det.tolist()]


def _output_names(paths: Sequence[Path]) -> list[str]:
    """One output file name per input; inputs sharing a name get the folder prefixed."""
    names = [p.name for p in paths]
    dup = {n for n in names if names.count(n) > 1}
    return [f"{p.parent.name}_{p.name}" if p.name in dup else p.name for p in paths]


def run_detect(sources: Sequence[str], weights: str, out_dir: str, conf: float = 0.25, iou: float | None = None,
               size: int | None = None, device: str = "cpu", batch_size: int = 8, max_detections: int | None = None,
               skip_bad: bool = False, draw: bool = True) -> dict:
    """Detect objects in every source image; write annotated copies and detections.json.

    detections.json is COCO results format (a list of {"image_id", "category_id", "bbox"
    [x, y, w, h] in original pixels, "score"}) with "file_name" and "category_name" added;
    image_id is the image's position in the input list, category_id the class index.
    A file that cannot be read stops the run with its name, unless skip_bad (then it is
    listed in the summary under "skipped"). iou, size and max_detections left as None take
    what the weights were evaluated with, and so does the score mode (see Detector.load).
    """
    from PIL import Image
    from rich.progress import Progress

    from yolov3.detector import Detector
    from yolov3.viz import draw_boxes

    paths = expand_sources(sources)
    detector = Detector.load(weights, size=size, conf_threshold=conf, iou_threshold=iou,
                             max_detections=max_detections, device=device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(paths)
    results, skipped, per_image = [], [], []
    with Progress(transient=True) as progress:
        task = progress.add_task("detecting", total=len(paths))
        for start in range(0, len(paths), batch_size):
            chunk = list(range(start, min(start + batch_size, len(paths))))
            images, ok = [], []
            for i in chunk:
                try:
                    images.append(load_rgb(paths[i]))
                    ok.append(i)
                except DataError as exc:
                    if not skip_bad:
                        raise
                    skipped.append(str(exc))
            for i, img, det in zip(ok, images, detector(images)):
                results += coco_records(det, detector.class_names, i, str(paths[i]))
                per_image.append(len(det))
                if draw:
                    picture = draw_boxes(img, det[:, :4], det[:, 5].astype(int), detector.class_names, scores=det[:, 4])
                    Image.fromarray(picture).save(out / names[i])
            progress.advance(task, len(chunk))
    (out / "detections.json").write_text(json.dumps(results, indent=1))
    return {"images": len(per_image), "detections": len(results), "skipped": skipped, "out": str(out),
            "weights": detector.source}
