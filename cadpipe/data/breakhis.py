"""BreaKHis v1 adapter: ``histology_slides/breast/<benign|malignant>/SOB/<tumour type>/<patient>/<mag>/*.png``.

File names encode everything: ``SOB_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png``, e.g.
``SOB_B_A-14-22549AB-40-001.png`` = benign adenosis, patient ``14-22549AB``, 40X, image 1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["BINARY_CLASSES", "SUBTYPE_CLASSES", "SUBTYPE_CODES", "MAGNIFICATIONS", "parse_breakhis_name",
           "breakhis_datalist", "split_by_patient"]

BINARY_CLASSES = ["benign", "malignant"]
#: code -> folder name; benign first, then malignant (class index order of the subtype task)
SUBTYPE_CODES = {"A": "adenosis", "F": "fibroadenoma", "PT": "phyllodes_tumor", "TA": "tubular_adenoma",
                 "DC": "ductal_carcinoma", "LC": "lobular_carcinoma", "MC": "mucinous_carcinoma",
                 "PC": "papillary_carcinoma"}
SUBTYPE_CLASSES = list(SUBTYPE_CODES.values())
MAGNIFICATIONS = ["40X", "100X", "200X", "400X"]
_NAME = re.compile(r"^SOB_(?P<bm>[BM])_(?P<type>[A-Z]+)-(?P<patient>[0-9]+-[0-9A-Za-z]+)-(?P<mag>[0-9]+)-(?P<seq>[0-9]+)$")


def parse_breakhis_name(path: str) -> dict:
    """Parse a BreaKHis file name; raises :class:`CadpipeInputError` naming the file when it does not match."""
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _NAME.match(stem)
    if not m or m["type"] not in SUBTYPE_CODES:
        raise CadpipeInputError(path, "not a BreaKHis file name (expected SOB_<B|M>_<type>-<yy>-<slide>-<mag>-<seq>)")
    return {"malignant": m["bm"] == "M", "subtype": SUBTYPE_CODES[m["type"]], "patient": m["patient"],
            "magnification": f"{int(m['mag'])}X", "seq": int(m["seq"])}


def _norm_mag(mag) -> str | None:
    if mag in (None, "", "all", "*"):
        return None
    s = str(mag).upper().rstrip("X")
    if not s.isdigit() or f"{int(s)}X" not in MAGNIFICATIONS:
        raise ValueError(f"magnification must be one of {MAGNIFICATIONS} or 'all', got {mag!r}")
    return f"{int(s)}X"


def _find_root(root: str) -> str:
    for cand in (os.path.join(root, "histology_slides", "breast"), os.path.join(root, "breast"), root):
        if os.path.isdir(os.path.join(cand, "benign")) or os.path.isdir(os.path.join(cand, "malignant")):
            return cand
    raise CadpipeInputError(root, "no BreaKHis layout found (histology_slides/breast/<benign|malignant>/SOB/...)")


def breakhis_datalist(root: str, magnification: str | int | None = None, subtypes: bool = False) -> list[dict]:
    """All BreaKHis images under ``root`` as datalist items
    ``{"image", "label", "class_name", "patient", "magnification", "subtype"}``.

    ``subtypes=False``: label over :data:`BINARY_CLASSES`; ``True``: over :data:`SUBTYPE_CLASSES`. The benign/
    malignant folder must agree with the file name, else :class:`CadpipeInputError`.
    """
    base = _find_root(os.fspath(root))
    mag = _norm_mag(magnification)
    items = []
    for bm in BINARY_CLASSES:
        top = os.path.join(base, bm)
        for dirpath, _, files in sorted(os.walk(top)):
            for f in sorted(files):
                if not f.lower().endswith(".png"):
                    continue
                path = os.path.join(dirpath, f)
                info = parse_breakhis_name(path)
                if info["malignant"] != (bm == "malignant"):
                    raise CadpipeInputError(path, f"file name says {'malignant' if info['malignant'] else 'benign'} "
                                                  f"but it lies under {bm}/")
                if mag is not None and info["magnification"] != mag:
                    continue
                cls = info["subtype"] if subtypes else bm
                names = SUBTYPE_CLASSES if subtypes else BINARY_CLASSES
                items.append({"image": path, "label": names.index(cls), "class_name": cls,
                              "patient": info["patient"], "magnification": info["magnification"],
                              "subtype": info["subtype"]})
    if not items:
        raise CadpipeInputError(base, f"no BreaKHis images found (magnification={mag or 'all'})")
    return items


def split_by_patient(items: Sequence[dict], fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0,
                     names: Sequence[str] = ("training", "validation", "test")) -> dict[str, list[dict]]:
    """Seeded split of datalist items by ``item["patient"]``: no patient on two sides.

    Stratified by label: patients are grouped by their majority label, each group is shuffled with
    ``numpy.random.default_rng(seed)`` and cut by cumulative patient-count fractions, so the split is
    reproducible and every split sees every class when there are enough patients; each non-zero fraction gets at
    least one patient when there are enough.
    """
    if len(fractions) != len(names):
        raise ValueError("fractions and names must have the same length")
    label_of: dict = {}
    for it in items:
        label_of.setdefault(it["patient"], []).append(int(it.get("label", 0)))
    patients = sorted(label_of)
    rng = np.random.default_rng(seed)
    total = float(sum(fractions))
    out = {n: [] for n in names}
    assign = {}
    # stratified: patients grouped by their majority label, each group cut by the fractions
    strata: dict[int, list] = {}
    for p in patients:
        strata.setdefault(max(set(label_of[p]), key=label_of[p].count), []).append(p)
    for lab in sorted(strata):
        group = [strata[lab][i] for i in rng.permutation(len(strata[lab]))]
        bounds = np.cumsum(fractions) / total * len(group)
        for i, p in enumerate(group):
            k = int(np.searchsorted(bounds, i + 0.5))
            assign[p] = names[min(k, len(names) - 1)]
    # make sure every non-zero split has a patient when possible
    for k, n in enumerate(names):
        if fractions[k] > 0 and n not in assign.values() and len(patients) >= len(names):
            donor = max(names, key=lambda m: sum(v == m for v in assign.values()))
            p = next(p for p in sorted(assign) if assign[p] == donor)
            assign[p] = n
    for it in items:
        out[assign[it["patient"]]].append(dict(it))
    return out
