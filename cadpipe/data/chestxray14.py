"""NIH ChestX-ray14 layout adapter: ``Data_Entry_2017.csv`` + ``train_val_list.txt`` / ``test_list.txt``.

Images are found under ``images*/images/*.png`` (the archive's ``images_001/images/...``) or a flat ``images/``.
``Finding Labels`` holds ``|``-separated pathology names or ``No Finding``; each item's ``"label"`` is a 15-vector
(14 pathologies then ``No Finding``). The official lists are honoured (they are patient-wise); validation is carved
from ``train_val`` by patient (seeded). Bad rows (unknown label, missing image file, empty labels) are collected with
their CSV row number and file: ``strict=True`` raises one :class:`CadpipeInputError` naming the CSV and every bad row,
``strict=False`` logs each one as a warning and leaves it out.
"""

from __future__ import annotations

import csv
import glob
import logging
import os

import numpy as np

from cadpipe.errors import CadpipeInputError

__all__ = ["NIH_LABELS", "find_images", "read_entries", "rsna_items", "chestxray14_splits", "chestxray14_datalist"]

logger = logging.getLogger(__name__)

NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "No Finding",
)


def find_images(dataset_dir: str) -> dict[str, str]:
    """``{file name: path}`` of every PNG under ``images*/images/`` or ``images/``."""
    paths = glob.glob(os.path.join(dataset_dir, "images*", "images", "*.png")) + glob.glob(
        os.path.join(dataset_dir, "images", "*.png"))
    return {os.path.basename(p): p for p in sorted(paths)}


def read_entries(dataset_dir: str, csv_name: str = "Data_Entry_2017.csv", strict: bool = True) -> list[dict]:
    """Items ``{"image", "name", "label", "patient"}`` of every valid CSV row; bad rows reported (see module doc)."""
    dataset_dir = os.fspath(dataset_dir)
    csv_path = os.path.join(dataset_dir, csv_name)
    if not os.path.isfile(csv_path):
        raise CadpipeInputError(csv_path, "ChestX-ray14 label file not found")
    images = find_images(dataset_dir)
    index = {n: i for i, n in enumerate(NIH_LABELS)}
    items, bad = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"Image Index", "Finding Labels", "Patient ID"} - set(reader.fieldnames or [])
        if missing:
            raise CadpipeInputError(csv_path, f"missing column(s) {sorted(missing)}")
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            name = (row["Image Index"] or "").strip()
            labels = [s.strip() for s in (row["Finding Labels"] or "").split("|") if s.strip()]
            unknown = [s for s in labels if s not in index]
            reason = None
            if not labels:
                reason = "empty Finding Labels"
            elif unknown:
                reason = f"unknown label(s) {unknown}"
            elif "No Finding" in labels and len(labels) > 1:
                reason = "'No Finding' together with a pathology"
            elif name not in images:
                reason = "image file not found"
            if reason:
                bad.append(f"row {row_no} ({name}): {reason}")
                continue
            vec = np.zeros(len(NIH_LABELS), np.float32)
            vec[[index[s] for s in labels]] = 1
            items.append({"image": images[name], "name": name, "label": vec.tolist(),
                          "patient": str(row["Patient ID"]).strip()})
    if bad:
        if strict:
            raise CadpipeInputError(csv_path, f"{len(bad)} bad row(s): " + "; ".join(bad))
        for b in bad:
            logger.warning("%s: skipping %s", csv_path, b)
    return items


def _read_list(path: str) -> set[str]:
    if not os.path.isfile(path):
        raise CadpipeInputError(path, "official split list not found")
    with open(path) as f:
        return {line.strip() for line in f if line.strip()}


def rsna_items(rsna_dir: str, strict: bool = True) -> list[dict]:
    """RSNA Pneumonia Detection Challenge: ``stage_2_train_labels.csv`` (``patientId``, ``Target``; several box rows
    per patient) and ``stage_2_train_images/<patientId>.dcm``. ``Target`` 1 → Pneumonia, 0 → No Finding (any 1 wins).
    Bad rows (``Target`` not 0/1, missing DICOM) are reported like :func:`read_entries`."""
    csv_path = os.path.join(rsna_dir, "stage_2_train_labels.csv")
    if not os.path.isfile(csv_path):
        raise CadpipeInputError(csv_path, "RSNA label file not found")
    target, bad = {}, []
    with open(csv_path, newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):
            pid, t = (row.get("patientId") or "").strip(), (row.get("Target") or "").strip()
            dcm = os.path.join(rsna_dir, "stage_2_train_images", f"{pid}.dcm")
            if t not in ("0", "1"):
                bad.append(f"row {row_no} ({pid}): Target {t!r} is not 0 or 1")
            elif not os.path.isfile(dcm):
                bad.append(f"row {row_no} ({pid}.dcm): image file not found")
            else:
                target[pid] = max(target.get(pid, 0), int(t))
    if bad:
        if strict:
            raise CadpipeInputError(csv_path, f"{len(bad)} bad row(s): " + "; ".join(bad))
        for b in bad:
            logger.warning("%s: skipping %s", csv_path, b)
    out = []
    for pid, t in sorted(target.items()):
        vec = np.zeros(len(NIH_LABELS), np.float32)
        vec[NIH_LABELS.index("Pneumonia" if t else "No Finding")] = 1
        out.append({"image": os.path.join(rsna_dir, "stage_2_train_images", f"{pid}.dcm"), "name": f"{pid}.dcm",
                    "label": vec.tolist(), "patient": f"rsna:{pid}"})
    return out


def chestxray14_splits(dataset_dir: str, val_fraction: float = 0.1, seed: int = 0, strict: bool = True,
                       layout: str = "nih", rsna_dir: str = "") -> dict[str, list[dict]]:
    """``train`` / ``val`` / ``test`` datalists: ``test`` = ``test_list.txt``; ``train_val_list.txt`` split by patient
    (``val_fraction`` of its patients, seeded, into ``val``). Rows in neither list are logged and left out.
    ``layout="nih+rsna"`` adds the RSNA items of ``rsna_dir`` to train/val (split by patient with NIH's)."""
    if layout not in ("nih", "nih+rsna"):
        raise CadpipeInputError(dataset_dir, f"unknown dataset_layout {layout!r} (use nih or nih+rsna)")
    items = read_entries(dataset_dir, strict=strict)
    trval = _read_list(os.path.join(dataset_dir, "train_val_list.txt"))
    test_names = _read_list(os.path.join(dataset_dir, "test_list.txt"))
    both = trval & test_names
    if both:
        raise CadpipeInputError(os.path.join(dataset_dir, "test_list.txt"),
                                f"{len(both)} image(s) also in train_val_list.txt, e.g. {sorted(both)[0]}")
    tv = [i for i in items if i["name"] in trval]
    if layout == "nih+rsna":
        if not rsna_dir:
            raise CadpipeInputError(dataset_dir, "dataset_layout nih+rsna needs rsna_dir")
        tv = tv + rsna_items(rsna_dir, strict=strict)
    test = [i for i in items if i["name"] in test_names]
    rest = len(items) - len(tv) - len(test)
    if rest:
        logger.warning("%s: %d image(s) in neither train_val_list.txt nor test_list.txt left out", dataset_dir, rest)
    patients = sorted({i["patient"] for i in tv})
    order = np.random.default_rng(int(seed)).permutation(len(patients))
    n_val = int(round(len(patients) * float(val_fraction)))
    if val_fraction > 0 and len(patients) > 1:
        n_val = min(max(n_val, 1), len(patients) - 1)
    val_p = {patients[i] for i in order[:n_val]}
    return {"train": [i for i in tv if i["patient"] not in val_p], "val": [i for i in tv if i["patient"] in val_p],
            "test": test}


def chestxray14_datalist(dataset_dir: str, split: str = "train", val_fraction: float = 0.1, seed: int = 0,
                         strict: bool = True, layout: str = "nih", rsna_dir: str = "") -> list[dict]:
    """One split of :func:`chestxray14_splits`."""
    return chestxray14_splits(dataset_dir, val_fraction, seed, strict, layout, rsna_dir)[split]
