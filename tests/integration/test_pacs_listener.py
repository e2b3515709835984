"""`cadpipe listen` against a real Orthanc: Orthanc C-STOREs a study to the listener (REST
/modalities/<name>/store), the listener scores it once complete and C-STOREs SR + Secondary Capture back; SIGTERM
keeps what was received and a restart scores it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pydicom
import pytest

from tests.integration.orthanc import free_port, orthanc_server, require_orthanc
from tests.pipelines.scoring.score_helpers import make_bundle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _listen(bundle: str, out: str, port: int, peer: str, log_path: str) -> subprocess.Popen:
    log = open(log_path, "ab")
    proc = subprocess.Popen([sys.executable, "-m", "cadpipe", "listen", "--bundle", bundle, "--output", out,
                             "--port", str(port), "--send-to", peer, "--study-timeout", "1", "--no-reports",
                             "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc


def _wait(predicate, timeout: float, what: str, proc=None, log_path=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.3)
    detail = open(log_path).read()[-3000:] if log_path and os.path.exists(log_path) else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def _rows(out: str) -> pd.DataFrame | None:
    path = os.path.join(out, "results.csv")
    return pd.read_csv(path) if os.path.exists(path) else None


def _result_modalities(pacs, study_uid: str) -> list[str]:
    study = pacs.study_orthanc_id(study_uid)
    return sorted(s["MainDicomTags"].get("Modality", "") for s in pacs.get(f"/studies/{study}/series"))


def test_listen_scores_a_study_sent_by_orthanc_and_sends_results_back(tmp_path):
    require_orthanc()
    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.pipelines.outputs.dicom_sr import read_report

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    port = free_port()
    files = [write_cxr_dicom(str(tmp_path / f"synthetic_{s}.dcm"), rows=64, cols=48, seed=s)["path"] for s in (7, 8)]
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
    out, log_path = str(tmp_path / "out"), str(tmp_path / "listen.log")
    with orthanc_server(str(tmp_path / "orthanc"), modalities={"cadpipe": ["CADPIPE", "127.0.0.1", port]}) as pacs:
        for f in files:
            pacs.upload(f)
        proc = _listen(bundle, out, port, f"ORTHANC@127.0.0.1:{pacs.dicom_port}", log_path)
        try:
            _wait(lambda: _try_store(pacs, uids[0]), 90, "the listener to accept C-STORE", proc, log_path)
            _wait(lambda: _sent_back(pacs, uids[0]), 120, "SR + SC back in Orthanc", proc, log_path)
            row = _rows(out).iloc[0]
            # the SR Orthanc holds now carries the values of results.csv
            raw, = pacs.series_files(uids[0], ("SR",))
            sr_path = tmp_path / "sr_from_orthanc.dcm"
            sr_path.write_bytes(raw)
            report = read_report(str(sr_path))
            assert report["probabilities"] == pytest.approx({"normal": row.prob_normal, "abnormal": row.prob_abnormal},
                                                            rel=1e-6)
            assert report["predicted"] == [row.predicted]
            _check_sc_in_orthanc(pacs, uids[0], out, row.unit_id, files[0])

            # second study: SIGTERM right after it arrived (before --study-timeout): on disk, scored on restart
            assert _try_store(pacs, uids[1])
            os.killpg(proc.pid, signal.SIGTERM)
            assert proc.wait(60) == 0
            assert set(_rows(out).study_id) == {uids[0]}
            proc = _listen(bundle, out, port, f"ORTHANC@127.0.0.1:{pacs.dicom_port}", log_path)
            _wait(lambda: _sent_back(pacs, uids[1]), 120, "second study's SR + SC", proc, log_path)
            rows = _rows(out)
            assert sorted(rows.study_id) == sorted(uids) and (rows.status == "ok").all()
            assert _sent_back(pacs, uids[0])  # the first study's results were not sent again
            _check_sc_in_orthanc(pacs, uids[1], out, rows.set_index("study_id").loc[uids[1]].unit_id, files[1])
            assert len(pacs.get("/instances")) == 6  # 2 sources + 2 x (SR + SC)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(60)


def _check_sc_in_orthanc(pacs, study_uid: str, out: str, unit_id: str, source_path: str) -> None:
    """The Secondary Capture Orthanc holds for the study, read through highdicom, is the unit's overlay PNG pixel
    for pixel, in a new series of the source study."""
    import io

    from tests.pipelines.outputs.dicom_checks import assert_sc_matches_png, journal_outputs

    raw, = pacs.series_files(study_uid, ("OT", "SC"))
    outputs = journal_outputs(out)[unit_id]
    sc = assert_sc_matches_png(io.BytesIO(raw), os.path.join(out, outputs["overlays"][0]),
                               source=pydicom.dcmread(source_path, stop_before_pixels=True))
    assert sc.SOPInstanceUID == pydicom.dcmread(os.path.join(out, outputs["dicom_sc"])).SOPInstanceUID


def _sent_back(pacs, study_uid: str) -> bool:
    found = _result_modalities(pacs, study_uid)
    return found.count("SR") == 1 and found.count("OT") + found.count("SC") == 1


def _try_store(pacs, study_uid: str) -> bool:
    import requests

    try:
        pacs.post("/modalities/cadpipe/store", {"Resources": [pacs.study_orthanc_id(study_uid)], "Synchronous": True})
        return True
    except requests.HTTPError:
        return False


def test_listen_refuses_a_non_loopback_address_without_an_allow_list(tmp_path):
    from cadpipe.cli import main

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    assert main(["listen", "--bundle", bundle, "--output", str(tmp_path / "o"), "--bind", "0.0.0.0"]) == 2
    assert main(["listen", "--bundle", bundle, "--output", str(tmp_path / "o"), "--send-to", "nope"]) == 2
