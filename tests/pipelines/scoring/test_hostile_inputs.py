"""`cadpipe score` over a hostile folder: image bombs, a sparse gigabyte named .dcm, colliding and formula names,
links leaving the input, a link loop, an unreadable file, a DICOM with header values over 1 KiB, valid studies
beside them. Every valid study is scored,
every bad file is an error row naming it and the reason, exit status 3, nothing written outside the output."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from cadpipe.data.synthetic.hostile import write_hostile_corpus
from cadpipe.data.synthetic.images import write_image
from cadpipe.pipelines.scoring.discovery import discover
from tests.pipelines.scoring.score_helpers import make_bundle

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle("tiny_classification_bundle", str(tmp_path_factory.mktemp("b")))


def _score(bundle, src, out, *extra, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "cadpipe", "score", "--bundle", bundle, "--input", src, "--output", out,
           "--workers", "2", "--batch-size", "2", *extra]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _tree(folder):
    return {os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs}


def test_hostile_corpus_through_cadpipe_score(bundle, tmp_path):
    src, outside, out = str(tmp_path / "in"), str(tmp_path / "outside"), str(tmp_path / "out")
    corpus = write_hostile_corpus(src, outside)
    before_outside, before_in = _tree(outside), _tree(src)
    proc = _score(bundle, src, out)
    assert proc.returncode == 3, proc.stderr[-2000:]
    df = pd.read_csv(os.path.join(out, "results.csv"), keep_default_na=False)
    rows = {os.path.relpath(p.lstrip("'"), src): r for p, r in zip(df.input_paths, df.to_dict("records"))}
    valid = corpus["valid"] + ([corpus["unreadable"]] if os.geteuid() == 0 else [])  # root reads chmod 000
    for rel in valid:
        assert rows[rel]["status"] == "ok", (rel, rows[rel]["error"])
    for rel, reason in corpus["bad"].items():
        assert rows[rel]["status"] == "error", rel
        assert rows[rel]["error"].lstrip("'").startswith(os.path.join(src, rel) + ": ") and reason in rows[rel]["error"]
    if os.geteuid() != 0:
        assert "permission denied" in rows[corpus["unreadable"]]["error"]
    assert len(df) == len(valid) + len(corpus["bad"]) + (os.geteuid() != 0)
    # formulas neutralised in the CSV
    for col in ("study_id", "series_id", "unit_id", "input_paths"):
        assert not df[col].astype(str).str.match(r"^[=+\-@\t\r]").any(), col
    # nothing written outside the output folder; the input and the link targets untouched
    assert _tree(outside) == before_outside and _tree(src) == before_in
    # the header values never reach the output of the command
    assert "SYNTHETIC-BOMB" not in proc.stderr + proc.stdout
    # the DICOM with values over 1 KiB is scored, its long values in the table of the report only
    long_rows = df[df.input_paths.str.contains("synthetic_long_header")]
    assert list(long_rows.status) == ["ok"] and long_rows.series_id.iloc[0].endswith("1" * 1100)
    assert "SYNTHETIC LONG DESCRIPTION" not in proc.stderr + proc.stdout


def test_links_are_followed_only_when_asked(tmp_path):
    src, outside = tmp_path / "in", tmp_path / "outside"
    src.mkdir()
    outside.mkdir()
    target = write_image(outside / "synthetic_out.png", rows=40, cols=40)["path"]
    os.symlink(target, src / "file_link.png")
    os.symlink(outside, src / "dir_link")
    os.symlink(src, src / "self_loop")  # a folder link back into the input: not a loop when walked
    write_image(src / "synthetic_in.png", rows=40, cols=40)
    units = {u.unit_id: u for u in discover(str(src))}
    assert units["file_link.png"].error.startswith("symbolic link to a file outside the input folder")
    assert units["dir_link"].error.startswith("symbolic link to a folder outside the input folder")
    assert not units["synthetic_in.png"].error and len(units) == 3
    followed = {u.unit_id: u for u in discover(str(src), follow_links=True)}
    assert not followed["file_link.png"].error
    assert "dir_link/synthetic_out.png" in followed and not any(u.error for u in followed.values())


@pytest.mark.slow
def test_sigkill_leaves_no_worker_behind(bundle, tmp_path):
    src, out = str(tmp_path / "in"), str(tmp_path / "out")
    for i in range(400):
        os.makedirs(os.path.join(src, f"s{i % 20}"), exist_ok=True)
        write_image(os.path.join(src, f"s{i % 20}", f"synthetic_{i:03d}.png"), rows=48, cols=40, seed=i)
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cadpipe", "score", "--bundle", bundle, "--input", src, "--output",
                             out, "--workers", "2", "--batch-size", "1", "--quiet"], env=env, cwd=REPO,
                            start_new_session=True)
    journal = os.path.join(out, ".cadpipe", "journal.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(journal) and open(journal, "rb").read().count(b"\n") >= 3 and _group(proc.pid) - {proc.pid}:
            break
        time.sleep(0.05)
    assert proc.poll() is None and _group(proc.pid) - {proc.pid}, "no worker running when the run was to be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 4  # the kernel kills the workers at once (PR_SET_PDEATHSIG); torch alone polls 5 s
    while time.time() < deadline and _group(proc.pid):
        time.sleep(0.05)
    left = _group(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed run still alive: {left}"


def _group(pgid: int) -> set[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.add(int(entry))
    return out


def test_worker_exits_when_its_parent_is_already_gone():
    code = ("from cadpipe.pipelines.scoring.worker_lifetime import die_with_parent, set_parent_death_signal\n"
            "assert set_parent_death_signal()\n"
            "die_with_parent(1)(0)\n"  # our parent is not pid 1: as if it had died before the call
            "raise SystemExit(0)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=REPO), timeout=120)
    assert proc.returncode == 1
