"""Sizes from an image's affine, for images of any orientation.

A 2D image read from DICOM has a 4x4 affine whose first two columns are its axes in patient space: for a coronal,
sagittal or oblique slice they leave the x-y plane, so the determinant of the top-left 2x2 block (what an
axial-only formula takes) is not the pixel's area, and is 0 for a coronal slice. :func:`voxel_size` measures the
area (or volume) the image's own axes span, whatever their direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["voxel_size"]


def voxel_size(affine: Any, ndim: int) -> float:
    """One pixel's area (``ndim`` 2) or one voxel's volume (``ndim`` 3) in the affine's units (mm², mm³).

    Args:
        affine: ``(D + 1, D + 1)`` with ``D >= ndim`` (a 3x3 affine of a 2D image or a 4x4 one of a 2D plane in 3D
            space or of a volume): columns ``0 .. ndim - 1`` are the image axes.
        ndim: the number of image axes measured.

    Returns ``sqrt(det(A^T A))`` for ``A`` the first ``ndim`` columns (spatial rows only): the Gram determinant,
    which is ``|det A|`` for a square ``A``, the parallelogram's area for two axes in 3D (oblique included).
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.ndim != 2 or aff.shape[0] != aff.shape[1] or not 1 <= ndim <= aff.shape[0] - 1:
        raise ValueError(f"voxel_size: a square affine with more than {ndim} spatial rows expected, got {aff.shape}")
    axes = aff[:-1, :ndim]
    return float(np.sqrt(max(0.0, float(np.linalg.det(axes.T @ axes)))))
