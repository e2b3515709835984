"""Helpers for the scoring tests: tiny fixture bundles with random weights and a mixed synthetic study folder."""

from __future__ import annotations

import os
import shutil

import numpy as np
import torch

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def make_bundle(name: str, dest: str, seed: int = 0) -> str:
    """Copy fixture bundle ``name`` to ``dest`` and save random weights (the network's state_dict) there."""
    from monai.bundle import ConfigParser

    root = os.path.join(dest, name)
    shutil.copytree(os.path.join(FIXTURES, name), root)
    parser = ConfigParser()
    parser.read_config(os.path.join(root, "configs", "inference.json"))
    parser["bundle_root"] = root
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def")
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    torch.save(net.state_dict(), os.path.join(root, "models", "model.pt"))
    return root


def write_dicom_2d(path: str, study_uid: str, series_uid: str, rows: int = 24, cols: int = 20, seed: int = 0,
                   patient_id: str = "PAT-SECRET-1") -> str:
    """A small MONOCHROME2 16-bit DICOM image (test-local writer so the tests do not depend on others' code)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    _fill(ds, meta, study_uid, series_uid, rows, cols, patient_id, "DX")
    rng = np.random.default_rng(seed)
    ds.PixelData = rng.integers(0, 4000, (rows, cols), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _fill(ds, meta, study_uid, series_uid, rows, cols, patient_id, modality):
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, "Synthetic^Patient", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "20260101", "", "", "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, 1
    ds.Manufacturer = "synthetic"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0


def write_dicom_series(folder: str, study_uid: str, series_uid: str, n: int = 6, size: int = 12, seed: int = 0,
                       names=None) -> list[str]:
    """An axial MR series of ``n`` slices with full geometry (IPP/IOP/PixelSpacing/FrameOfReference)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    vol = rng.integers(0, 1000, (n, size, size), dtype=np.uint16)
    vol[n // 3: n // 3 + 2, 3:8, 3:8] = 3000
    frame_uid = generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, names[k] if names else f"slice{k:03d}")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        _fill(ds, meta, study_uid, series_uid, size, size, "PAT-SECRET-2", "MR")
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.ImagePositionPatient = [-10.0, -12.0, 2.0 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.5, 1.5]
        ds.SliceThickness = 2.0
        ds.PixelData = vol[k].tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_png(path: str, seed: int = 0, shape=(28, 36)) -> str:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(path)
    return path


def write_nifti(path: str, seed: int = 0, shape=(14, 12, 10)) -> str:
    import nibabel as nib

    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    vol = rng.random(shape).astype(np.float32)
    vol[3:7, 3:7, 3:6] += 3
    nib.save(nib.Nifti1Image(vol, np.diag([1.2, 1.0, 2.0, 1.0])), path)
    return path


def mixed_2d_folder(root: str) -> dict:
    """Studies of PNGs and DICOMs (nested, no extensions), non-images and corrupt files. Returns expectations."""
    from pydicom.uid import generate_uid

    os.makedirs(root, exist_ok=True)
    ok = []
    for s in range(3):
        ok.append(write_png(os.path.join(root, f"study{s}", "view_a.png"), seed=s))
        ok.append(write_png(os.path.join(root, f"study{s}", "sub", "view_b.png"), seed=10 + s, shape=(40, 30)))
    study, series = generate_uid(), generate_uid()
    os.makedirs(os.path.join(root, "dicom", "a", "b"), exist_ok=True)
    ok.append(write_dicom_2d(os.path.join(root, "dicom", "a", "IM0001"), study, series, seed=1))
    ok.append(write_dicom_2d(os.path.join(root, "dicom", "a", "b", "IM0002"), study, series, seed=2))
    # non-images: silently ignored
    with open(os.path.join(root, "study0", "report.txt"), "w") as f:
        f.write("radiology report")
    with open(os.path.join(root, "dicom", "DICOMDIR"), "wb") as f:
        f.write(b"\0" * 200)
    with open(os.path.join(root, "study1", ".hidden.png"), "wb") as f:
        f.write(b"junk")
    # corrupt files that look like images: error rows
    bad = []
    for name, data in [("truncated.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 10), ("empty.dcm", b"")]:
        p = os.path.join(root, "study2", name)
        with open(p, "wb") as f:
            f.write(data)
        bad.append(p)
    return {"ok": ok, "bad": bad, "dicom_study": study}


def journal_row(out_dir, input_path: str) -> dict:
    """The unit's last journal row (it holds the ``_outputs`` the results table leaves out)."""
    import json

    rows = [json.loads(line) for line in open(os.path.join(out_dir, ".cadpipe", "journal.jsonl"), encoding="utf-8")
            if line.strip()]
    return [r for r in rows if r.get("input_paths") == input_path][-1]


def check_mask_in_source_geometry(out_dir, row: dict) -> None:
    """A 2D DICOM unit's results row (``results.csv`` strings) of a segmentation bundle: its mask is written in the
    source's geometry (the reader's affine, oblique planes included), its area comes from the file's pixel spacing
    and its DICOM SEG lies on the source's pixel grid with the mask's pixels."""
    import nibabel as nib
    import pydicom
    import pytest

    from cadpipe.transforms import LoadStudyImage

    source = row["input_paths"]
    outputs = journal_row(out_dir, source)["_outputs"]
    img = nib.load(os.path.join(out_dir, outputs["mask"]))
    loaded = LoadStudyImage(mode="keep")(source)
    np.testing.assert_allclose(img.affine, np.asarray(loaded.affine), atol=1e-4)
    mask = np.asarray(img.dataobj)
    assert mask.shape == tuple(loaded.shape[1:])
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    spacing = [float(v) for v in ds.PixelSpacing]
    area = int(float(row["lesion_voxels"])) * spacing[0] * spacing[1] / 100
    assert float(row["lesion_area_cm2"]) == pytest.approx(area, rel=1e-4)
    seg = pydicom.dcmread(os.path.join(out_dir, outputs["dicom_seg"]))
    assert (seg.Rows, seg.Columns) == (ds.Rows, ds.Columns)
    assert np.array_equal(seg.pixel_array.astype(bool), (mask > 0).T)  # SEG frame = mask in the source's rows x cols
