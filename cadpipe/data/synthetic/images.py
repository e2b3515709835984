"""Synthetic plain images (PNG 8/16-bit, JPEG, TIFF 8/16-bit; grey or RGB) with known pixel arrays.

Every file name contains ``synthetic``. Arrays are returned in numpy ``[row, col(, rgb)]`` order as written;
MONAI readers (and ``LoadStudyImage``) give them back as ``(C, X=cols, Y=rows)``, i.e. ``out[c, col, row]``.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["synthetic_pattern", "write_image", "write_rgb_cxr"]


def synthetic_pattern(rows: int = 40, cols: int = 56, channels: int = 1, bits: int = 8, seed: int = 0) -> np.ndarray:
    """A smooth gradient + disc + noise pattern, ``(rows, cols)`` or ``(rows, cols, channels)``, uint8/uint16."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols].astype(np.float64)
    base = 0.2 + 0.5 * c / max(cols - 1, 1) + 0.1 * r / max(rows - 1, 1)
    disc = (r - rows * 0.4) ** 2 + (c - cols * 0.6) ** 2 < (min(rows, cols) * 0.2) ** 2
    base[disc] += 0.2
    top = 2**bits - 1
    dtype = np.uint8 if bits <= 8 else np.uint16
    if channels == 1:
        img = base + rng.normal(0, 0.01, base.shape)
        return np.clip(np.round(img * top), 0, top).astype(dtype)
    tint = np.array([1.0, 0.8, 0.6, 1.0][:channels])
    img = base[..., None] * tint + rng.normal(0, 0.01, (rows, cols, channels))
    if channels == 4:
        img[..., 3] = 1.0
    return np.clip(np.round(img * top), 0, top).astype(dtype)


def write_image(
    path: str | os.PathLike, rows: int = 40, cols: int = 56, channels: int = 1, bits: int = 8, seed: int = 0,
    quality: int = 95,
) -> dict:
    """Write the pattern to ``path``; format from the suffix (.png, .jpg/.jpeg, .tif/.tiff). 16-bit: PNG/TIFF, grey.

    Returns ``{"path", "array" (as written; for JPEG the decoded lossy pixels), "lossless"}``.
    """
    from PIL import Image

    path = os.fspath(path)
    if "synthetic" not in os.path.basename(path).lower():
        raise ValueError(f"synthetic file names must contain 'synthetic': {path}")
    arr = synthetic_pattern(rows, cols, channels, bits, seed)
    lower = path.lower()
    if lower.endswith((".tif", ".tiff")):
        import tifffile

        tifffile.imwrite(path, arr, photometric="rgb" if channels >= 3 else "minisblack", description="SYNTHETIC")
        return {"path": path, "array": arr, "lossless": True}
    if bits > 8 and channels != 1:
        raise ValueError("16-bit synthetic PNG is grey only")
    if lower.endswith((".jpg", ".jpeg")):
        if bits > 8:
            raise ValueError("JPEG is 8-bit")
        Image.fromarray(arr if channels != 4 else arr[..., :3]).save(path, quality=quality)
        decoded = np.asarray(Image.open(path))
        return {"path": path, "array": decoded, "lossless": False, "original": arr}
    Image.fromarray(arr).save(path)
    return {"path": path, "array": arr, "lossless": True}


def write_rgb_cxr(path: str | os.PathLike, rows: int = 48, cols: int = 40, seed: int = 0) -> dict:
    """A grey chest-X-ray-like picture saved as 3 equal RGB channels (how many public CXR JPEG/PNG sets come).
    Returns ``{"path", "array" (rows, cols, 3), "gray" (rows, cols)}``."""
    from PIL import Image

    from cadpipe.data.synthetic.dicom import synthetic_cxr_pixels

    path = os.fspath(path)
    if "synthetic" not in os.path.basename(path).lower():
        raise ValueError(f"synthetic file names must contain 'synthetic': {path}")
    gray = (synthetic_cxr_pixels(rows, cols, 12, seed) >> 4).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    Image.fromarray(rgb).save(path)
    return {"path": path, "array": rgb, "gray": gray}
