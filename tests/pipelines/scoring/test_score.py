"""cadpipe score on tiny fixture bundles: rows, errors, outputs, DICOM SEG, exit codes, logs."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest

from cadpipe.cli import main
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.score import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, ScoreConfig, score
from tests.pipelines.scoring.score_helpers import make_bundle, mixed_2d_folder, write_dicom_series, write_nifti

NOISE = ["elapsed_s"]


@pytest.fixture(scope="module")
def cls_bundle(tmp_path_factory):
    return make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("b")))


@pytest.fixture(scope="module")
def seg_bundle(tmp_path_factory):
    return make_bundle("tiny_segmentation_bundle", str(tmp_path_factory.mktemp("b")))


def test_mixed_folder_rows_and_errors(cls_bundle, tmp_path, caplog):
    exp = mixed_2d_folder(str(tmp_path / "in"))
    out = str(tmp_path / "out")
    with caplog.at_level(logging.INFO):
        summary = score(ScoreConfig(bundle=cls_bundle, input=str(tmp_path / "in"), output=out, workers=1,
                                    batch_size=3, quiet=True))
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(df) == len(exp["ok"]) + len(exp["bad"])  # non-images (txt, DICOMDIR, hidden) not listed
    assert df["unit_id"].is_unique
    assert summary["ok"] == len(exp["ok"]) and summary["error"] == len(exp["bad"])
    assert summary["exit_code"] == EXIT_SOME_FAILED
    ok = df[df.status == "ok"]
    assert set(ok.input_paths) == set(exp["ok"])
    np.testing.assert_allclose(ok.prob_normal + ok.prob_abnormal, 1.0, atol=1e-5)
    assert set(ok.predicted) <= {"normal", "abnormal"}
    for col in ["study_id", "series_id", "bundle", "bundle_version", "model_sha256", "elapsed_s"]:
        assert ok[col].notna().all(), col
    assert (ok.bundle == "tiny_classification_bundle").all() and (ok.model_sha256.str.len() == 64).all()
    err = df[df.status == "error"].set_index("input_paths")
    assert set(err.index) == set(exp["bad"])
    for path in exp["bad"]:
        assert err.loc[path, "error"].startswith(path + ": ")  # names the file, then the reason
    assert "empty" in err.loc[exp["bad"][1], "error"] or "0 bytes" in err.loc[exp["bad"][1], "error"]
    # DICOM files without extensions, nested, grouped by study UID
    dicom_rows = df[df.study_id == exp["dicom_study"]]
    assert len(dicom_rows) == 2 and dicom_rows.series_id.nunique() == 1
    # outputs: heatmap overlays and self-contained reports with the notice and identifiers
    for _, r in ok.iterrows():
        row_dir = os.path.join(out, r.study_id, r.series_id)
        assert any(f.endswith("_heatmap.png") for f in os.listdir(row_dir))
    report = open(os.path.join(out, exp["dicom_study"], "report.html"), encoding="utf-8").read()
    assert "Not for clinical use" in report and "data:image/png;base64," in report
    assert "PAT-SECRET-1" in report and "tiny_classification_bundle" in report and "abnormal: " in report and "operating threshold 50.0%" in report
    assert os.path.exists(os.path.join(out, "results.parquet"))
    # patient identifiers stay out of the logs
    assert "PAT-SECRET" not in caplog.text and "Synthetic^Patient" not in caplog.text
    assert not any("PAT-SECRET" in str(r.args) for r in caplog.records)


def test_segmentation_nifti_and_dicom_seg(seg_bundle, tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom
    from pydicom.uid import generate_uid

    study, series = generate_uid(), generate_uid()
    # a series whose files sit among other files (forces the symlinked series folder), odd names
    src = write_dicom_series(str(tmp_path / "in" / "mixed"), study, series, names=[f"x{k}" for k in range(6)])
    write_nifti(str(tmp_path / "in" / "case1" / "t1.nii.gz"))
    write_nifti(str(tmp_path / "in" / "mixed" / "other.nii.gz"), seed=3)
    out = str(tmp_path / "out")
    summary = score(ScoreConfig(bundle=seg_bundle, input=str(tmp_path / "in"), output=out, workers=0, quiet=True))
    assert summary["exit_code"] == EXIT_OK and summary["units"] == 3
    df = pd.read_csv(os.path.join(out, "results.csv"))
    row = df[df.study_id == study].iloc[0]
    folder = os.path.join(out, study, series)
    mask_img = nib.load(os.path.join(folder, f"{series}_mask.nii.gz"))
    mask = np.asarray(mask_img.dataobj)
    assert mask.shape == (12, 12, 6)  # input geometry, not the 16^3 network grid
    vox_ml = abs(np.linalg.det(mask_img.affine[:3, :3])) / 1000
    assert row.lesion_voxels == int((mask > 0).sum())
    assert row.lesion_volume_ml == pytest.approx(row.lesion_voxels * vox_ml, rel=1e-4)
    assert vox_ml == pytest.approx(1.5 * 1.5 * 2.0 / 1000)
    report = open(os.path.join(out, study, "report.html"), encoding="utf-8").read()
    if row.lesion_voxels:  # a volume reports mL
        assert f"volume {row.lesion_volume_ml:.2f} mL" in report
    seg_ds = pydicom.dcmread(os.path.join(folder, f"{series}_seg.dcm"))
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    refs = {item.ReferencedSOPInstanceUID
            for s in seg_ds.ReferencedSeriesSequence for item in s.ReferencedInstanceSequence}
    assert refs == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in src}
    assert seg_ds.StudyInstanceUID == study and seg_ds.Modality == "SEG"
    assert int(seg.pixel_array.astype(bool).sum()) == int((mask > 0).sum())
    nifti_row = df[df.series_id == "t1"].iloc[0]
    assert nifti_row.status == "ok" and os.path.exists(os.path.join(out, "case1", "t1", "t1_mask.nii.gz"))


def test_dicom_seg_for_2d_dicom_images(tmp_path):
    """A 2D segmentation bundle on single-frame DICOM images (a secondary capture without geometry and a DX CXR,
    MONOCHROME1) writes a DICOM SEG per image that reads back (pydicom + highdicom), references its source SOP
    instance and study, and lines up with the source pixels (rows x cols, not transposed)."""
    import highdicom as hd
    import nibabel as nib
    import pydicom
    import torch
    from pydicom.uid import generate_uid

    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from tests.pipelines.scoring.score_helpers import write_dicom_2d

    bundle = make_bundle("tiny_segmentation_2d_bundle", str(tmp_path))
    # the 1x1 convolution scores "bright" = x and "background" = 0.5: the mask is (min-max scaled pixel > 0.5)
    torch.save({"weight": torch.tensor([[[[0.0]]], [[[1.0]]]]), "bias": torch.tensor([0.5, 0.0])},
               os.path.join(bundle, "models", "model.pt"))
    src = tmp_path / "in"
    os.makedirs(src / "sc")
    sc = write_dicom_2d(str(src / "sc" / "IM1"), generate_uid(), generate_uid(), rows=24, cols=20)
    ds = pydicom.dcmread(sc)
    pixels = np.full((24, 20), 100, np.uint16)
    pixels[2:9, 3:16] = 3000  # an asymmetric bright block: a transposed SEG would not match
    ds.PixelData = pixels.tobytes()
    ds.save_as(sc)
    os.makedirs(src / "cxr")
    cxr = write_cxr_dicom(str(src / "cxr" / "synthetic_IM2"), rows=40, cols=32, photometric="MONOCHROME1", seed=3)
    out = str(tmp_path / "out")
    summary = score(ScoreConfig(bundle=bundle, input=str(src), output=out, workers=0, quiet=True))
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert summary["exit_code"] == EXIT_OK and len(df) == 2, df.error.tolist()
    for path, expected in [(sc, pixels > 1550), (cxr["path"], None)]:
        source = pydicom.dcmread(path)
        row = df[df.input_paths == path].iloc[0]
        folder = os.path.join(out, row.study_id, row.series_id)
        seg_ds = pydicom.dcmread(os.path.join(folder, f"{source.SOPInstanceUID}_seg.dcm"))
        seg = hd.seg.Segmentation.from_dataset(seg_ds)
        assert seg_ds.Modality == "SEG" and seg_ds.StudyInstanceUID == source.StudyInstanceUID
        refs = {i.ReferencedSOPInstanceUID for s in seg_ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
        assert refs == {source.SOPInstanceUID}
        assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID,
                                                source.SOPInstanceUID)]
        frame = np.asarray(seg_ds.pixel_array).reshape(source.Rows, source.Columns).astype(bool)
        mask = np.asarray(nib.load(os.path.join(folder, f"{source.SOPInstanceUID}_mask.nii.gz")).dataobj)
        assert mask.shape == (source.Columns, source.Rows)  # MONAI axes (X = columns, Y = rows)
        np.testing.assert_array_equal(frame, mask.T > 0)
        assert 0 < frame.sum() < frame.size and row.lesion_voxels == int(frame.sum())
        if expected is not None:
            np.testing.assert_array_equal(frame, expected)


def test_manifest_and_limit(cls_bundle, tmp_path):
    exp = mixed_2d_folder(str(tmp_path / "in"))
    manifest = tmp_path / "m.csv"
    rel = [os.path.relpath(p, tmp_path) for p in exp["ok"][:3]]
    manifest.write_text("path,study_id\n" + "".join(f"{r},S{i}\n" for i, r in enumerate(rel)))
    out = str(tmp_path / "out")
    assert main(["score", "--bundle", cls_bundle, "--manifest", str(manifest), "--output", out, "--quiet",
                 "--workers", "0", "--limit", "2"]) == EXIT_OK
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert list(df.study_id) == ["S0", "S1"] and (df.status == "ok").all()


def test_exit_codes_and_usage_errors(cls_bundle, tmp_path):
    exp = mixed_2d_folder(str(tmp_path / "in"))
    args = ["score", "--bundle", cls_bundle, "--output", str(tmp_path / "out"), "--quiet", "--workers", "0"]
    assert main(args + ["--input", str(tmp_path / "in")]) == EXIT_SOME_FAILED
    for p in exp["bad"]:
        os.unlink(p)
    assert main(args + ["--input", str(tmp_path / "in"), "--force"]) == EXIT_OK
    assert main(args + ["--input", str(tmp_path / "missing")]) == EXIT_USAGE
    assert main(["score", "--bundle", str(tmp_path / "nobundle"), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "o2"), "--quiet"]) == EXIT_USAGE
    assert main(args + ["--input", str(tmp_path / "in"), "--batch-size", "0"]) == EXIT_USAGE
    with pytest.raises(SystemExit) as e:
        main(["score", "--bundle", cls_bundle])  # argparse: --input/--output missing
    assert e.value.code == EXIT_USAGE


def test_missing_weights_and_bad_manifest_name_the_file(tmp_path):
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner
    from cadpipe.pipelines.scoring.discovery import read_manifest
    from tests.pipelines.scoring.score_helpers import FIXTURES

    with pytest.raises(CadpipeInputError) as e:
        BundleRunner(os.path.join(FIXTURES, "tiny_classification_bundle"))
    assert "model.pt" in str(e.value) and "no trained weights" in str(e.value)
    bad = tmp_path / "m.csv"
    bad.write_text("file\nx.png\n")
    with pytest.raises(CadpipeInputError) as e:
        read_manifest(str(bad))
    assert str(e.value) == f"{bad}: manifest needs a 'path' column and at least one row"
    bad.write_text("path\nnope.png\n")
    with pytest.raises(CadpipeInputError, match=r"m\.csv: line 2: listed path 'nope.png' does not exist"):
        read_manifest(str(bad))


def test_wrong_weights_are_an_input_error(cls_bundle, tmp_path):
    import shutil

    import torch

    from cadpipe.pipelines.inference.bundle_runner import BundleRunner

    root = str(tmp_path / "b")
    shutil.copytree(cls_bundle, root)
    torch.save({"nonsense": torch.zeros(1)}, os.path.join(root, "models", "model.pt"))
    with pytest.raises(CadpipeInputError, match="weights do not fit the bundle's network"):
        BundleRunner(root, device="cpu")


def test_summary_file(cls_bundle, tmp_path):
    mixed_2d_folder(str(tmp_path / "in"))
    out = tmp_path / "out"
    score(ScoreConfig(bundle=cls_bundle, input=str(tmp_path / "in"), output=str(out), workers=0, quiet=True))
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["ok"] + summary["error"] == summary["units"] == 10


@pytest.mark.slow  # a CLI subprocess (imports torch/MONAI afresh)
def test_cli_logs_at_info_hold_no_patient_identifiers(tmp_path):
    """`cadpipe score` (INFO logging, progress bar, summary) on DICOMs carrying PatientID/PatientName, with a DICOM
    SEG written and a corrupt DICOM (valid header, truncated pixels): the identifiers reach the report only."""
    import subprocess
    import sys

    import pydicom
    from pydicom.uid import generate_uid

    from tests.pipelines.scoring.score_helpers import write_dicom_2d

    bundle = make_bundle("tiny_segmentation_2d_bundle", str(tmp_path))
    src = tmp_path / "in"
    os.makedirs(src / "a")
    study = generate_uid()
    write_dicom_2d(str(src / "a" / "IM1"), study, generate_uid(), patient_id="PAT-SECRET-7")
    bad = write_dicom_2d(str(src / "a" / "IM2"), study, generate_uid(), patient_id="PAT-SECRET-7")
    ds = pydicom.dcmread(bad)
    ds.PixelData = ds.PixelData[:50]
    ds.save_as(bad)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    res = subprocess.run([sys.executable, "-m", "cadpipe", "score", "--bundle", bundle, "--input", str(src),
                          "--output", str(tmp_path / "out"), "--workers", "1"], capture_output=True, text=True,
                         cwd=repo, env=dict(os.environ, PYTHONPATH=repo, OMP_NUM_THREADS="1"))
    text = res.stdout + res.stderr
    assert res.returncode == EXIT_SOME_FAILED, text
    assert "INFO" in text and "units found" in text  # INFO logging was on
    assert "PAT-SECRET" not in text and "Synthetic" not in text, text
    report = open(os.path.join(tmp_path / "out", study, "report.html"), encoding="utf-8").read()
    assert "PAT-SECRET-7" in report  # ... and where the user asked for them


def test_forward_threads_restored(cls_bundle, tmp_path):
    import torch

    from tests.pipelines.scoring.score_helpers import write_png

    write_png(str(tmp_path / "in" / "s" / "a.png"))
    before = torch.get_num_threads()
    summary = score(ScoreConfig(bundle=cls_bundle, input=str(tmp_path / "in"), output=str(tmp_path / "o"), workers=0,
                                quiet=True, threads=1))
    assert summary["ok"] == 1 and torch.get_num_threads() == before  # the caller's setting is restored
    assert main(["score", "--bundle", cls_bundle, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o2"),
                 "--quiet", "--threads", "0"]) == EXIT_USAGE
    assert main(["score", "--bundle", cls_bundle, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o3"),
                 "--quiet", "--streams", "0"]) == EXIT_USAGE


def test_forward_streams_give_the_same_rows(cls_bundle, seg_bundle, tmp_path):
    """--streams 2 (two threads forwarding batches at once) scores exactly like one stream, error rows included,
    Grad-CAM overlays and segmentation masks too."""
    import gzip

    exp = mixed_2d_folder(str(tmp_path / "in"))
    tables = {}
    for streams in (1, 2):
        out = str(tmp_path / f"o{streams}")
        s = score(ScoreConfig(bundle=cls_bundle, input=str(tmp_path / "in"), output=out, workers=0, batch_size=2,
                              quiet=True, heatmaps=False, reports=False, streams=streams))
        assert s["streams"] == streams and s["ok"] == len(exp["ok"]) and s["error"] == len(exp["bad"])
        tables[streams] = pd.read_csv(os.path.join(out, "results.csv")).drop(columns=NOISE).sort_values("unit_id")
    pd.testing.assert_frame_equal(tables[1].reset_index(drop=True), tables[2].reset_index(drop=True))
    pngs = {}
    for streams in (1, 2):  # Grad-CAM heatmaps too: the same overlay PNGs from one stream and from two
        out = tmp_path / f"cam{streams}"
        s = score(ScoreConfig(bundle=cls_bundle, input=str(tmp_path / "in"), output=str(out), workers=0,
                              batch_size=2, quiet=True, reports=False, streams=streams))
        assert s["streams"] == streams and s["ok"] == len(exp["ok"])
        pngs[streams] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*_heatmap.png")}
    assert len(pngs[1]) == len(exp["ok"]) and pngs[1] == pngs[2]
    vols = tmp_path / "vols"
    for i in range(3):
        write_nifti(str(vols / f"synthetic_{i}.nii.gz"), seed=i)
    masks = {}
    for streams in (1, 2):
        out = tmp_path / f"seg{streams}"
        s = score(ScoreConfig(bundle=seg_bundle, input=str(vols), output=str(out), workers=0, batch_size=1,
                              quiet=True, reports=False, streams=streams))
        assert s["streams"] == streams and s["ok"] == 3
        masks[streams] = {p.relative_to(out): gzip.decompress(p.read_bytes()) for p in out.rglob("*_mask.nii.gz")}
    assert len(masks[1]) == 3 and masks[1] == masks[2]
