"""Synthetic chest X-rays in the Kermany layout, with a learnable pneumonia signal.

A synthetic "CXR" is a dark background with a bright body outline, two darker lung fields, a bright spine and
mediastinum, ribs and noise. PNEUMONIA images add one to three bright blurred opacities inside the lung fields;
NORMAL images do not. Each file name starts with ``synthetic_``. Functions return the ground truth.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

__all__ = ["synthetic_cxr", "write_synthetic_kermany", "write_bad_images"]


def synthetic_cxr(size: int | tuple[int, int] = 256, pneumonia: bool = False, rng=None) -> tuple[np.ndarray, list]:
    """One synthetic CXR as a float32 ``(rows, cols)`` array in [0, 1] and the list of opacity centres (row, col, r).

    The opacity signal is strong enough for a small network to learn in a couple of epochs at 64x64.
    """
    rng = np.random.default_rng(rng)
    h, w = (size, size) if isinstance(size, int) else size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    y, x = yy / h, xx / w
    img = 0.08 + 0.02 * rng.standard_normal()
    img = np.full((h, w), img, np.float32)
    body = ((x - 0.5) / 0.42) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1
    img[body] = 0.55
    lungs = []
    for cx in (0.31, 0.69):
        cx += rng.uniform(-0.02, 0.02)
        lung = ((x - cx) / 0.14) ** 2 + ((y - 0.47) / 0.28) ** 2 < 1
        lungs.append((cx, lung))
        img[lung] = 0.22
    ribs = (np.sin(y * np.pi * 18 + rng.uniform(0, np.pi)) > 0.85) & (lungs[0][1] | lungs[1][1])
    img[ribs] += 0.12
    spine = np.abs(x - 0.5) < 0.05
    img[spine & body] = 0.8
    heart = ((x - 0.54) / 0.1) ** 2 + ((y - 0.62) / 0.1) ** 2 < 1
    img[heart] = 0.7
    opacities = []
    if pneumonia:
        for _ in range(int(rng.integers(1, 4))):
            cx, _ = lungs[int(rng.integers(0, 2))]
            cy = rng.uniform(0.35, 0.65)
            ccx = cx + rng.uniform(-0.06, 0.06)
            r = rng.uniform(0.06, 0.11)
            blob = np.exp(-(((x - ccx) ** 2 + (y - cy) ** 2) / (2 * r**2)))
            img += 0.45 * blob.astype(np.float32)
            opacities.append((float(cy * h), float(ccx * w), float(r * min(h, w))))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    # gentle blur via 3x3 box to look less synthetic
    pad = np.pad(img, 1, mode="edge")
    img = sum(pad[i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    return np.clip(img, 0, 1).astype(np.float32), opacities


def _save_png(arr: np.ndarray, path: str, rgb: bool = False, fmt: str | None = None) -> None:
    from PIL import Image

    u8 = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    im = Image.fromarray(u8, mode="L")
    if rgb:
        im = im.convert("RGB")
    im.save(path, format=fmt)


def write_synthetic_kermany(
    root: str,
    n_per_class: dict | int = 10,
    size: int | tuple[int, int] = 128,
    splits: Sequence[str] = ("train", "test"),
    seed: int = 0,
    vary_size: bool = True,
    n_dicom: int = 0,
    formats: Sequence[str] = ("jpeg", "png"),
) -> list[dict]:
    """Write synthetic CXRs as ``root/<split>/<NORMAL|PNEUMONIA>/synthetic_*.{jpeg,png}``.

    Args:
        root: output folder.
        n_per_class: images per class per split: an int, or ``{split: {"NORMAL": n, "PNEUMONIA": m}}`` or
            ``{split: n}`` (lets tests mimic the 1:3 imbalance of the public data).
        size: base image size; with ``vary_size`` each image gets a random size within ±25%, like the real data.
        splits: which split folders to write.
        seed: random seed.
        n_dicom: per split and class, the first ``n_dicom`` images are written as 12-bit DICOM (window tags set).
        formats: cycled per image; "jpeg" files alternate between greyscale and RGB.

    Returns:
        ground truth rows ``{"image": path, "label": 0|1, "split", "opacities": [(row, col, radius), ...]}``.
    """
    rng = np.random.default_rng(seed)
    truth = []
    base = (size, size) if isinstance(size, int) else tuple(size)
    for split in splits:
        counts = n_per_class.get(split, 0) if isinstance(n_per_class, dict) else n_per_class
        for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
            n = counts.get(cls, 0) if isinstance(counts, dict) else int(counts)
            folder = os.path.join(root, split, cls)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                if vary_size:
                    f = rng.uniform(0.8, 1.25)
                    shape = (max(16, int(base[0] * f)), max(16, int(base[1] * f * rng.uniform(0.9, 1.15))))
                else:
                    shape = base
                arr, ops = synthetic_cxr(shape, pneumonia=bool(label), rng=rng)
                stem = f"synthetic_{split}_{cls.lower()}_{i:04d}"
                if i < n_dicom:
                    path = os.path.join(folder, stem + ".dcm")
                    _write_dicom(arr, path)
                else:
                    fmt = formats[i % len(formats)]
                    path = os.path.join(folder, f"{stem}.{fmt}")
                    _save_png(arr, path, rgb=(fmt == "jpeg" and i % 2 == 1), fmt="JPEG" if fmt == "jpeg" else None)
                truth.append({"image": path, "label": label, "split": split, "opacities": ops})
    return truth


def _write_dicom(arr: np.ndarray, path: str) -> None:
    """A 12-bit MONOCHROME2 DX image (uncompressed) with window tags, holding ``arr`` (the learnable signal)."""
    pix = (np.clip(arr, 0, 1) * 4095).round().astype(np.uint16)
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "SYNTHETIC"
    ds.PatientName = "Synthetic^CXR"
    ds.Modality = "DX"
    ds.SeriesDescription = "synthetic chest x-ray"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = pix.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelSpacing = [0.2, 0.2]
    ds.PixelData = pix.tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_bad_images(folder: str) -> list[str]:
    """Write a zero-byte ``.jpeg`` and a truncated/corrupt ``.png`` into ``folder``; returns their paths."""
    os.makedirs(folder, exist_ok=True)
    zero = os.path.join(folder, "synthetic_bad_zero_byte.jpeg")
    open(zero, "wb").close()
    corrupt = os.path.join(folder, "synthetic_bad_corrupt.png")
    with open(corrupt, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"this is not a png body" * 4)
    return [zero, corrupt]
