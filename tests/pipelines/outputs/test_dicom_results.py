"""DICOM results (TID 1500 SR + Secondary Capture + SEG) written by scoring for DICOM input, parsed back through
highdicom and checked against results.csv."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from cadpipe.pipelines.outputs.dicom_sr import build_measurement_report, read_report
from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score
from tests.pipelines.outputs.dicom_checks import assert_sc_matches_png, conformant_where_checkable, journal_outputs
from tests.pipelines.scoring.score_helpers import make_bundle, write_dicom_series


def _check_common(report: dict, row, sources: list, sr_ds, study_uid: str) -> None:
    if getattr(sr_ds, "filename", None):
        conformant_where_checkable(sr_ds.filename)
    assert report["algorithm"] == {"name": row.bundle, "version": str(row.bundle_version),
                                   "parameters": [f"model_sha256={row.model_sha256}"]}
    assert report["intended_use"] and set(report["intended_use"]) == {"Not for clinical use"}
    assert sr_ds.StudyInstanceUID == study_uid
    assert sr_ds.SeriesInstanceUID not in {s.SeriesInstanceUID for s in sources}
    assert "not for clinical use" in sr_ds.SeriesDescription
    refs = {i.ReferencedSOPInstanceUID for s in sr_ds.CurrentRequestedProcedureEvidenceSequence
            for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert {s.SOPInstanceUID for s in sources} <= refs


def test_classification_sr_and_sc_match_results_csv(tmp_path):
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    (tmp_path / "in").mkdir()
    for i in (1, 2):
        write_cxr_dicom(str(tmp_path / "in" / f"synthetic_IM{i}"), rows=40, cols=32, seed=i)
    out = str(tmp_path / "out")
    assert score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=out, workers=0, quiet=True,
                             reports=False))["exit_code"] == EXIT_OK
    df = pd.read_csv(os.path.join(out, "results.csv"))
    outputs = journal_outputs(out)
    assert len(df) == 2
    for row in df.itertuples():
        src = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        sr_path = os.path.join(out, outputs[row.unit_id]["dicom_sr"])
        report = read_report(sr_path)
        assert report["probabilities"] == pytest.approx({"normal": row.prob_normal, "abnormal": row.prob_abnormal},
                                                        rel=1e-6)
        assert report["predicted"] == [row.predicted]
        _check_common(report, row, [src], pydicom.dcmread(sr_path), src.StudyInstanceUID)
        # the Secondary Capture read back through highdicom: header and the overlay PNG's pixels
        sc_path = os.path.join(out, outputs[row.unit_id]["dicom_sc"])
        assert_sc_matches_png(sc_path, os.path.join(out, outputs[row.unit_id]["overlays"][0]), source=src)
        assert pydicom.dcmread(sc_path).SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage


def test_segmentation_sr_references_the_seg_segment_and_its_volume(tmp_path):
    import highdicom as hd

    bundle = make_bundle("tiny_segmentation_bundle", str(tmp_path / "b"))
    study = generate_uid()
    files = write_dicom_series(str(tmp_path / "in" / "s"), study, generate_uid(), n=6, size=12)
    out = str(tmp_path / "out")
    assert score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=out, workers=0, quiet=True,
                             reports=False))["exit_code"] == EXIT_OK
    row = next(pd.read_csv(os.path.join(out, "results.csv")).itertuples())
    outputs = journal_outputs(out)[row.unit_id]
    seg = hd.seg.segread(os.path.join(out, outputs["dicom_seg"]))
    sr_path = os.path.join(out, outputs["dicom_sr"])
    report = read_report(sr_path)
    assert report["volume_ml"] == pytest.approx(row.lesion_volume_ml, rel=1e-6, abs=1e-9)
    assert report["segment"] == (seg.SOPInstanceUID, 1)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    _check_common(report, row, sources, pydicom.dcmread(sr_path), study)
    assert_sc_matches_png(os.path.join(out, outputs["dicom_sc"]), os.path.join(out, outputs["overlays"][0]),
                          source=sources[0])


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _score_mammograms(tmp_path, overrides: dict, n_patients: int = 1) -> tuple[str, pd.DataFrame]:
    """The real mammography detection bundle (untrained, seeded weights; ``image_long_side`` 128 + ``overrides``)
    scores synthetic CBIS-DDSM DICOM mammograms (2 per patient, 160 x 100); returns the output folder and
    results.csv."""
    import shutil

    from cadpipe.data.synthetic.ddsm import write_cbis_dataset
    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.inference.bundle_runner import bundle_is_complete

    src_bundle = os.path.join(REPO, "bundles", "mammo_mass_detection")
    if not bundle_is_complete(src_bundle):
        pytest.skip("bundles/mammo_mass_detection is not complete")
    overrides = {"image_long_side": 128, **overrides}
    bundle = copy_bundle_untrained(src_bundle, str(tmp_path / "b"), overrides)
    cbis = write_cbis_dataset(str(tmp_path / "cbis"), n_patients=n_patients, rows=160, cols=100)
    (tmp_path / "in").mkdir()
    for k, path in enumerate(sorted(cbis["truth"])):  # the full mammograms (not the ROI masks beside them)
        shutil.copy(path, tmp_path / "in" / f"mammogram_{k}.dcm")
    out = str(tmp_path / "out")
    assert score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=out, workers=0, quiet=True,
                             reports=False, overrides=overrides))["exit_code"] == EXIT_OK
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(df) == 2 * n_patients
    return out, df


def _declared(out: str) -> dict:
    """The scored bundle's DICOM declaration (codes), read from the copy the run used."""
    import glob

    meta = glob.glob(os.path.join(os.path.dirname(out), "b", "configs", "metadata.json"))[0]
    with open(meta, encoding="utf-8") as f:
        return {"dicom": json.load(f)["cadpipe"]["dicom"]}


def test_detection_bundle_sr_has_every_scored_box_as_a_scoord_region(tmp_path):
    """Each unit's SR of the real detection bundle, parsed back through highdicom, holds exactly the boxes scoring
    wrote for it (``<unit>_boxes.json``: label, score, corners on the source image) and agrees with results.csv."""
    # every box counts as a finding (overlay_min_score 0), so results.csv's n_findings sees them
    out, df = _score_mammograms(tmp_path, {"overlay_min_score": 0.0})
    outputs = journal_outputs(out)
    assert "warnings" not in df or df.warnings.isna().all()
    for row in df.itertuples():
        src = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        with open(os.path.join(out, outputs[row.unit_id]["boxes"]), encoding="utf-8") as f:
            scored = json.load(f)["boxes"]
        assert scored, "random weights gave no box: the test would check nothing"
        sr_path = os.path.join(out, outputs[row.unit_id]["dicom_sr"])
        report = read_report(sr_path, bundle=_declared(out))
        assert not report["probabilities"] and report["volume_ml"] is None and report["segment"] is None
        assert not report["no_detections"]
        got = report["boxes"]
        assert [b["label"] for b in got] == [b["label"] for b in scored]  # the Pathology code, back to the class
        assert {b["label"] for b in got} <= {"benign", "malignant"} and {b["finding"] for b in got} == {"Mass"}
        assert [b["score"] for b in got] == pytest.approx([b["score"] for b in scored], rel=1e-9)
        # the malignancy of each box (Probability of cancer)
        assert [b["malignancy"] for b in got] == pytest.approx([b["malignancy"] for b in scored], rel=1e-6)
        for mine, theirs in zip(got, scored):
            c0, r0, c1, r1 = theirs["box"]
            np.testing.assert_allclose(mine["polyline"], [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]],
                                       rtol=1e-6)  # GraphicData is float32
            assert 0 <= c0 <= c1 <= src.Columns and 0 <= r0 <= r1 <= src.Rows  # the source image's pixel grid
        # results.csv: the top score, and the findings shown (score >= overlay_min_score = 0, at most 5)
        assert max(b["score"] for b in got) == pytest.approx(row.top_score, rel=1e-6)
        assert row.n_findings == min(len(got), 5) > 0
        _check_common(report, row, [src], pydicom.dcmread(sr_path), src.StudyInstanceUID)
        sr_ds = pydicom.dcmread(sr_path)
        # every box refers to the source image
        regions = [c for c in _walk(sr_ds) if getattr(c, "ValueType", "") == "SCOORD"]
        assert len(regions) == len(got)
        assert all(r.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
                   for r in regions)
        sc = assert_sc_matches_png(os.path.join(out, outputs[row.unit_id]["dicom_sc"]),
                                   os.path.join(out, outputs[row.unit_id]["overlays"][0]), source=src)
        assert (sc.Rows, sc.Columns) == (src.Rows, src.Columns)  # boxes drawn on the image as it was sent


def test_detection_without_any_box_still_has_an_sr_saying_so(tmp_path):
    """A score threshold no box reaches: every unit still gets its SR (a ``no detections`` group, Finding =
    Absent) and its Secondary Capture, and no warning (TID 1500 needs one group: an SR of zero groups failed)."""
    out, df = _score_mammograms(tmp_path, {"score_thresh": 1.01})
    assert (df.n_findings == 0).all()
    assert "warnings" not in df or df.warnings.isna().all(), df.warnings.tolist()
    outputs = journal_outputs(out)
    for row in df.itertuples():
        with open(os.path.join(out, outputs[row.unit_id]["boxes"]), encoding="utf-8") as f:
            assert json.load(f)["boxes"] == []
        sr_path = os.path.join(out, outputs[row.unit_id]["dicom_sr"])
        report = read_report(sr_path)
        assert report["boxes"] == [] and report["no_detections"] and not report["predicted"]
        src = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        _check_common(report, row, [src], pydicom.dcmread(sr_path), src.StudyInstanceUID)
        assert "dicom_sc" in outputs[row.unit_id]


def _walk(ds):
    for item in getattr(ds, "ContentSequence", []):
        yield item
        yield from _walk(item)


def test_detection_boxes_round_trip_as_scoord_regions(tmp_path):
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    boxes = [{"box": [1.5, 2.0, 30.0, 40.25], "label": "mass", "score": 0.875},
             {"box": [10, 10, 20, 22], "label": "calcification", "score": 0.25}]
    bundle = {"name": "mammo", "version": "0.3", "model_sha256": "ab" * 32}
    sr = build_measurement_report([src], bundle, boxes=boxes)
    path = str(tmp_path / "sr.dcm")
    sr.save_as(path)
    report = read_report(path)
    assert [(b["label"], b["score"]) for b in report["boxes"]] == [("mass", 0.875), ("calcification", 0.25)]
    c0, r0, c1, r1 = boxes[0]["box"]
    assert report["boxes"][0]["polyline"] == [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]
    assert report["algorithm"]["parameters"] == ["model_sha256=" + "ab" * 32]
    assert not report["no_detections"]
    empty = str(tmp_path / "empty_sr.dcm")
    build_measurement_report([src], bundle, boxes=[]).save_as(empty)
    report = read_report(empty)
    assert report["boxes"] == [] and report["no_detections"]
    assert set(report["intended_use"]) == {"Not for clinical use"}


def test_segmentation_size_without_a_seg_is_still_reported(tmp_path):
    """No SEG could be made: the SR still reports the structure and its size (image-level group, no segment
    reference); a report with nothing in it is refused."""
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    bundle = {"name": "x", "dicom": {"classes": {"tumor": {"type": ["108369006", "SCT", "Neoplasm"]}}}}
    path = str(tmp_path / "sr.dcm")
    build_measurement_report([src], bundle, volume_ml=1.25, structure="tumor").save_as(path)
    report = read_report(path, bundle)
    assert report["volume_ml"] == 1.25 and report["segment"] is None and report["structure"] == "tumor"
    with pytest.raises(ValueError, match="nothing to report"):
        build_measurement_report([src], bundle)


def test_2d_segmentation_sr_has_the_area_referencing_the_seg(tmp_path):
    """A 2D DICOM image: the SR gives the area in cm² (results.csv's lesion_area_cm2) referencing the SEG."""
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    bundle = make_bundle("tiny_segmentation_2d_bundle", str(tmp_path / "b"))
    (tmp_path / "in").mkdir()
    write_cxr_dicom(str(tmp_path / "in" / "synthetic_IM1"), rows=40, cols=32, seed=3)
    out = str(tmp_path / "out")
    assert score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=out, workers=0, quiet=True,
                             reports=False))["exit_code"] == EXIT_OK
    row = next(pd.read_csv(os.path.join(out, "results.csv")).itertuples())
    outputs = journal_outputs(out)[row.unit_id]
    report = read_report(os.path.join(out, outputs["dicom_sr"]))
    assert report["volume_ml"] is None
    assert report["area_cm2"] == pytest.approx(row.lesion_area_cm2, rel=1e-6, abs=1e-9)
    assert report["segment"] == (pydicom.dcmread(os.path.join(out, outputs["dicom_seg"])).SOPInstanceUID, 1)
    assert_sc_matches_png(os.path.join(out, outputs["dicom_sc"]), os.path.join(out, outputs["overlays"][0]),
                          source=pydicom.dcmread(row.input_paths, stop_before_pixels=True))


def test_no_dicom_results_option(tmp_path):
    """``--no-dicom-results``: no SR / Secondary Capture, same scores as with them."""
    from cadpipe.cli import main
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    (tmp_path / "in").mkdir()
    write_cxr_dicom(str(tmp_path / "in" / "synthetic_IM1"), rows=40, cols=32, seed=1)
    common = ["score", "--bundle", bundle, "--input", str(tmp_path / "in"), "--quiet", "--device", "cpu",
              "--no-reports", "--workers", "0"]
    assert main(common + ["--output", str(tmp_path / "with")]) == EXIT_OK
    assert main(common + ["--output", str(tmp_path / "without"), "--no-dicom-results"]) == EXIT_OK
    with_, without = journal_outputs(str(tmp_path / "with")), journal_outputs(str(tmp_path / "without"))
    assert all("dicom_sr" in o for o in with_.values())
    assert not any(k in o for o in without.values() for k in ("dicom_sr", "dicom_sc"))
    assert not [f for _, _, fs in os.walk(tmp_path / "without") for f in fs if f.endswith(("_sr.dcm", "_sc.dcm"))]
    a = pd.read_csv(tmp_path / "with" / "results.csv").drop(columns=["elapsed_s"])
    b = pd.read_csv(tmp_path / "without" / "results.csv").drop(columns=["elapsed_s"])
    pd.testing.assert_frame_equal(a, b)
