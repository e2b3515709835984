"""The portal's front door: Host check, token on every route but /api/health (before the body is read), uploads
spooled into the data folder, security headers, image bombs refused at upload, no header value in the log."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from tests.pipelines.portal.test_serve import CXR, LIMITS, REPO, png_bytes, runner, upload, wait  # noqa: E402,F401

TOKEN = "s3cret"


def client_for(runner, data_dir, token=None, hosts=None, limits=LIMITS, base_url="http://127.0.0.1"):
    from fastapi.testclient import TestClient

    from cadpipe.pipelines.portal import PortalSettings, create_app

    app = create_app({CXR: runner}, PortalSettings(data_dir=str(data_dir), token=token, limits=limits,
                                                   allowed_hosts=hosts))
    return TestClient(app, base_url=base_url)


def test_security_headers_on_every_response(runner, tmp_path):
    with client_for(runner, tmp_path) as client:
        for path in ["/", "/api/health", "/static/portal.js", "/api/studies/nope", "/docs"]:
            r = client.get(path)
            csp = r.headers["content-security-policy"]
            assert "frame-ancestors 'self'" in csp and "object-src 'none'" in csp, path
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "SAMEORIGIN"
            assert r.headers["referrer-policy"] == "no-referrer"
        assert "script-src 'self';" in client.get("/").headers["content-security-policy"]  # no inline script
        assert "<script>" not in client.get("/").text.replace('<script id="cadpipe-config" type="application/json">', "")


def test_host_header_is_checked(runner, tmp_path):
    hosts = ["127.0.0.1", "localhost", "portal.example"]
    with client_for(runner, tmp_path, hosts=hosts, base_url="http://evil.example") as client:
        r = client.get("/api/health")
        assert r.status_code == 400 and "Host" in r.json()["error"]
    with client_for(runner, tmp_path, hosts=hosts, base_url="http://portal.example:8443") as client:
        assert client.get("/api/health").status_code == 200


def test_token_guards_every_route_but_health(runner, tmp_path):
    with client_for(runner, tmp_path, token=TOKEN) as client:
        assert client.get("/api/health").status_code == 200
        for path in ["/", "/openapi.json", "/docs", "/api/tasks", "/static/portal.js"]:
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        r = client.get("/", params={"token": TOKEN})  # the page opened with ?token= gets a session cookie
        assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"] and TOKEN not in r.headers["set-cookie"]
        assert client.get("/static/portal.js").status_code == 200  # its assets load with the cookie
        client.cookies.clear()
        assert client.get("/static/portal.js").status_code == 401


def test_upload_without_token_is_refused_before_its_body_is_read(runner, tmp_path):
    from cadpipe.pipelines.portal import PortalSettings, create_app

    app = create_app({CXR: runner}, PortalSettings(data_dir=str(tmp_path), token=TOKEN, limits=LIMITS))
    sent, reads = [], []

    async def receive():
        reads.append(1)
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/studies", "raw_path": b"/api/studies",
             "query_string": b"", "headers": [(b"host", b"127.0.0.1"), (b"content-length", b"300000000"),
                                              (b"content-type", b"multipart/form-data; boundary=x")],
             "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1),
             "root_path": "", "app": app}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401 and not reads  # refused from the headers; no byte of the body was read
    assert not os.path.exists(tmp_path / "jobs") or not os.listdir(tmp_path / "jobs")


def test_uploads_spool_into_the_data_dir(runner, tmp_path, monkeypatch):
    import tempfile

    from cadpipe.pipelines.portal.uploads import UploadLimits

    dirs = []
    real = tempfile.SpooledTemporaryFile

    class Recording(real):
        def __init__(self, max_size=0, *args, **kwargs):
            dirs.append(kwargs.get("dir"))
            super().__init__(max_size, *args, **kwargs)

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", Recording)
    data = tmp_path / "data"
    with client_for(runner, data, limits=UploadLimits(4, 8, 16)) as client:
        r = upload(client, [("x.png", png_bytes(), "image/png")], task=CXR)
        assert r.status_code == 202, r.text
    assert dirs and all(d == os.path.join(str(data), "spool") for d in dirs)


def test_image_bomb_upload_is_refused_with_422(runner, tmp_path):
    from cadpipe.data.synthetic.hostile import write_png_bomb

    bomb = write_png_bomb(tmp_path / "synthetic_bomb.png")["path"]
    with client_for(runner, tmp_path / "data") as client:
        r = upload(client, [("bomb.png", open(bomb, "rb").read(), "image/png")], task=CXR)
        body = r.json()
        assert r.status_code == 422 and body["file"] == "bomb.png"
        assert body["error"].startswith("bomb.png: declared image size 30000x30000") and "--max-pixels" in body["error"]
        assert client.get("/api/health").json()["status"] == "ok"


_PORTAL_JOB = r"""
import logging, sys, time, warnings
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
warnings.simplefilter("default")
import pydicom
from fastapi.testclient import TestClient
from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.portal import PortalSettings, create_app
from cadpipe.pipelines.portal.engine import load_runner
ov = {"image_size": 64, "use_clahe": False}
runner = load_runner(copy_bundle_untrained(sys.argv[1], sys.argv[2] + "/b", ov), "cpu", ov)
app = create_app({"cxr_pneumonia_classification": runner}, PortalSettings(data_dir=sys.argv[2] + "/data"))
with TestClient(app) as client:
    r = client.post("/api/studies", files=[("files", ("x.dcm", open(sys.argv[3], "rb").read(), "application/dicom"))])
    job = r.json()
    for _ in range(300):
        job = client.get("/api/studies/" + job["id"], params={"wait": 0.5}).json()
        if job["status"] in ("done", "error"):
            break
    print("STATUS", job["status"], file=sys.stderr)
"""


def _hostile_dicom(path):
    import pydicom

    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    write_cxr_dicom(path)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = "<script>alert(1)</script>"
    ds.PatientName = "<script>name</script>"
    ds.save_as(path)
    return path


@pytest.mark.slow
def test_no_header_value_in_the_logs_of_a_portal_job_and_of_score(tmp_path):
    dcm = _hostile_dicom(str(tmp_path / "synthetic_xss.dcm"))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _PORTAL_JOB, os.path.join(REPO, "bundles", CXR), str(tmp_path), dcm],
                          env=env, capture_output=True, text=True, timeout=600)
    assert "STATUS done" in proc.stderr, proc.stderr[-3000:]
    assert "INFO cadpipe.portal" in proc.stderr or "job " in proc.stderr  # the log was captured at all
    assert "<script>" not in proc.stderr + proc.stdout

    from tests.pipelines.scoring.score_helpers import make_bundle

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = tmp_path / "in"
    src.mkdir()
    os.replace(dcm, src / "synthetic_xss.dcm")
    proc = subprocess.run([sys.executable, "-m", "cadpipe", "score", "--bundle", bundle, "--input", str(src),
                           "--output", str(tmp_path / "out"), "--workers", "1"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "units found" in proc.stderr and "<script>" not in proc.stderr + proc.stdout


@pytest.mark.slow
def test_hostile_corpus_through_the_portal_api(runner, tmp_path):
    """Each file of the hostile corpus uploaded on its own: valid ones are scored, bad ones refused with the
    uploaded name and the reason (links cannot be uploaded: the client sends bytes, never a path)."""
    from cadpipe.data.synthetic.hostile import write_hostile_corpus

    corpus = write_hostile_corpus(tmp_path / "in", tmp_path / "outside", sparse_size=2 << 20)
    data = tmp_path / "data"
    expect = {"bombs/synthetic_bomb.png": 422, "bombs/synthetic_bomb.dcm": 422, "junk/big.dcm": 413}
    with client_for(runner, data) as client:
        for rel, status in expect.items():
            name = os.path.basename(rel)
            r = upload(client, [(name, open(tmp_path / "in" / rel, "rb").read(), "application/octet-stream")],
                       task=CXR)
            assert r.status_code == status, (rel, r.text)
            assert r.json()["error"].startswith(name + ": ") or status == 413
        ids = []
        for rel in corpus["valid"][:3] + [v for v in corpus["valid"] if "formulas" in v or "collide" in v][:4]:
            name = os.path.basename(rel)
            r = upload(client, [(name, open(tmp_path / "in" / rel, "rb").read(), "image/png")], task=CXR)
            assert r.status_code == 202, (rel, r.text)
            ids.append(r.json()["id"])
        for job_id in ids:
            assert wait(client, job_id)["status"] == "done"
        assert client.get("/api/health").json()["status"] == "ok"
    # nothing outside the data folder: every file the service wrote is under it
    assert sorted(os.listdir(data)) == sorted(set(os.listdir(data)) & {"jobs", "jobs.sqlite3", "spool",
                                                                        "jobs.sqlite3-wal", "jobs.sqlite3-shm"})


def test_one_bad_dicom_never_fails_the_whole_job(runner, tmp_path, monkeypatch):
    """A DICOM with header values over 1 KiB is scored like the others; a file raising an exception nobody expected
    while discovery looks at it becomes its own error row (named by its uploaded name), the rest of the job scored."""
    from cadpipe.data.synthetic.dicom import write_cxr_dicom
    from cadpipe.data.synthetic.hostile import write_long_header_dicom
    from cadpipe.pipelines.scoring import discovery

    long = write_long_header_dicom(tmp_path / "synthetic_long.dcm")["path"]
    good = write_cxr_dicom(tmp_path / "synthetic_good.dcm", rows=48, cols=40, seed=3)["path"]
    odd = write_cxr_dicom(tmp_path / "synthetic_odd.dcm", rows=48, cols=40, seed=4)["path"]
    real = discovery._dicom_header
    odd_size = os.path.getsize(odd) + 1  # the stored copy has a generated name: recognised by its size
    with open(odd, "ab") as f:
        f.write(b"\0")  # a trailing byte: a different size, the same image

    def header(path):
        if os.path.getsize(path) == odd_size:
            raise RuntimeError("something nobody expected")
        return real(path)

    monkeypatch.setattr(discovery, "_dicom_header", header)
    with client_for(runner, tmp_path / "data") as client:
        files = [(os.path.basename(p), open(p, "rb").read(), "application/dicom") for p in (long, good, odd)]
        r = upload(client, files, task=CXR)
        assert r.status_code == 202, r.text
        job = wait(client, r.json()["id"])
    assert job["status"] == "done", job
    rows = job["rows"]
    assert sorted(row["status"] for row in rows) == ["error", "ok", "ok"]
    assert "synthetic_odd.dcm" in job["error"] and "RuntimeError: something nobody expected" in job["error"]


def test_token_file_is_read_and_must_be_private(tmp_path, capsys, monkeypatch):
    """`--token` shows the token in `ps`; `--token-file` reads it from a file only its owner may read."""
    from cadpipe.cli import main

    monkeypatch.delenv("CADPIPE_TOKEN", raising=False)
    token = tmp_path / "token"
    token.write_text("s3cret-portal-token\n")
    token.chmod(0o644)
    args = ["serve", "--host", "0.0.0.0", "--bundles", str(tmp_path / "nowhere"), "--token-file", str(token)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{token}: token file is readable or writable by other users (mode 644)" in err
    assert "s3cret" not in err
    token.chmod(0o600)
    assert main(args) == 2  # the token is accepted: the run goes on to the (missing) bundles
    err = capsys.readouterr().err
    assert "needs an access token" not in err and "token file" not in err and "s3cret" not in err
    assert main([*args, "--token", "x"]) == 2 and "not both" in capsys.readouterr().err
