"""`cadpipe score --dicomweb` against a real Orthanc (DICOMweb plugin): same rows as scoring the same files from a
folder, results stored back with STOW-RS and found again by QIDO-RS, resume, and the failure paths (an unreadable
instance, a server that goes away mid-retrieve, wrong credentials)."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pydicom
import pytest

from cadpipe.cli import main
from tests.integration.orthanc import Orthanc, orthanc_server, require_orthanc
from tests.pipelines.scoring.score_helpers import make_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAME = ["study_id", "series_id", "unit_id", "bundle", "bundle_version", "model_sha256", "status", "predicted"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("bundle")))


def _studies(folder: str, seeds=(1, 2, 3)) -> list[str]:
    """Synthetic DX radiographs (one study each) plus pydicom's real CT_small.dcm; returns the file paths."""
    from pydicom.data import get_testdata_file

    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    os.makedirs(folder, exist_ok=True)
    paths = [write_cxr_dicom(os.path.join(folder, f"synthetic_cxr{s}.dcm"), rows=64, cols=48, seed=s)["path"]
             for s in seeds]
    paths.append(shutil.copy(get_testdata_file("CT_small.dcm"), os.path.join(folder, "ct_small.dcm")))
    return paths


def _uid(path: str) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _rows(out: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(out, "results.csv")).sort_values("unit_id").reset_index(drop=True)


def _score(*args: str) -> int:
    return main(["score", "--workers", "0", "--no-reports", "--quiet", *args])


def test_dicomweb_scores_like_a_folder_and_stores_results(tmp_path, bundle, capsys):
    require_orthanc()
    files = _studies(str(tmp_path / "in"))
    with orthanc_server(str(tmp_path / "orthanc")) as pacs:
        for f in files:
            pacs.upload(f)
        assert _score("--bundle", bundle, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "folder")) == 0
        web = str(tmp_path / "web")
        # the DX studies by a QIDO-RS query, the CT one by its UID
        assert _score("--bundle", bundle, "--dicomweb", pacs.dicomweb, "--query", "ModalitiesInStudy=DX",
                      "--study", _uid(files[-1]), "--output", web, "--store-results") == 0
        a, b = _rows(str(tmp_path / "folder")), _rows(web)
        assert len(a) == len(files) and a[SAME].equals(b[SAME])
        for col in [c for c in a if c.startswith("prob_")]:
            assert b[col].tolist() == pytest.approx(a[col].tolist(), abs=1e-6)
        # every study has its SR and SC (new series, same study) on the server, found again by QIDO-RS
        from cadpipe.pipelines.pacs.dicomweb import connect

        client = connect(pacs.dicomweb)
        for f in files:
            found, _ = client.search(f"studies/{_uid(f)}/series", {}, "0020000E", "series", 100)
            modalities = sorted(s["00080060"]["Value"][0] for s in found)
            assert modalities.count("SR") == 1 and modalities.count("OT") + modalities.count("SC") >= 1, modalities
        n_instances = len(pacs.get("/instances"))
        assert n_instances == 3 * len(files)  # source + SR + SC per study
        # each stored Secondary Capture, read back from Orthanc through highdicom, is its unit's overlay PNG
        import io

        from tests.pipelines.outputs.dicom_checks import assert_sc_matches_png, journal_outputs

        outputs = journal_outputs(web)
        for f in files:
            src = pydicom.dcmread(f, stop_before_pixels=True)
            raw, = pacs.series_files(_uid(f), ("OT", "SC"))
            unit = outputs[str(src.SOPInstanceUID)]
            sc = assert_sc_matches_png(io.BytesIO(raw), os.path.join(web, unit["overlays"][0]), source=src)
            assert sc.SOPInstanceUID == pydicom.dcmread(os.path.join(web, unit["dicom_sc"])).SOPInstanceUID

        # a rerun retrieves nothing, rescores nothing, stores nothing again
        capsys.readouterr()
        assert main(["score", "--workers", "0", "--no-reports", "--bundle", bundle, "--dicomweb", pacs.dicomweb,
                     "--query", "ModalitiesInStudy=DX", "--output", web, "--store-results"]) == 0
        out = capsys.readouterr().out
        assert "0 instance(s) retrieved" in out and "stored 0 DICOM result" in out and "(4 already done" in out  # the CT study cached by the first run included
        assert len(pacs.get("/instances")) == n_instances


def _truncated_copy(src: str, dest: str) -> str:
    """``src`` with its pixel data cut to 10 bytes: a valid header Orthanc stores, an image no reader decodes."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.InstanceNumber = 2
    ds.PixelData = ds.PixelData[:10]
    ds.save_as(dest, enforce_file_format=True)
    return dest


def test_unreadable_instance_is_an_error_row_and_server_gone_keeps_what_was_scored(tmp_path, bundle, capsys,
                                                                                   monkeypatch):
    require_orthanc()
    files = _studies(str(tmp_path / "in"), seeds=(4, 5))
    bad = _truncated_copy(files[0], str(tmp_path / "bad.dcm"))
    pacs = Orthanc(str(tmp_path / "orthanc")).start()
    try:
        for f in files + [bad]:
            pacs.upload(f)
        from cadpipe.pipelines.pacs import dicomweb

        real = dicomweb.retrieve_study
        calls = []

        def retrieve_then_stop(client, study, cache, on_instance=None):  # the server goes away after one study
            result = real(client, study, cache, on_instance)
            calls.append(study)
            if len(calls) == 1:
                pacs.stop()
            return result

        monkeypatch.setattr(dicomweb, "retrieve_study", retrieve_then_stop)
        out = str(tmp_path / "out")
        studies = [_uid(files[0]), _uid(files[1]), _uid(files[2])]
        args = ["--bundle", bundle, "--dicomweb", pacs.dicomweb, "--output", out]
        for s in studies:
            args += ["--study", s]
        capsys.readouterr()
        assert _score(*args) == 5
        err = capsys.readouterr().err
        assert "study 2/3 not (fully) retrieved" in err and "cannot connect" in err and pacs.dicomweb in err
        assert not any(s in err for s in studies)  # studies by number; their UIDs in dicomweb_studies.csv
        table = pd.read_csv(os.path.join(out, "dicomweb_studies.csv"))
        assert list(table.study_instance_uid) == studies and list(table.status) == ["ok", "error", "error"]
        rows = _rows(out)  # the first study was scored: its good instance ok, the truncated one an error row
        assert sorted(rows.status) == ["error", "ok"] and set(rows.study_id) == {studies[0]}
        bad_row = rows[rows.status == "error"].iloc[0]
        assert bad_row.unit_id == str(pydicom.dcmread(bad, stop_before_pixels=True).SOPInstanceUID)
        assert bad_row.error.startswith(os.path.join(out, "dicomweb_cache"))

        monkeypatch.setattr(dicomweb, "retrieve_study", real)
        pacs.start()  # same storage, same ports
        assert _score(*args) == 3  # everything retrieved now; the unreadable instance stays an error row
        rows = _rows(out)
        assert len(rows) == 4 and (rows.status == "ok").sum() == 3
        summary = pd.read_json(os.path.join(out, "run_summary.json"), typ="series")
        assert summary["skipped_already_done"] == 1 and summary["errors_retried"] == 1
    finally:
        pacs.stop()


def test_wrong_credentials_give_a_clear_error_without_the_secret(tmp_path, bundle, capsys, monkeypatch):
    require_orthanc()
    files = _studies(str(tmp_path / "in"), seeds=(6,))
    with orthanc_server(str(tmp_path / "orthanc"), users={"alice": "right-password"}) as pacs:
        for f in files:
            pacs.upload(f)
        secret = tmp_path / "auth.txt"
        secret.write_text("basic alice:wrong-password\n")
        secret.chmod(0o600)
        out = str(tmp_path / "out")
        capsys.readouterr()
        assert _score("--bundle", bundle, "--dicomweb", pacs.dicomweb, "--query", "ModalitiesInStudy=DX",
                      "--dicomweb-auth-file", str(secret), "--output", out) == 5
        captured = capsys.readouterr()
        assert "HTTP 401" in captured.err and "wrong-password" not in captured.err + captured.out
        # a malformed credentials file is a usage error naming the file, not its content
        secret.write_text("alice wrong-password")
        assert _score("--bundle", bundle, "--dicomweb", pacs.dicomweb, "--study", _uid(files[0]),
                      "--dicomweb-auth-file", str(secret), "--output", out) == 2
        captured = capsys.readouterr()
        assert str(secret) in captured.err and "wrong-password" not in captured.err
        # the right ones from the environment variable
        monkeypatch.setenv("CADPIPE_DICOMWEB_AUTH", "basic alice:right-password")
        assert _score("--bundle", bundle, "--dicomweb", pacs.dicomweb, "--query", "ModalitiesInStudy=DX",
                      "--output", out) == 0
        assert len(_rows(out)) == 1  # the one DX study; the CT one is not DX
