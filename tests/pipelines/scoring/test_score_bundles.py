"""The real bundles in bundles/ score through cadpipe score (random weights: this checks the bundle contract and
the plumbing, not accuracy). Bundles not yet complete are skipped."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.inference.bundle_runner import bundle_is_complete
from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _copy_with_random_weights(name: str, dest: str, overrides: dict) -> str:
    src = os.path.join(REPO, "bundles", name)
    if not bundle_is_complete(src):
        pytest.skip(f"{name} is not complete yet")
    return copy_bundle_untrained(src, os.path.join(dest, name), overrides)


def _cxr(d):
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    os.makedirs(os.path.join(d, "p1", "x"))
    write_cxr_dicom(os.path.join(d, "p1", "x", "synthetic_IM1"), rows=80, cols=64, seed=1)
    write_cxr_dicom(os.path.join(d, "p1", "synthetic_IM2"), rows=80, cols=64, seed=2, photometric="MONOCHROME1")


def _brain(d):
    from cadpipe.data.synthetic.brain import write_lgg_synthetic

    write_lgg_synthetic(d, n_patients=1, n_slices=1, size=32)


def _brain_volume(d):
    """A 3-modality NIfTI volume, scored slice-wise by the 2D bundle (the overlay drops the channel axis)."""
    from cadpipe.data.synthetic.brain import write_msd_synthetic

    write_msd_synthetic(d, n_train=0, n_test=1, modalities=("T1", "FLAIR", "T1c"), write_dataset_json=False)


def _mammo(d):
    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset

    write_ddsm_dataset(d, n_cases=1)


def _histo(d):
    from cadpipe.data.synthetic.histology import write_synthetic_bach

    write_synthetic_bach(d, n_per_class=1, size=(96, 96))


def _cxr_and_mask_files(d):
    """Two DICOM CXRs, one PNG radiograph and its ground-truth lung mask (skipped by discovery)."""
    from tests.pipelines.scoring.score_helpers import write_png

    _cxr(d)
    write_png(os.path.join(d, "p2", "synthetic_cxr.png"), shape=(48, 48))
    write_png(os.path.join(d, "p2", "synthetic_cxr_mask.png"), shape=(48, 48))


CASES = [
    ("cxr_pneumonia_classification", _cxr, {"use_clahe": False, "image_size": 64}, ["prob_PNEUMONIA", "predicted"]),
    ("brain_mri_tumor_segmentation", _brain, {}, ["lesion_voxels"]),  # 2D TIFF: no spacing, so no cm²
    ("brain_mri_tumor_segmentation", _brain_volume, {}, ["lesion_volume_ml"]),
    ("mammo_mass_detection", _mammo, {"image_long_side": 128}, ["n_findings", "top_score"]),
    ("breast_histology_classification", _histo, {"patch_size": 64}, ["predicted"]),
    ("cxr_lung_segmentation", _cxr_and_mask_files, {"use_clahe": False, "image_size": 64}, ["lesion_voxels"]),
    ("cxr_chestxray14_classification", _cxr, {"use_clahe": False, "image_size": 64},
     ["prob_Effusion", "predicted"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,writer,overrides,columns", CASES, ids=[f"{c[0]}-{c[1].__name__.strip('_')}" for c in CASES])
def test_real_bundle_scores(tmp_path, name, writer, overrides, columns):
    bundle = _copy_with_random_weights(name, str(tmp_path), overrides)
    try:
        writer(str(tmp_path / "in"))
    except (ImportError, AttributeError) as err:
        pytest.skip(f"synthetic writer for {name} not available: {err}")
    summary = score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=str(tmp_path / "out"),
                                workers=0, quiet=True, overrides=overrides, limit=3))
    df = pd.read_csv(tmp_path / "out" / "results.csv")
    assert summary["exit_code"] == EXIT_OK, df.error.tolist()
    assert not df.input_paths.str.contains("_mask").any()  # ground truth is not scored
    for col in columns:
        assert df[col].notna().all(), col
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "out") for f in fs]
    assert any(f.endswith("report.html") for f in files)
    from tests.pipelines.outputs.dicom_checks import conformant_where_checkable

    for f in files:  # the real bundle's DICOM results (its declared codes): dciodvfy / dsrdump where installed
        if f.endswith(("_sr.dcm", "_seg.dcm", "_sc.dcm")):
            conformant_where_checkable(f)
    if "lesion_voxels" in columns and name.startswith("cxr"):  # 2D segmentation of DICOM radiographs: DICOM SEG
        import highdicom as hd
        import pydicom

        segs = sorted(f for f in files if f.endswith("_seg.dcm"))
        sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p
                   for p in df.input_paths if "synthetic_IM" in p}
        assert len(segs) == len(sources) == 2
        for path in segs:
            ds = pydicom.dcmread(path)
            hd.seg.Segmentation.from_dataset(ds)
            ref = ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            src = pydicom.dcmread(sources[ref], stop_before_pixels=True)
            assert ds.Modality == "SEG" and (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
            segment = ds.SegmentSequence[0]  # coded as the bundle declares: the lungs are an anatomical structure
            assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SCT Lung
            assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"  # Anatomical Structure
            assert ds.SeriesDescription == "cadpipe CXR lungs SEG (not for clinical use)" and ds.SeriesNumber == 9931
