"""Synthetic NIfTI volumes with spherical "lesions" and their known masks, on a non-identity affine.

Every file name contains ``synthetic``; the NIfTI header ``descrip`` says SYNTHETIC. Arrays are returned in
nibabel voxel order ``(i, j, k)`` — what MONAI's ``NibabelReader`` / ``LoadStudyImage`` give as ``(1, i, j, k)``.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["synthetic_affine", "write_lesion_volume", "write_nan_nifti"]


def synthetic_affine(spacing=(1.2, 0.9, 2.0), angle_deg: float = 15.0, origin=(-20.0, 12.5, 30.0)) -> np.ndarray:
    """A voxel->RAS affine with anisotropic spacing, a rotation about z, and an offset (never the identity)."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def write_lesion_volume(
    path: str | os.PathLike,
    shape: tuple[int, int, int] = (32, 28, 20),
    n_lesions: int = 2,
    radius: tuple[float, float] = (2.5, 4.5),
    affine: np.ndarray | None = None,
    mask_path: str | os.PathLike | None = None,
    background: float = 100.0,
    lesion_value: float = 300.0,
    noise: float = 10.0,
    seed: int = 0,
) -> dict:
    """Write an MR-like volume (float32) with ``n_lesions`` bright spheres and, when ``mask_path`` is given (or by
    default next to it: ``..._mask.nii.gz``), the label mask (uint8, lesion k has label 1 — binary).

    Returns ``{"path", "mask_path", "image", "mask", "affine", "centers" (voxel), "radii" (voxel)}``.
    """
    import nibabel as nib

    path = os.fspath(path)
    if "synthetic" not in os.path.basename(path).lower():
        raise ValueError(f"synthetic file names must contain 'synthetic': {path}")
    if mask_path is None:
        base = path[: -len(".nii.gz")] if path.endswith(".nii.gz") else os.path.splitext(path)[0]
        mask_path = base + "_mask.nii.gz"
    mask_path = os.fspath(mask_path)
    rng = np.random.default_rng(seed)
    affine = synthetic_affine() if affine is None else np.asarray(affine, dtype=np.float64)
    grid = np.indices(shape).astype(np.float64)
    image = np.full(shape, background, dtype=np.float64)
    # head-like ellipsoid so the background is not flat
    centre = (np.asarray(shape) - 1) / 2.0
    head = sum(((grid[d] - centre[d]) / (shape[d] * 0.45)) ** 2 for d in range(3)) < 1
    image[~head] = 0.0
    mask = np.zeros(shape, dtype=np.uint8)
    centers, radii = [], []
    for _ in range(n_lesions):
        r = float(rng.uniform(*radius))
        c = np.array([rng.uniform(r + 1, s - r - 2) for s in shape])
        sphere = sum((grid[d] - c[d]) ** 2 for d in range(3)) <= r**2
        mask[sphere] = 1
        image[sphere] = lesion_value
        centers.append(c)
        radii.append(r)
    image += rng.normal(0, noise, shape) * head
    image = image.astype(np.float32)
    img = nib.Nifti1Image(image, affine)
    img.header["descrip"] = b"SYNTHETIC cadpipe volume"
    nib.save(img, path)
    m = nib.Nifti1Image(mask, affine)
    m.header["descrip"] = b"SYNTHETIC cadpipe lesion mask"
    nib.save(m, mask_path)
    return {
        "path": path,
        "mask_path": mask_path,
        "image": image,
        "mask": mask,
        "affine": affine,
        "centers": np.asarray(centers),
        "radii": np.asarray(radii),
    }


def write_nan_nifti(path: str | os.PathLike, shape=(8, 8, 4), fraction: float = 1.0, seed: int = 0) -> dict:
    """A float32 NIfTI where ``fraction`` of the voxels are NaN (1.0 = full of NaN): bad input for the loaders."""
    import nibabel as nib

    path = os.fspath(path)
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 1, shape).astype(np.float32)
    data[rng.random(shape) < fraction] = np.nan
    if fraction > 0 and not np.isnan(data).any():
        data.flat[0] = np.nan
    img = nib.Nifti1Image(data, synthetic_affine())
    img.header["descrip"] = b"SYNTHETIC cadpipe NaN volume"
    nib.save(img, path)
    return {"path": path, "image": data}
