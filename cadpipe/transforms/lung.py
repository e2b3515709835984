"""Lung-field transforms for chest X-rays: mask loading, the post-processing steps of the lung segmentation bundle
(threshold, morphological opening, lung bounding box; "keep the two largest components" is MONAI's
``KeepLargestConnectedComponentd(num_components=2)``), and ``LungCrop``/``LungCropd`` which run a trained lung
segmentation bundle and crop a radiograph to its lungs.

Axes follow MONAI's readers: ``(C, X, Y)`` with X = column, Y = row; boxes are ``xyxy`` =
``(col_min, row_min, col_max, row_max)`` in pixel-edge coordinates (``max`` is one past the last lung pixel).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from cadpipe.errors import CadpipeInputError

__all__ = [
    "LoadLungMask", "LoadLungMaskd", "LungThreshold", "LungThresholdd", "MorphOpening", "MorphOpeningd",
    "LungBox", "LungBoxd", "lung_box",
]

logger = logging.getLogger(__name__)


def _fname(x) -> str:
    return str((getattr(x, "meta", None) or {}).get("filename_or_obj", ""))


class LoadLungMask(Transform):
    """Read one or more mask files (Montgomery: left + right; Shenzhen: one) and merge them (logical OR).

    Returns a ``(1, X, Y)`` float32 ``MetaTensor`` of 0/1 with the first file's meta. Files of different sizes raise
    :class:`CadpipeInputError` naming the file.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, paths: str | Sequence[str]) -> MetaTensor:
        from cadpipe.transforms.io_any import LoadStudyImage

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise CadpipeInputError("", "no mask file given")
        load = LoadStudyImage(mode="gray")
        out = None
        for p in paths:
            m = load(p)
            if out is not None and tuple(m.shape) != tuple(out.shape):
                raise CadpipeInputError(p, f"mask size {tuple(m.shape[1:])} differs from {tuple(out.shape[1:])} of {paths[0]}")
            out = (m > 0) if out is None else (out | (m > 0))
        res = out.to(torch.float32)
        return res


class LoadLungMaskd(MapTransform):
    """Dictionary twin of :class:`LoadLungMask`; also checks that the mask has the size of ``image_key``."""

    backend = LoadLungMask.backend

    def __init__(self, keys: KeysCollection = "label", image_key: str | None = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader, self.image_key = LoadLungMask(), image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = d[key]
            d[key] = self.loader(paths)
            img = d.get(self.image_key) if self.image_key else None
            if isinstance(img, torch.Tensor) and tuple(img.shape[1:]) != tuple(d[key].shape[1:]):
                first = paths if isinstance(paths, str) else list(paths)[0]
                raise CadpipeInputError(first, f"mask size {tuple(d[key].shape[1:])} differs from image size "
                                        f"{tuple(img.shape[1:])} of {_fname(img)}")
        return d


class LungThreshold(Transform):
    """Probability map ``(C, X, Y)`` → lung mask ``(1, X, Y)`` (float 0/1): ``img[channel] >= threshold``.

    The thesis thresholds the lung probability at 0.4 (default) rather than 0.5 to keep faint lung borders.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.4, channel: int = 1):
        self.threshold, self.channel = float(threshold), int(channel)

    def __call__(self, img):
        ch = min(self.channel, img.shape[0] - 1)
        out = img[ch : ch + 1] >= self.threshold
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class LungThresholdd(MapTransform):
    """Dictionary twin of :class:`LungThreshold`."""

    backend = LungThreshold.backend

    def __init__(self, keys: KeysCollection = "pred", threshold: float = 0.4, channel: int = 1, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.t = LungThreshold(threshold, channel)

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = self.t(d[k])
        return d


class MorphOpening(Transform):
    """Binary morphological opening of each channel of a ``(C, X, Y)`` mask with a disk of ``radius`` pixels
    (``radius <= 0``: unchanged). Removes thin bridges and specks before component selection."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, radius: int = 3):
        self.radius = int(radius)

    def __call__(self, img):
        if self.radius <= 0:
            return img
        from skimage.morphology import binary_opening, disk

        arr = np.asarray(convert_to_tensor(img, track_meta=False).detach().cpu().numpy()) > 0
        fp = disk(self.radius)
        out = np.stack([binary_opening(c, fp) for c in arr]).astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class MorphOpeningd(MapTransform):
    """Dictionary twin of :class:`MorphOpening`."""

    backend = MorphOpening.backend

    def __init__(self, keys: KeysCollection = "pred", radius: int = 3, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.t = MorphOpening(radius)

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = self.t(d[k])
        return d


def lung_box(mask) -> list[float] | None:
    """``xyxy`` box ``[col_min, row_min, col_max + 1, row_max + 1]`` of the non-zero pixels of a ``(1, X, Y)`` or
    ``(X, Y)`` mask, or ``None`` when it is empty."""
    arr = np.asarray(convert_to_tensor(mask, track_meta=False).detach().cpu().numpy())
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 else arr
    xs, ys = np.nonzero(arr > 0)
    if xs.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class LungBox(Transform):
    """Mask ``(1, X, Y)`` → ``xyxy`` float tensor ``(4,)`` of the lungs' bounding box, or an empty ``(0,)`` tensor."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, mask) -> torch.Tensor:
        b = lung_box(mask)
        return torch.tensor(b if b is not None else [], dtype=torch.float32)


class LungBoxd(MapTransform):
    """Adds ``box_key`` (``xyxy`` list of 4 floats, or ``[]``) and ``found_key`` (bool) computed from ``keys``."""

    backend = LungBox.backend

    def __init__(self, keys: KeysCollection = "pred", box_key: str = "lung_box", found_key: str = "lung_found",
                 allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.box_key, self.found_key = box_key, found_key

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            b = lung_box(d[k])
            d[self.box_key] = b if b is not None else []
            d[self.found_key] = b is not None
        return d
