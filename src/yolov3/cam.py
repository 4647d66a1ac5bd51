"""Class activation maps for detections: Grad-CAM, Grad-CAM++ (one map per detection) and
EigenCAM (one class-agnostic map per image). Our own implementation: no torchvision, no
pytorch-grad-cam.

Grad-CAM needs a scalar to differentiate. For a detection the scalar is the score that
decode + NMS gave it, rebuilt from the raw head outputs with the autograd graph kept:

    score = sigmoid(out[s][b, a, y, x, 0]) * softmax(out[s][b, a, y, x, 5:])[c]

at the detection's scale s, anchor a and cell (y, x), for its class c (objectness alone
when the detector's score_mode is "obj"). Each box therefore gets its own map. The head
outputs are plain tensors and every op from the input to that score is out of place, so
the gradient reaches any layer.

Layers are picked by alias (see LAYER_ALIASES) or by module path from
model.named_modules() (e.g. "layers.14"). Activations are captured with forward hooks
that are removed on exit; gradients are taken with torch.autograd.grad with respect to
the captured activations, so no parameter's .grad is touched.

One forward pass serves every detection of a batch: in eval mode images do not interact,
so the sum over images of "the r-th detection of each image" has, in each image's slice,
exactly that detection's gradient. A batch thus needs as many backward passes as its
busiest image has detections (per layer), not one per detection.

Maps are computed at the layer's resolution, upsampled to the network input, cropped to
the letterboxed image (padding removed), resized to the original image and divided by
their maximum, so 0 means "no evidence" and 1 the strongest evidence in that map.

API: explain(detector, images, method, layer) -> one ImageCAM per image (the detections,
one DetectionCAM per detection, the EigenCAM); explain_cells(...) for chosen head cells
(e.g. the same targets on another model); yolov3.viz.render_cam draws the results;
`yolov3 cam` is yolov3.commands.cam. The Detector does the preprocessing and decode
(Detector.preprocess, Detector.decode): there is no second copy of them here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from yolov3.constants import STRIDES
from yolov3.letterbox import Letterbox

METHODS = ("gradcam", "gradcam++", "eigencam")

# What each alias names (resolved on the model by layer_aliases):
LAYER_ALIASES = {
    "head": "the head layer of the detection's own scale (Grad-CAM); the three head layers "
            "together (EigenCAM: their maps averaged)",
    "head32": "input of the stride-32 prediction head (the 1x1 CNNBlock before it)",
    "head16": "input of the stride-16 prediction head",
    "head8": "input of the stride-8 prediction head",
    "backbone": "last stage of Darknet-53 (stride 32, the 4-block residual stage)",
}
HEAD_ALIASES = tuple(f"head{s}" for s in STRIDES)  # in the order of the model's outputs


# ------------------------------------------------------------------------------ layers

def layer_aliases(model: nn.Module) -> dict[str, str]:
    """Alias -> module path for the fixed aliases ("head" is resolved per scale, not here),
    from the model's named parts (YOLOv3.parts): head<s> is the output of neck.s<s>, the
    input of the stride-s head; "backbone" the output of Darknet-53 (its stage 5).

    Raises ValueError for a model without named parts.
    """
    if not callable(getattr(model, "output_path", None)):
        raise ValueError("layer aliases need a YOLOv3 (a model with named parts)")
    heads = {f"head{s}": model.output_path(f"neck.s{s}") for s in STRIDES}
    return {**heads, "backbone": model.output_path("backbone")}


def resolve_layer(model: nn.Module, layer: str) -> list[str]:
    """A layer name -> module paths: three (one per scale, output order) for "head", else one.

    Raises ValueError listing the aliases when the name is neither an alias nor a module path.
    """
    aliases = layer_aliases(model)
    if layer == "head":
        return [aliases[a] for a in HEAD_ALIASES]
    if layer in aliases:
        return [aliases[layer]]
    modules = dict(model.named_modules())
    if layer in modules and layer != "":
        return [layer]
    names = ", ".join(f"{k} ({aliases[k]})" if k in aliases else k for k in LAYER_ALIASES)
    raise ValueError(f"unknown layer {layer!r}: use an alias ({names}) or a module path from "
                     f"model.named_modules(), e.g. 'layers.14'")


@contextmanager
def capture_activations(model: nn.Module, paths: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that store the output of each module in `paths` (by path) while inside.

    The stored tensors are the graph's own (not detached), so gradients can be taken with
    respect to them. Hooks are removed on exit, also on errors.
    """
    modules = dict(model.named_modules())
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for path in dict.fromkeys(paths):
            def hook(_module, _inputs, output, path=path):
                if not isinstance(output, torch.Tensor):
                    raise ValueError(f"layer {path!r} does not output one tensor; pick another layer")
                store[path] = output
            handles.append(modules[path].register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- targets

def target_scores(outputs: Sequence[torch.Tensor], image: torch.Tensor, cells: torch.Tensor,
                  classes: torch.Tensor, score_mode: str = "obj_cls") -> torch.Tensor:
    """The detection scores, rebuilt from the raw head outputs with the graph kept.

    Args:
        outputs: per scale (B, A, gh, gw, 5+C) raw head tensors.
        image: (K,) long batch index of each detection.
        cells: (K, 4) long (scale, anchor, row, column) of each detection.
        classes: (K,) long class of each detection.
        score_mode: "obj_cls" (objectness x class probability) or "obj" (objectness).

    Returns:
        (K,) float32 scores, differentiable with respect to the outputs. The arithmetic is
        select_candidates', so they equal the scores decode + NMS gave the boxes.
    """
    scores = torch.zeros(image.shape[0], device=outputs[0].device)
    for s, pred in enumerate(outputs):
        here = (cells[:, 0] == s).nonzero(as_tuple=True)[0]
        if here.numel() == 0:
            continue
        rows = pred[image[here], cells[here, 1], cells[here, 2], cells[here, 3]].float()  # (k, 5+C)
        obj = torch.sigmoid(rows[:, 0])
        if score_mode == "obj":
            part = obj
        else:
            part = obj * torch.softmax(rows[:, 5:], -1).gather(1, classes[here, None]).squeeze(1)
        # index_put (out of place) rather than scores[here] = part, which would be in place
        scores = scores.index_put((here,), part)
    return scores


# ------------------------------------------------------------------------------- maps

def gradcam_map(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: ReLU(sum_k w_k A_k), w_k the spatial mean of d score / d A_k.

    acts, grads: (N, C, h, w) -> (N, h, w).
    """
    weights = grads.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts).sum(1))


def gradcam_pp_map(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++: pixel-weighted gradients (closed form for an exponential score).

    alpha = g^2 / (2 g^2 + sum_ij(A) g^3) per channel and position, w_k = sum_ij alpha
    ReLU(g); map = ReLU(sum_k w_k A_k). acts, grads: (N, C, h, w) -> (N, h, w).
    """
    g2 = grads.pow(2)
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)
    return F.relu((weights * acts).sum(1))


def eigencam_map(acts: torch.Tensor) -> torch.Tensor:
    """EigenCAM: the activations projected on their first principal direction (channels).

    acts (N, C, h, w) -> (N, h, w). Per image, the (h*w, C) activation matrix (not
    centred, as in the EigenCAM paper) is factorised by SVD and projected on its first
    right singular vector. A singular vector's sign is arbitrary: it is chosen so the
    projections sum to a positive number (the dominant pattern is "present", not
    "absent"), then negatives are cut as in Grad-CAM. No gradient and no class: it shows
    what the layer responds to most, whatever the detections.
    """
    n, c, h, w = acts.shape
    m = acts.detach().float().reshape(n, c, h * w).transpose(1, 2)  # (N, hw, C)
    _, _, vh = torch.linalg.svd(m, full_matrices=False)
    proj = (m @ vh[:, 0, :, None]).squeeze(-1)  # (N, hw)
    sign = torch.where(proj.sum(1, keepdim=True) < 0, -1.0, 1.0)
    return F.relu(proj * sign).reshape(n, h, w)


def to_image(cam: torch.Tensor, info: Letterbox) -> np.ndarray:
    """A map on the network's grid -> the original image, letterbox undone, in [0, 1].

    cam (h, w) -> (H, W) float32: Letterbox.undo_map (bilinear to the input, padding
    cropped, resized to the image), then division by the maximum (an all-zero map stays zero).
    """
    out = info.undo_map(cam)
    np.clip(out, 0.0, None, out=out)  # bilinear resampling of a ReLU map stays >= 0; be exact
    peak = float(out.max())
    return out / peak if peak > 0 else out


# ------------------------------------------------------------------------------ explain

@dataclass
class DetectionCAM:
    """The map of one detection.

    box (4,) xyxy and score in original pixels as the Detector reports them; label the
    class; cell (scale, anchor, row, column) in the head outputs; target the score rebuilt
    from the outputs (the scalar differentiated; equals score); grad_norm the L2 norm of
    d target / d activations; layer the module path (layer_name its alias, if any);
    heatmap (H, W) float32 in [0, 1].
    """

    box: np.ndarray
    score: float
    label: int
    cell: tuple[int, int, int, int]
    target: float
    grad_norm: float
    layer: str
    heatmap: np.ndarray = field(repr=False)
    layer_name: str = ""  # the alias of `layer` when it has one ("head8"), else the path


@dataclass
class ImageCAM:
    """Everything explained for one image.

    detections (K, 6) float32 x1, y1, x2, y2 (original pixels), score, class, exactly the
    Detector's; cams one DetectionCAM per detection (empty for EigenCAM); eigencam (H, W)
    float32 in [0, 1] (None when not asked for) computed at eigen_layers.
    """

    detections: np.ndarray
    cams: list[DetectionCAM]
    eigencam: np.ndarray | None
    eigen_layers: list[str]
    eigen_layer_name: str = ""  # "head" for the three head layers, the alias or path otherwise


@contextmanager
def _eval_with_grad(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients on, for this block only; the caller's state is restored.

    inference_mode(False) as well, so explaining also works when called from inside
    torch.inference_mode() (where enable_grad alone has no effect).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}: use one of {', '.join(METHODS)}")


def explain(detector, images: Sequence[np.ndarray], method: str = "gradcam", layer: str = "head",
            eigencam: bool = True) -> list[ImageCAM]:
    """Detect and explain: one map per detection (Grad-CAM family) and one EigenCAM per image.

    Args:
        detector: a yolov3.detector.Detector; its preprocessing, decode and NMS settings are used.
        images: (H, W, 3) uint8 RGB images (any sizes; one or many).
        method: "gradcam", "gradcam++" or "eigencam" (then no per-detection maps).
        layer: an alias of LAYER_ALIASES or a module path. Also used for the EigenCAM.
        eigencam: compute the per-image EigenCAM as well.

    Returns one ImageCAM per image. The detections are those detector(images) returns:
    one forward pass finds them and is then differentiated.
    """
    _check(method)
    images = list(images)
    if not images:
        return []
    paths = resolve_layer(detector.model, layer)
    with _eval_with_grad(detector.model), capture_activations(detector.model, paths) as acts:
        # preprocessed in here: a tensor made under an outer inference_mode cannot need grad
        x, infos = detector.preprocess(images)
        # The input asks for gradients so the graph exists even if the weights are frozen;
        # autograd.grad stops at the activations and never reaches x or the weights.
        outputs = detector.model(x.requires_grad_(True))
        dets, cells = detector.decode(outputs, infos)
        # the Detector's rule: detections wholly in the letterbox's padding are none of the image
        keep = [info.on_image(d[:, :4]) for d, info in zip(dets, infos)]
        dets, cells = [d[k] for d, k in zip(dets, keep)], [c[k] for c, k in zip(cells, keep)]
        maps = (_detection_maps(outputs, acts, paths, cells, [d[:, 5].long() for d in dets], detector.score_mode,
                                method) if method != "eigencam" else [[] for _ in images])
        eigen = [eigencam_map(acts[p]) for p in paths] if (eigencam or method == "eigencam") else None
    names = {path: alias for alias, path in layer_aliases(detector.model).items()}
    results = []
    for b, (img, info) in enumerate(zip(images, infos)):
        det_np = detector.to_original(dets[b], info)
        cams = [DetectionCAM(box=det_np[k, :4], score=float(det_np[k, 4]), label=int(det_np[k, 5]),
                             cell=tuple(int(v) for v in cells[b][k].tolist()), target=target, grad_norm=gnorm,
                             layer=path, heatmap=to_image(cam, info), layer_name=names.get(path, path))
                for k, (cam, target, gnorm, path) in enumerate(maps[b])]
        eig = None
        if eigen is not None:
            # several layers ("head"): each normalised on the image, then averaged, so the
            # three scales weigh the same whatever their activation magnitudes
            eig = np.mean([to_image(e[b], info) for e in eigen], axis=0)
            peak = float(eig.max())
            eig = eig / peak if peak > 0 else eig
        eigen_name = layer if len(paths) > 1 else names.get(paths[0], paths[0])
        results.append(ImageCAM(det_np, cams, eig, list(paths), eigen_name))
    return results


def explain_cells(detector, images: Sequence[np.ndarray], cells: Sequence[torch.Tensor],
                  classes: Sequence[torch.Tensor], method: str = "gradcam",
                  layer: str = "head") -> list[list[tuple[np.ndarray, float, float]]]:
    """Maps for chosen head cells instead of the detections (e.g. the same targets on
    another model, as in the model-randomisation sanity check).

    Args:
        images: (H, W, 3) uint8 RGB images.
        cells: per image (K, 4) long (scale, anchor, row, column).
        classes: per image (K,) long class whose probability is in the target.
        method: "gradcam" or "gradcam++".

    Returns per image, per cell: (heatmap (H, W) float32 in [0, 1], target score, grad norm).
    """
    _check(method)
    if method == "eigencam":
        raise ValueError("eigencam has no target: it is one map per image (use explain)")
    images = list(images)
    if not images:
        return []
    paths = resolve_layer(detector.model, layer)
    cells = [torch.as_tensor(c, dtype=torch.long).reshape(-1, 4) for c in cells]
    classes = [torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in classes]
    if len(cells) != len(images) or len(classes) != len(images):
        raise ValueError(f"{len(images)} images but {len(cells)} cell lists and {len(classes)} class lists")
    with _eval_with_grad(detector.model), capture_activations(detector.model, paths) as acts:
        x, infos = detector.preprocess(images)
        outputs = detector.model(x.requires_grad_(True))
        maps = _detection_maps(outputs, acts, paths, cells, classes, detector.score_mode, method)
    return [[(to_image(cam, info), target, gnorm) for cam, target, gnorm, _ in per] for per, info in zip(maps, infos)]


def _detection_maps(outputs, acts, paths, cells, classes, score_mode, method):
    """Per image, per target: (map (h, w) at the layer, target score, grad norm, layer path).

    cells: per image (K, 4) long; classes: per image (K,) long.
    """
    batch = len(cells)
    counts = [len(c) for c in cells]
    device = outputs[0].device
    image = torch.cat([torch.full((n,), b, dtype=torch.long, device=device) for b, n in enumerate(counts)])
    all_cells = torch.cat(list(cells)).to(device)
    targets = target_scores(outputs, image, all_cells, torch.cat(list(classes)).to(device), score_mode)  # (K,)
    # the layer of each target: its own scale's head for "head", else the one layer
    layer_of = all_cells[:, 0].tolist() if len(paths) > 1 else [0] * len(targets)
    image_of = image.tolist()
    rank = [k for n in counts for k in range(n)]  # index within its image
    out: list[list] = [[None] * n for n in counts]
    cam_fn = gradcam_map if method == "gradcam" else gradcam_pp_map
    for li, path in enumerate(paths):
        per_image: list[list[int]] = [[] for _ in range(batch)]
        for k in range(len(targets)):
            if layer_of[k] == li:
                per_image[image_of[k]].append(k)
        # round r: the r-th target (at this layer) of every image that has one, in one backward
        for r in range(max((len(p) for p in per_image), default=0)):
            ks = [p[r] for p in per_image if len(p) > r]
            (grad,) = torch.autograd.grad(targets[ks].sum(), acts[path], retain_graph=True, allow_unused=True)
            if grad is None:  # e.g. a stride-32 box at the stride-8 head: the layer is downstream of it
                grad = torch.zeros_like(acts[path])
            bs = image[ks]
            g = grad[bs]
            maps = cam_fn(acts[path][bs].detach(), g)
            norms = g.flatten(1).norm(dim=1)
            for j, k in enumerate(ks):
                out[image_of[k]][rank[k]] = (maps[j], float(targets[k].detach()), float(norms[j]), path)
    return out
