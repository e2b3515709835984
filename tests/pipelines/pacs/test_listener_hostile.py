"""`cadpipe listen` (the CLI, in a subprocess on 127.0.0.1) against a hostile sender — the DIMSE entry point of the
hostile corpus: idle sockets and an idle association held open, a file whose header value is over 1 KiB, a 300 MB
instance (received with a bounded memory growth), an instance over --max-instance-mb; then SIGTERM with a C-ECHO
keepalive client and a restart on the same output. Each wait is bounded; the rows, exit codes, memory, what is on
disk and what is in the log are checked."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pydicom
import pytest

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.hostile import write_large_dicom
from cadpipe.pipelines.pacs.listener import ERROR_FILE, FAILED, SHUTDOWN_S
from tests.integration.orthanc import free_port
from tests.pipelines.pacs.dimse_peers import echo_association, raw_sockets, store, variant, wait_until
from tests.pipelines.scoring.score_helpers import make_bundle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MB = 1024 * 1024


def _listen(bundle, out, port, log_path):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "cadpipe", "listen", "--bundle", bundle, "--output", out, "--port", str(port),
           "--allow-aet", "GOODSCU", "--study-timeout", "1", "--acse-timeout", "2", "--idle-timeout", "60",
           "--max-instance-mb", "320", "--device", "cpu", "--no-reports", "--no-heatmaps"]
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    assert wait_until(lambda: proc.poll() is not None or _answers(port), timeout=120, poll=0.5)
    assert proc.poll() is None, open(log_path).read()[-3000:]
    return proc


def _answers(port) -> bool:
    try:
        assoc = echo_association(port, timeout=2)
    except Exception:  # noqa: BLE001
        return False
    ok = assoc.is_established
    if ok:
        assoc.release()
    return ok


def _rss_mb(pid) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _rows(out) -> pd.DataFrame:
    path = os.path.join(out, "results.csv")
    return pd.read_csv(path, dtype=str, keep_default_na=False) if os.path.isfile(path) else pd.DataFrame(
        columns=["unit_id", "status", "error"])


def _stop(proc, timeout):
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise


@pytest.mark.slow
def test_hostile_sender_against_cadpipe_listen(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    out, log_path, port = str(tmp_path / "out"), str(tmp_path / "listen.log"), free_port()
    src = tmp_path / "src"
    src.mkdir()
    good = [write_cxr_dicom(str(src / f"synthetic_{s}.dcm"), rows=32, cols=32, seed=s)["path"] for s in (1, 2)]
    long_value = "SYNTHETIC-LONG-" + "X" * 2000
    poison = variant(good[0], str(src / "synthetic_poison.dcm"), SOPInstanceUID=pydicom.uid.generate_uid(),
                     StudyInstanceUID=pydicom.uid.generate_uid(), StudyDescription=long_value,
                     PatientName="SYNTHETIC^" + "Y" * 1500)
    forged = variant(good[1], str(src / "synthetic_forged.dcm"), SOPInstanceUID="1.2.3\nINFO forged line",
                     StudyInstanceUID="../../x\n")  # invalid UIDs that would forge a log line
    big = write_large_dicom(src / "synthetic_big.dcm", megabytes=300)
    over = write_large_dicom(src / "synthetic_over.dcm", megabytes=330)
    heads = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in (*good, poison, big["path"], over["path"])}
    sop = {p: str(h.SOPInstanceUID) for p, h in heads.items()}

    proc = _listen(bundle, out, port, log_path)
    try:
        assert store(port, good[:1]) == [0]  # warm-up: the model loads, pydicom is imported
        assert wait_until(lambda: sop[good[0]] in set(_rows(out).unit_id), timeout=120, poll=0.5)

        with raw_sockets(port, 20):  # idle sockets and an idle association held open meanwhile
            idle = echo_association(port)
            assert idle.is_established
            assert store(port, [poison, good[1], forged]) == [0, 0, 0]
            # a 300 MB instance: streamed to disk, the listener's memory does not follow the payload
            base, peak, done = _rss_mb(proc.pid), [0.0], threading.Event()

            def watch():
                while not done.is_set():
                    peak[0] = max(peak[0], _rss_mb(proc.pid))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                assert store(port, [big["path"]], chunked=True, timeout=120) == [0]
            finally:
                done.set()
                watcher.join()
            assert peak[0] - base < 100, (base, peak[0])
            # over --max-instance-mb: refused with A700, nothing of it kept
            assert store(port, [over["path"]], chunked=True, timeout=120) == [0xA700]
            idle.release()

        def settled():
            rows = _rows(out).set_index("unit_id")
            moved = os.path.isdir(os.path.join(out, FAILED))
            return ({sop[good[1]], sop[big["path"]], "1.2.3\nINFO forged line"} <= set(rows.index)
                    and (sop[poison] in rows.index or moved))

        assert wait_until(settled, timeout=180, poll=0.5), open(log_path).read()[-3000:]
        rows = _rows(out).set_index("unit_id")
        assert rows.loc[sop[good[0]], "status"] == "ok" and rows.loc[sop[good[1]], "status"] == "ok"
        big_row = rows.loc[sop[big["path"]]]
        assert big_row.status == "error" and "over the limit" in big_row.error  # refused from its header
        assert sop[over["path"]] not in rows.index
        if sop[poison] not in rows.index:  # moved aside with the reason, not retried
            failed = [f for _, _, fs in os.walk(os.path.join(out, FAILED)) for f in fs]
            assert sorted(failed) == sorted([ERROR_FILE, f"{sop[poison]}.dcm"])
        on_disk = [f for _, _, fs in os.walk(out) for f in fs]
        assert f"{sop[over['path']]}.dcm" not in on_disk

        # SIGTERM with a client that echoes every 0.5 s: open associations aborted, exit within SHUTDOWN_S
        keep = echo_association(port)
        assert keep.is_established
        stop_echo = threading.Event()

        def keepalive():
            while not stop_echo.is_set() and keep.is_established:
                keep.send_c_echo()
                time.sleep(0.5)

        echoer = threading.Thread(target=keepalive)
        echoer.start()
        with raw_sockets(port, 1):
            time.sleep(1.0)
            try:
                assert _stop(proc, timeout=SHUTDOWN_S + 5) == 0
            finally:
                stop_echo.set()
                echoer.join(10)
        assert keep.is_aborted or not keep.is_established
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # a restart on the same output: the poison is not retried, the listener stays up
    proc = _listen(bundle, out, port, log_path)
    try:
        time.sleep(3)  # past --study-timeout: anything left would be scored now
        assert proc.poll() is None
        assert _stop(proc, timeout=SHUTDOWN_S + 5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    logged = open(log_path, encoding="utf-8", errors="replace").read()
    for h in heads.values():  # no UID, no header value in the log
        for value in (h.StudyInstanceUID, h.SOPInstanceUID, h.SeriesInstanceUID):
            assert str(value) not in logged
    assert "SYNTHETIC-LONG" not in logged and "YYYY" not in logged and "SYNTHETIC^" not in logged
    assert "forged" not in logged and "../../x" not in logged
    assert all(line.split(" ", 1)[0] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
               for line in logged.splitlines() if line.strip()), logged[-3000:]
