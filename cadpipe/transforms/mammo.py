"""Mammogram geometry transforms that keep detection boxes consistent.

Images are channel-first ``(C, X, Y)`` (X = columns, Y = rows); boxes MONAI ``xyxy`` = (col_min, row_min,
col_max, row_max). Each dictionary transform updates the boxes with MONAI's box operations
(``monai.apps.detection.transforms.box_ops``) and records what it did in ``d["mammo_geometry"]``
(``original_size``, ``crop`` = [x0, y0, x1, y1], ``flipped``, ``scale`` = [sx, sy]) so that
:class:`BoxesToOriginald` maps predicted boxes back to the input's pixel grid.

Pipeline: :class:`BreastCropd` (threshold + largest component, which removes film labels and background)
-> :class:`CanonicalSided` (flip so the chest wall is at x = 0) -> CLAHE -> :class:`ResizeLongSided`.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.apps.detection.transforms.box_ops import flip_boxes, zoom_boxes
from monai.config import KeysCollection
from monai.data.box_utils import clip_boxes_to_image
from monai.transforms import MapTransform, Resize, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy, convert_to_tensor

__all__ = [
    "BreastMask",
    "BreastCrop",
    "BreastCropd",
    "CanonicalSide",
    "CanonicalSided",
    "ResizeLongSide",
    "ResizeLongSided",
    "BoxesToOriginald",
    "boxes_to_original",
    "GEOMETRY_KEY",
]

GEOMETRY_KEY = "mammo_geometry"


class BreastMask(Transform):
    """Breast region of a mammogram: smoothed-image Otsu threshold, largest connected component, holes filled.

    Input ``(C, X, Y)`` (channels averaged); output bool ``(1, X, Y)`` of the same type (numpy/tensor).
    Film labels and markers are separate components and are dropped; a blank image gives an all-True mask.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, smooth_sigma: float = 2.0, downsample: int = 4):
        self.smooth_sigma = smooth_sigma
        self.downsample = max(1, int(downsample))

    def __call__(self, img):
        from scipy import ndimage
        from skimage.filters import threshold_otsu

        arr = convert_to_numpy(img, dtype=np.float32).mean(0)
        s = self.downsample
        small = arr[::s, ::s]
        small = ndimage.gaussian_filter(small, self.smooth_sigma / s + 0.5)
        if float(small.max()) <= float(small.min()):
            return convert_to_dst_type(np.ones((1, *arr.shape), bool), img, dtype=bool)[0]
        fg = small > threshold_otsu(small)
        lab, n = ndimage.label(fg)
        if n == 0:
            return convert_to_dst_type(np.ones((1, *arr.shape), bool), img, dtype=bool)[0]
        sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
        keep = ndimage.binary_fill_holes(lab == (1 + int(np.argmax(sizes))))
        full = np.repeat(np.repeat(keep, s, 0), s, 1)[: arr.shape[0], : arr.shape[1]]
        return convert_to_dst_type(full[None], img, dtype=bool)[0]


class BreastCrop(Transform):
    """Crop ``(C, X, Y)`` to the bounding box of :class:`BreastMask` (plus ``margin`` pixels).

    ``__call__`` returns ``(cropped, [x0, y0, x1, y1])``.
    """

    backend = BreastMask.backend

    def __init__(self, margin: int = 8, **mask_kwargs):
        self.margin = margin
        self.masker = BreastMask(**mask_kwargs)

    def __call__(self, img):
        m = convert_to_numpy(self.masker(img))[0]
        xs, ys = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
        X, Y = m.shape
        x0, x1 = max(0, int(xs.min()) - self.margin), min(X, int(xs.max()) + 1 + self.margin)
        y0, y1 = max(0, int(ys.min()) - self.margin), min(Y, int(ys.max()) + 1 + self.margin)
        return img[:, x0:x1, y0:y1], [x0, y0, x1, y1]


def _geometry(d, key) -> dict:
    g = d.get(GEOMETRY_KEY)
    if g is None:
        size = list(d[key].shape[1:])
        g = {"original_size": size, "crop": [0, 0, size[0], size[1]], "flipped": False, "scale": [1.0, 1.0]}
    return copy.deepcopy(g)


def _boxes(d, box_key):
    return None if box_key is None or box_key not in d else convert_to_tensor(d[box_key], dtype=torch.float32).reshape(-1, 4)


class BreastCropd(MapTransform):
    """Dictionary twin of :class:`BreastCrop`: crops ``keys`` and shifts ``box_keys`` (boxes clipped to the crop)."""

    def __init__(self, keys: KeysCollection, box_keys: KeysCollection = (), margin: int = 8, allow_missing_keys=True, **kw):
        super().__init__(keys, allow_missing_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.cropper = BreastCrop(margin=margin, **kw)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        first = self.first_key(d)
        g = _geometry(d, first)
        img, (x0, y0, x1, y1) = self.cropper(d[first])
        for key in self.key_iterator(d):
            d[key] = img if key == first else d[key][:, x0:x1, y0:y1]
        for bk in self.box_keys:
            b = _boxes(d, bk)
            if b is None:
                continue
            b = b - torch.tensor([x0, y0, x0, y0], dtype=b.dtype)
            d[bk], keep = clip_boxes_to_image(b, (x1 - x0, y1 - y0), remove_empty=False)
        ox, oy = g["crop"][0], g["crop"][1]
        g["crop"] = [ox + x0, oy + y0, ox + x1, oy + y1]
        d[GEOMETRY_KEY] = g
        return d


class CanonicalSide(Transform):
    """Flip ``(C, X, Y)`` along X so that the breast (chest wall) is on the low-X side (image left).

    ``__call__`` returns ``(image, flipped)``; the side is the one with more intensity.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img):
        arr = convert_to_numpy(img, dtype=np.float32)
        X = arr.shape[1]
        flipped = bool(arr[:, X // 2 :].sum() > arr[:, : X // 2].sum())
        if flipped:
            img = torch.flip(img, dims=(1,)) if isinstance(img, torch.Tensor) else np.ascontiguousarray(img[:, ::-1])
        return img, flipped


class CanonicalSided(MapTransform):
    """Dictionary twin of :class:`CanonicalSide`; ``box_keys`` flipped with MONAI's ``flip_boxes``."""

    def __init__(self, keys: KeysCollection, box_keys: KeysCollection = (), allow_missing_keys=True):
        super().__init__(keys, allow_missing_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.flipper = CanonicalSide()

    def __call__(self, data):
        d = dict(data)
        first = self.first_key(d)
        g = _geometry(d, first)
        d[first], flipped = self.flipper(d[first])
        for key in self.key_iterator(d):
            if key != first and flipped:
                d[key] = torch.flip(d[key], dims=(1,)) if isinstance(d[key], torch.Tensor) else d[key][:, ::-1].copy()
        size = tuple(d[first].shape[1:])
        for bk in self.box_keys:
            b = _boxes(d, bk)
            if b is not None and flipped:
                d[bk] = flip_boxes(b, spatial_size=size, flip_axes=0)
        g["flipped"] = flipped
        d[GEOMETRY_KEY] = g
        return d


class ResizeLongSide(Transform):
    """Resize ``(C, X, Y)`` so that its longer side is ``long_side`` (aspect kept).

    Default ``mode="area"`` (average pooling: anti-aliased when shrinking, ~10x faster on a 3000x4700 mammogram
    than bilinear with Gaussian anti-aliasing); any MONAI ``Resize`` mode may be given.
    """

    backend = Resize.backend

    def __init__(self, long_side: int = 1024, mode: str = "area"):
        aa = mode not in ("area", "nearest", "nearest-exact")
        self.resizer = Resize(spatial_size=int(long_side), size_mode="longest", mode=mode, anti_aliasing=aa)

    def __call__(self, img):
        return self.resizer(img)


class ResizeLongSided(MapTransform):
    """Dictionary twin of :class:`ResizeLongSide`; ``box_keys`` scaled with MONAI's ``zoom_boxes``."""

    def __init__(self, keys: KeysCollection, long_side: int = 1024, box_keys: KeysCollection = (), mode: str = "area",
                 allow_missing_keys=True):
        super().__init__(keys, allow_missing_keys)
        self.box_keys = [box_keys] if isinstance(box_keys, str) else list(box_keys)
        self.resizer = ResizeLongSide(long_side, mode)

    def __call__(self, data):
        d = dict(data)
        first = self.first_key(d)
        g = _geometry(d, first)
        before = tuple(d[first].shape[1:])
        for key in self.key_iterator(d):
            d[key] = self.resizer(d[key])
        after = tuple(d[first].shape[1:])
        zoom = [a / b for a, b in zip(after, before)]
        for bk in self.box_keys:
            b = _boxes(d, bk)
            if b is not None:
                d[bk] = zoom_boxes(b, zoom)
        g["scale"] = [g["scale"][0] * zoom[0], g["scale"][1] * zoom[1]]
        d[GEOMETRY_KEY] = g
        return d


def boxes_to_original(boxes, geometry: Mapping) -> torch.Tensor:
    """Map ``(N, 4)`` xyxy boxes from the working image back to the input's pixel grid (undo resize, flip, crop)."""
    b = convert_to_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    sx, sy = geometry["scale"]
    b = zoom_boxes(b, [1.0 / sx, 1.0 / sy])
    x0, y0, x1, y1 = geometry["crop"]
    if geometry["flipped"]:
        b = flip_boxes(b, spatial_size=(x1 - x0, y1 - y0), flip_axes=0)
    b = b + torch.tensor([x0, y0, x0, y0], dtype=b.dtype)
    b, _ = clip_boxes_to_image(b, tuple(geometry["original_size"]), remove_empty=False)
    return b


class BoxesToOriginald(MapTransform):
    """Map ``keys`` (box tensors) back to original pixel coordinates using ``d["mammo_geometry"]``; pure."""

    def __init__(self, keys: KeysCollection = "box", allow_missing_keys=True):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = boxes_to_original(d[key], d[GEOMETRY_KEY])
        return d
