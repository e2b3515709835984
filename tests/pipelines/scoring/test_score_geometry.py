"""Scoring DICOM files whose geometry once broke the segmentation bundles (seeded untrained weights: plumbing and
geometry, not accuracy): a radiograph with ``PixelSpacing 0\\0`` is scored with sizes in pixels and a row warning
saying why; a slice of any plane (coronal, sagittal, oblique) is scored, its mask and DICOM SEG in the source's
geometry and its area from the file's spacing."""

from __future__ import annotations

import os

import pandas as pd
import pydicom
import pytest

from cadpipe.data.synthetic.dicom import write_ct_series, write_cxr_dicom
from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score
from tests.pipelines.scoring.score_helpers import check_mask_in_source_geometry, journal_row

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _score(tmp_path, bundle: str, overrides: dict, **cfg) -> tuple[pd.DataFrame, dict]:
    root = copy_bundle_untrained(os.path.join(REPO, "bundles", bundle), tmp_path / bundle, overrides)
    summary = score(ScoreConfig(bundle=root, input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=0,
                                quiet=True, overrides=overrides, reports=False, **cfg))
    rows = pd.read_csv(tmp_path / "out" / "results.csv", dtype=str, keep_default_na=False)
    assert summary["exit_code"] == EXIT_OK, rows.error.tolist()
    return rows, summary


@pytest.mark.parametrize("preprocess", ["per-item", "batched"])
def test_radiograph_with_zero_spacing_is_scored_in_pixels(tmp_path, preprocess):
    os.makedirs(tmp_path / "in")
    info = write_cxr_dicom(tmp_path / "in" / "synthetic_cr.dcm", rows=72, cols=64)
    ds = pydicom.dcmread(info["path"])
    ds.PixelSpacing = ds.ImagerPixelSpacing = [0, 0]  # as pydicom-data's RG1_UNCR.dcm
    ds.save_as(info["path"])
    with pytest.warns(UserWarning, match="PixelSpacing"):
        rows, summary = _score(tmp_path, "cxr_lung_segmentation", {"use_clahe": False, "image_size": 64},
                               preprocess=preprocess)
    assert summary["preprocess"] == preprocess
    row = rows.iloc[0]
    assert row.status == "ok" and row.lesion_area_cm2 == ""  # no cm² without a spacing
    assert "PixelSpacing" in row.warnings and "pixels" in row.warnings
    outputs = journal_row(tmp_path / "out", row.input_paths)["_outputs"]
    seg = pydicom.dcmread(os.path.join(tmp_path / "out", outputs["dicom_seg"]))
    assert (seg.Rows, seg.Columns) == (72, 64)


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 0, -1), (0, 1, 0, 0, 0, -1),
                                         (0.569486, 0.822001, 0.0, 0.0, 0.0, -1.0)],
                         ids=["coronal", "sagittal", "oblique-like-MR2"])
def test_slice_of_any_plane_is_scored_in_its_own_geometry(tmp_path, orientation):
    truth = write_ct_series(tmp_path / "in", n_slices=1, rows=40, cols=36, pixel_spacing=(0.6, 0.4),
                            orientation=orientation)
    rows, _ = _score(tmp_path, "brain_mri_tumor_segmentation", {})
    row = rows.iloc[0].to_dict()
    assert row["status"] == "ok" and row["input_paths"] == truth["paths"][0]
    check_mask_in_source_geometry(tmp_path / "out", row)


def test_image_smaller_than_the_network_is_scored_without_a_heat_map(tmp_path):
    """pydicom's SC_rgb_small_odd.dcm is 3x3 pixels: the histology bundle classifies it from a padded patch, but
    Grad-CAM needs the network to run on the whole image, which its pooling stages cannot take."""
    import shutil

    from pydicom.data import get_testdata_file

    os.makedirs(tmp_path / "in")
    shutil.copy(get_testdata_file("SC_rgb_small_odd.dcm", download=False), tmp_path / "in")
    rows, _ = _score(tmp_path, "breast_histology_classification", {"patch_size": 64})
    row = rows.iloc[0]
    assert row.status == "ok" and row.predicted != ""
    assert row.warnings.startswith("no heat map: the network cannot take the whole 3x3-pixel image")
