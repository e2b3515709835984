"""stop_process_group: a server started in its own session goes, children included, also when it ignores SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cadpipe.pipelines.portal.server_process import stop_process_group


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone: it no longer runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_stops_group_with_child(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; "
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    while not pid_file.exists() or not pid_file.read_text():
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert stop_process_group(proc, grace=10) is not None
    for _ in range(100):  # the orphaned child is reaped by init, not by us
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)


def test_sigterm_ignored_then_killed():
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    assert stop_process_group(proc, grace=0.5) == -9


def test_already_exited():
    proc = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    proc.wait()
    assert stop_process_group(proc) == 0
