"""Orientation for pipelines that take both 2D images and 3D volumes.

MONAI's ``Orientation(axcodes="RAS")`` warns on every 2D image that its axcodes are longer than the image's
spatial dimensions (it then uses the first two). A bundle scoring LGG TIFF slices and NIfTI volumes with one
pipeline would print that for every slice. :class:`SpatialOrientation` gives MONAI's transform as many letters as
the image has spatial dimensions, so nothing is expected to warn; the work and the inverse are MONAI's (MONAI's
inverse of a 2D orientation rebuilds 3-letter axcodes from the 4x4 affine and gives the same warning: that one
expected message is filtered there, and only there).

A 2D image can also be a plane in 3D space: a single DICOM slice whose 4x4 affine places its two axes along
ImageOrientationPatient, coronal, sagittal or oblique. MONAI reorients a 2D image from the top-left 2x2 block of
its affine (the R and A components of its axes); for any plane but an axial one that block is singular (a coronal
slice's column axis has no R or A component) and nibabel fails (``Unable to find out axis ... in start_ornt``).
:class:`PlaneOrientation` reorients such an image from its full 3D affine, as ``nibabel.as_closest_canonical``
does for a volume: each image axis is matched to its nearest patient axis (:func:`plane_orientation`), then the
two axes are put in the order and direction those patient axes have in ``axcodes`` (a coronal slice becomes
R, S; a sagittal one A, S; an axial one R, A as before). The affine keeps the plane's true (oblique) directions
and the inverse restores the input's array and affine exactly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
import warnings
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Transform
from monai.transforms.spatial.functional import orientation as _orientation
from monai.utils import TraceKeys, convert_data_type

__all__ = ["SpatialOrientation", "SpatialOrientationd", "PlaneOrientation", "plane_orientation"]

_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def plane_orientation(affine: Any, axcodes: str = "RAS", labels: Any = _LABELS) -> np.ndarray | None:
    """The reorientation that brings a 2D image lying in 3D space to ``axcodes``' order and directions.

    Args:
        affine: the image's 4x4 affine (array axes 0, 1 = the image axes; column 2 = its normal, any length > 0).
        axcodes: three letters, one per patient axis (``"RAS"``: x to R, y to A, z to S).
        labels: as MONAI's ``Orientation``.

    Returns:
        a nibabel orientation ``(2, 2)``: row ``i`` = ``[new position of image axis i, 1 or -1 (flip)]``, what
        ``nibabel.orientations.ornt_transform`` gives and MONAI's ``orientation`` function applies; None when the
        affine does not place the two image axes along two different patient axes (not a 4x4 affine, a zero or
        non-finite axis), or ``axcodes`` does not name three axes.

    Each image axis is matched to its nearest patient axis jointly with the normal (``nibabel.io_orientation`` of
    the 3x3 block: the assignment an oblique volume gets from ``as_closest_canonical``), so two oblique axes never
    claim the same patient axis.
    """
    import nibabel as nib

    aff = np.asarray(convert_data_type(affine, np.ndarray)[0], dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all() or len(axcodes) != 3:
        return None
    if min(np.linalg.norm(aff[:3, 0]), np.linalg.norm(aff[:3, 1])) <= 0:
        return None
    try:
        dst = nib.orientations.axcodes2ornt(axcodes, labels=labels)
        src = nib.io_orientation(aff)
    except ValueError:
        return None
    if np.isnan(src[:2]).any() or np.isnan(dst).any():
        return None
    # where each image axis's patient axis comes in axcodes, and the direction axcodes wants for it
    position = {int(axis): p for p, axis in enumerate(dst[:, 0])}
    wanted = {int(axis): flip for axis, flip in dst}
    ranks = [position[int(src[i, 0])] for i in range(2)]
    return np.array([[0.0 if ranks[i] < ranks[1 - i] else 1.0, src[i, 1] * wanted[int(src[i, 0])]]
                     for i in range(2)])


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The orientation that undoes ``ornt`` (applied to the array ``ornt`` produced)."""
    inv = np.zeros_like(ornt)
    for i, (new, flip) in enumerate(ornt):
        inv[int(new)] = [i, flip]
    return inv


def _plane_affine(img) -> np.ndarray | None:
    """The 4x4 affine of a 2D channel-first MetaTensor (None for other images)."""
    if not isinstance(img, MetaTensor) or img.ndim != 3:
        return None
    aff = convert_data_type(img.peek_pending_affine(), np.ndarray)[0]
    return aff if aff.shape == (4, 4) else None


class PlaneOrientation(InvertibleTransform, Transform):
    """Reorient a 2D image that lies in 3D space (a channel-first ``MetaTensor`` ``(C, X, Y)`` with a 4x4 affine)
    to ``axcodes``, from its full 3D affine: see the module docstring and :func:`plane_orientation`.

    Args:
        axcodes: the target orientation of the patient axes (three letters, ``"RAS"``).
        labels: as MONAI's ``Orientation``.

    ``__call__`` raises ``ValueError`` when the affine does not place the image's axes (:meth:`applies` says so
    beforehand). The result's affine is the input's composed with the flip/transpose (the plane's directions are
    kept, oblique ones included); :meth:`inverse` restores the input's array and affine.
    """

    backend = Orientation.backend

    def __init__(self, axcodes: str = "RAS", labels: Any = _LABELS):
        self.axcodes, self.labels = axcodes, labels

    def applies(self, img) -> bool:
        """True for a 2D ``MetaTensor`` whose 4x4 affine places both image axes (:func:`plane_orientation`)."""
        aff = _plane_affine(img)
        return aff is not None and plane_orientation(aff, self.axcodes, self.labels) is not None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        aff = _plane_affine(img)
        ornt = None if aff is None else plane_orientation(aff, self.axcodes, self.labels)
        if ornt is None:
            raise ValueError("PlaneOrientation: expected a 2D channel-first MetaTensor whose 4x4 affine places both "
                             "image axes in 3D space")
        return _orientation(img, aff, ornt, lazy=False, transform_info=self.get_transform_info())

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        original = np.asarray(convert_data_type(transform[TraceKeys.EXTRA_INFO]["original_affine"], np.ndarray)[0])
        forward = plane_orientation(original, self.axcodes, self.labels)
        current = convert_data_type(data.peek_pending_affine(), np.ndarray)[0]
        with self.trace_transform(False):
            return _orientation(data, current, _invert_ornt(forward), lazy=False,
                                transform_info=self.get_transform_info())


class SpatialOrientation(InvertibleTransform, Transform):
    """Reorient a channel-first image to the first ``D`` letters of ``axcodes``, ``D`` its spatial dimensions.

    Args:
        axcodes: target orientation for 3D (``"RAS"``); 2D images get ``"RA"``, except a 2D image lying in 3D
            space (4x4 affine: a DICOM slice of any plane), which :class:`PlaneOrientation` reorients to the
            nearest of ``axcodes``' patient axes (coronal R, S; sagittal A, S; axial R, A).
        labels: as MONAI's ``Orientation`` (default ``(("L", "R"), ("P", "A"), ("I", "S"))``).

    Input and output: ``MetaTensor`` ``(C, spatial...)``; the affine is updated, ``inverse`` undoes it.
    """

    backend = Orientation.backend

    def __init__(self, axcodes: str = "RAS", labels: Any = _LABELS):
        self.axcodes = axcodes
        self._by_dims = {d: Orientation(axcodes=axcodes[:d], labels=labels) for d in range(1, len(axcodes) + 1)}
        self._plane = PlaneOrientation(axcodes=axcodes, labels=labels)

    def _for(self, img: torch.Tensor) -> Orientation:
        dims = img.ndim - 1
        if dims not in self._by_dims:
            raise ValueError(f"SpatialOrientation: {dims} spatial dimensions, axcodes {self.axcodes!r} give at most "
                             f"{len(self.axcodes)} (the image must be channel-first)")
        return self._by_dims[dims]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self._plane.applies(img):
            return self._plane(img)
        return self._for(img)(img)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        ops = getattr(data, "applied_operations", None)
        if ops and ops[-1].get(TraceKeys.CLASS_NAME) == PlaneOrientation.__name__:
            return self._plane.inverse(data)
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
