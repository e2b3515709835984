"""Every SR, SEG and Secondary Capture that scoring writes, checked with tools cadpipe did not write: David
Clunie's ``dciodvfy`` (zero errors; warnings printed, each explained in docs/pacs.md), dcmtk's ``dsrdump`` (every
SR parses), highdicom (every object reads back, values equal to results.csv). Sources: pydicom's real files (CR
RG3, CT_small, MR_small, the multi-frame emri_small), synthetic DX, CBIS-DDSM-style MG with laterality, an MR
series, and CT_small re-encoded with ``ISO_IR 100`` and ``ISO_IR 192`` patient names (kept byte-exact)."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from cadpipe.pipelines.outputs.dicom_codes import has_pixel_spacing
from cadpipe.pipelines.outputs.dicom_sr import read_report
from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score
from tests.pipelines.outputs.dicom_checks import (EXPLAINED_WARNINGS, assert_conformant, assert_dsrdump_parses,
                                                  assert_sc_matches_png, journal_outputs, require_tool)
from tests.pipelines.scoring.score_helpers import make_bundle, write_dicom_series

NAMES = {"ISO_IR 100": "Müller^Jürgen", "ISO_IR 192": "Łukasiewicz^Zoë=山田^太郎"}


@pytest.fixture(autouse=True)
def _tools():
    require_tool("dciodvfy")
    require_tool("dsrdump")


def _charset_copy(dest: str, charset: str) -> str:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SpecificCharacterSet = charset
    ds.PatientName = NAMES[charset]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(dest)
    return dest


def _assert_names_kept(source: str, out: str, outputs: dict, charset: str) -> None:
    """The patient name byte-exact, in the source's character set, in every result object of the unit."""
    raw = pydicom.dcmread(source).get_item(0x00100010).value
    keys = [k for k in ("dicom_sr", "dicom_seg", "dicom_sc") if k in outputs]
    assert "dicom_sr" in keys and "dicom_sc" in keys
    for key in keys:
        ds = pydicom.dcmread(os.path.join(out, outputs[key]))
        assert ds.SpecificCharacterSet == charset and ds.get_item(0x00100010).value == raw, key
        assert str(ds.PatientName) == NAMES[charset]


def _sources_2d(folder, with_mg: bool = True) -> dict[str, str]:
    """One file per kind of 2D source: name -> path."""
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    os.makedirs(folder, exist_ok=True)
    files = {"CR": os.path.join(folder, "cr.dcm"), "CT": os.path.join(folder, "ct.dcm"),
             "MR": os.path.join(folder, "mr.dcm")}
    shutil.copy(get_testdata_file("RG3_UNCR.dcm"), files["CR"])  # real CR without any pixel spacing
    shutil.copy(get_testdata_file("CT_small.dcm"), files["CT"])
    shutil.copy(get_testdata_file("MR_small.dcm"), files["MR"])
    files["DX"] = write_cxr_dicom(os.path.join(folder, "synthetic_dx"), rows=48, cols=40, seed=1)["path"]
    if with_mg:
        from cadpipe.data.synthetic.ddsm import write_cbis_dataset

        cbis = write_cbis_dataset(os.path.join(os.path.dirname(folder), "cbis"), n_patients=1, rows=96, cols=60)
        files["MG"] = os.path.join(folder, "mg.dcm")
        shutil.copy(sorted(cbis["truth"])[0], files["MG"])
    return files


def _score(bundle: str, inp: str, out: str) -> tuple[pd.DataFrame, dict]:
    assert score(ScoreConfig(bundle=bundle, input=inp, output=out, workers=0, quiet=True,
                             reports=False))["exit_code"] == EXIT_OK
    return pd.read_csv(os.path.join(out, "results.csv")), journal_outputs(out)


def _check_objects(out: str, outputs: dict, src) -> dict:
    """dciodvfy on every result object of a unit, dsrdump on its SR, highdicom reads them; returns them read."""
    import highdicom as hd

    read = {}
    for key in ("dicom_sr", "dicom_seg", "dicom_sc"):
        if key not in outputs:
            continue
        path = os.path.join(out, outputs[key])
        assert_conformant(path, EXPLAINED_WARNINGS)
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert "not for clinical use" in ds.SeriesDescription
        if key == "dicom_sr":
            text = assert_dsrdump_parses(path)
            assert "Imaging Measurement Report" in text
        read[key] = hd.seg.segread(path) if key == "dicom_seg" else ds
    if "dicom_sc" in outputs:
        read["sc"] = assert_sc_matches_png(os.path.join(out, outputs["dicom_sc"]),
                                           os.path.join(out, outputs["overlays"][0]), source=src)
    return read


def test_classification_results_conform_for_every_kind_of_source(tmp_path):
    """CR, DX, MG (left/right), CT and MR, and two character sets: SR + SC pass dciodvfy and dsrdump, the SR's
    probabilities, thresholds and calls are results.csv's, laterality and patient names are the source's."""
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    files = _sources_2d(str(tmp_path / "in"))
    for cs in NAMES:
        files[cs] = _charset_copy(str(tmp_path / "in" / f"ct_{cs.replace(' ', '_')}.dcm"), cs)
    df, outputs = _score(bundle, str(tmp_path / "in"), str(tmp_path / "out"))
    assert sorted(df.input_paths) == sorted(files.values())
    from cadpipe.pipelines.inference.thresholds import load_thresholds

    ops = load_thresholds(os.path.join(bundle, "models", "model.pt"), df.model_sha256.iloc[0])
    assert "warnings" not in df or df.warnings.isna().all(), df.get("warnings")
    kinds = {v: k for k, v in files.items()}
    for row in df.itertuples():
        kind = kinds[row.input_paths]
        src = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        got = _check_objects(str(tmp_path / "out"), outputs[row.unit_id], src)
        report = read_report(got["dicom_sr"])
        assert report["probabilities"] == pytest.approx({"normal": row.prob_normal, "abnormal": row.prob_abnormal},
                                                        rel=1e-6)
        assert report["predicted"] == [row.predicted]  # one group per class; Present = the predicted one
        # the operating threshold that decided (binary: the positive class's; the model's defaults here)
        assert report["thresholds"] == pytest.approx({"abnormal": ops.threshold("abnormal")})
        assert row.predicted == ("abnormal" if row.prob_abnormal >= ops.threshold("abnormal") else "normal")
        sc = got["sc"]
        assert report["finding_sites"] == ([("Breast", {"L": "Left", "R": "Right"}[src.Laterality])]
                                           if kind == "MG" else [])
        if kind == "MG":  # the side of the mammogram is carried (series and image), the invalid "CC" is not
            assert src.Laterality in ("L", "R") and sc.ImageLaterality == src.Laterality and "Laterality" not in sc
            assert sc.BodyPartExamined == "BREAST" and sc.ViewPosition == src.ViewPosition
            assert src.PatientOrientation == "CC" and sc.PatientOrientation in ("", None)
        if kind == "CR":  # RG3's ['R', 'F'] is a valid orientation: kept
            assert list(sc.PatientOrientation) == ["R", "F"]
        if kind in NAMES:
            _assert_names_kept(row.input_paths, str(tmp_path / "out"), outputs[row.unit_id], kind)


def test_2d_segmentation_results_conform_and_report_pixels_without_spacing(tmp_path):
    """SEG (projection images without a Frame of Reference included), SR (planar ROI, TID 1410) and SC pass
    dciodvfy; the size is in cm² where the source has a spacing and in pixels where it has none (RG3)."""
    bundle = make_bundle("tiny_segmentation_2d_bundle", str(tmp_path / "b"))
    files = _sources_2d(str(tmp_path / "in"))
    for cs in NAMES:
        files[cs] = _charset_copy(str(tmp_path / "in" / f"ct_{cs.replace(' ', '_')}.dcm"), cs)
    df, outputs = _score(bundle, str(tmp_path / "in"), str(tmp_path / "out"))
    kinds = {v: k for k, v in files.items()}
    for row in df.itertuples():
        kind = kinds[row.input_paths]
        # every object written; the only warning is the reader's where the source has no spacing (sizes in pixels)
        warning = row.warnings if isinstance(getattr(row, "warnings", None), str) else ""
        header = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        spaced = any(float(v) > 0 for key in ("PixelSpacing", "ImagerPixelSpacing") for v in (header.get(key) or []))
        assert warning == ("" if spaced else warning) and (spaced or warning.startswith("no pixel spacing")), \
            (kind, warning)
        src = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        got = _check_objects(str(tmp_path / "out"), outputs[row.unit_id], src)
        report = read_report(got["dicom_sr"])
        assert report["segment"] == (got["dicom_seg"].SOPInstanceUID, 1)
        assert report["structure"] == "bright"
        if kind == "CR":  # a projection image without a Frame of Reference: the SEG says how it is oriented
            assert list(got["dicom_seg"].PatientOrientation) == ["R", "F"]
        if kind in ("CR", "MG"):  # no spacing in the file (RG3, CBIS-DDSM): pixels, never a made-up cm²
            assert not has_pixel_spacing(src)
            assert report["area_cm2"] is None and report["pixels"] == row.lesion_voxels
        else:
            assert report["area_cm2"] == pytest.approx(row.lesion_area_cm2, rel=1e-6, abs=1e-9)
        if kind in NAMES:
            _assert_names_kept(row.input_paths, str(tmp_path / "out"), outputs[row.unit_id], kind)


def test_3d_and_multiframe_results_conform_and_sr_sc_survive_a_missing_seg(tmp_path):
    """An MR series gets SEG + SR (volumetric ROI) + SC; the multi-frame emri_small, for which no SEG can be made,
    still gets its SR (the structure and its volume, without a segment reference) and SC, and the row's warnings
    name the missing SEG."""
    bundle = make_bundle("tiny_segmentation_bundle", str(tmp_path / "b"))
    write_dicom_series(str(tmp_path / "in" / "series"), generate_uid(), generate_uid(), n=6, size=12)
    shutil.copy(get_testdata_file("emri_small.dcm"), tmp_path / "in" / "emri.dcm")
    df, outputs = _score(bundle, str(tmp_path / "in"), str(tmp_path / "out"))
    assert len(df) == 2 and sum("dicom_seg" in o for o in outputs.values()) == 1  # the series only
    for row in df.itertuples():
        first = sorted(row.input_paths.split(";"))[0]
        src = pydicom.dcmread(first, stop_before_pixels=True)
        got = _check_objects(str(tmp_path / "out"), outputs[row.unit_id], src)
        report = read_report(got["dicom_sr"])
        if has_pixel_spacing(src):
            assert report["volume_ml"] == pytest.approx(row.lesion_volume_ml, rel=1e-6, abs=1e-9)
        else:  # emri_small: no functional groups, no spacing at all: voxels, never a made-up mL
            assert report["volume_ml"] is None and report["voxels"] == row.lesion_voxels
        if "dicom_seg" in outputs[row.unit_id]:
            assert report["segment"] == (got["dicom_seg"].SOPInstanceUID, 1)
        else:
            assert "emri" in row.input_paths
            assert report["segment"] is None and "sc" in got
            assert "no DICOM SEG written" in row.warnings and "SR" not in row.warnings.split(":")[0]


def test_detection_results_conform_with_the_bundles_codes_and_a_stable_device(tmp_path):
    """The real mammography detector (untrained) on CBIS-DDSM-style mammograms: SR (a planar ROI per box: Mass,
    Pathology benign/malignant, Probability, Probability of cancer) and SC pass dciodvfy and dsrdump; the device
    observer UID is the same for every report of the same weights; series number and description name the
    bundle."""
    from cadpipe.pipelines.outputs import dicom_codes
    from tests.pipelines.outputs.test_dicom_results import _declared, _score_mammograms

    out, df = _score_mammograms(tmp_path, {"overlay_min_score": 0.0})
    outputs = journal_outputs(out)
    declared = _declared(out)
    devices = set()
    for row in df.itertuples():
        src = pydicom.dcmread(row.input_paths, stop_before_pixels=True)
        got = _check_objects(out, outputs[row.unit_id], src)
        report = read_report(got["dicom_sr"], bundle=declared)
        assert report["boxes"] and {b["finding"] for b in report["boxes"]} == {"Mass"}
        assert report["finding_sites"] == [("Breast", {"L": "Left", "R": "Right"}[src.ImageLaterality])]
        assert all(b["malignancy"] is not None for b in report["boxes"])
        devices.add(report["device_uid"])
        bundle = declared | {"name": row.bundle, "model_sha256": row.model_sha256}
        assert report["device_uid"] == dicom_codes.device_uid(bundle)
        assert (got["dicom_sr"].SeriesNumber, got["sc"].SeriesNumber) == (9962, 9963)
        assert got["dicom_sr"].SeriesDescription == "cadpipe mammo masses SR (not for clinical use)"
        assert got["sc"].SeriesDescription == "cadpipe mammo masses overlay (not for clinical use)"
        # the only private code left is the intended-use evaluation
        private = [w for w in assert_conformant(os.path.join(out, outputs[row.unit_id]["dicom_sr"]),
                                                EXPLAINED_WARNINGS) if "99CADPIPE" in w]
        assert len(private) == 2 * (len(report["boxes"]))  # "Intended use" = "Not for clinical use" per group
    assert len(devices) == 1


def test_patient_orientation_is_copied_only_when_valid():
    from cadpipe.pipelines.outputs.secondary_capture import valid_patient_orientation

    assert valid_patient_orientation(["R", "F"]) == ["R", "F"]
    assert valid_patient_orientation(["A", "FR"]) == ["A", "FR"]
    for bad in ("CC", "MLO", ["C", "C"], ["M", "L", "O"], ["L", "R"], ["A", "A"], ["LR", "F"], [], None, ["L"]):
        assert valid_patient_orientation(bad) is None, bad


def test_a_mammogram_overlay_without_laterality_is_refused():
    import numpy as np

    from cadpipe.pipelines.outputs.secondary_capture import build_secondary_capture

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    src.Modality = "MG"
    with pytest.raises(ValueError, match="no Laterality"):
        build_secondary_capture(src, np.zeros((8, 8, 3), np.uint8), {"name": "mammo"})
    src.ImageLaterality = "R"
    sc = build_secondary_capture(src, np.zeros((8, 8, 3), np.uint8), {"name": "mammo"})
    assert sc.ImageLaterality == "R"


def test_class_codes_are_declared_or_private_and_never_truncated():
    from cadpipe.pipelines.outputs import dicom_codes

    code = dicom_codes.class_type({}, "Pleural_Thickening")
    assert (code.value, code.scheme_designator, code.meaning) == ("Pleural_Thickening", "99CADPIPE",
                                                                  "Pleural_Thickening")
    assert "LongCodeValue" in code and "CodeValue" not in code  # over 16 characters: Long Code Value
    lung = {"dicom": {"classes": {"lung": {"category": ["91723000", "SCT", "Anatomical Structure"],
                                           "type": ["39607008", "SCT", "Lung"]}}}}
    assert dicom_codes.class_type(lung, "lung").value == "39607008"
    assert dicom_codes.class_category(lung, "lung").meaning == "Anatomical Structure"
    assert dicom_codes.class_name_of(lung, dicom_codes.class_type(lung, "lung")) == "lung"
    a, b = dicom_codes.series_number({"name": "a"}, "sr"), dicom_codes.series_number({"name": "b"}, "sr")
    assert a == dicom_codes.series_number({"name": "a"}, "sr") and a % 10 == 2 and 9000 <= a < 9900
    assert dicom_codes.device_uid({"model_sha256": "ab" * 32}) == dicom_codes.device_uid({"model_sha256": "ab" * 32})
    assert dicom_codes.device_uid({"model_sha256": "ab" * 32}) != dicom_codes.device_uid({"model_sha256": "cd" * 32})
    assert dicom_codes.is_result_description(dicom_codes.series_description({"name": "x"}, "sc"))


def test_multilabel_sr_has_one_group_per_finding_with_the_bundles_codes(tmp_path):
    """ChestX-ray14's 15 classes with the codes its bundle declares: one TID 1501 group per class, each with one
    Finding (the class's code), its probability, threshold and Present/Absent; long private names are not cut;
    dciodvfy and dsrdump accept it and it reads back to the same values."""
    import json

    from cadpipe.pipelines.outputs.dicom_sr import build_measurement_report

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    with open(os.path.join(repo, "bundles", "cxr_chestxray14_classification", "configs", "metadata.json"),
              encoding="utf-8") as f:
        meta = json.load(f)
    names = meta["cadpipe"]["class_names"]
    bundle = {"name": meta["name"], "version": meta["version"], "model_sha256": "ef" * 32,
              "dicom": meta["cadpipe"]["dicom"]}
    probs = {n: round(0.05 + 0.06 * i, 4) for i, n in enumerate(names)}
    thresholds = {n: 0.5 for n in names}
    predicted = [n for n in names if probs[n] >= 0.5 and n != "No Finding"]
    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    path = str(tmp_path / "sr.dcm")
    build_measurement_report([src], bundle, probabilities=probs, predicted=predicted,
                             thresholds=thresholds).save_as(path)
    assert_conformant(path, EXPLAINED_WARNINGS)
    assert_dsrdump_parses(path)
    report = read_report(path, bundle)
    assert report["probabilities"] == pytest.approx(probs) and report["thresholds"] == pytest.approx(thresholds)
    assert report["predicted"] == predicted
    groups = [g for g in pydicom.dcmread(path).ContentSequence if g.ValueType == "CONTAINER"][0].ContentSequence
    assert len(groups) == len(names)
    for g in groups:
        findings = [i for i in g.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
        assert len(findings) == 1
    codes = {i.ConceptCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0] for g in groups for i in g.ContentSequence
             if i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"}
    assert codes["Pneumonia"].CodingSchemeDesignator == "SCT" and codes["Pneumonia"].CodeValue == "233604007"
    assert codes["Pleural_Thickening"].LongCodeValue == "Pleural_Thickening"  # private, full name


def test_overlay_is_shown_at_display_size_with_the_sources_aspect_ratio():
    """A square model-input overlay of a non-square source gets the source's shape; a large one is scaled down to
    the display size; non-square pixel spacing counts."""
    import numpy as np

    from cadpipe.pipelines.outputs.secondary_capture import DISPLAY_LONG_SIDE, display_picture

    src = pydicom.Dataset()
    src.Rows, src.Columns = 400, 300
    assert display_picture(np.zeros((224, 224, 3), np.uint8), src).shape == (224, 168, 3)
    big = np.zeros((4000, 3000, 3), np.uint8)
    assert display_picture(big, src).shape == (DISPLAY_LONG_SIDE, 1536, 3)
    src.PixelSpacing = [0.5, 1.0]  # rows 0.5 mm apart: 200 mm tall, 300 mm wide
    assert display_picture(np.zeros((224, 224, 3), np.uint8), src).shape == (149, 224, 3)
    same = np.zeros((224, 168, 3), np.uint8)
    del src.PixelSpacing
    assert display_picture(same, src) is same
