"""Histology (H&E microscopy) transforms: RGB loading, tissue mask, tissue-filtered patches, Macenko stain
normalisation, CLAHE on luminance and colour jitter.

All images are channel-first RGB ``(3, X, Y)`` (X = columns, Y = rows, MONAI reader order), float values in
``[0, 1]`` unless stated. Patches are ``(N, 3, P, P)`` stacks or lists of dicts (MONAI multi-sample style).
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, convert_to_tensor

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.io_imagescope import annotation_mask, patch_label

__all__ = [
    "load_rgb",
    "LoadRGBImage",
    "LoadRGBImaged",
    "tissue_mask",
    "TissueMask",
    "TissueMaskd",
    "grid_positions",
    "GridTissuePatches",
    "GridTissuePatchesd",
    "RandTissuePatchesd",
    "MACENKO_REFERENCE",
    "fit_macenko",
    "load_macenko_reference",
    "MacenkoNormalize",
    "MacenkoNormalized",
    "LuminanceCLAHE",
    "LuminanceCLAHEd",
    "RandColorJitter",
    "RandColorJitterd",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


# ----------------------------------------------------------------------------------------------- loading
def load_rgb(path: str | os.PathLike) -> MetaTensor:
    """Read a microscopy photo as a channel-first float32 ``MetaTensor`` ``(3, X, Y)`` with values in [0, 255].

    Documented handling: a greyscale (or palette) image is replicated to 3 channels (``meta["converted_from"]``
    records the original mode); an alpha channel is dropped. A truncated or unreadable file raises
    :class:`CadpipeInputError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CadpipeInputError(path, "file not found")
    try:
        with Image.open(path) as im:
            mode = im.mode
            im.load()  # raises OSError on truncated data
            rgb = im.convert("RGB") if mode != "RGB" else im.copy()
    except UnidentifiedImageError as e:
        raise CadpipeInputError(path, f"not a readable image ({e.__class__.__name__})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise CadpipeInputError(path, f"truncated or corrupt image: {e}") from e
    arr = np.asarray(rgb, dtype=np.float32)  # (rows, cols, 3)
    chw = np.ascontiguousarray(arr.transpose(2, 1, 0))  # (3, cols, rows) = (C, X, Y)
    meta = {
        "filename_or_obj": path,
        "spatial_shape": np.array(chw.shape[1:]),
        "original_channel_dim": 0,
        "converted_from": mode,
        "affine": torch.eye(3, dtype=torch.float64),
        "original_affine": np.eye(3),
    }
    return MetaTensor(torch.from_numpy(chw), meta=meta)


class LoadRGBImage(Transform):
    """Array transform wrapping :func:`load_rgb`; ``scale`` divides by 255 (values in [0, 1])."""

    def __init__(self, scale: bool = True):
        self.scale = scale

    def __call__(self, path):
        img = load_rgb(path)
        return img / 255.0 if self.scale else img


class LoadRGBImaged(MapTransform):
    """Dictionary twin of :class:`LoadRGBImage`."""

    def __init__(self, keys: KeysCollection, scale: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadRGBImage(scale)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


# ----------------------------------------------------------------------------------------------- tissue mask
def _saturation(img: np.ndarray) -> np.ndarray:
    mx = img.max(0)
    mn = img.min(0)
    return np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


def tissue_mask(img, min_saturation: float = 0.05, max_saturation: float = 0.15) -> np.ndarray:
    """Tissue mask of an RGB image ``(3, X, Y)``: Otsu threshold on HSV saturation, clipped to
    ``[min_saturation, max_saturation]``.

    White/grey glass has low saturation, stained tissue high. The upper clip keeps pale stroma when the image
    also holds strongly stained regions (Otsu would then split stroma from nuclei instead of glass from tissue).
    A blank image (saturation range below ``min_saturation``) gives an all-False mask (all-True if uniformly
    stained). Returns a bool numpy array ``(X, Y)``.
    """
    from skimage.filters import threshold_otsu

    arr = convert_to_numpy(img, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[0] != 3:
        raise ValueError(f"tissue_mask expects (3, X, Y), got {arr.shape}")
    sat = _saturation(arr)
    if float(sat.max() - sat.min()) < min_saturation:
        # uniform image: all tissue when uniformly stained, else all background
        return np.full(sat.shape, float(sat.mean()) > min_saturation)
    thr = min(max(float(threshold_otsu(sat)), min_saturation), max_saturation)
    return sat > thr


class TissueMask(Transform):
    """Array transform: RGB ``(3, X, Y)`` -> bool-valued ``(1, X, Y)`` tissue mask (see :func:`tissue_mask`)."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, min_saturation: float = 0.05):
        self.min_saturation = min_saturation

    def __call__(self, img):
        m = tissue_mask(img, self.min_saturation)[None].astype(np.float32)
        return convert_to_dst_type(m, img)[0]


class TissueMaskd(MapTransform):
    """Dictionary twin of :class:`TissueMask`: writes the mask of ``keys`` to ``mask_key``."""

    def __init__(self, keys: KeysCollection, mask_key: str = "tissue", min_saturation: float = 0.05,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mask_key = mask_key
        self.op = TissueMask(min_saturation)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = self.op(d[key])
        return d


# ----------------------------------------------------------------------------------------------- patches
def grid_positions(size: Sequence[int], patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of a sliding window covering ``size = (X, Y)``; the last window is aligned to
    the far edge so the whole image is covered. ``size`` must be at least ``patch_size`` in each dimension."""
    out = []
    axes = []
    for n in size[:2]:
        starts = list(range(0, max(n - patch_size, 0) + 1, max(int(stride), 1)))
        if starts[-1] + patch_size < n:
            starts.append(n - patch_size)
        axes.append(starts)
    for x in axes[0]:
        for y in axes[1]:
            out.append((x, y))
    return out


def _pad_to(img: torch.Tensor, patch_size: int, value: float) -> torch.Tensor:
    px = max(patch_size - img.shape[1], 0)
    py = max(patch_size - img.shape[2], 0)
    if px == 0 and py == 0:
        return img
    return torch.nn.functional.pad(img, (0, py, 0, px), value=value)


class GridTissuePatches(Transform):
    """Sliding-window patches of an RGB image, background patches dropped.

    Args:
        patch_size: side ``P`` of the square patches.
        stride: window step (default ``patch_size // 2``).
        min_tissue: minimum fraction of tissue pixels (:func:`tissue_mask`) for a patch to be kept.
        pad_value: an image smaller than the patch is padded (at the far edges) with this value (white = 1.0 for
            [0, 1] images) up to ``P`` - documented handling for small images.
        keep_one: when no patch passes the filter, keep the one with the most tissue (so every image yields a
            prediction) instead of returning an empty stack.

    Input ``(3, X, Y)``; returns ``(patches (N, 3, P, P), locations (N, 2) as (x, y) corners, tissue fractions (N,))``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, patch_size: int = 256, stride: int | None = None, min_tissue: float = 0.5,
                 pad_value: float = 1.0, keep_one: bool = True, min_saturation: float = 0.05):
        self.patch_size = int(patch_size)
        self.stride = int(stride) if stride else self.patch_size // 2
        self.min_tissue = float(min_tissue)
        self.pad_value = pad_value
        self.keep_one = keep_one
        self.min_saturation = min_saturation

    def __call__(self, img):
        t = _pad_to(convert_to_tensor(img, track_meta=False), self.patch_size, self.pad_value)
        mask = torch.from_numpy(tissue_mask(t, self.min_saturation).astype(np.float32))
        p = self.patch_size
        pos = grid_positions(t.shape[1:], p, self.stride)
        frac = torch.tensor([float(mask[x:x + p, y:y + p].mean()) for x, y in pos])
        keep = torch.nonzero(frac >= self.min_tissue).flatten().tolist()
        if not keep and self.keep_one:
            keep = [int(torch.argmax(frac))]
        patches = torch.stack([t[:, x:x + p, y:y + p] for x, y in (pos[i] for i in keep)]) if keep else \
            t.new_zeros((0, t.shape[0], p, p))
        locs = torch.tensor([pos[i] for i in keep], dtype=torch.long).reshape(-1, 2)
        return patches, locs, frac[keep] if keep else frac[:0]


class GridTissuePatchesd(MapTransform):
    """Dictionary twin of :class:`GridTissuePatches`.

    ``stack=True``: ``d[key]`` becomes the ``(N, 3, P, P)`` stack, ``d["patch_locations"]`` the ``(N, 2)`` corners
    and ``d["image_size"]`` the original ``(X, Y)`` (evaluation: one item per image). ``stack=False``: returns a list
    of N dicts, one patch each (training: MONAI flattens the list into the batch).
    """

    def __init__(self, keys: KeysCollection, patch_size: int = 256, stride: int | None = None,
                 min_tissue: float = 0.5, stack: bool = True, pad_value: float = 1.0,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.op = GridTissuePatches(patch_size, stride, min_tissue, pad_value)
        self.stack = stack

    def __call__(self, data):
        d = dict(data)
        key = self.first_key(d)
        img = d[key]
        patches, locs, _ = self.op(img)
        if self.stack:
            d["image_size"] = torch.tensor(img.shape[1:3])
            d[key] = patches
            d["patch_locations"] = locs
            return d
        out = []
        for i in range(patches.shape[0]):
            di = dict(d)
            di[key] = patches[i]
            di["patch_location"] = locs[i]
            out.append(di)
        return out


def _box_fraction(mask: np.ndarray, p: int) -> np.ndarray:
    """Fraction of ``mask`` (bool ``(X, Y)``) inside every ``p x p`` window: ``(X - p + 1, Y - p + 1)``, window
    corners ``(x, y)`` (summed-area table, one vectorised pass)."""
    c = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    c[1:, 1:] = np.asarray(mask, dtype=np.int64).cumsum(0).cumsum(1)
    return (c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]) / float(p * p)


class RandTissuePatchesd(Randomizable, MapTransform):
    """Random square crops that pass the tissue filter (training), ``num_samples`` per image, as a list of dicts
    (each with ``patch_location`` = its ``(x, y)`` corner).

    Candidate corners are drawn uniformly; up to ``max_tries`` candidates per sample are tried and the first with
    tissue fraction >= ``min_tissue`` is kept (else the best one tried). Images smaller than the patch are padded
    with ``pad_value``.

    Region labels: when the item has an Aperio ImageScope XML path under ``annotation_key`` (a non-empty string;
    see :func:`cadpipe.transforms.readers.io_imagescope.find_annotation`), its regions are rasterised
    (:func:`cadpipe.transforms.readers.io_imagescope.annotation_mask`, region names matched to ``class_names`` through
    ``class_map``, ignoring case) and each patch takes, under ``label_key``, the class of the region covering the
    largest fraction of it if that fraction is at least ``min_region_overlap``
    (:func:`cadpipe.transforms.readers.io_imagescope.patch_label`). Patches with no such region:

    - ``unlabelled="image"`` (default): keep the item's own (image-level) label;
    - ``unlabelled="drop"``: never drawn - corners are drawn uniformly among the windows that have a qualifying
      region and at least ``min_tissue`` tissue (if none has that much tissue, among those with a qualifying
      region); an annotated image with no qualifying window raises :class:`CadpipeInputError` naming the XML.

    Items without an annotation keep the image label for every patch. Malformed XML, vertices outside the image
    or an unknown region class raise :class:`CadpipeInputError` naming the XML file.
    """

    def __init__(self, keys: KeysCollection, patch_size: int = 256, num_samples: int = 4, min_tissue: float = 0.5,
                 max_tries: int = 10, pad_value: float = 1.0, annotation_key: str | None = "annotation",
                 label_key: str = "label", class_names: Sequence[str] | None = None,
                 min_region_overlap: float = 0.5, unlabelled: str = "image", class_map: Mapping | None = None,
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        if unlabelled not in ("image", "drop"):
            raise ValueError(f"unlabelled must be 'image' or 'drop', got {unlabelled!r}")
        self.patch_size = int(patch_size)
        self.num_samples = int(num_samples)
        self.min_tissue = float(min_tissue)
        self.max_tries = int(max_tries)
        self.pad_value = pad_value
        self.annotation_key = annotation_key
        self.label_key = label_key
        self.class_names = list(class_names) if class_names is not None else None
        self.min_region_overlap = float(min_region_overlap)
        self.unlabelled = unlabelled
        self.class_map = dict(class_map or {})

    def randomize(self, data=None):
        pass

    def _region_mask(self, d, size) -> tuple[str, np.ndarray | None]:
        xml = d.get(self.annotation_key) if self.annotation_key else None
        if not xml:
            return "", None
        if self.class_names is None:
            raise ValueError("RandTissuePatchesd needs class_names to read ImageScope region labels")
        return os.fspath(xml), annotation_mask(xml, size, self.class_names, self.class_map)

    def __call__(self, data):
        d = dict(data)
        key = self.first_key(d)
        img = d[key]
        xml, region = self._region_mask(d, tuple(int(s) for s in img.shape[1:3]))
        t = _pad_to(convert_to_tensor(img, track_meta=False), self.patch_size, self.pad_value)
        mask = torch.from_numpy(tissue_mask(t).astype(np.float32))
        p = self.patch_size
        if region is not None and region.shape != tuple(t.shape[1:]):
            region = np.pad(region, ((0, t.shape[1] - region.shape[0]), (0, t.shape[2] - region.shape[1])))
        if region is not None and self.unlabelled == "drop":
            corners = self._region_corners(xml, region, mask.numpy() > 0.5)
            picks = [corners[int(self.R.randint(len(corners)))] for _ in range(self.num_samples)]
        else:
            picks = [self._draw(t, mask) for _ in range(self.num_samples)]
        out = []
        for x, y in picks:
            di = dict(d)
            di[key] = t[:, x:x + p, y:y + p].clone()
            di["patch_location"] = torch.tensor([x, y])
            if region is not None:
                lab = patch_label(region, (x, y), p, self.min_region_overlap)
                if lab >= 0:
                    di[self.label_key] = lab
            out.append(di)
        return out

    def _draw(self, t, mask) -> tuple[int, int]:
        p = self.patch_size
        best, best_frac = (0, 0), -1.0
        for _ in range(self.max_tries):
            x = int(self.R.randint(0, t.shape[1] - p + 1))
            y = int(self.R.randint(0, t.shape[2] - p + 1))
            frac = float(mask[x:x + p, y:y + p].mean())
            if frac > best_frac:
                best, best_frac = (x, y), frac
            if frac >= self.min_tissue:
                break
        return best

    def _region_corners(self, xml: str, region: np.ndarray, tissue: np.ndarray) -> np.ndarray:
        p = self.patch_size
        n = int(region.max())
        best = np.zeros((region.shape[0] - p + 1, region.shape[1] - p + 1))
        for k in range(1, n + 1):
            best = np.maximum(best, _box_fraction(region == k, p))
        ok = best >= self.min_region_overlap
        if not ok.any():
            raise CadpipeInputError(xml, f"no {p}x{p} patch is covered by one region for at least "
                                         f"min_region_overlap={self.min_region_overlap:g} (unlabelled='drop')")
        with_tissue = ok & (_box_fraction(tissue, p) >= self.min_tissue)
        return np.argwhere(with_tissue if with_tissue.any() else ok)


# ----------------------------------------------------------------------------------------------- Macenko
#: Reference H&E stain vectors (columns: haematoxylin, eosin, in optical density RGB) and 99th-percentile
#: concentrations from Macenko et al., "A method for normalizing histology slides for quantitative analysis",
#: ISBI 2009, as published with the reference implementation (HERef / maxCRef). Replace by fitting your own:
#: ``fit_macenko(load_rgb(path) / 255)`` on a chosen, well-stained image, saved as JSON
#: ``{"stain_matrix": [[..],[..],[..]], "max_concentrations": [.., ..]}``.
MACENKO_REFERENCE = {
    "stain_matrix": [[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]],
    "max_concentrations": [1.9705, 1.0308],
}


def _od(img: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(img, 1.0 / 255, 1.0))


def fit_macenko(img, beta: float = 0.15, alpha: float = 1.0) -> dict:
    """Fit the Macenko stain matrix of an RGB image ``(3, X, Y)`` in [0, 1].

    Returns ``{"stain_matrix": (3, 2) list (H, E columns), "max_concentrations": [H99, E99]}``. Raises
    ``ValueError`` when the image has too few stained pixels (optical density above ``beta``).
    """
    arr = convert_to_numpy(img, dtype=np.float64).reshape(3, -1)
    od = _od(arr)
    od_hat = od[:, np.all(od > beta, axis=0)]
    if od_hat.shape[1] < 10:
        raise ValueError("too few stained pixels to fit a Macenko stain matrix")
    _, eigvecs = np.linalg.eigh(np.cov(od_hat))
    plane = eigvecs[:, 1:3]  # two largest eigenvalues
    proj = plane.T @ od_hat
    phi = np.arctan2(proj[1], proj[0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1 *= np.sign(v1.sum()) or 1.0
    v2 *= np.sign(v2.sum()) or 1.0
    he = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)  # haematoxylin has more red OD
    he /= np.linalg.norm(he, axis=0, keepdims=True)
    conc = np.linalg.lstsq(he, od, rcond=None)[0]
    max_c = np.percentile(conc, 99, axis=1)
    return {"stain_matrix": he.tolist(), "max_concentrations": max_c.tolist()}


def load_macenko_reference(reference: str | os.PathLike | Mapping | None) -> dict:
    """``None`` -> :data:`MACENKO_REFERENCE`; a mapping is used as is; a ``.json`` path is read; any other path
    is an image whose stains are fitted (:func:`fit_macenko`)."""
    if reference is None:
        return MACENKO_REFERENCE
    if isinstance(reference, Mapping):
        return dict(reference)
    path = os.fspath(reference)
    if path.lower().endswith(".json"):
        try:
            with open(path, encoding="utf-8") as f:
                ref = json.load(f)
            np.asarray(ref["stain_matrix"], dtype=float).reshape(3, 2)
            np.asarray(ref["max_concentrations"], dtype=float).reshape(2)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CadpipeInputError(path, f"not a Macenko reference JSON: {e}") from e
        return ref
    try:
        return fit_macenko(load_rgb(path) / 255.0)
    except ValueError as e:
        raise CadpipeInputError(path, str(e)) from e


class MacenkoNormalize(Transform):
    """Macenko stain normalisation of an RGB image ``(3, X, Y)`` in [0, 1] to a reference.

    The image's own H&E matrix is fitted (:func:`fit_macenko`), concentrations are rescaled to the reference's
    99th percentiles and recomposed with the reference stain matrix. An image with too little stain (blank
    background) is returned unchanged. Reference: Macenko et al., ISBI 2009.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, reference: str | os.PathLike | Mapping | None = None, beta: float = 0.15, alpha: float = 1.0):
        ref = load_macenko_reference(reference)
        self.ref_he = np.asarray(ref["stain_matrix"], dtype=np.float64).reshape(3, 2)
        self.ref_max = np.asarray(ref["max_concentrations"], dtype=np.float64).reshape(2)
        self.beta, self.alpha = beta, alpha

    def __call__(self, img):
        arr = convert_to_numpy(img, dtype=np.float64)
        try:
            fit = fit_macenko(arr, self.beta, self.alpha)
        except (ValueError, np.linalg.LinAlgError):
            return img
        he = np.asarray(fit["stain_matrix"])
        od = _od(arr.reshape(3, -1))
        conc = np.linalg.lstsq(he, od, rcond=None)[0]
        conc *= (self.ref_max / np.maximum(np.asarray(fit["max_concentrations"]), 1e-6))[:, None]
        out = np.exp(-(self.ref_he @ conc)).reshape(arr.shape).clip(0, 1).astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class MacenkoNormalized(MapTransform):
    """Dictionary twin of :class:`MacenkoNormalize`."""

    def __init__(self, keys: KeysCollection, reference=None, beta: float = 0.15, alpha: float = 1.0,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.op = MacenkoNormalize(reference, beta, alpha)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


# ----------------------------------------------------------------------------------------------- CLAHE
class LuminanceCLAHE(Transform):
    """CLAHE on the L channel of CIELAB, colour (a, b) kept: RGB ``(3, X, Y)`` in [0, 1] -> same.

    ``clip_limit`` and ``kernel_size`` follow ``skimage.exposure.equalize_adapthist`` (used here, on CPU; the
    same semantics as ``cadpipe.transforms.CLAHE``).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, clip_limit: float = 0.01, kernel_size: int | None = None):
        self.clip_limit = clip_limit
        self.kernel_size = kernel_size

    def __call__(self, img):
        from skimage.color import lab2rgb, rgb2lab
        from skimage.exposure import equalize_adapthist

        arr = convert_to_numpy(img, dtype=np.float64).clip(0, 1)
        lab = rgb2lab(arr.transpose(1, 2, 0))
        lum = lab[..., 0] / 100.0
        lab[..., 0] = equalize_adapthist(lum, kernel_size=self.kernel_size, clip_limit=self.clip_limit) * 100.0
        out = lab2rgb(lab).transpose(2, 0, 1).astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class LuminanceCLAHEd(MapTransform):
    """Dictionary twin of :class:`LuminanceCLAHE`."""

    def __init__(self, keys: KeysCollection, clip_limit: float = 0.01, kernel_size: int | None = None,
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.op = LuminanceCLAHE(clip_limit, kernel_size)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


# ----------------------------------------------------------------------------------------------- jitter
class RandColorJitter(Randomizable, Transform):
    """Random brightness, contrast, saturation and per-channel (hue-like) scaling of an RGB ``(3, ...)`` image in
    [0, 1]; each factor is drawn uniformly in ``[1 - f, 1 + f]`` (``hue``: per channel). Output clipped to [0, 1]."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 0.5, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1,
                 hue: float = 0.05):
        self.prob = prob
        self.f = (brightness, contrast, saturation, hue)
        self._do = False
        self._factors = (1.0, 1.0, 1.0, np.ones(3))

    def randomize(self, data=None):
        self._do = self.R.rand() < self.prob
        b, c, s, h = self.f
        self._factors = (self.R.uniform(1 - b, 1 + b), self.R.uniform(1 - c, 1 + c), self.R.uniform(1 - s, 1 + s),
                         self.R.uniform(1 - h, 1 + h, size=3))

    def __call__(self, img, randomize: bool = True):
        if randomize:
            self.randomize()
        if not self._do:
            return img
        t = convert_to_tensor(img, track_meta=False, dtype=torch.float32)
        b, c, s, h = self._factors
        t = t * b
        t = (t - t.mean()) * c + t.mean()
        grey = t.mean(0, keepdim=True)
        t = (t - grey) * s + grey
        t = t * torch.as_tensor(h, dtype=t.dtype).view(3, *[1] * (t.ndim - 1))
        return convert_to_dst_type(t.clamp(0, 1), img)[0]


class RandColorJitterd(Randomizable, MapTransform):
    """Dictionary twin of :class:`RandColorJitter` (same factors for all ``keys``)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.5, brightness: float = 0.1, contrast: float = 0.1,
                 saturation: float = 0.1, hue: float = 0.05, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.op = RandColorJitter(prob, brightness, contrast, saturation, hue)

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.op.set_random_state(seed, state)
        return self

    def randomize(self, data=None):
        self.op.randomize()

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        for key in self.key_iterator(d):
            d[key] = self.op(d[key], randomize=False)
        return d
