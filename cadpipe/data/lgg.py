"""TCGA lower-grade glioma (Kaggle "kaggle_3m") layout adapter.

Layout: ``dataset_dir/<patient>/<patient>_<slice>.tif`` with ``<patient>_<slice>_mask.tif`` beside each slice;
256x256 RGB slices (pre-contrast, FLAIR, post-contrast) and masks 0/255. Slices are ordered by their number
(``_2`` before ``_10``), not lexicographically. Splits are by patient, seeded.
"""

from __future__ import annotations

import os
import re

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["find_patients", "lgg_datalist", "split_patients", "stack_patient", "is_lgg_layout"]

_SLICE = re.compile(r"^(?P<patient>.+)_(?P<slice>\d+)\.tiff?$", re.IGNORECASE)
_MASK = re.compile(r"^(?P<patient>.+)_(?P<slice>\d+)_mask\.tiff?$", re.IGNORECASE)


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # unreadable TIFF
        raise CadpipeInputError(path, f"cannot read image: {e}") from e


def _patient_slices(folder: str, check_sizes: bool) -> list[dict]:
    names = os.listdir(folder)
    masks = {n.lower() for n in names if _MASK.match(n)}
    items = []
    for name in names:
        m = _SLICE.match(name)
        if m is None or _MASK.match(name):
            continue
        stem, ext = os.path.splitext(name)
        mask_name = f"{stem}_mask{ext}"
        image = os.path.join(folder, name)
        if mask_name.lower() not in masks:
            raise CadpipeInputError(image, f"slice has no mask: expected {mask_name} beside it")
        mask = os.path.join(folder, next(n for n in names if n.lower() == mask_name.lower()))
        if check_sizes:
            si, sm = _image_size(image), _image_size(mask)
            if si != sm:
                raise CadpipeInputError(mask, f"mask size {sm[0]}x{sm[1]} differs from its slice {name} size {si[0]}x{si[1]}")
        items.append({"image": image, "label": mask, "patient": os.path.basename(folder), "slice": int(m.group("slice"))})
    if not items:
        raise CadpipeInputError(folder, "empty patient folder: no <patient>_<slice>.tif slices in it")
    items.sort(key=lambda d: d["slice"])
    return items


def find_patients(dataset_dir: str | os.PathLike, check_sizes: bool = True) -> dict[str, list[dict]]:
    """Map each patient folder name to its slices ``[{"image", "label", "patient", "slice"}]`` in numeric order.

    Raises:
        CadpipeInputError: the dataset folder is missing or has no patient folders; a slice without its mask;
            a mask whose size differs from its slice; an empty patient folder.
    """
    root = os.fspath(dataset_dir)
    if not os.path.isdir(root):
        raise CadpipeInputError(root, "LGG dataset folder does not exist")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise CadpipeInputError(root, "no patient folders found (expected <patient>/<patient>_<slice>.tif)")
    return {d: _patient_slices(os.path.join(root, d), check_sizes) for d in folders}


def is_lgg_layout(dataset_dir: str | os.PathLike) -> bool:
    """True when some sub-folder holds ``*_<n>.tif`` slices."""
    root = os.fspath(dataset_dir)
    for d in os.listdir(root):
        sub = os.path.join(root, d)
        if os.path.isdir(sub) and any(_SLICE.match(n) for n in os.listdir(sub)):
            return True
    return False


def split_patients(
    patients, val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """Seeded patient-level split into ``{"train", "val", "test"}`` (no patient on two sides).

    At least one patient goes to validation (and to test when ``test_fraction > 0``) when there are enough.
    """
    names = sorted(patients)
    order = np.random.default_rng(seed).permutation(len(names))
    names = [names[i] for i in order]
    n = len(names)
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 and n > 2 else 0
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 and n - n_test > 1 else 0
    return {"test": sorted(names[:n_test]), "val": sorted(names[n_test : n_test + n_val]), "train": sorted(names[n_test + n_val :])}


def lgg_datalist(
    dataset_dir: str | os.PathLike,
    split: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    with_label: bool = True,
) -> list[dict]:
    """MONAI datalist of LGG slices, optionally restricted to one patient-level split ("train", "val", "test")."""
    patients = find_patients(dataset_dir, check_sizes=with_label)
    keep = set(patients) if split in (None, "all") else set(split_patients(patients, val_fraction, test_fraction, seed)[split])
    out = []
    for p in sorted(keep):
        for d in patients[p]:
            out.append(dict(d) if with_label else {k: v for k, v in d.items() if k != "label"})
    return out


def stack_patient(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Stack one patient's slices in numeric slice order.

    Returns:
        ``(image, mask, files)``: image ``(3, rows, cols, n_slices)`` uint8, mask ``(rows, cols, n_slices)`` uint8
        {0, 1}, and the slice file paths in stacking order.
    """
    from PIL import Image

    folder = os.fspath(folder)
    items = _patient_slices(folder, check_sizes=True)
    imgs, masks = [], []
    for d in items:
        img = np.asarray(Image.open(d["image"]).convert("RGB"))
        imgs.append(np.moveaxis(img, -1, 0))
        m = np.asarray(Image.open(d["label"]))
        masks.append((m.max(axis=-1) if m.ndim == 3 else m) > 0)
    return np.stack(imgs, -1), np.stack(masks, -1).astype(np.uint8), [d["image"] for d in items]
