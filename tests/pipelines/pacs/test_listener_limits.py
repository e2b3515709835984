"""What one peer can cost the DIMSE listener (in-process, 127.0.0.1): idle sockets and associations do not lock
allowed senders out, addresses and AE titles not allowed are refused and logged with the peer only, instances and
studies over the size limits are refused with status A700 and nothing of them is kept, invalid UIDs get unique
names, result objects are stored and never scored, a file that makes scoring raise is moved aside and the
listener goes on (restarts included), and log lines cannot be forged."""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile

import pandas as pd
import pydicom
import pytest

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.hostile import write_large_dicom
from cadpipe.pipelines.pacs.dimse_limits import MB, DimseLimits, EscapingFormatter, parse_networks
from cadpipe.pipelines.pacs.listener import (ERROR_FILE, FAILED, SCORING, STORED, ListenConfig, StudyListener,
                                             received_name)
from cadpipe.pipelines.scoring.score import ScoreConfig
from tests.integration.orthanc import free_port
from tests.pipelines.pacs.dimse_peers import (closed_by_peer, echo_association, raw_sockets, store, variant,
                                              wait_until)
from tests.pipelines.scoring.score_helpers import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("b")))


@pytest.fixture
def log_text():
    """The cadpipe.listen log as the CLI writes it (escaping formatter)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(EscapingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("cadpipe.listen")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield buf
    logger.removeHandler(handler)
    logger.setLevel(level)


def _listener(bundle, out, **limits) -> StudyListener:
    cfg = ListenConfig(score=ScoreConfig(bundle=bundle, input=None, output=str(out), workers=0, quiet=True,
                                         reports=False, device="cpu"),
                       port=free_port(), allow_aet=["GOODSCU"], study_timeout=0.0, limits=DimseLimits(**limits))
    return StudyListener(cfg)


@pytest.fixture
def running(bundle, tmp_path):
    started = []

    def start(**limits) -> StudyListener:
        lis = _listener(bundle, tmp_path / "out", **limits)
        lis.start()
        started.append(lis)
        return lis

    yield start
    for lis in started:
        lis.stop()


def _cxr(tmp_path, seed: int, **attrs) -> str:
    path = write_cxr_dicom(str(tmp_path / f"synthetic_{seed}.dcm"), rows=32, cols=32, seed=seed)["path"]
    return variant(path, path, **attrs) if attrs else path


def _received(folder) -> list[str]:
    return sorted(f for _, _, fs in os.walk(folder) for f in fs)


def test_idle_sockets_and_idle_associations_do_not_lock_out_allowed_senders(running, tmp_path):
    lis = running(max_associations=2, max_connections=20, acse_timeout=2.0, idle_timeout=3.0)
    port = lis.cfg.port
    paths = [_cxr(tmp_path, s) for s in (1, 2, 3)]
    with raw_sockets(port, 50) as socks:  # 50 connections that never ask for an association, 20 allowed open
        assert store(port, paths[:1]) == [0]  # an allowed sender stores meanwhile (the oldest idle one gave way)
        assert closed_by_peer(socks[0], within=1.0)  # the first ones were closed for the later ones
        assert closed_by_peer(socks[-1], within=15.0)  # and the rest are dropped after --acse-timeout
    with raw_sockets(port, 20):  # the limit held by idle connections: a sender still gets in
        assert store(port, paths[1:2]) == [0]
    # associations that go idle take a slot until --idle-timeout, then they are aborted
    idle = [echo_association(port) for _ in range(2)]
    assert all(a.is_established for a in idle)
    assert store(port, paths[2:]) is None  # --max-associations 2 reached: rejected
    assert wait_until(lambda: all(a.is_aborted or not a.is_established for a in idle), timeout=15.0)
    assert store(port, paths[2:]) == [0]
    assert len(_received(lis.incoming)) == 3


def test_addresses_and_ae_titles_not_allowed_are_refused_and_logged_with_the_peer_only(running, tmp_path, log_text):
    lis = running(allow_ip=parse_networks(["10.0.0.0/8"]))
    with raw_sockets(lis.cfg.port, 1) as socks:
        assert closed_by_peer(socks[0], within=5.0)  # closed at accept: no thread, no slot
    assert "connection refused (address not allowed): peer 127.0.0.1" in log_text.getvalue()
    with pytest.raises(ValueError, match="not an address"):
        parse_networks(["nonsense"])

    lis2 = running()
    path = _cxr(tmp_path, 1)
    assert store(lis2.cfg.port, [path], called="WRONG") is None  # the called AE title is checked
    assert store(lis2.cfg.port, [path], calling="STRANGER") is None
    assert store(lis2.cfg.port, [path]) == [0]
    logged = log_text.getvalue()
    assert "association rejected: peer 127.0.0.1, calling AE 'GOODSCU'" in logged
    assert "association rejected: peer 127.0.0.1, calling AE 'STRANGER'" in logged
    head = pydicom.dcmread(path, stop_before_pixels=True)
    for value in (head.StudyInstanceUID, head.SOPInstanceUID, str(head.PatientID)):
        assert value not in logged


def test_instances_and_studies_over_the_size_limits_are_refused_and_nothing_of_them_is_kept(running, tmp_path):
    small = [_cxr(tmp_path, s, StudyInstanceUID="1.2.3.4") for s in (1, 2, 3)]
    size = os.path.getsize(small[0])
    big = write_large_dicom(tmp_path / "synthetic_big.dcm", megabytes=3)["path"]
    lis = running(max_instance_mb=1.0)
    temp_before = set(os.listdir(tempfile.gettempdir()))
    # the big one: A700 (its bytes past 1 MB are dropped as they arrive); the association goes on
    assert store(lis.cfg.port, [big, small[0]], chunked=True) == [0xA700, 0]
    new_temp = set(os.listdir(tempfile.gettempdir())) - temp_before
    assert not [f for f in new_temp if f.endswith(".dcm")]  # pynetdicom's temporary files are gone
    assert _received(lis.incoming) == [f"{pydicom.dcmread(small[0], stop_before_pixels=True).SOPInstanceUID}.dcm"]
    lis.stop()
    # the study limit: the instance of before and one more fit, the third is refused
    lis = running(max_instance_mb=2.5 * size / MB, max_study_mb=2.5 * size / MB)
    assert store(lis.cfg.port, small[1:]) == [0, 0xA700]
    assert _received(lis.incoming) == sorted(
        f"{pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for p in small[:2])
    # once the study is scored, its budget is free again
    assert lis.step()
    assert store(lis.cfg.port, small[2:]) == [0]


def test_invalid_uids_that_look_alike_get_two_files_and_two_rows(running, tmp_path):
    lis = running()
    a = _cxr(tmp_path, 1, SOPInstanceUID="7.7.7")
    b = _cxr(tmp_path, 2, SOPInstanceUID="7.7.7.", StudyInstanceUID=pydicom.dcmread(a).StudyInstanceUID)
    assert store(lis.cfg.port, [a, b]) == [0, 0]
    assert len(_received(lis.incoming)) == 2
    assert received_name("7.7.7") == "7.7.7" and received_name("7.7.7.") != received_name("7.7.7")
    assert received_name("../../etc/x").startswith("etc_x_")
    lis.step()
    rows = pd.read_csv(os.path.join(lis.out, "results.csv"), dtype=str)
    assert sorted(rows.unit_id) == ["7.7.7", "7.7.7."] and (rows.status == "ok").all()


def test_a_scored_study_sent_back_is_stored_and_not_scored_again(running, tmp_path):
    """The study with cadpipe's own SR and Secondary Capture comes back (as a PACS sends a whole study): the
    results are stored in dimse_stored/, never scored, no new row, no result about a result."""
    lis = running()
    src = _cxr(tmp_path, 1)
    assert store(lis.cfg.port, [src]) == [0]
    assert lis.step()
    results = [os.path.join(r, f) for r, _, fs in os.walk(lis.out) for f in fs
               if f.endswith(("_sr.dcm", "_sc.dcm")) and "dimse_" not in r]
    assert len(results) == 2
    before = pd.read_csv(os.path.join(lis.out, "results.csv"))
    assert store(lis.cfg.port, [src, *results]) == [0, 0, 0]
    assert len(_received(os.path.join(lis.out, STORED))) == 2
    lis.step()
    after = pd.read_csv(os.path.join(lis.out, "results.csv"))
    assert list(after.unit_id) == list(before.unit_id)
    n_results = len([f for r, _, fs in os.walk(lis.out) for f in fs if f.endswith("_sr.dcm") and "dimse_" not in r])
    assert n_results == 1


def test_a_file_that_makes_scoring_raise_is_moved_aside_and_the_listener_goes_on(bundle, running, tmp_path,
                                                                                 log_text):
    """A header value over 1 KiB beside good instances (same study and another study): the good ones are scored,
    the listener answers, the bad file is either scored or moved to dimse_failed/ with the reason and not retried,
    and a restart on the same output does not fail on it."""
    lis = running()
    long_value = "SYNTHETIC-LONG-" + "X" * 2000
    good_a = _cxr(tmp_path, 1)
    study_a = str(pydicom.dcmread(good_a).StudyInstanceUID)
    poison = _cxr(tmp_path, 2, StudyInstanceUID=study_a, StudyDescription=long_value, PatientName="Y" * 1500)
    good_b = _cxr(tmp_path, 3)
    assert store(lis.cfg.port, [good_a, poison, good_b]) == [0, 0, 0]
    done = lis.step()
    assert len(done) == 2
    rows = pd.read_csv(os.path.join(lis.out, "results.csv"), dtype=str).set_index("unit_id")
    sop = {p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (good_a, poison, good_b)}
    assert rows.loc[sop[good_a], "status"] == "ok" and rows.loc[sop[good_b], "status"] == "ok"
    failed = _received(os.path.join(lis.out, FAILED))
    assert sop[poison] in rows.index or failed == sorted([ERROR_FILE, f"{sop[poison]}.dcm"])
    assert echo_association(lis.cfg.port).is_established  # still listening
    assert long_value not in log_text.getvalue() and "YYYY" not in log_text.getvalue()
    lis.stop()
    again = _listener(bundle, tmp_path / "out")  # a restart: nothing left to fail on
    again.step()
    rows2 = pd.read_csv(os.path.join(lis.out, "results.csv"), dtype=str)
    assert (rows2.status == "ok").all()


def test_a_study_being_scored_when_the_process_died_twice_is_moved_aside(bundle, tmp_path):
    out = tmp_path / "out"
    lis = _listener(bundle, out)
    study = os.path.join(lis.studies, "1.2.3")
    os.makedirs(study)
    _cxr(tmp_path, 1)
    os.replace(str(tmp_path / "synthetic_1.dcm"), os.path.join(study, "x.dcm"))
    with open(os.path.join(str(out), SCORING), "w") as f:
        json.dump({"study": "1.2.3", "attempts": 1}, f)
    _listener(bundle, out)  # first death: scored again, alone
    assert os.path.isfile(os.path.join(lis.incoming, "1.2.3", "x.dcm"))
    with open(os.path.join(str(out), SCORING), "w") as f:
        json.dump({"study": "1.2.3", "attempts": 2}, f)
    _listener(bundle, out)  # second: moved aside
    assert sorted(_received(os.path.join(str(out), FAILED))) == [ERROR_FILE, "x.dcm"]
    assert not os.path.exists(os.path.join(str(out), SCORING))


def test_log_lines_cannot_be_forged(running, log_text):
    lis = running()
    lis._on_refused("127.0.0.1\nINFO forged line\x1b[31m", "address not allowed")
    lines = [line for line in log_text.getvalue().splitlines() if "connection refused" in line or "forged" in line]
    assert len(lines) == 1 and "\\nINFO forged line\\x1b[31m" in lines[0]
    for _ in range(100):  # a flood of refusals from one peer: one line per 10 s
        lis._on_refused("10.1.2.3", "address not allowed")
    assert log_text.getvalue().count("peer 10.1.2.3") == 1


def test_limits_are_checked(bundle, tmp_path):
    from cadpipe.errors import CadpipeInputError

    for bad in ({"max_associations": 0}, {"max_connections": 1, "max_associations": 2}, {"idle_timeout": 0},
                {"max_instance_mb": 10, "max_study_mb": 5}):
        with pytest.raises(CadpipeInputError):
            _listener(bundle, tmp_path / "o", **bad)


def test_a_3d_listener_stores_what_it_does_not_score(tmp_path):
    """A 3D bundle scores CT/MR series; a Secondary Capture or an SR in the same study is accepted and stored (a
    PACS's whole-study C-STORE must not fail on them), never put where studies are scored."""
    from pydicom.data import get_testdata_file

    bundle3d = make_bundle("tiny_segmentation_bundle", str(tmp_path / "b3"))
    lis = _listener(bundle3d, tmp_path / "out")
    lis.start()
    try:
        sc = get_testdata_file("SC_rgb.dcm")
        ct = get_testdata_file("CT_small.dcm")
        assert store(lis.cfg.port, [sc, ct]) == [0, 0]
        assert _received(os.path.join(lis.out, STORED)) == [f"{pydicom.dcmread(sc).SOPInstanceUID}.dcm"]
        assert _received(lis.incoming) == [f"{pydicom.dcmread(ct).SOPInstanceUID}.dcm"]
    finally:
        lis.stop()


def test_bad_limit_options_are_usage_errors(bundle, tmp_path):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # (one process: each imports torch; the other bad values are checked in-process by test_limits_are_checked)
    for extra, message in ((["--allow-ip", "not-an-address", "--max-associations", "4"], "not an address"),):
        proc = subprocess.run([sys.executable, "-m", "cadpipe", "listen", "--bundle", bundle, "--output",
                               str(tmp_path / "o"), "--port", str(free_port()), *extra], cwd=repo, timeout=120,
                              env=dict(os.environ, PYTHONPATH=repo), capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr[-500:])
