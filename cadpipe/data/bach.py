"""BACH / ICIAR 2018 microscopy adapter: ``Photos/<Normal|Benign|InSitu|Invasive>/*.tif`` (2048x1536 RGB).

BACH publishes no patient ids; each image is its own group (``patient`` = file stem), so patient-level
metrics equal image-level ones for BACH. Class order is severity order (used by the ``exist`` aggregations).
"""

from __future__ import annotations

import os

from cadpipe.data.breakhis import split_by_patient
from cadpipe.errors import CadpipeInputError

__all__ = ["BACH_CLASSES", "bach_datalist", "split_by_patient"]

BACH_CLASSES = ["Normal", "Benign", "InSitu", "Invasive"]
_SUFFIXES = (".tif", ".tiff")


def _find_photos(root: str) -> str:
    for cand in (os.path.join(root, "Photos"), os.path.join(root, "ICIAR2018_BACH_Challenge", "Photos"), root):
        if any(os.path.isdir(os.path.join(cand, c)) for c in BACH_CLASSES):
            return cand
    raise CadpipeInputError(root, "no BACH layout found (Photos/<Normal|Benign|InSitu|Invasive>/*.tif)")


def bach_datalist(root: str) -> list[dict]:
    """All BACH photos as items ``{"image", "label", "class_name", "patient"}`` (label over :data:`BACH_CLASSES`)."""
    photos = _find_photos(os.fspath(root))
    items = []
    for label, cls in enumerate(BACH_CLASSES):
        folder = os.path.join(photos, cls)
        if not os.path.isdir(folder):
            continue
        for f in sorted(os.listdir(folder)):
            if f.lower().endswith(_SUFFIXES):
                items.append({"image": os.path.join(folder, f), "label": label, "class_name": cls,
                              "patient": f"{cls}/{os.path.splitext(f)[0]}"})
    if not items:
        raise CadpipeInputError(photos, "no .tif photos found in the BACH class folders")
    return items
