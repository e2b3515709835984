"""Synthetic radiographs with two dark "lung" fields of known masks, in the Montgomery and Shenzhen layouts.

- Montgomery: ``<root>/CXR_png/<id>.png``, ``<root>/ManualMask/leftMask/<id>.png`` and ``.../rightMask/<id>.png``;
- Shenzhen: ``<root>/CXR_png/<id>.png`` and ``<root>/mask/<id>_mask.png``.

Every file name contains ``synthetic``. Writers return the ground truth: ``{image_path: lung mask (rows, cols) bool}``.
The patient's left lung is on the image's right (radiological convention), as in the public sets.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

__all__ = ["synthetic_lung_cxr", "write_synthetic_montgomery", "write_synthetic_shenzhen"]


def synthetic_lung_cxr(size: int | tuple[int, int] = 128, rng=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One radiograph as float32 ``(rows, cols)`` in [0, 1] plus the right-lung and left-lung masks (bool).

    Body bright, two darker elliptical lung fields at random positions/sizes, bright spine and heart, rib stripes and
    noise (the rib stripes are inside the masks, so the net must learn the field, not a grey level).
    """
    rng = np.random.default_rng(rng)
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = yy / h, xx / w
    img = np.full((h, w), 0.08, np.float32)
    body = ((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.52) ** 2 < 1
    img[body] = rng.uniform(0.5, 0.65)
    masks = []
    cy = 0.47 + rng.uniform(-0.04, 0.04)
    for side in (-1, 1):  # image left = patient's right lung
        cx = 0.5 + side * (0.19 + rng.uniform(-0.03, 0.03))
        rx, ry = rng.uniform(0.11, 0.15), rng.uniform(0.22, 0.3)
        m = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        masks.append(m & body)
        img[m & body] = rng.uniform(0.18, 0.3)
    ribs = np.sin(y * np.pi * 16 + rng.uniform(0, np.pi)) > 0.8
    img[ribs & body] += 0.1
    img[(np.abs(x - 0.5) < 0.04) & body] = 0.8
    heart = ((x - 0.55) / 0.09) ** 2 + ((y - 0.64) / 0.09) ** 2 < 1
    img[heart] = 0.7
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img, 0, 1).astype(np.float32), masks[0], masks[1]


def _png(arr: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    a = arr.astype(np.float32)
    Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8) if arr.dtype != bool else (arr * 255).astype(np.uint8)).save(path)


def write_synthetic_montgomery(root: str, n: int = 8, size=128, seed: int = 0) -> dict[str, np.ndarray]:
    """Montgomery layout with ``n`` patients (one image each, ``synthetic_MCUCXR_<k>_<0|1>.png``)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for k in range(n):
        img, right, left = synthetic_lung_cxr(size, rng)
        name = f"synthetic_MCUCXR_{k:04d}_{k % 2}.png"
        p = os.path.join(root, "CXR_png", name)
        _png(img, p)
        _png(left, os.path.join(root, "ManualMask", "leftMask", name))
        _png(right, os.path.join(root, "ManualMask", "rightMask", name))
        truth[p] = left | right
    return truth


def write_synthetic_shenzhen(root: str, n: int = 8, size=128, seed: int = 1) -> dict[str, np.ndarray]:
    """Shenzhen layout with ``n`` patients (``synthetic_CHNCXR_<k>_<0|1>.png`` and ``mask/<stem>_mask.png``)."""
    rng = np.random.default_rng(seed)
    truth = {}
    for k in range(n):
        img, right, left = synthetic_lung_cxr(size, rng)
        stem = f"synthetic_CHNCXR_{k:04d}_{k % 2}"
        p = os.path.join(root, "CXR_png", stem + ".png")
        _png(img, p)
        _png(left | right, os.path.join(root, "mask", stem + "_mask.png"))
        truth[p] = left | right
    return truth
