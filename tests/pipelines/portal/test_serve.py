"""The web portal's API (FastAPI TestClient, in process): upload → job → report, bad uploads, token, restart.

Scoring uses the real CXR bundle with seeded *untrained* weights at 64x64 (plumbing, not accuracy)."""

from __future__ import annotations

import io
import logging
import os
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from cadpipe.pipelines.portal.uploads import (UploadLimits, UploadRejected, check_upload_set, sniff_kind,  # noqa: E402
                                              store_upload, suffix_of)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CXR = "cxr_pneumonia_classification"
OVERRIDES = {"image_size": 64, "use_clahe": False}
LIMITS = UploadLimits(max_files=4, max_file_mb=0.25, max_total_mb=0.6)


def png_bytes(size: int = 64, seed: int = 0, rgb: bool = False) -> bytes:
    from PIL import Image

    from cadpipe.data.synthetic.cxr import synthetic_cxr

    arr, _ = synthetic_cxr(size, pneumonia=True, rng=seed)
    im = Image.fromarray((arr * 255).astype(np.uint8), mode="L")
    buf = io.BytesIO()
    (im.convert("RGB") if rgb else im).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.portal.engine import load_runner

    dest = copy_bundle_untrained(os.path.join(REPO, "bundles", CXR), tmp_path_factory.mktemp("b") / CXR, OVERRIDES)
    return load_runner(dest, "cpu", OVERRIDES)


def make_client(runner, data_dir, token=None):
    from fastapi.testclient import TestClient

    from cadpipe.pipelines.portal import PortalSettings, create_app

    app = create_app({CXR: runner}, PortalSettings(data_dir=str(data_dir), token=token, limits=LIMITS))
    return TestClient(app)


def wait(client, job_id, headers=None, seen=None):
    for _ in range(400):  # a bound, not a timing claim
        job = client.get(f"/api/studies/{job_id}", headers=headers, params={"wait": 0.5}).json()
        if seen is not None and (not seen or seen[-1] != job["step"]):
            seen.append(job["step"])
        if job["status"] in ("done", "error"):
            return job
    raise AssertionError(f"job {job_id} did not finish: {job}")


def upload(client, files, task="auto", headers=None, **params):
    return client.post("/api/studies", files=[("files", f) for f in files], data={"task": task}, headers=headers,
                       params=params)


# -- upload checks without a server ---------------------------------------------------------------------------
def test_suffix_and_sniff():
    assert suffix_of("a/b/SCAN.NII.GZ") == ".nii.gz" and suffix_of("IM0001") == "" and suffix_of(".png") == ""
    assert sniff_kind("x.png", b"\x89PNG\r\n\x1a\n....") == "image"
    with pytest.raises(UploadRejected, match=r"^x\.png: not a PNG image") as err:
        sniff_kind("x.png", b"GIF89a....")
    assert err.value.status == 415
    with pytest.raises(UploadRejected, match=r"^IM1: a file without extension must be DICOM"):
        sniff_kind("IM1", b"\x00" * 200)
    with pytest.raises(UploadRejected, match=r"^e\.png: the file is empty"):
        sniff_kind("e.png", b"")


def test_upload_set_checks():
    with pytest.raises(UploadRejected, match=r"^notes\.txt: file type '\.txt' is not accepted"):
        check_upload_set(["a.png", "notes.txt"], LIMITS)
    with pytest.raises(UploadRejected, match=r"^A_0001_1\.LEFT_CC\.LJPEG: an LJPEG needs its case \.ics") as err:
        check_upload_set(["A_0001_1.LEFT_CC.LJPEG"], LIMITS)
    assert err.value.status == 400
    with pytest.raises(UploadRejected, match="too many files: 5"):
        check_upload_set([f"{i}.png" for i in range(5)], LIMITS)


def test_stored_name_is_generated(tmp_path):
    data = png_bytes()
    stored = store_upload("../../etc/evil name.png", io.BytesIO(data), str(tmp_path / "in"), 3, LIMITS)
    assert stored.stored == str(tmp_path / "in" / "f003.png") and stored.size == len(data)
    assert os.listdir(tmp_path) == ["in"]
    with pytest.raises(UploadRejected, match=r"^big\.png: file is larger than the limit of 0\.25 MB"):
        store_upload("big.png", io.BytesIO(data[:8] + b"\0" * 300_000), str(tmp_path / "in"), 4, LIMITS)
    assert sorted(os.listdir(tmp_path / "in")) == ["f003.png"]  # the partial copy is gone


def test_infer_task(tmp_path):
    from PIL import Image

    from cadpipe.pipelines.portal.engine import infer_task
    from cadpipe.pipelines.portal.uploads import StoredFile

    tasks = [CXR, "breast_histology_classification", "mammo_mass_detection", "brain_mri_tumor_segmentation"]
    grey, colour = str(tmp_path / "g.png"), str(tmp_path / "c.png")
    Image.open(io.BytesIO(png_bytes())).save(grey)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(colour)
    assert infer_task([StoredFile("g", grey, "image", 1)], tasks) == CXR
    assert infer_task([StoredFile("g", str(tmp_path / "g3.png"), "image", 1)], tasks) is None  # unreadable
    Image.open(grey).convert("RGB").save(tmp_path / "g3.png")  # grey content saved as RGB is still grey
    assert infer_task([StoredFile("g", str(tmp_path / "g3.png"), "image", 1)], tasks) == CXR
    assert infer_task([StoredFile("c", colour, "image", 1)], tasks) == "breast_histology_classification"
    assert infer_task([StoredFile("m", "x.LJPEG", "ljpeg", 1), StoredFile("i", "x.ics", "ics", 1)], tasks) \
        == "mammo_mass_detection"
    assert infer_task([StoredFile("v", "v.nii.gz", "nifti", 1)], tasks) == "brain_mri_tumor_segmentation"
    assert infer_task([StoredFile("c", colour, "image", 1)], [CXR, "mammo_mass_detection"]) is None
    assert infer_task([StoredFile("c", colour, "image", 1)], [CXR]) == CXR


def test_parse_overrides():
    from cadpipe.pipelines.portal.serve import parse_overrides

    assert parse_overrides(["image_size=64", f"{CXR}:use_clahe=false", "name=abc"]) == {
        None: {"image_size": 64, "name": "abc"}, CXR: {"use_clahe": False}}
    with pytest.raises(ValueError, match="needs \\[BUNDLE:\\]ID=VALUE"):
        parse_overrides(["image_size"])


def test_serve_refuses_public_host_without_token(capsys, monkeypatch):
    from cadpipe.cli import main

    monkeypatch.delenv("CADPIPE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--bundles", "nowhere"]) == 2
    assert "needs an access token" in capsys.readouterr().err


def test_serve_explicit_bundle_without_weights(tmp_path, capsys):
    import shutil

    from cadpipe.cli import main

    shutil.copytree(os.path.join(REPO, "bundles", CXR, "configs"), tmp_path / CXR / "configs")
    assert main(["serve", "--bundles", str(tmp_path / CXR), "--data-dir", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "no trained weights" in err


# -- the app ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_png_upload_to_report_and_restart(runner, tmp_path):
    with make_client(runner, tmp_path) as client:
        health = client.get("/api/health").json()
        assert health["status"] == "ok" and health["tasks"] == [CXR] and not health["token_required"]
        task, = client.get("/api/tasks").json()
        assert task["key"] == CXR and task["class_names"] == ["NORMAL", "PNEUMONIA"] and task["kind"] == "cxr"
        page = client.get("/")
        assert page.status_code == 200 and f'value="{CXR}"' in page.text and "/static/portal.js" in page.text
        assert client.get("/static/portal.js").status_code == 200
        assert "/api/studies/{job_id}/report.pdf" in client.get("/openapi.json").json()["paths"]
        docs = client.get("/docs")  # Swagger UI served locally (no CDN: the machine may have no internet)
        assert docs.status_code == 200 and "/swagger/swagger-ui-bundle.js" in docs.text
        assert client.get("/swagger/swagger-ui-bundle.js").status_code == 200

        r = upload(client, [("synthetic_cxr.png", png_bytes(), "image/png")])
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.json()["files"] == [{"name": "synthetic_cxr.png", "size": len(png_bytes()), "kind": "image"}]
        seen = [r.json()["step"]]
        job = wait(client, job_id, seen=seen)
        assert job["status"] == "done", job
        assert seen[0] == "uploaded" and seen[-1] == "report ready" and len(seen) >= 2, seen  # long poll follows
        assert [s["name"] for s in job["steps"]] == ["uploaded", "loaded", "preprocessed", "inferred", "report ready"]
        assert all(s["done"] for s in job["steps"])
        times = [job["step_times"][s] for s in ("uploaded", "loaded", "preprocessed", "inferred", "report ready")]
        assert times == sorted(times) and times[-1] <= job["elapsed_s"]
        row, = job["rows"]
        assert row["status"] == "ok" and 0.0 <= row["prob_PNEUMONIA"] <= 1.0
        assert abs(row["prob_PNEUMONIA"] + row["prob_NORMAL"] - 1.0) < 1e-4
        assert row["findings"][0]["text"].startswith("PNEUMONIA: ") and "operating threshold" in row["findings"][0]["text"]
        report = client.get(job["report_url"])
        assert report.status_code == 200 and "Computer-aided analysis report" in report.text
        assert "data:image/png;base64," in report.text and "synthetic_cxr.png" in report.text
        call = next(c for c in row["calls"] if c["name"] == "PNEUMONIA")  # the page's table prints these
        assert call["shown_probability"] in report.text and call["shown_threshold"] in report.text
        assert call["call"] == row["findings"][0]["call"]  # the same call as the findings and the report
        assert len(job["overlay_captions"]) == len(job["overlay_urls"]) >= 1  # each picture says what it shows
        assert job["overlay_captions"][0].startswith(f"Grad-CAM for PNEUMONIA ({call['call']}: probability "
                                                     f"{call['shown_probability']}, {call['relation']} ")
        assert job["overlay_captions"][0] in report.text
        pdf = client.get(job["report_pdf_url"])
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
        png = client.get(job["overlay_urls"][0])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert os.listdir(tmp_path / "jobs" / job_id / "input") == ["f000.png"]

    with make_client(runner, tmp_path) as client:  # a new service on the same data folder
        again = client.get(f"/api/studies/{job_id}").json()
        assert again["status"] == "done" and again["rows"] == job["rows"]
        assert client.get(again["report_url"]).text == report.text
        assert client.get("/api/studies/" + "0" * 32).status_code == 404


@pytest.mark.slow
def test_unfinished_job_is_scored_after_restart(runner, tmp_path):
    from cadpipe.pipelines.portal.jobs import JobStore, new_job_id

    store = JobStore(str(tmp_path))
    job_id = new_job_id()
    os.makedirs(tmp_path / "jobs" / job_id / "input")
    (tmp_path / "jobs" / job_id / "input" / "f000.png").write_bytes(png_bytes(seed=3))
    store.create(job_id, CXR, [{"name": "a.png", "stored": "input/f000.png", "kind": "image", "size": 1}])
    store.update(job_id, status="running", step="loaded")  # as a killed service left it
    with make_client(runner, tmp_path) as client:
        assert wait(client, job_id)["status"] == "done"


@pytest.mark.slow
def test_dicom_patient_name_not_logged(runner, tmp_path, caplog):
    import pydicom

    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    path = str(tmp_path / "synthetic_cxr.dcm")
    write_cxr_dicom(path, rows=80, cols=64, seed=1)
    ds = pydicom.dcmread(path)
    ds.PatientName, ds.PatientID = "Zyxwv^Qumberly", "PID-778899"
    ds.save_as(path)
    caplog.set_level(logging.DEBUG)
    with make_client(runner, tmp_path / "d") as client:
        r = upload(client, [("Zyxwv_Qumberly_chest.dcm", open(path, "rb").read(), "application/dicom")])
        assert r.status_code == 202, r.text
        job = wait(client, r.json()["id"])
        assert job["status"] == "done", job
        assert job["task"] == CXR
        report = client.get(job["report_url"]).text
    assert "Zyxwv" in report and "PID-778899" in report  # the identifiers are for the user's report...
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "queued" in logged and job["id"] in logged  # the service did log this job...
    assert "Zyxwv" not in logged and "Qumberly" not in logged and "778899" not in logged  # ...but no identifier


@pytest.mark.slow
def test_bad_uploads_give_clear_errors_and_service_stays_up(runner, tmp_path):
    with make_client(runner, tmp_path) as client:
        # a DICM preamble and no header: refused at upload from the header read (422), naming the file
        bad = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 20
        r = upload(client, [("broken.dcm", bad, "application/dicom")], task=CXR)
        assert r.status_code == 422 and r.json()["error"].startswith("broken.dcm: not a DICOM file"), r.text
        # truncated pixel data: the header passes the upload checks, loading fails -> job error naming the file
        from cadpipe.data.synthetic.dicom import write_cxr_dicom

        write_cxr_dicom(tmp_path / "synthetic.dcm", rows=64, cols=48)
        bad = (tmp_path / "synthetic.dcm").read_bytes()[:-3000]
        r = upload(client, [("broken.dcm", bad, "application/dicom")], task=CXR)
        assert r.status_code == 202, r.text
        job = wait(client, r.json()["id"])
        assert job["status"] == "error" and job["error"].startswith("broken.dcm: "), job
        assert "f000" not in job["error"] and job["report_url"] is None or job["rows"]
        # LJPEG without its .ics
        r = upload(client, [("A_0001_1.LEFT_CC.LJPEG", b"\xff\xd8\xff\xc3" + b"\0" * 64, "image/jpeg")])
        assert r.status_code == 400 and "needs its case .ics" in r.json()["error"]
        assert r.json()["file"] == "A_0001_1.LEFT_CC.LJPEG"
        # oversize file
        r = upload(client, [("big.png", png_bytes()[:8] + b"\0" * 300_000, "image/png")])
        assert r.status_code == 413 and r.json()["error"] == "big.png: file is larger than the limit of 0.25 MB"
        # oversize upload (refused from Content-Length, before the body is read)
        r = upload(client, [(f"{i}.png", png_bytes()[:8] + b"\0" * 240_000, "image/png") for i in range(4)])
        assert r.status_code == 413 and "in total" in r.json()["error"]

        def chunked():  # no Content-Length: refused while streaming
            yield b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n\x89PNG\r\n\x1a\n'
            for _ in range(40):
                yield b"\0" * 65536
            yield b"\r\n--xyz--\r\n"

        r = client.post("/api/studies", content=chunked(), headers={"content-type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 413 and "in total" in r.json()["error"]
        # wrong types
        r = upload(client, [("notes.txt", b"hello", "text/plain")])
        assert r.status_code == 415 and r.json()["error"].startswith("notes.txt: file type '.txt' is not accepted")
        r = upload(client, [("photo.png", b"\xff\xd8\xff\xe0 jpeg really", "image/png")])
        assert r.status_code == 415 and r.json()["error"] == ("photo.png: not a PNG image (the content does not "
                                                               "match the extension)")
        r = upload(client, [("x.png", png_bytes(), "image/png")], task="no_such_task")
        assert r.status_code == 400 and "unknown task 'no_such_task'" in r.json()["error"]
        assert os.listdir(tmp_path / "jobs") == [job["id"]]  # rejected uploads leave nothing behind
        # still up and scoring
        assert client.get("/api/health").json()["status"] == "ok"
        r = upload(client, [("ok.png", png_bytes(), "image/png")])
        assert wait(client, r.json()["id"])["status"] == "done"


@pytest.mark.slow
def test_token(runner, tmp_path):
    with make_client(runner, tmp_path, token="s3cret") as client:
        assert client.get("/api/health").json()["token_required"] is True
        r = upload(client, [("x.png", png_bytes(), "image/png")])
        assert r.status_code == 401 and "token" in r.json()["error"]
        r = upload(client, [("x.png", png_bytes(), "image/png")], headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        r = upload(client, [("x.png", png_bytes(), "image/png")], headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert client.get(f"/api/studies/{job_id}").status_code == 401
        job = wait(client, job_id, headers={"Authorization": "Bearer s3cret"})
        assert job["status"] == "done"
        assert client.get(job["report_url"], params={"token": "s3cret"}).status_code == 200
        assert client.get(job["report_url"]).status_code == 401


@pytest.mark.slow
def test_ljpeg_with_ics_is_scored_under_rebuilt_names(tmp_path):
    from fastapi.testclient import TestClient

    from cadpipe.data.synthetic.ljpeg import write_ljpeg_case
    from cadpipe.data.synthetic.weights import copy_bundle_untrained
    from cadpipe.pipelines.portal import PortalSettings, create_app
    from cadpipe.pipelines.portal.engine import load_runner

    ov = {"image_long_side": 128}
    mammo = "mammo_mass_detection"
    runner = load_runner(copy_bundle_untrained(os.path.join(REPO, "bundles", mammo), tmp_path / mammo, ov), "cpu", ov)
    case = write_ljpeg_case(tmp_path / "in", rows=96, cols=64, views=("LEFT_CC",))
    view = case["views"]["LEFT_CC"]["path"]
    # two tasks, so the task must be inferred from the files (the second key only has to exist)
    app = create_app({mammo: runner, CXR: runner}, PortalSettings(data_dir=str(tmp_path / "d")))
    with TestClient(app) as client:
        r = upload(client, [("../" + os.path.basename(view), open(view, "rb").read(), "image/jpeg"),
                            ("evil/../../" + os.path.basename(case["ics"]), open(case["ics"], "rb").read(), "text/plain")])
        assert r.status_code == 202, r.text
        assert r.json()["task"] == mammo  # inferred from the LJPEG
        job = wait(client, r.json()["id"])
        assert job["status"] == "done", job
        assert sorted(os.listdir(tmp_path / "d" / "jobs" / job["id"] / "input")) == ["A-0001-1.ics",
                                                                                     "A_0001_1.LEFT_CC.LJPEG"]
        row, = job["rows"]
        assert row["n_findings"] == len([f for f in row["findings"] if f["type"] != "none"])
        assert client.get(job["overlay_urls"][0]).content.startswith(b"\x89PNG")
        r = upload(client, [("mammo.LJPEG", b"\xff\xd8\xff\xc3" + b"\0" * 64, "x"), ("A-0001-1.ics", b"ics", "x")])
        assert r.status_code == 400 and r.json()["error"].startswith("mammo.LJPEG: file name does not follow DDSM")


@pytest.mark.slow
def test_cli_server_subprocess_logs_no_identifiers(tmp_path):
    """``python -m cadpipe serve`` for real (uvicorn, its logging set-up): a DICOM upload is scored and the server's
    whole output holds the job id but neither the patient's name/ID nor the uploaded file name."""
    import socket
    import subprocess
    import sys

    import httpx
    import pydicom

    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.pipelines.portal.server_process import stop_process_group
    from cadpipe.data.synthetic.weights import copy_bundle_untrained

    bundle = copy_bundle_untrained(os.path.join(REPO, "bundles", CXR), tmp_path / CXR, OVERRIDES)
    dcm = str(tmp_path / "synthetic_cxr.dcm")
    write_cxr_dicom(dcm, rows=80, cols=64, seed=2)
    ds = pydicom.dcmread(dcm)
    ds.PatientName, ds.PatientID = "Zyxwv^Qumberly", "PID-778899"
    ds.save_as(dcm)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "cadpipe", "serve", "--port", str(port), "--bundles", str(bundle), "--device", "cpu",
           "--data-dir", str(tmp_path / "data"), "--log-level", "debug", "--override=image_size=64",
           "--override=use_clahe=false"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # start-up bound
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/api/studies", files=[("files", ("Zyxwv_Qumberly.dcm", open(dcm, "rb").read()))],
                       params={"token": "not-needed-locally"})
            assert r.status_code == 202, r.text
            job = wait(c, r.json()["id"])
            assert job["status"] == "done", job
            assert "Zyxwv" in c.get(job["report_url"]).text
    finally:
        stop_process_group(proc, grace=60)
    out = log_path.read_text()
    assert job["id"] in out and "/api/studies" in out
    assert "Zyxwv" not in out and "Qumberly" not in out and "778899" not in out
    assert "not-needed-locally" not in out  # query strings are not logged
