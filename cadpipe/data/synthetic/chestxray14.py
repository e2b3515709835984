"""Synthetic NIH ChestX-ray14 folder: radiographs with synthetic "pathologies" drawn in known places, labels in an
NIH-style ``Data_Entry_2017.csv`` and patient-wise ``train_val_list.txt`` / ``test_list.txt``.

Each of the 14 pathologies has its own pattern *and* its own place (:data:`PATTERNS`), loosely after its radiological
look, so that a network with global pooling can tell every class apart (distinct local texture or shape; classes that
share a look differ in size or place):

==  ==================  ====================================================================================
 0  Atelectasis         thin horizontal bright band, middle of the image-right lung
 1  Cardiomegaly        enlarged bright heart (the normal heart is smaller and dimmer)
 2  Effusion            bright fluid with a meniscus (higher laterally), lateral bottom of the image-right lung
 3  Infiltration        bright speckles over the upper image-left lung
 4  Mass                large bright disk, upper image-right lung
 5  Nodule              small bright dot, middle of the image-left lung
 6  Pneumonia           soft (Gaussian) opacity, lower image-left lung
 7  Pneumothorax        black band (no lung markings) along the lateral edge of the image-left lung
 8  Consolidation       bright square, middle of the image-right lung below the atelectasis band
 9  Edema               haze with horizontal lines along the medial (perihilar) side of both lungs
10  Emphysema           bullae: dark disks with bright rims at both lung apices
11  Fibrosis            reticular grid of bright lines, medial lower image-left lung
12  Pleural_Thickening  bright band along the lateral edge of the image-right lung
13  Hernia              bright disk with a dark (gas) centre below the heart
==  ==================  ====================================================================================

An image without any is ``No Finding``. File names are ``synthetic_<patient:08d>_<k:03d>.png``. The writer returns
``{file name: label list}``.
"""

from __future__ import annotations

import csv
import os

import numpy as np
from PIL import Image

from cadpipe.data.chestxray14 import NIH_LABELS
from cadpipe.data.synthetic.lungs import synthetic_lung_cxr

__all__ = ["write_synthetic_chestxray14", "write_synthetic_rsna", "write_rsna_dicom", "draw_pathology", "PATTERNS"]

PATTERNS = {
    "Atelectasis": "thin horizontal bright band, middle of the image-right lung",
    "Cardiomegaly": "enlarged bright heart",
    "Effusion": "bright fluid with a meniscus, lateral bottom of the image-right lung",
    "Infiltration": "bright speckles, upper image-left lung",
    "Mass": "large bright disk, upper image-right lung",
    "Nodule": "small bright dot, middle of the image-left lung",
    "Pneumonia": "soft Gaussian opacity, lower image-left lung",
    "Pneumothorax": "black band along the lateral edge of the image-left lung",
    "Consolidation": "bright square, middle of the image-right lung",
    "Edema": "haze with horizontal lines along the medial side of both lungs",
    "Emphysema": "dark bullae with bright rims at both lung apices",
    "Fibrosis": "reticular grid, medial lower image-left lung",
    "Pleural_Thickening": "bright band along the lateral edge of the image-right lung",
    "Hernia": "bright disk with a dark centre below the heart",
}


def _extent(mask: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[float, float, float, float]:
    """(y_min, y_max, x_min, x_max) of a mask in fractions of the image."""
    if not mask.any():
        return 0.3, 0.7, 0.2, 0.4
    return float(y[mask].min()), float(y[mask].max()), float(x[mask].min()), float(x[mask].max())


def draw_pathology(img: np.ndarray, k: int, img_left_lung: np.ndarray, img_right_lung: np.ndarray,
                   rng: np.random.Generator) -> None:
    """Draw pathology ``k`` (index into ``NIH_LABELS``, 0-13) in place on ``img`` (rows, cols) in [0, 1];
    ``img_left_lung`` / ``img_right_lung`` are the lung masks on the image's left and right."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    y, x = yy / h, xx / w
    ly0, ly1, lx0, lx1 = _extent(img_left_lung, y, x)
    ry0, ry1, rx0, rx1 = _extent(img_right_lung, y, x)
    lcx, rcx = (lx0 + lx1) / 2, (rx0 + rx1) / 2
    disk = lambda cy, cx, r: (y - cy) ** 2 + (x - cx) ** 2 < r ** 2  # noqa: E731
    period = max(3, h // 16)
    name = NIH_LABELS[k]
    if name == "Atelectasis":
        img[(np.abs(y - 0.45) < 0.025) & (np.abs(x - rcx) < 0.1)] = 0.92
    elif name == "Cardiomegaly":
        img[((x - 0.53) / 0.15) ** 2 + ((y - 0.68) / 0.13) ** 2 < 1] = 0.88
    elif name == "Effusion":
        level = ry1 - 0.12 - 0.1 * (x - rcx) / max(rx1 - rcx, 1e-3)  # meniscus: higher laterally
        img[img_right_lung & (x > rcx - 0.02) & (y > level)] = 0.95
    elif name == "Infiltration":
        grain = max(1, h // 32)  # speckles of about 1/32 of the image, whatever its size
        coarse = rng.random((h // grain + 1, w // grain + 1)) < 0.35
        speck = np.repeat(np.repeat(coarse, grain, 0), grain, 1)[:h, :w]
        sel = img_left_lung & (y < ly0 + 0.18) & speck
        img[sel] = np.minimum(1.0, img[sel] + 0.6)
    elif name == "Mass":
        img[disk(ry0 + 0.1, rcx, 0.085)] = 0.95
    elif name == "Nodule":
        img[disk(0.47, lcx, 0.045)] = 1.0
    elif name == "Pneumonia":
        img += (0.6 * np.exp(-((y - (ly1 - 0.1)) ** 2 + (x - lcx + 0.02) ** 2) / (2 * 0.06 ** 2))).astype(img.dtype)
    elif name == "Pneumothorax":
        img[img_left_lung & (x < lx0 + 0.06)] = 0.0
    elif name == "Consolidation":
        img[(np.abs(y - 0.54) < 0.05) & (np.abs(x - rcx + 0.01) < 0.05)] = 0.95
    elif name == "Edema":
        medial = ((img_left_lung & (x > lx1 - 0.08)) | (img_right_lung & (x < rx0 + 0.08))) & (np.abs(y - 0.5) < 0.14)
        img[medial] += 0.15
        img[medial & ((yy % period) == 0)] = 0.9  # Kerley-like horizontal lines
    elif name == "Emphysema":
        for cy, cx in ((ly0 + 0.06, lcx), (ry0 + 0.06, rcx)):
            d = np.sqrt((y - cy) ** 2 + (x - cx) ** 2)
            img[d < 0.045] = 0.0
            img[(d >= 0.045) & (d < 0.06)] = 0.95
    elif name == "Fibrosis":
        grid = ((yy % period) == 0) | ((xx % period) == 0)
        img[img_left_lung & (x > lcx) & (y > 0.5) & (y < 0.68) & grid] = 0.95
    elif name == "Pleural_Thickening":
        img[img_right_lung & (x > rx1 - 0.045)] = 0.9
    elif name == "Hernia":
        d = np.sqrt((y - 0.86) ** 2 + (x - 0.5) ** 2)
        img[d < 0.07] = 0.95
        img[d < 0.035] = 0.05
    np.clip(img, 0, 1, out=img)


def write_synthetic_chestxray14(root: str, n_patients: int = 12, images_per_patient: int = 2, size: int = 64,
                                classes: tuple[int, ...] = tuple(range(14)), test_fraction: float = 0.25,
                                p_finding: float = 0.5, seed: int = 0, nested: bool = True,
                                p_class: float | None = None) -> dict[str, list[str]]:
    """Write the folder; ``nested`` puts images in ``images_001/images/`` (the archive layout), else ``images/``.

    Each class of ``classes`` is drawn independently with probability ``p_class`` (default
    ``2 * p_finding / len(classes)``). The first ``test_fraction`` of the patients go to ``test_list.txt``.
    """
    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "images_001", "images") if nested else os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    rows, truth, split = [], {}, {}
    n_test = max(1, int(round(n_patients * test_fraction)))
    p = p_class if p_class is not None else p_finding / max(1, len(classes)) * 2
    for pat in range(n_patients):
        for k in range(images_per_patient):
            img, img_left, img_right = synthetic_lung_cxr(size, rng)
            found = sorted(c for c in classes if rng.random() < p)
            for c in found:
                draw_pathology(img, c, img_left, img_right, rng)
            name = f"synthetic_{pat + 1:08d}_{k:03d}.png"
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(os.path.join(img_dir, name))
            labels = [NIH_LABELS[c] for c in found] or ["No Finding"]
            truth[name] = labels
            rows.append([name, "|".join(labels), k, pat + 1, 50, "M", "PA", size, size, 0.143, 0.143])
            split[name] = "test" if pat < n_test else "train_val"
    with open(os.path.join(root, "Data_Entry_2017.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"])
        w.writerows(rows)
    for lst in ("train_val", "test"):
        with open(os.path.join(root, f"{lst}_list.txt"), "w") as f:
            f.write("".join(n + "\n" for n, s in split.items() if s == lst))
    return truth


def write_rsna_dicom(path: str, pixels: np.ndarray, patient_id: str, rng: np.random.Generator) -> None:
    """One RSNA-style DICOM: Secondary Capture, CR, MONOCHROME2, 8-bit, PatientID = the RSNA ``patientId``."""
    import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[patient_id, "sop"])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.PatientName, ds.PatientID = "SYNTHETIC^RSNA", patient_id
    ds.PatientSex, ds.PatientAge = ("M", "F")[int(rng.integers(2))], f"{int(rng.integers(20, 80)):03d}Y"
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient_id, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient_id, "series"])
    ds.StudyDescription = ds.SeriesDescription = "SYNTHETIC RSNA-style chest X-ray"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.StudyDate = datetime.date(2018, 1, 1).strftime("%Y%m%d")
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.ConversionType = "WSD"
    ds.PixelSpacing = [0.143, 0.143]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint8)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_synthetic_rsna(root: str, n_patients: int = 8, size: int = 64, p_pneumonia: float = 0.5, seed: int = 0,
                         max_boxes: int = 2) -> dict[str, dict]:
    """RSNA Pneumonia Detection Challenge layout: ``<root>/stage_2_train_images/<patientId>.dcm`` (real DICOM files,
    8-bit MONOCHROME2, ``size`` x ``size``) and ``<root>/stage_2_train_labels.csv`` (``patientId,x,y,width,height,
    Target``). A patient with pneumonia has 1..``max_boxes`` opacity boxes (one CSV row each, ``x``/``y`` = column/row
    of the top-left corner in pixels), drawn as soft opacities inside the lung fields; a patient without has one row
    with empty box fields and ``Target`` 0. ``patientId`` is a UUID prefixed ``synthetic-``.

    Returns ``{patientId: {"path", "target", "boxes": [[x, y, width, height], ...]}}``.
    """
    import uuid

    rng = np.random.default_rng(seed)
    img_dir = os.path.join(root, "stage_2_train_images")
    os.makedirs(img_dir, exist_ok=True)
    truth, rows = {}, []
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(n_patients):
        pid = f"synthetic-{uuid.UUID(bytes=rng.bytes(16), version=4)}"
        img, img_left, img_right = synthetic_lung_cxr(size, rng)
        boxes = []
        if rng.random() < p_pneumonia:
            lungs = [img_left, img_right]
            for li in rng.permutation(2)[: int(rng.integers(1, max_boxes + 1))]:
                r, c = np.nonzero(lungs[li])
                cy, cx = float(np.median(r)) + rng.uniform(-0.1, 0.1) * size, float(np.median(c))
                bw, bh = 0.16 * size, 0.22 * size
                x0, y0 = int(round(cx - bw / 2)), int(round(cy - bh / 2))
                boxes.append([x0, y0, int(round(bw)), int(round(bh))])
                blob = np.exp(-(((yy - cy) / (bh / 3)) ** 2 + ((xx - cx) / (bw / 3)) ** 2) / 2)
                inside = (yy >= y0) & (yy < y0 + bh) & (xx >= x0) & (xx < x0 + bw)
                img += (0.5 * blob * inside).astype(img.dtype)
        path = os.path.join(img_dir, f"{pid}.dcm")
        write_rsna_dicom(path, (np.clip(img, 0, 1) * 255).round(), pid, rng)
        truth[pid] = {"path": path, "target": int(bool(boxes)), "boxes": boxes}
        rows += [[pid, *b, 1] for b in boxes] or [[pid, "", "", "", "", 0]]
    with open(os.path.join(root, "stage_2_train_labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientId", "x", "y", "width", "height", "Target"])
        w.writerows(rows)
    return truth
