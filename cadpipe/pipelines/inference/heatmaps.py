"""Class-activation heatmaps (Grad-CAM) for classification bundles, and their PNG/NumPy/NIfTI writers.

Generic over bundles: the bundle config names the layer (``cam_layers``, e.g. ``"class_layers.relu"`` for MONAI's
DenseNet121) and the class index. Axis convention (docs/architecture.md): a 2D image is channel-first ``(C, X, Y)``
with X = columns, Y = rows, so PNGs are written transposed (``arr.T``) to show the image upright.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["compute_cam", "layer_of", "hook_output_on_this_thread", "normalize_map", "colorize", "overlay", "save_overlay_png", "save_heatmap", "GradCAMWriter"]


def compute_cam(network: torch.nn.Module, image: torch.Tensor, target_layers: str, class_idx: int | None = None) -> np.ndarray:
    """Grad-CAM of ``class_idx`` for one image or a batch, upsampled to the input size and scaled to [0, 1].

    Grad-CAM (Selvaraju et al., 2017) as MONAI's ``GradCAM.compute_map`` computes it: ``relu(sum_k w_k A_k)`` with
    ``A`` the target layer's output and ``w_k`` the spatial mean of d(class score)/d``A_k``, then linearly
    upsampled to the input grid (MONAI's ``default_upsampler``). Three differences, all deliberate:

    - the map is min-max scaled so that **1 is the most evidence** for the class. MONAI's default postprocessing
      (``default_normalizer``, ``ScaleIntensity(minv=1.0, maxv=0.0)``) flips it, so its hottest pixels come out as 0
      (Project-MONAI/tutorials#1796);
    - the gradient is taken only with respect to ``A``: the network below the target layer runs without autograd
      and no parameter gradient is computed or accumulated, so a map costs about one forward pass instead of a
      forward and a full backward (the values are the same);
    - with ``class_idx=None`` every image of a batch gets the map of its own predicted class.

    The hook on the target layer is removed before returning and acts only on the calling thread's forward, so
    several threads may compute maps (and forward) with one network at once.

    Args:
        network: the classifier (its mode is restored afterwards; CAM is computed in eval mode).
        image: ``(C, X, Y)`` or ``(B, C, X, Y)`` (or 3D with one more spatial dim), on the network's device.
        target_layers: name of the module whose output is ``A`` (e.g. ``"class_layers.relu"`` in MONAI's DenseNet).
        class_idx: class whose evidence is mapped; None → the predicted class.

    Returns:
        float32 numpy array ``(X, Y)`` for a single image, ``(B, X, Y)`` for a batch (channel dim dropped).
    """
    import torch.nn.functional as F

    layer = layer_of(network, target_layers, "Grad-CAM target layer")
    single = image.ndim in (3, 4) and image.ndim == _spatial_ndim(network, image) + 1
    x = image.unsqueeze(0) if single else image
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)  # plain: no MetaTensor dispatch per op
    captured: dict[str, torch.Tensor] = {}

    def capture(output):
        if "A" in captured:
            return None  # a second call of the layer
        leaf = output.detach().requires_grad_(True)
        captured["A"] = leaf
        torch.set_grad_enabled(True)  # the layers above build the graph back to A (reset when no_grad exits)
        return leaf

    was_training = network.training
    try:
        network.eval()
        with torch.inference_mode(False):
            with hook_output_on_this_thread(layer, capture), torch.no_grad():
                logits = network(x.float().detach().clone())
            if "A" not in captured:
                raise ValueError(f"Grad-CAM target layer {target_layers!r} was not called by the forward pass")
            acti = captured["A"]
            with torch.enable_grad():
                idx = logits.argmax(1) if class_idx is None else torch.full((logits.shape[0],), int(class_idx))
                score = logits.gather(1, idx.to(logits.device)[:, None]).sum()
                (grad,) = torch.autograd.grad(score, acti)
    finally:
        network.train(was_training)
    with torch.no_grad():
        b, c, *spatial = grad.shape
        weights = grad.reshape(b, c, -1).mean(2).reshape(b, c, *[1] * len(spatial))
        cam = F.relu((weights * acti.detach()).sum(1, keepdim=True))
        mode = ("linear", "bilinear", "trilinear")[x.ndim - 3]
        cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    out = cam.cpu().float().numpy()[:, 0]  # (B, *spatial)
    out = np.stack([normalize_map(o) for o in out])
    return out[0] if single else out


def layer_of(network: torch.nn.Module, name: str, role: str = "layer") -> torch.nn.Module:
    """The submodule ``name`` of ``network``; a ValueError naming it (as ``role``) when there is none."""
    layer = dict(network.named_modules()).get(name)
    if layer is None:
        raise ValueError(f"{role} {name!r} is not a module of {type(network).__name__}")
    return layer


@contextmanager
def hook_output_on_this_thread(layer: torch.nn.Module, fn):
    """A forward hook on ``layer`` while the block runs: ``fn(output)`` for forwards run by the calling thread only
    (its result, when not None, replaces the output), removed on exit.

    So other threads may forward through the same network meanwhile, and nothing is left on the network
    afterwards (MONAI's ``CAM`` / ``GradCAM`` register hooks on every construction and never remove them)."""
    owner = threading.get_ident()

    def hook(_module, _inputs, output):
        return fn(output) if threading.get_ident() == owner else None

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _spatial_ndim(network, image) -> int:
    # a batch of 2D images is 4D; a single 2D image is 3D. Without a hint assume 2D for 3D/4D inputs.
    dims = getattr(network, "dimensions", None) or getattr(network, "spatial_dims", None)
    return int(dims) if dims else 2


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] (a constant map becomes all zeros)."""
    cam = np.asarray(cam, dtype=np.float32)
    lo, hi = float(np.nanmin(cam)), float(np.nanmax(cam))
    if not np.isfinite(hi - lo) or hi - lo < 1e-12:
        return np.zeros_like(cam)
    return (cam - lo) / (hi - lo)


def colorize(cam: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """Map a [0, 1] 2D array to RGB uint8 ``(..., 3)`` with a matplotlib colormap (a built-in jet without it)."""
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0, 1)
    try:
        from matplotlib import colormaps

        rgb = colormaps[cmap](cam)[..., :3]
    except ImportError:  # simple jet
        r = np.clip(1.5 - np.abs(4 * cam - 3), 0, 1)
        g = np.clip(1.5 - np.abs(4 * cam - 2), 0, 1)
        b = np.clip(1.5 - np.abs(4 * cam - 1), 0, 1)
        rgb = np.stack([r, g, b], -1)
    return (rgb * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a greyscale image and a [0, 1] heatmap of the same 2D shape into RGB uint8 (same axis order as inputs).

    ``image`` is min-max scaled for display; ``alpha`` is the heatmap weight.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3:  # channel-first: average channels for display
        img = img.mean(0)
    cam = np.asarray(cam, dtype=np.float32)
    if img.shape != cam.shape:
        raise ValueError(f"image {img.shape} and heatmap {cam.shape} differ in shape")
    grey = (normalize_map(img) * 255)[..., None].repeat(3, -1)
    heat = colorize(cam, cmap).astype(np.float32)
    return ((1 - alpha) * grey + alpha * heat).round().clip(0, 255).astype(np.uint8)


def save_overlay_png(image: np.ndarray, cam: np.ndarray, path: str, alpha: float = 0.4, cmap: str = "jet") -> str:
    """Write the overlay of a channel-first ``(C, X, Y)`` / ``(X, Y)`` image as an upright PNG (transposed to rows×cols)."""
    from PIL import Image

    rgb = overlay(_to_np(image), _to_np(cam), alpha, cmap)  # (X, Y, 3)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 0, 2))).save(path)  # (Y=rows, X=cols, 3)
    return path


def save_heatmap(cam: np.ndarray, path: str, affine=None) -> str:
    """Write the raw map: ``.npy`` (array as is, ``(X, Y)`` axis order) or ``.nii``/``.nii.gz`` (with ``affine``)."""
    cam = _to_np(cam).astype(np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        aff = np.eye(4) if affine is None else np.asarray(_to_np(affine), dtype=np.float64)
        nib.save(nib.Nifti1Image(cam, aff), path)
    else:
        np.save(path, cam)
    return path


def _to_np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(str(path))) or "image"
    for ext in (".nii.gz", ".jpeg", ".jpg", ".png", ".tiff", ".tif", ".bmp", ".dcm", ".dicom", ".nii", ".npy"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


class GradCAMWriter:
    """Dict transform for bundle ``writers``: per item, Grad-CAM of one class → PNG overlay + ``.npy``/NIfTI map,
    and one CSV row (path, probability of each/positive class, predicted class) appended to ``output_dir/<csv_name>``.

    Runs after ``postprocessing`` on one decollated item holding ``image`` (the preprocessed, channel-first input
    with meta ``filename_or_obj``) and ``pred`` (probability vector). File names use the input's stem, with a
    numeric suffix when two inputs share a stem.

    Args:
        network: the classifier.
        target_layers: Grad-CAM layer name (the bundle's ``cam_layers``).
        output_dir: folder for heatmaps (``<output_dir>/heatmaps``) and the CSV.
        class_names: class names in index order.
        class_idx: class whose heatmap is written (e.g. 1 = PNEUMONIA).
        threshold: decision threshold on ``pred[class_idx]`` for the predicted class (binary); None → arg-max.
        heatmap_ext: ``".npy"`` or ``".nii.gz"``.
        csv_name: CSV file name; the file is (re)started when the writer is created.
        device: device to run Grad-CAM on (default: the network's).
    """

    def __init__(
        self,
        network: torch.nn.Module,
        target_layers: str,
        output_dir: str,
        class_names,
        class_idx: int = 1,
        threshold: float | None = 0.5,
        heatmap_ext: str = ".npy",
        csv_name: str = "predictions.csv",
        alpha: float = 0.4,
        write_heatmaps: bool = True,
    ):
        self.network = network
        self.target_layers = target_layers
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.class_idx = int(class_idx)
        self.threshold = threshold
        self.heatmap_ext = heatmap_ext
        self.alpha = alpha
        self.write_heatmaps = write_heatmaps
        self.csv_path = os.path.join(output_dir, csv_name)
        self._stems: dict[str, int] = {}
        self._header_written = False

    def _unique(self, stem: str) -> str:
        n = self._stems.get(stem, 0)
        self._stems[stem] = n + 1
        return stem if n == 0 else f"{stem}_{n}"

    def _append_row(self, row: Mapping) -> None:
        import csv

        os.makedirs(self.output_dir, exist_ok=True)
        mode = "a" if self._header_written else "w"
        with open(self.csv_path, mode, newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(row.keys()))
            if not self._header_written:
                w.writeheader()
                self._header_written = True
            w.writerow(row)

    def __call__(self, data: Mapping) -> Mapping:
        image = data["image"]
        meta = getattr(image, "meta", {}) or {}
        src = meta.get("filename_or_obj", "")
        if isinstance(src, (list, tuple)):
            src = src[0] if src else ""
        prob = _to_np(data["pred"]).astype(np.float64).reshape(-1)
        p = float(prob[self.class_idx])
        if self.threshold is not None and len(prob) == 2:
            pred_idx = self.class_idx if p >= float(self.threshold) else 1 - self.class_idx
        else:
            pred_idx = int(prob.argmax())
        stem = self._unique(_stem(src))
        row = {"path": str(src), f"prob_{self.class_names[self.class_idx].lower()}": f"{p:.6f}",
               "predicted": self.class_names[pred_idx]}
        if self.write_heatmaps:
            device = next(self.network.parameters()).device
            x = torch.as_tensor(image).to(device)
            cam = compute_cam(self.network, x, self.target_layers, self.class_idx)
            hdir = os.path.join(self.output_dir, "heatmaps")
            png = save_overlay_png(_to_np(image), cam, os.path.join(hdir, f"{stem}_cam.png"), self.alpha)
            arr = save_heatmap(cam, os.path.join(hdir, f"{stem}_cam{self.heatmap_ext}"), meta.get("affine"))
            row["heatmap_png"] = png
            row["heatmap"] = arr
        self._append_row(row)
        return data
