"""Every DICOM file pydicom ships (``pydicom.data``, plus the ``pydicom-data`` package's when it is installed, as
``make test`` does) through every real bundle whose modality and dimensionality fit, with seeded untrained weights
(plumbing and geometry, not accuracy): one ``cadpipe score`` run per bundle over a folder of all its fitting files.

Each file must be scored ``ok``, or be an error row whose reason names a real defect of the file (truncated, no
pixel data, a transfer syntax without a decoder...): never an exception from cadpipe's own code (geometry,
orientation, affines). Among them: ``RG1_UNCR.dcm`` (CR with ``PixelSpacing 0\\0``) and ``MR2_UNCR.dcm`` (an
oblique MR slice), which once failed with ``Could not decompose affine`` and ``Unable to find out axis``.
"""

from __future__ import annotations

import glob
import os
import shutil
import warnings

import pandas as pd
import pydicom
import pytest

from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.scoring.score import ScoreConfig, score
from tests.pipelines.scoring.score_helpers import check_mask_in_source_geometry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

# what makes a file fit a bundle: (modalities, single frame only, samples per pixel)
FITS = {
    "cxr_lung_segmentation": ({"CR", "DX"}, True, 1),
    "cxr_pneumonia_classification": ({"CR", "DX"}, True, 1),
    "cxr_chestxray14_classification": ({"CR", "DX"}, True, 1),
    "mammo_mass_detection": ({"MG"}, True, 1),
    "brain_mri_tumor_segmentation": ({"MR"}, False, 1),  # 2D slices and volumes (scored slice-wise)
    "breast_histology_classification": ({"SM", "XC", "GM", "OT"}, True, 3),  # colour photographs
}
OVERRIDES = {
    "cxr_lung_segmentation": {"use_clahe": False, "image_size": 64},
    "cxr_pneumonia_classification": {"use_clahe": False, "image_size": 64},
    "cxr_chestxray14_classification": {"use_clahe": False, "image_size": 64},
    "mammo_mass_detection": {"image_long_side": 128},
    "brain_mri_tumor_segmentation": {},
    "breast_histology_classification": {"patch_size": 64},
}
# reasons that name a defect of the file itself, as the readers word them (cadpipe.transforms.readers.io_dicom)
FILE_DEFECTS = ("truncated or corrupt", "cannot decode pixel data", "no pixel data", "unsupported transfer syntax",
                "not a DICOM file")
# words of a failure of cadpipe's own geometry code: never acceptable, whatever else the reason says
GEOMETRY_FAILURES = ("affine", "ornt", "orientation", "singular", "HeaderDataError", "decompose")


def pydicom_files() -> list[str]:
    """pydicom's own test files and the installed ``pydicom-data`` package's (no download: pydicom's
    ``get_testdata_files`` would fetch missing ones from the network)."""
    from pydicom.data.data_manager import DATA_ROOT, external_data_sources

    files = glob.glob(os.path.join(DATA_ROOT, "test_files", "**", "*"), recursive=True)
    for source in external_data_sources().values():
        files += source.get_paths("**/*")
    return sorted(p for p in files if os.path.isfile(p))


def _header(path: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - not DICOM / unreadable header: its modality is unknown, it fits nothing
        return None


def fitting_files(bundle: str) -> list[str]:
    modalities, single_frame, samples = FITS[bundle]
    out = []
    for path in pydicom_files():
        ds = _header(path)
        if ds is None or str(ds.get("Modality", "")).upper() not in modalities:
            continue
        if int(ds.get("SamplesPerPixel", 1) or 1) != samples:
            continue
        if single_frame and int(ds.get("NumberOfFrames", 1) or 1) != 1:
            continue
        out.append(path)
    return out


def _folder_of(files: list[str], dest: str) -> dict[str, str]:
    """Copy (hard-link where possible) ``files`` into ``dest`` under unique names; returns copy -> original."""
    os.makedirs(dest, exist_ok=True)
    copies = {}
    for i, path in enumerate(files):
        copy = os.path.join(dest, f"{i:03d}_{os.path.basename(path)}")
        try:
            os.link(path, copy)
        except OSError:
            shutil.copyfile(path, copy)
        copies[copy] = path
    return copies


@pytest.mark.slow
@pytest.mark.parametrize("bundle", sorted(FITS))
def test_every_pydicom_file_scores_or_names_its_defect(tmp_path, bundle):
    files = fitting_files(bundle)
    if not files:
        modalities, single, samples = FITS[bundle]
        pytest.skip(f"no file among pydicom's ({len(pydicom_files())}) fits {bundle} (modality {sorted(modalities)}, "
                    f"{samples} sample(s) per pixel{', single frame' if single else ''})")
    copies = _folder_of(files, str(tmp_path / "in"))
    root = copy_bundle_untrained(os.path.join(REPO, "bundles", bundle), tmp_path / bundle, OVERRIDES[bundle])
    summary = score(ScoreConfig(bundle=root, input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=0,
                                quiet=True, overrides=OVERRIDES[bundle], reports=False))
    rows = pd.read_csv(tmp_path / "out" / "results.csv", dtype=str, keep_default_na=False)
    scored = {os.path.basename(p): r for p, r in zip(rows.input_paths, rows.to_dict("records"))}
    problems = []
    for copy in copies:
        row = scored.get(os.path.basename(copy))
        if row is None:
            problems.append(f"{copy}: no row (discovery skipped a fitting image)")
        elif row["status"] != "ok":
            reason = row["error"]
            if not any(d in reason for d in FILE_DEFECTS) or any(g.lower() in reason.lower() for g in GEOMETRY_FAILURES):
                problems.append(f"{os.path.basename(copy)}: {reason}")
    assert not problems, "\n".join(problems)
    assert summary["units"] == len(rows) == len(copies)
    ok = rows[rows.status == "ok"]
    assert len(ok) >= len(rows) // 2, rows[["input_paths", "error"]].to_string()  # most of pydicom's files are fine
    by_name = {os.path.basename(p).split("_", 1)[1]: r for p, r in zip(ok.input_paths, ok.to_dict("records"))}
    if bundle == "cxr_lung_segmentation" and "RG1_UNCR.dcm" in by_name:  # PixelSpacing 0\0: pixels, and why
        row = by_name["RG1_UNCR.dcm"]
        assert row["lesion_area_cm2"] == "" and int(float(row["lesion_voxels"])) >= 0
        assert "PixelSpacing" in row["warnings"] and "pixels" in row["warnings"]
    if bundle == "brain_mri_tumor_segmentation" and "MR2_UNCR.dcm" in by_name:  # oblique: scored in mm, own geometry
        check_mask_in_source_geometry(tmp_path / "out", by_name["MR2_UNCR.dcm"])
