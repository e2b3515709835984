"""Synthetic DDSM case folders and a synthetic CBIS-DDSM set, with known ground truth.

Images are small 12-bit "mammograms": dark background, a bright half-ellipse breast attached to the chest-wall
side (right breasts to column 0, left breasts to the last column), a bright film label in a far corner, and
bright round-ish masses. Each mass outline is written to the ``.OVERLAY`` as a start column, start row and an
8-connected Freeman chain code ended by ``#``; the ground truth returned is computed here from the outline
points (independently of the parser). Every name contains ``synthetic`` (the case folders sit under
``synthetic_ddsm``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["outline_chain", "synthetic_mammogram", "write_ddsm_case", "write_ddsm_dataset", "write_cbis_dataset"]

_DIRS = {(0, -1): 0, (1, -1): 1, (1, 0): 2, (1, 1): 3, (0, 1): 4, (-1, 1): 5, (-1, 0): 6, (-1, -1): 7}


def outline_chain(center_col: float, center_row: float, radius: float, rng: np.random.Generator, n: int = 48):
    """An irregular closed outline: returns ``(start_col, start_row, chain, points)`` with points ``(K, 2)`` (col, row)."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radii = radius * (1 + 0.25 * rng.uniform(-1, 1, size=n))
    radii = np.convolve(np.r_[radii[-2:], radii, radii[:2]], np.ones(5) / 5, mode="valid")
    verts = np.stack([center_col + radii * np.cos(angles), center_row + radii * np.sin(angles)], 1).round().astype(int)
    verts = np.vstack([verts, verts[:1]])
    pts = [tuple(verts[0])]
    chain = []
    for target in verts[1:]:
        c, r = pts[-1]
        while (c, r) != tuple(target):
            dc, dr = int(np.sign(target[0] - c)), int(np.sign(target[1] - r))
            c, r = c + dc, r + dr
            chain.append(_DIRS[(dc, dr)])
            pts.append((c, r))
    return int(verts[0, 0]), int(verts[0, 1]), chain, np.asarray(pts, dtype=np.int64)


def synthetic_mammogram(rows: int, cols: int, laterality: str, masses, rng: np.random.Generator, label=True):
    """A 12-bit image ``(rows, cols)`` uint16 with the breast on the chest-wall side and masses filled in.

    ``masses``: list of ``(points, contrast)``; points ``(K, 2)`` (col, row) outline.
    """
    from skimage.draw import polygon
    from scipy.ndimage import gaussian_filter

    rr, cc = np.mgrid[0:rows, 0:cols]
    wall = 0 if laterality.upper().startswith("R") else cols - 1
    depth = np.abs(cc - wall) / (0.8 * cols)
    ell = depth**2 + ((rr - rows / 2) / (0.45 * rows)) ** 2
    breast = ell < 1
    img = np.full((rows, cols), 120.0)
    img[breast] = 1500 + 500 * (1 - ell[breast])
    img += gaussian_filter(rng.normal(0, 120, size=(rows, cols)), 2)
    for pts, contrast in masses:
        m = np.zeros((rows, cols), bool)
        r, c = polygon(pts[:, 1], pts[:, 0], shape=(rows, cols))
        m[r, c] = True
        m[pts[:, 1], pts[:, 0]] = True
        img += contrast * gaussian_filter(m.astype(float), 1.0)
    if label:  # film label: a bright block in the far corner, away from the breast
        h, w = max(4, rows // 12), max(4, cols // 8)
        c0 = cols - w - 2 if wall == 0 else 2
        img[2 : 2 + h, c0 : c0 + w] = 3900
    return np.clip(img, 0, 4095).astype(np.uint16)


def _write_ljpeg(path: Path, img: np.ndarray, transposed_header: bool):
    import imagecodecs

    arr = img.reshape(img.shape[1], img.shape[0]) if transposed_header else img  # same raster, wrong shape
    path.write_bytes(imagecodecs.ljpeg_encode(np.ascontiguousarray(arr), bitspersample=12))


def _overlay_text(findings) -> str:
    out = [f"TOTAL_ABNORMALITIES {len(findings)}"]
    for k, f in enumerate(findings, 1):
        chain = " ".join(str(d) for d in f["chain"])
        out += [
            f"ABNORMALITY {k}",
            f"LESION_TYPE MASS SHAPE {f['shape']} MARGINS {f['margins']}",
            f"ASSESSMENT {4 if f['pathology'] == 'MALIGNANT' else 3}",
            "SUBTLETY 3",
            f"PATHOLOGY {f['pathology']}",
            "TOTAL_OUTLINES 1",
            "BOUNDARY",
            f"{f['start_col']} {f['start_row']} {chain} #",
        ]
    return "\n".join(out) + "\n"


def write_ddsm_case(
    root: str | os.PathLike,
    case_number: int,
    prefix: str = "A",
    rows: int = 320,
    cols: int = 200,
    n_masses: dict | None = None,
    seed: int = 0,
    transposed_header_views: tuple[str, ...] = (),
    category: str | None = None,
    radius_range=(10, 20),
    contrast: float = 900.0,
) -> dict:
    """Write one DDSM case folder; returns ``{"case_dir", "case", "views": {view: {"image", "overlay", "rows",
    "cols", "boxes" (N,4 xyxy col/row, max exclusive), "labels", "pathology", "masks" (N, rows, cols)}}}``.

    ``n_masses``: ``{view: count}`` (default: one mass on LEFT_CC). The view's size alternates slightly so
    views differ; ``transposed_header_views`` writes those LJPEGs with width/height swapped in the header.
    """
    rng = np.random.default_rng(seed)
    n_masses = {"LEFT_CC": 1} if n_masses is None else n_masses
    has_malignant = False
    views_truth = {}
    case = f"{prefix}_{case_number:04d}_1"
    pathologies = {}
    for view in ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO"):
        pathologies[view] = [("MALIGNANT" if rng.random() < 0.5 else "BENIGN") for _ in range(n_masses.get(view, 0))]
        has_malignant |= "MALIGNANT" in pathologies[view]
    any_mass = any(pathologies.values())
    if category is None:
        category = "cancers" if has_malignant else ("benigns" if any_mass else "normals")
    case_dir = Path(root) / "synthetic_ddsm" / "cases" / category / f"{category}_01" / f"case{case_number:04d}"
    case_dir.mkdir(parents=True, exist_ok=True)
    ics = [
        "ics_version 1.0",
        f"filename {prefix}-{case_number:04d}-1",
        "DATE_OF_STUDY 2 7 1995",
        "PATIENT_AGE 55",
        "FILM",
        "FILM_TYPE REGULAR",
        "DENSITY 2",
        "DATE_DIGITIZED 7 22 1997",
        "DIGITIZER LUMISYS LASER",
        "SELECTED",
    ]
    for k, view in enumerate(("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")):
        vr, vc = rows + 4 * (k % 2), cols - 2 * (k // 2)
        lat = view[0]
        findings, masses, boxes, masks = [], [], [], []
        from skimage.draw import polygon

        for pathology in pathologies[view]:
            rad = rng.uniform(*radius_range)
            wall = 0 if lat == "R" else vc - 1
            depth = rng.uniform(0.2, 0.5) * vc
            cc = wall + depth if lat == "R" else wall - depth
            cr = rng.uniform(0.3, 0.7) * vr
            sc, sr, chain, pts = outline_chain(cc, cr, rad, rng)
            masses.append((pts, contrast))
            boxes.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1])
            m = np.zeros((vr, vc), bool)
            r_, c_ = polygon(pts[:, 1], pts[:, 0], shape=(vr, vc))
            m[r_, c_] = True
            m[pts[:, 1], pts[:, 0]] = True
            masks.append(m)
            findings.append(
                {"start_col": sc, "start_row": sr, "chain": chain, "pathology": pathology,
                 "shape": "IRREGULAR" if pathology == "MALIGNANT" else "OVAL",
                 "margins": "SPICULATED" if pathology == "MALIGNANT" else "CIRCUMSCRIBED"}
            )
        img = synthetic_mammogram(vr, vc, lat, masses, rng)
        image = case_dir / f"{case}.{view}.LJPEG"
        _write_ljpeg(image, img, view in transposed_header_views)
        overlay = ""
        if findings:
            overlay = case_dir / f"{case}.{view}.OVERLAY"
            overlay.write_text(_overlay_text(findings))
        ics.append(
            f"{view} LINES {vr} PIXELS_PER_LINE {vc} BITS_PER_PIXEL 12 RESOLUTION 50 "
            + ("OVERLAY" if findings else "NON_OVERLAY")
        )
        views_truth[view] = {
            "image": str(image),
            "overlay": str(overlay),
            "rows": vr,
            "cols": vc,
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray([1 if p == "MALIGNANT" else 0 for p in pathologies[view]], dtype=np.int64),
            "pathology": pathologies[view],
            "masks": np.asarray(masks, dtype=bool).reshape(-1, vr, vc),
            "pixels": img,
        }
    (case_dir / f"{prefix}-{case_number:04d}-1.ics").write_text("\n".join(ics) + "\n")
    return {"case_dir": str(case_dir), "case": case, "views": views_truth}


def write_ddsm_dataset(root: str | os.PathLike, n_cases: int = 4, seed: int = 0, **kwargs) -> list[dict]:
    """``n_cases`` cases with one or two masses on random views (some normal); returns each case's truth."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_cases):
        views = ("LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO")
        n_masses = {v: int(rng.integers(0, 3)) for v in views}
        out.append(write_ddsm_case(root, k + 1, n_masses=n_masses, seed=seed * 1000 + k, **kwargs))
    return out


def _write_dicom(path: Path, arr: np.ndarray, patient_id: str, study_uid: str, series_uid: str, laterality: str,
                 view: str, description: str):
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture (as CBIS-DDSM)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = "synthetic"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.Modality = "MG"
    # as in CBIS-DDSM's files: the side as series Laterality and Image Laterality, the body part, and the view
    # in Patient Orientation as one (invalid) value
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.BodyPartExamined = "BREAST"
    ds.PatientOrientation = view
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16 if arr.dtype == np.uint16 else 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def write_cbis_dataset(root: str | os.PathLike, n_patients: int = 4, seed: int = 0, rows: int = 320, cols: int = 200,
                       unmatched: int = 0, split: str = "train") -> dict:
    """A CBIS-DDSM-like mass set: ``mass_case_description_<split>_set.csv`` + DICOM images and ROI masks.

    The CSV paths use the original UID-based folder names while the files are stored TCIA-style
    (``<PatientID>/<date>-DDSM-<last 5 of study UID>/1.000000-full mammogram images-<last 5 of series UID>/1-1.dcm``)
    so they only match through the DICOM identifiers. ``unmatched`` extra CSV rows point at series that do not
    exist. Returns ``{"csv", "root", "truth": {image_path: {"boxes", "labels"}}, "unmatched_rows": [...]}``.
    """
    import pandas as pd
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    root = Path(root) / "synthetic_cbis"
    kind = "Training" if split == "train" else "Test"
    rows_csv, truth, bad = [], {}, []
    for p in range(n_patients):
        pid = f"P_{p + 1:05d}"
        for lat, view in (("LEFT", "CC"), ("RIGHT", "MLO")):
            folder = f"Mass-{kind}_{pid}_{lat}_{view}"
            study, series = generate_uid(), generate_uid()
            nm = int(rng.integers(1, 3))
            masses, boxes, labels, masks = [], [], [], []
            from skimage.draw import polygon

            for _ in range(nm):
                wall = 0 if lat == "RIGHT" else cols - 1
                depth = rng.uniform(0.2, 0.5) * cols
                cc = wall + depth if lat == "RIGHT" else wall - depth
                sc, sr, chain, pts = outline_chain(cc, rng.uniform(0.3, 0.7) * rows, rng.uniform(10, 18), rng)
                masses.append((pts, 900.0))
                m = np.zeros((rows, cols), bool)
                r_, c_ = polygon(pts[:, 1], pts[:, 0], shape=(rows, cols))
                m[r_, c_] = True
                m[pts[:, 1], pts[:, 0]] = True
                masks.append(m)
                boxes.append([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1])
                labels.append(int(rng.random() < 0.5))
            img = synthetic_mammogram(rows, cols, lat, masses, rng)
            img_path = root / folder / f"07-20-2016-DDSM-{study[-5:]}" / f"1.000000-full mammogram images-{series[-5:]}" / "1-1.dcm"
            _write_dicom(img_path, img, folder, study, series, lat[0], view, "full mammogram images")
            truth[str(img_path)] = {"boxes": np.asarray(boxes, np.float32), "labels": np.asarray(labels, np.int64)}
            for k, (m, lab) in enumerate(zip(masks, labels), 1):
                roi_folder = f"{folder}_{k}"
                rstudy, rseries = generate_uid(), generate_uid()
                roi_path = root / roi_folder / f"07-21-2016-DDSM-{rstudy[-5:]}" / f"1.000000-ROI mask images-{rseries[-5:]}" / "1-1.dcm"
                _write_dicom(roi_path, (m * 255).astype(np.uint8), roi_folder, rstudy, rseries, lat[0], view, "ROI mask images")
                rows_csv.append(
                    {
                        "patient_id": pid,
                        "breast_density": 2,
                        "left or right breast": lat,
                        "image view": view,
                        "abnormality id": k,
                        "abnormality type": "mass",
                        "mass shape": "IRREGULAR" if lab else "OVAL",
                        "mass margins": "SPICULATED" if lab else "CIRCUMSCRIBED",
                        "assessment": 4 if lab else 3,
                        "pathology": "MALIGNANT" if lab else ("BENIGN" if k % 2 else "BENIGN_WITHOUT_CALLBACK"),
                        "subtlety": 3,
                        "image file path": f"{folder}/{study}/{series}/000000.dcm",
                        "cropped image file path": f"{roi_folder}/{rstudy}/{generate_uid()}/000000.dcm",
                        "ROI mask file path": f"{roi_folder}/{rstudy}/{rseries}/000001.dcm",
                    }
                )
    for u in range(unmatched):
        folder = f"Mass-{kind}_P_9{u:04d}_LEFT_CC"
        row = dict(rows_csv[0])
        row.update({"patient_id": f"P_9{u:04d}", "image file path": f"{folder}/{generate_uid()}/{generate_uid()}/000000.dcm",
                    "ROI mask file path": f"{folder}_1/{generate_uid()}/{generate_uid()}/000001.dcm"})
        rows_csv.append(row)
        bad.append(row["image file path"])
    csv = root / f"mass_case_description_{split}_set.csv"
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows_csv).to_csv(csv, index=False)
    return {"csv": str(csv), "root": str(root), "truth": truth, "unmatched_rows": bad}
