"""`cadpipe score --dicomweb` against a DICOMweb server that misbehaves on purpose (tests/pipelines/pacs/
dicomweb_server.py, loopback only): an endless answer, a huge instance, a server sending one byte at a time, a
paging loop, malformed QIDO JSON, redirects; credentials files; an untrained bundle; the log. Every case is bounded
by the limits under test (deadlines of a few seconds, caps of a few MiB) and by the server's own answer limit.
Each asserts the exit status, the rows of results.csv, what is on disk and what was printed."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from cadpipe.cli import main
from cadpipe.pipelines.pacs import dicomweb
from tests.pipelines.pacs.dicomweb_server import FakePacs
from tests.pipelines.scoring.score_helpers import make_bundle, write_dicom_2d

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("bundle")))


def _score(*args: str) -> int:
    return main(["score", "--workers", "0", "--no-reports", "--quiet", *args])


def _dicom(folder, name: str, study: str, seed: int) -> str:
    os.makedirs(folder, exist_ok=True)
    return write_dicom_2d(os.path.join(folder, name), study, study + ".1", seed=seed)


def _rows(out: str) -> pd.DataFrame:
    return pd.read_csv(os.path.join(out, "results.csv"), keep_default_na=False)


def _studies_table(out: str) -> list[dict]:
    with open(os.path.join(out, "dicomweb_studies.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)


def test_each_limit_stops_its_study_and_the_others_are_scored(bundle, tmp_path, capsys):
    """An endless answer and a huge instance stop at --max-instance-mb, a 1-byte-at-a-time server at the study's
    deadline: three error studies (exit 5, the reason on stderr and in dicomweb_studies.csv), the good study scored
    (its instance with header values over 1 KiB included), nothing of the bad ones left in the cache."""
    from cadpipe.data.synthetic.hostile import write_long_header_dicom

    src = tmp_path / "src"
    good = _dicom(src, "good.dcm", "1.2.826.0.1.1", 1)
    long = write_long_header_dicom(src / "synthetic_long.dcm", seed=2)["path"]
    with FakePacs() as pacs:
        study = pacs.add(good)
        import pydicom

        ds = pydicom.dcmread(long)
        ds.StudyInstanceUID = study  # the long-header instance joins the good study (own series)
        ds.save_as(long)
        pacs.add(long)
        endless = pacs.add(_dicom(src, "endless.dcm", "1.2.826.0.1.2", 3), "endless")
        huge = pacs.add(_dicom(src, "huge.dcm", "1.2.826.0.1.3", 4), "huge")
        slow = pacs.add(_dicom(src, "slow.dcm", "1.2.826.0.1.4", 5), "slow")
        out = str(tmp_path / "out")
        capsys.readouterr()
        code = _score("--bundle", bundle, "--dicomweb", pacs.url, "--output", out, "--max-instance-mb", "1",
                      "--dicomweb-study-timeout", "3", *sum((["--study", s] for s in (study, endless, huge, slow)), []))
        err = capsys.readouterr().err
    assert code == 5, err
    rows = _rows(out)
    assert sorted(rows.status) == ["ok", "ok"] and set(rows.study_id) == {study}
    assert any(r.endswith("1" * 1100) for r in rows.series_id)  # the long-header instance, scored
    table = _studies_table(out)
    assert [r["status"] for r in table] == ["ok", "error", "error", "error"] and table[0]["retrieved"] == "2"
    assert [r["study_instance_uid"] for r in table] == [study, endless, huge, slow]
    over = "an instance is larger than the limit of 1 MiB"
    assert over in table[1]["error"] and over in table[2]["error"]
    assert "the study's retrieval did not finish within its deadline of 3 s" in table[3]["error"]
    for n, row in enumerate(table[1:], start=2):
        assert f"study {n}/4 not (fully) retrieved: {pacs.url}: {row['error'].split(': ', 1)[1]}" in err
    # no UID printed; no partial or oversize instance in the cache (the slow study's series never completed)
    assert not any(uid in err for uid in (study, endless, huge, slow))
    cache = _files(os.path.join(out, "dicomweb_cache"))
    assert len(cache) == 2 and all(f.startswith(study + os.sep) for f in cache), cache
    assert not any(os.path.basename(f).startswith(".") for f in _files(out) if "dicomweb_cache" in f)


def test_memory_stays_flat_while_an_endless_answer_streams_to_disk(tmp_path):
    """64 MiB of one endless part, then 3 MiB in a study capped at 1 MiB: Python's memory peak stays under 4 MiB
    (the part goes to a file chunk by chunk), and the partial files are removed."""
    import tracemalloc

    src = tmp_path / "src"
    with FakePacs() as pacs:
        endless = pacs.add(_dicom(src, "endless.dcm", "1.2.826.0.1.2", 3), "endless")
        huge = pacs.add(_dicom(src, "huge.dcm", "1.2.826.0.1.3", 4), "huge")
        client = dicomweb.connect(pacs.url, None, dicomweb.DicomwebLimits(max_instance_mb=64, max_study_mb=1))
        tracemalloc.start()
        try:
            with pytest.raises(dicomweb.DicomwebError, match="the study is larger than the limit of 1 MiB"):
                dicomweb.retrieve_study(client, huge, str(tmp_path / "cache"))
            client.limits.max_study_mb = 1024
            with pytest.raises(dicomweb.DicomwebError, match="an instance is larger than the limit of 64 MiB"):
                dicomweb.retrieve_study(client, endless, str(tmp_path / "cache"))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        sent = pacs.bytes_sent
    assert sent > 64 << 20 and peak < 4 << 20, (sent, peak)
    assert _files(str(tmp_path / "cache")) == []


def test_a_paging_loop_stops_at_max_studies(bundle, tmp_path, capsys):
    src = tmp_path / "src"
    with FakePacs() as pacs:
        study = pacs.add(_dicom(src, "good.dcm", "1.2.826.0.1.1", 1))
        pacs.qido = "paging_loop"
        out = str(tmp_path / "out")
        capsys.readouterr()
        code = _score("--bundle", bundle, "--dicomweb", pacs.url, "--query", "ModalitiesInStudy=DX", "--output",
                      out, "--max-studies", "3")
        err = capsys.readouterr().err
        searches = [p for m, p, _ in pacs.requests if p.split("?")[0].endswith("/studies")]
    assert code == 5
    assert "DICOMweb search: more than 3 studies match; the first 3 are retrieved and scored" in err
    assert len(searches) == 1  # the first page held more than the cap: no second page asked for
    table = _studies_table(out)
    assert len(table) == 3 and table[0]["study_instance_uid"] == study and table[0]["status"] == "ok"
    assert all("study not found" in r["error"] or "HTTP 404" in r["error"] for r in table[1:])
    assert list(_rows(out).status) == ["ok"]


@pytest.mark.parametrize("qido, problem", [("malformed", "match 1 of 2 is a string, not an object"),
                                           ("not_json", "not JSON")])
def test_malformed_qido_json_names_the_server_and_the_problem(bundle, tmp_path, capsys, qido, problem):
    src = tmp_path / "src"
    with FakePacs() as pacs:
        study = pacs.add(_dicom(src, "good.dcm", "1.2.826.0.1.1", 1))
        pacs.qido = qido
        out = str(tmp_path / "out")
        capsys.readouterr()
        code = _score("--bundle", bundle, "--dicomweb", pacs.url, "--query", "ModalitiesInStudy=DX", "--study",
                      study, "--output", out)
        err = capsys.readouterr().err
    assert code == 5
    assert f"DICOMweb search failed: {pacs.url}: malformed QIDO-RS answer to the study search: {problem}" in err
    assert "Traceback" not in err and list(_rows(out).status) == ["ok"]  # the --study is scored anyway


def test_a_search_dripping_one_byte_at_a_time_ends_at_the_request_deadline(bundle, tmp_path, capsys):
    src = tmp_path / "src"
    with FakePacs() as pacs:
        pacs.add(_dicom(src, "good.dcm", "1.2.826.0.1.1", 1))
        pacs.qido = "slow"
        out = str(tmp_path / "out")
        capsys.readouterr()
        code = _score("--bundle", bundle, "--dicomweb", pacs.url, "--query", "ModalitiesInStudy=DX", "--output",
                      out, "--dicomweb-timeout", "1.5")
        err = capsys.readouterr().err
    assert code == 5 and "the request did not finish within its deadline of 1.5 s" in err


def test_redirects_drop_the_credentials_and_a_loop_ends(bundle, tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    monkeypatch.setenv("CADPIPE_DICOMWEB_AUTH", "bearer s3cret-token")
    with FakePacs() as other, FakePacs() as pacs:
        moved = _dicom(src, "moved.dcm", "1.2.826.0.1.5", 6)
        study = pacs.add(moved, "redirect")
        other.add(moved)
        pacs.redirect_to = other
        looping = pacs.add(_dicom(src, "loop.dcm", "1.2.826.0.1.6", 7), "redirect_loop")
        out = str(tmp_path / "out")
        capsys.readouterr()
        code = _score("--bundle", bundle, "--dicomweb", pacs.url, "--study", study, "--study", looping,
                      "--output", out)
        err = capsys.readouterr().err
    assert code == 5
    assert all(auth == "Bearer s3cret-token" for _, _, auth in pacs.requests)
    assert other.requests and all(auth is None for _, _, auth in other.requests)  # another port: not forwarded
    table = _studies_table(out)
    assert table[0]["status"] == "ok" and "too many redirects" in table[1]["error"]
    assert list(_rows(out).status) == ["ok"] and "s3cret-token" not in err


@pytest.mark.parametrize("content, mode, problem", [
    (b"bearer s3cret-token\nbearer other-s3cret\n", 0o600, "must hold one line (found 2)"),
    (b"basic alice:s3cret\xff\n", 0o600, "not UTF-8 text"),
    (b"bearer s3cret\x07token\n", 0o600, "control character"),
    (b"bearer s3cret-token\n", 0o644, "readable or writable by other users (mode 644)"),
])
def test_a_bad_credentials_file_is_a_usage_error_without_its_content(bundle, tmp_path, capsys, content, mode,
                                                                     problem):
    secret = tmp_path / "auth.txt"
    secret.write_bytes(content)
    secret.chmod(mode)
    out = tmp_path / "out"
    capsys.readouterr()
    code = _score("--bundle", bundle, "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3",
                  "--dicomweb-auth-file", str(secret), "--output", str(out))
    captured = capsys.readouterr()
    assert code == 2 and str(secret) in captured.err and problem in captured.err
    assert "s3cret" not in captured.err + captured.out and not out.exists()


def test_an_untrained_bundle_is_refused_before_anything_is_retrieved(bundle, tmp_path, capsys):
    """Issue: exit 2 promises nothing written; the bundle was checked only after the studies were retrieved."""
    untrained = shutil.copytree(bundle, tmp_path / "untrained")
    os.remove(untrained / "models" / "model.pt")
    with FakePacs() as pacs:
        study = pacs.add(_dicom(tmp_path / "src", "good.dcm", "1.2.826.0.1.1", 1))
        out = tmp_path / "out"
        capsys.readouterr()
        code = _score("--bundle", str(untrained), "--dicomweb", pacs.url, "--study", study, "--output", str(out))
        err = capsys.readouterr().err
    assert code == 2 and "no trained weights" in err
    assert pacs.requests == [] and not out.exists()


def test_one_study_raising_an_unexpected_exception_never_ends_the_run(bundle, tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    with FakePacs() as pacs:
        good = pacs.add(_dicom(src, "good.dcm", "1.2.826.0.1.1", 1))
        odd = pacs.add(_dicom(src, "odd.dcm", "1.2.826.0.1.7", 2))
        real = dicomweb.retrieve_study

        def retrieve(client, study, cache, on_instance=None):
            if study == odd:
                raise RuntimeError("something nobody expected")
            return real(client, study, cache, on_instance)

        monkeypatch.setattr(dicomweb, "retrieve_study", retrieve)
        out = str(tmp_path / "out")
        capsys.readouterr()
        code = _score("--bundle", bundle, "--dicomweb", pacs.url, "--study", odd, "--study", good, "--output", out)
        err = capsys.readouterr().err
    assert code == 5 and f"study 1/2 not (fully) retrieved: {pacs.url}: RuntimeError" in err
    assert list(_rows(out).status) == ["ok"] and _studies_table(out)[0]["status"] == "error"


_HOSTILE_VALUES = ("<script>name</script>", "FORGED LINE", "../../x/y")


@pytest.mark.slow
def test_nothing_identifying_reaches_the_output_of_the_command(bundle, tmp_path):
    """From the first line: no UID, no header value (pydicom's warnings quote invalid ones), nothing forged by a
    newline in a value; the command runs as a user runs it (its own process)."""
    import pydicom

    src = tmp_path / "src"
    path = _dicom(src, "hostile.dcm", "1.2.826.0.1.8", 1)
    ds = pydicom.dcmread(path)
    ds.PatientName = _HOSTILE_VALUES[0]
    ds.StudyDescription = "x\nINFO " + _HOSTILE_VALUES[1]
    ds.FrameOfReferenceUID = _HOSTILE_VALUES[2]  # an invalid UI value: pydicom warns, quoting it
    ds.save_as(path)
    with FakePacs() as pacs:
        study = pacs.add(path)
        pacs.add(_dicom(src, "other.dcm", study, 2))
        env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "cadpipe", "score", "--bundle", bundle, "--dicomweb", pacs.url,
                               "--query", "ModalitiesInStudy=DX", "--output", str(tmp_path / "out"), "--workers",
                               "0"], env=env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study 1/1: 2 instance(s) retrieved" in proc.stdout and "units found" in proc.stderr
    uids = [study, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    assert not any(v in text for v in (*uids, *_HOSTILE_VALUES)), text[-3000:]
    assert "Invalid value" not in text and "pydicom" not in text


@pytest.mark.parametrize("option, value", [("--max-studies", "0"), ("--max-instance-mb", "-1"),
                                           ("--dicomweb-timeout", "0")])
def test_a_limit_that_is_not_positive_is_a_usage_error(bundle, tmp_path, capsys, option, value):
    out = tmp_path / "out"
    capsys.readouterr()
    assert _score("--bundle", bundle, "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3", option,
                  value, "--output", str(out)) == 2
    assert f"{option} must be > 0" in capsys.readouterr().err and not out.exists()


def test_control_characters_in_what_is_printed_are_escaped(bundle, tmp_path, capsys):
    """A newline or an escape sequence in the URL (or anything else printed) cannot forge a line of the output or
    drive the terminal (URL parsing drops the newline; the escape is printed escaped)."""
    url = "http://127.0.0.1:9/dicom-web\nINFO cadpipe: FORGED\x1b[2J"
    capsys.readouterr()
    assert _score("--bundle", bundle, "--dicomweb", url, "--study", "1.2.3", "--output", str(tmp_path / "out")) == 5
    err = capsys.readouterr().err
    assert "cannot connect" in err and "FORGED\\x1b[2J" in err
    assert not any(line.startswith("INFO cadpipe: FORGED") for line in err.splitlines()) and "\x1b" not in err
