"""`yolov3 detect`: images in, annotated images and one COCO-results JSON out.

Before the model is loaded, the output folder is checked to be writable and every image is
decoded once in full (in a thread pool; Pillow releases the GIL while decoding), so a bad
image or folder stops the run in seconds with one line, before anything is written, or
(skip_bad) the bad images are left out and listed. Pixels are the stored pixels: an EXIF
orientation tag is not applied (as in training; see yolov3.data.sample) and each image that
carries one gets a note in the summary; so does each image of several frames (an animated
GIF, PNG or WebP, a multi-page TIFF), which is read at its first frame.

Path arguments that name an existing file or folder are taken literally, the others as glob
patterns (yolov3.data.sample.expand_sources). Every input gets an annotated picture of its own
(yolov3.commands.outputs: inputs sharing a name get the folders that tell them apart in front,
or -2), and each detections.json row names its picture.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from yolov3.commands.outputs import describe_replaced, input_names, left_from_before, listing
from yolov3.data.sample import (ORIENTATIONS, DataError, decode_image, expand_sources, frames_text, image_header,
                                load_rgb, printable)
from yolov3.detector import Detector
from yolov3.viz import draw_boxes

# The same limit as the app (yolov3.commands.app.MAX_PIXELS): above it an image is refused from its
# header, before decoding, unless the caller raises it (`yolov3 detect --max-pixels`).
MAX_PIXELS = 40_000_000

# Decoding runs in C without the GIL, so threads use every core.
_MAX_WORKERS = min(32, (os.cpu_count() or 1) + 4)

log = logging.getLogger("yolov3.commands.detect")

DETECTIONS_FILE = "detections.json"


class OutputError(ValueError):
    """The output folder cannot be created or written; the message names it."""


def json_file_name(name: str) -> dict:
    """How a file name goes into JSON without loss: {"file_name": name}, and for a name whose
    bytes are not valid UTF-8 (Linux file names are bytes; Python carries each such byte as a
    lone surrogate, which strict JSON readers refuse) {"file_name": the name with each such
    byte written as the four characters \\xNN, "file_name_b64": base64 (RFC 4648) of the exact
    bytes}. b"caf\\xe9.jpg" -> {"file_name": "caf\\\\xe9.jpg", "file_name_b64": "Y2Fm6S5qcGc="}."""
    shown = printable(name)
    if shown == name:
        return {"file_name": name}
    raw = name.encode("utf-8", "surrogateescape") if _escapable(name) else name.encode("utf-8", "surrogatepass")
    return {"file_name": shown, "file_name_b64": base64.b64encode(raw).decode("ascii")}


def _escapable(name: str) -> bool:
    try:
        name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


def coco_records(det, class_names: Sequence[str], image_id: int, file_name: str,
                 picture: str | None = None) -> list[dict]:
    """(K, 6) detections (x1, y1, x2, y2, score, class) -> COCO results rows: bbox [x, y, w, h]
    rounded to 0.01 px, score to 1e-5, plus file_name (see json_file_name: a name that is not
    valid UTF-8 also gets file_name_b64), category_name and, when given, picture (the file
    name of the image's annotated copy in the output folder; not valid UTF-8: picture_b64 too).
    The format of detections.json, and of the app's JSON output."""
    name = json_file_name(file_name)
    if picture is not None:
        name.update({k.replace("file_name", "picture"): v for k, v in json_file_name(picture).items()})
    return [{"image_id": image_id, **name, "category_id": int(cls),
             "category_name": class_names[int(cls)],
             "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(score, 5)}
            for x1, y1, x2, y2, score, cls in det.tolist()]


def check_output_dir(out: Path) -> None:
    """Raise OutputError naming `out` when it, or the folder it would be created in, is not a
    writable folder. Creates nothing (a probe file is made and removed at once)."""
    base = out
    while not base.exists() and base != base.parent:  # the nearest existing ancestor
        base = base.parent
    if not base.is_dir():
        where = "it is a file" if base == out else f"{printable(str(base))} is a file"
        raise OutputError(f"{printable(str(out))}: cannot be the output folder: {where}, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".yolov3-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{printable(str(out))}: output folder cannot be written "
                          f"({exc.strerror or exc} in {printable(str(base))})") from None


def _make_output_dir(out: Path) -> list[Path]:
    """mkdir -p out; returns the folders it created (deepest first), for removal on failure."""
    created = []
    p = out
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{printable(str(out))}: cannot create the output folder ({exc.strerror or exc})") from None
    return created


def _check_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """Decode one image in full (then drop the pixels); (its EXIF orientation, its frames, see
    yolov3.data.sample.Decoded). DataError naming the file when it cannot be read, or is larger
    than max_pixels (from the header, before decoding, with how to raise the limit)."""
    w, h, _ = image_header(path)
    if w * h > max_pixels:
        raise DataError(f"{path}: {w} x {h} pixels ({w * h / 1e6:.1f} MP) is more than detect's limit of "
                        f"{max_pixels / 1e6:.1f} MP (a file this large may be a decompression bomb); "
                        f"raise it with --max-pixels {w * h} if the image is wanted")
    decoded = decode_image(path, max_pixels)
    return decoded.orientation, decoded.frames


def _check_images(paths: Sequence[Path], max_pixels: int) -> list[tuple[int, int] | DataError]:
    """_check_image for every path in a thread pool, in order: (orientation, frames) or the DataError."""
    def attempt(path: Path) -> tuple[int, int] | DataError:
        try:
            return _check_image(path, max_pixels)
        except DataError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(_MAX_WORKERS, len(paths)))) as pool:
        return list(pool.map(attempt, paths))


def run_detect(sources: Sequence[str], weights: str, out_dir: str, conf: float = 0.25, iou: float | None = None,
               size: int | None = None, device: str = "cpu", batch_size: int = 8, max_detections: int | None = None,
               skip_bad: bool = False, draw: bool = True, max_pixels: int = MAX_PIXELS,
               backend: str | None = None, anchors: str | None = None, letterbox: str | None = None) -> dict:
    """Detect objects in every source image; write annotated copies and detections.json.

    detections.json is COCO results format (a list of {"image_id", "category_id", "bbox"
    [x, y, w, h] in stored pixels, "score"}) with "file_name" (and "file_name_b64" for a
    name that is not valid UTF-8, see json_file_name), "category_name" and, when pictures are
    drawn, "picture" (the annotated copy's file name in out_dir) added; image_id is the image's
    position in the input list, category_id the class index.

    sources are expanded by expand_sources: an existing file or folder is taken literally, only
    a path that names nothing is a glob pattern; a file named twice is detected once. Every
    input gets its own picture, never one overwritten by another's (yolov3.commands.outputs);
    files an earlier run left in out_dir under the names this run writes are replaced, with a
    warning that names them.

    In order, before the model is loaded: the sources are expanded (FileNotFoundError), the
    output folder is checked (OutputError, a ValueError), and every image is decoded once
    (DataError naming the first bad file and how many more there are; with skip_bad they
    are listed in the summary's "skipped" instead). Images above max_pixels pixels are
    refused from their header. Nothing is created when the run stops there; a run that stops
    later (a file changed meanwhile, a model error) removes the output folder it created
    if it is still empty. iou, size and max_detections left as None take what the weights were
    evaluated with, and so does the score mode (see Detector.load); anchors None: the weights'
    (a set's name or 18 numbers otherwise, anchors.as_anchors).

    Returns {"images": images detected, "detections", "skipped": [message per skipped image],
    "notes": [one line per image with an EXIF orientation tag, which is not applied, or with
    several frames, of which the first is read], "pictures": [(input path, picture name) per
    image drawn], "replaced": [names of an earlier run's files replaced], "out", "weights"}.
    """
    paths = expand_sources(sources)
    out = Path(out_dir)
    check_output_dir(out)

    skipped: list[str] = []
    notes: list[str] = []
    checked = _check_images(paths, max_pixels)
    bad = [res for res in checked if isinstance(res, DataError)]
    if bad and not skip_bad:
        more = f" (and {len(bad) - 1} more bad image(s); --skip-bad skips and lists them)" if len(bad) > 1 else ""
        raise DataError(f"{bad[0]}{more}")
    todo, oriented, animated = [], [], []
    for i, res in enumerate(checked):
        if isinstance(res, DataError):
            skipped.append(str(res))
            continue
        todo.append(i)
        orientation, frames = res
        if orientation != 1:
            oriented.append(printable(str(paths[i])))
            notes.append(f"{oriented[-1]}: EXIF orientation {orientation} (a viewer shows it "
                         f"{ORIENTATIONS[orientation]}) is not applied: boxes are in the stored pixels")
        if frames != 1:
            animated.append(f"{printable(str(paths[i]))} ({frames_text(frames)})")
            notes.append(f"{printable(str(paths[i]))}: {frames_text(frames)}; only the first is read")
    if oriented:
        log.warning("%d image(s) carry an EXIF orientation tag, not applied (boxes are in the stored pixels, as "
                    "in training): %s", len(oriented), "; ".join(oriented))
    if animated:
        log.warning("%d image(s) hold several frames (animated, or pages); only the first frame of each is read: %s",
                    len(animated), "; ".join(animated))
    names = input_names(paths, reserved=[DETECTIONS_FILE])
    replaced = left_from_before(listing(out), [DETECTIONS_FILE, *([names[i] for i in todo] if draw else [])])
    if replaced:
        log.warning("%s", describe_replaced(out, replaced))

    # Imported only now: torch and the model code take seconds to import, the checks above do not.
    # The progress: a transient rich bar on a terminal (rich is not in a Space, which imports this
    # module for coco_records), plain lines elsewhere (yolov3.progress).
    from yolov3.progress import counting

    detector = Detector.load(weights, size=size, conf_threshold=conf, iou_threshold=iou,
                             max_detections=max_detections, device=device, anchors=anchors,
                             letterbox=letterbox)
    if backend is not None:
        detector = detector.with_backend(backend)
    created = _make_output_dir(out)
    results, per_image, pictures = [], [], []
    try:
        with counting("detecting", len(todo)) as advance:
            for start in range(0, len(todo), batch_size):
                chunk = todo[start:start + batch_size]
                images, ok = [], []
                for i in chunk:
                    try:  # decoded fine above; fails only if the file changed since
                        images.append(load_rgb(paths[i], max_pixels))
                        ok.append(i)
                    except DataError as exc:
                        if not skip_bad:
                            raise
                        skipped.append(str(exc))
                for i, img, det in zip(ok, images, detector(images) if images else []):
                    results += coco_records(det, detector.class_names, i, str(paths[i]),
                                            names[i] if draw else None)
                    per_image.append(len(det))
                    if draw:
                        picture = draw_boxes(img, det[:, :4], det[:, 5].astype(int), detector.class_names,
                                             scores=det[:, 4])
                        Image.fromarray(picture).save(out / names[i])
                        pictures.append((str(paths[i]), names[i]))
                advance(len(chunk))
        (out / DETECTIONS_FILE).write_text(json.dumps(results, indent=1))
    except BaseException:
        for folder in created:  # deepest first; a folder with anything in it stays
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return {"images": len(per_image), "detections": len(results), "skipped": skipped, "notes": notes,
            "pictures": pictures, "replaced": replaced, "out": str(out), "weights": detector.source,
            "loaded": detector.describe()}


def command(args: argparse.Namespace) -> None:
    try:
        summary = run_detect(args.sources, args.weights, args.out, conf=args.conf, iou=args.iou, size=args.size,
                             device=args.device, batch_size=args.batch, max_detections=args.max_det,
                             skip_bad=args.skip_bad, draw=not args.no_draw, backend=args.backend,
                             anchors=args.anchors, letterbox=args.letterbox,
                             **({"max_pixels": args.max_pixels} if args.max_pixels else {}))
    except (FileNotFoundError, DataError, ValueError) as exc:
        raise SystemExit(f"yolov3 detect: {exc}") from None
    print(summary["loaded"])
    print(f"{summary['detections']} detections in {summary['images']} images -> {summary['out']}/detections.json"
          f"{'' if args.no_draw else ' and annotated images'}")
    for line in summary["skipped"]:
        print(f"skipped {line}")
    for line in summary.get("notes", []):
        print(f"note: {line}")
    renamed = [(src, name) for src, name in summary.get("pictures", []) if Path(src).name != name]
    if renamed:
        shown = ", ".join(f"{printable(src)} -> {printable(name)}" for src, name in renamed[:5])
        more = f" and {len(renamed) - 5} more" if len(renamed) > 5 else ""
        print(f"note: {len(renamed)} picture(s) named apart from their image, so none overwrites another "
              f"(each detections.json row names its picture): {shown}{more}")
