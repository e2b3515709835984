"""CBIS-DDSM adapter: description CSVs + DICOM images and ROI masks matched by DICOM identifiers.

The CSV's ``image file path`` is ``<PatientID folder>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm`` while
the downloaded (TCIA) folders are named ``<PatientID>/<date>-DDSM-<5 digits>/<n>-full mammogram images-<5 digits>/1-1.dcm``.
So every DICOM under the root is indexed by its SeriesInstanceUID (header only) and CSV rows are matched by
the series UID in their path, falling back to (PatientID folder, StudyInstanceUID). Rows that match no file are
reported (returned, and logged), never silently dropped.

Boxes come from the ROI mask DICOMs (the binary image among the mask series' files, as CBIS sometimes stores
the cropped image in the same series): MONAI xyxy ``(col_min, row_min, col_max + 1, row_max + 1)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["index_dicoms", "cbis_datalist", "CBIS_COLUMNS"]

logger = logging.getLogger(__name__)
CBIS_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id", "abnormality type", "pathology",
                "image file path", "ROI mask file path")
_PATHOLOGY = {"MALIGNANT": 1, "BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0}


def index_dicoms(root: str | os.PathLike) -> dict:
    """``{"series": {SeriesInstanceUID: [paths]}, "study": {(PatientID, StudyInstanceUID): [paths]}}``."""
    import pydicom

    series: dict[str, list[str]] = {}
    study: dict[tuple, list[str]] = {}
    for p in sorted(Path(root).rglob("*.dcm")):
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "StudyInstanceUID", "PatientID"])
        except Exception as e:  # noqa: BLE001 - reported with the file name
            raise CadpipeInputError(p, f"not a readable DICOM file ({e})") from e
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(str(p))
        study.setdefault((str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", ""))), []).append(str(p))
    return {"series": series, "study": study}


def _match(csv_path: str, index: dict) -> list[str]:
    parts = [p for p in str(csv_path).strip().replace("\\", "/").split("/") if p]
    if len(parts) >= 3 and parts[2] in index["series"]:
        return index["series"][parts[2]]
    if len(parts) >= 2:
        return index["study"].get((parts[0], parts[1]), [])
    return []


def _mask_box(paths: list[str], shape) -> np.ndarray | None:
    import pydicom

    for p in paths:
        arr = pydicom.dcmread(p).pixel_array
        if arr.shape != tuple(shape) or len(np.unique(arr)) > 2:
            continue  # the cropped image shares the series in some CBIS folders
        r, c = np.nonzero(arr)
        if r.size == 0:
            raise CadpipeInputError(p, "ROI mask is empty")
        return np.array([c.min(), r.min(), c.max() + 1, r.max() + 1], dtype=np.float32)
    return None


def cbis_datalist(csv_files, root: str | os.PathLike, abnormality_type: str | None = "mass"):
    """Datalist from CBIS-DDSM description CSVs and the DICOM tree under ``root``.

    Returns ``(items, unmatched)``: ``items`` one dict per full mammogram (``image``, ``box`` (N,4), ``label`` (N)
    0 benign / 1 malignant, ``patient_id``, ``view``, ``laterality``, ``findings``); ``unmatched`` the rows
    (``csv``, ``line``, ``path``, ``reason``) whose image or ROI mask matched no DICOM.
    """
    import pandas as pd
    import pydicom

    if isinstance(csv_files, (str, os.PathLike)):
        csv_files = [csv_files]
    index = index_dicoms(root)
    by_image: dict[str, dict] = {}
    unmatched = []
    for csv in csv_files:
        try:
            df = pd.read_csv(csv)
        except Exception as e:  # noqa: BLE001
            raise CadpipeInputError(csv, f"not a readable CSV ({e})") from e
        missing = [c for c in CBIS_COLUMNS if c not in df.columns]
        if missing:
            raise CadpipeInputError(csv, f"missing columns {missing}")
        for k, row in df.iterrows():
            line = int(k) + 2  # header is line 1
            if abnormality_type and str(row["abnormality type"]).lower() != abnormality_type:
                continue
            images = _match(row["image file path"], index)
            if not images:
                unmatched.append({"csv": str(csv), "line": line, "path": row["image file path"], "reason": "image not found"})
                continue
            image = images[0]
            if image not in by_image:
                ds = pydicom.dcmread(image, stop_before_pixels=True)
                lat = str(row["left or right breast"]).upper()
                by_image[image] = {
                    "image": image, "boxes": [], "labels": [], "findings": [],
                    "patient_id": str(row["patient_id"]), "view": f"{lat}_{str(row['image view']).upper()}",
                    "laterality": lat[:1], "shape": (int(ds.Rows), int(ds.Columns)),
                }
            it = by_image[image]
            box = _mask_box(_match(row["ROI mask file path"], index), it["shape"])
            if box is None:
                unmatched.append({"csv": str(csv), "line": line, "path": row["ROI mask file path"], "reason": "ROI mask not found"})
                continue
            pathology = str(row["pathology"]).upper()
            if pathology not in _PATHOLOGY:
                raise CadpipeInputError(csv, f"line {line}: unknown pathology {pathology!r}")
            it["boxes"].append(box)
            it["labels"].append(_PATHOLOGY[pathology])
            it["findings"].append({c: (row[c].item() if hasattr(row[c], "item") else row[c]) for c in df.columns
                                   if c in ("abnormality id", "mass shape", "mass margins", "assessment", "subtlety", "pathology")})
    for u in unmatched:
        logger.warning("CBIS-DDSM row not matched: %s line %d: %s (%s)", u["csv"], u["line"], u["path"], u["reason"])
    items = []
    for it in by_image.values():
        it["box"] = np.asarray(it.pop("boxes"), np.float32).reshape(-1, 4)
        it["label"] = np.asarray(it.pop("labels"), np.int64)
        it["rows"], it["cols"] = it.pop("shape")
        items.append(it)
    return items, unmatched
