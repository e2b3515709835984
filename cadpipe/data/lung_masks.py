"""Datalists for lung segmentation: Montgomery County and Shenzhen chest X-ray sets.

- ``montgomery``: ``<dir>/CXR_png/*.png`` with ``<dir>/ManualMask/leftMask/<same name>`` and
  ``.../rightMask/<same name>``; an item's ``"label"`` is the list of both mask files (merged by
  :class:`cadpipe.transforms.LoadLungMaskd`). A missing mask raises :class:`CadpipeInputError`.
- ``shenzhen``: ``<dir>/CXR_png/*.png`` with ``<dir>/mask/<stem>_mask.png`` (``masks/`` also accepted). The public
  set has images without a mask: those are logged with their path and left out (``strict=True`` raises instead).
- ``both``: ``dataset_dir`` holds one sub-folder of each layout (any names; recognised by their content).

Splits are seeded and patient-level: ``<prefix>_<number>`` (the trailing ``_0``/``_1`` finding flag dropped) is the
patient, so a patient's images never sit on both sides.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["montgomery_items", "shenzhen_items", "lung_items", "lung_splits", "lung_datalist", "patient_id"]

logger = logging.getLogger(__name__)
_EXT = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def patient_id(path: str) -> str:
    """``MCUCXR_0001_0.png`` → ``MCUCXR_0001`` (the trailing normal/abnormal flag is not part of the patient)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    head, _, tail = stem.rpartition("_")
    return head if head and tail in ("0", "1") else stem


def _images(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise CadpipeInputError(folder, "image folder CXR_png not found")
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(_EXT) and not f.startswith("."))
    if not files:
        raise CadpipeInputError(folder, "no images in CXR_png")
    return [os.path.join(folder, f) for f in files]


def montgomery_items(root: str) -> list[dict]:
    """``[{"image", "label": [left, right], "patient", "source": "montgomery"}]`` for a Montgomery folder."""
    items = []
    for p in _images(os.path.join(root, "CXR_png")):
        name = os.path.basename(p)
        masks = [os.path.join(root, "ManualMask", side, name) for side in ("leftMask", "rightMask")]
        for m in masks:
            if not os.path.isfile(m):
                raise CadpipeInputError(p, f"lung mask missing: {m}")
        items.append({"image": p, "label": masks, "patient": patient_id(p), "source": "montgomery"})
    return items


def shenzhen_items(root: str, strict: bool = False) -> list[dict]:
    """``[{"image", "label": [mask], "patient", "source": "shenzhen"}]``; images without a mask logged and skipped."""
    mask_dir = next((os.path.join(root, d) for d in ("mask", "masks") if os.path.isdir(os.path.join(root, d))), None)
    if mask_dir is None:
        raise CadpipeInputError(root, "mask folder (mask/ or masks/) not found (Shenzhen layout expected)")
    items = []
    for p in _images(os.path.join(root, "CXR_png")):
        stem, ext = os.path.splitext(os.path.basename(p))
        m = os.path.join(mask_dir, f"{stem}_mask{ext}")
        if not os.path.isfile(m):
            if strict:
                raise CadpipeInputError(p, f"lung mask missing: {m}")
            logger.warning("skipping %s: lung mask missing: %s", p, m)
            continue
        items.append({"image": p, "label": [m], "patient": patient_id(p), "source": "shenzhen"})
    if not items:
        raise CadpipeInputError(root, "no image has a lung mask")
    return items


def _is_montgomery(d: str) -> bool:
    return os.path.isdir(os.path.join(d, "ManualMask"))


def _is_shenzhen(d: str) -> bool:
    return any(os.path.isdir(os.path.join(d, m)) for m in ("mask", "masks"))


def lung_items(dataset_dir: str, layout: str = "montgomery") -> list[dict]:
    """All labelled items of ``dataset_dir`` in ``layout`` (``montgomery`` | ``shenzhen`` | ``both``)."""
    dataset_dir = os.fspath(dataset_dir)
    if not os.path.isdir(dataset_dir):
        raise CadpipeInputError(dataset_dir, "dataset folder not found")
    if layout == "montgomery":
        return montgomery_items(dataset_dir)
    if layout == "shenzhen":
        return shenzhen_items(dataset_dir)
    if layout != "both":
        raise CadpipeInputError(dataset_dir, f"unknown dataset_layout {layout!r} (use montgomery, shenzhen or both)")
    subs = [os.path.join(dataset_dir, s) for s in sorted(os.listdir(dataset_dir))]
    mont = [s for s in subs if os.path.isdir(s) and _is_montgomery(s)]
    shen = [s for s in subs if os.path.isdir(s) and _is_shenzhen(s) and not _is_montgomery(s)]
    if not mont or not shen:
        raise CadpipeInputError(
            dataset_dir, "dataset_layout 'both' needs one Montgomery sub-folder (with ManualMask/) and one Shenzhen "
            f"sub-folder (with mask/); found {len(mont)} and {len(shen)}")
    return [i for s in mont for i in montgomery_items(s)] + [i for s in shen for i in shenzhen_items(s)]


def lung_splits(dataset_dir: str, layout: str = "montgomery", val_fraction: float = 0.2, test_fraction: float = 0.1,
                seed: int = 0) -> dict[str, list[dict]]:
    """Seeded patient-level ``train`` / ``val`` / ``test`` split (each non-empty fraction gets at least one patient)."""
    items = lung_items(dataset_dir, layout)
    patients = sorted({(i["source"], i["patient"]) for i in items})
    order = np.random.default_rng(int(seed)).permutation(len(patients))
    n = len(patients)
    n_test = max(1, int(round(n * test_fraction))) if test_fraction > 0 and n > 2 else 0
    n_val = max(1, int(round(n * val_fraction))) if val_fraction > 0 and n - n_test > 1 else 0
    side = {}
    for rank, idx in enumerate(order):
        side[patients[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    out = {"train": [], "val": [], "test": []}
    for i in items:
        out[side[(i["source"], i["patient"])]].append(i)
    return out


def lung_datalist(dataset_dir: str, layout: str = "montgomery", split: str = "train", val_fraction: float = 0.2,
                  test_fraction: float = 0.1, seed: int = 0) -> list[dict]:
    """One split of :func:`lung_splits` (``"all"`` gives every item)."""
    if split == "all":
        return lung_items(dataset_dir, layout)
    return lung_splits(dataset_dir, layout, val_fraction, test_fraction, seed)[split]
