"""Orientation for pipelines that take both 2D images and 3D volumes.

MONAI's ``Orientation(axcodes="RAS")`` warns on every 2D image that its axcodes are longer than the image's
spatial dimensions (it then uses the first two). A bundle scoring LGG TIFF slices and NIfTI volumes with one
pipeline would print that for every slice. :class:`SpatialOrientation` gives MONAI's transform as many letters as
the image has spatial dimensions, so nothing is expected to warn; the work and the inverse are MONAI's (MONAI's
inverse of a 2D orientation rebuilds 3-letter axcodes from the 4x4 affine and gives the same warning: that one
expected message is filtered there, and only there).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
import warnings
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Transform

__all__ = ["SpatialOrientation", "SpatialOrientationd"]


class SpatialOrientation(InvertibleTransform, Transform):
    """Reorient a channel-first image to the first ``D`` letters of ``axcodes``, ``D`` its spatial dimensions.

    Args:
        axcodes: target orientation for 3D (``"RAS"``); 2D images get ``"RA"``.
        labels: as MONAI's ``Orientation`` (default ``(("L", "R"), ("P", "A"), ("I", "S"))``).

    Input and output: ``MetaTensor`` ``(C, spatial...)``; the affine is updated, ``inverse`` undoes it.
    """

    backend = Orientation.backend

    def __init__(self, axcodes: str = "RAS", labels: Any = (("L", "R"), ("P", "A"), ("I", "S"))):
        self.axcodes = axcodes
        self._by_dims = {d: Orientation(axcodes=axcodes[:d], labels=labels) for d in range(1, len(axcodes) + 1)}

    def _for(self, img: torch.Tensor) -> Orientation:
        dims = img.ndim - 1
        if dims not in self._by_dims:
            raise ValueError(f"SpatialOrientation: {dims} spatial dimensions, axcodes {self.axcodes!r} give at most "
                             f"{len(self.axcodes)} (the image must be channel-first)")
        return self._by_dims[dims]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self._for(img)(img)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"axcodes \(.*\) length is smaller than number of input spatial")
            return self._for(data).inverse(data)


class SpatialOrientationd(MapTransform, InvertibleTransform):
    """Dictionary twin of :class:`SpatialOrientation` (the same orientation for every key)."""

    backend = SpatialOrientation.backend

    def __init__(self, keys: KeysCollection, axcodes: str = "RAS", allow_missing_keys: bool = False, **kwargs):
        super().__init__(keys, allow_missing_keys)
        self.orient = SpatialOrientation(axcodes=axcodes, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.orient(d[key])
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.orient.inverse(d[key])
        return d
