"""Resumability: a real SIGKILL mid-run, then the same command again → identical results.csv, no duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from cadpipe.pipelines.scoring.results import Journal
from cadpipe.pipelines.scoring.score import ScoreConfig, score
from tests.pipelines.scoring.score_helpers import make_bundle, write_png

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NOISE = ["elapsed_s"]


def _cmd(bundle, src, out):
    return [sys.executable, "-m", "cadpipe", "score", "--bundle", bundle, "--input", src, "--output", out,
            "--workers", "0", "--batch-size", "1", "--quiet"]


def _table(out):
    return pd.read_csv(os.path.join(out, "results.csv")).drop(columns=NOISE)


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_results(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    n = 60
    for i in range(n):
        write_png(os.path.join(src, f"study{i % 12:02d}", f"img{i:03d}.png"), seed=i, shape=(48, 40))
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")

    ref = str(tmp_path / "ref")
    assert subprocess.run(_cmd(bundle, src, ref), env=env, cwd=REPO).returncode == 0

    out = str(tmp_path / "out")
    journal = os.path.join(out, ".cadpipe", "journal.jsonl")
    proc = subprocess.Popen(_cmd(bundle, src, out), env=env, cwd=REPO)
    deadline = time.time() + 300
    lines = 0
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(journal):
            with open(journal, "rb") as f:
                lines = f.read().count(b"\n")
            if lines >= 5:
                break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with open(journal, "rb") as f:
        done_at_kill = f.read().count(b"\n")
    assert 5 <= done_at_kill < n  # killed mid-way
    assert not os.path.exists(os.path.join(out, "results.csv"))  # the kill came before the end of the run

    # simulate a torn line as well (killed in the middle of a write)
    with open(journal, "ab") as f:
        f.write(b'{"unit_id": "study00/img0')
    res = subprocess.run(_cmd(bundle, src, out), env=env, cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    summary = json.load(open(os.path.join(out, "run_summary.json")))
    assert summary["skipped_already_done"] == done_at_kill and summary["scored_this_run"] == n - done_at_kill
    resumed, reference = _table(out), _table(ref)
    assert resumed["unit_id"].is_unique and len(resumed) == n
    pd.testing.assert_frame_equal(resumed, reference)
    rows = [json.loads(line) for line in open(journal)]
    assert len(rows) == n and len({r["unit_id"] for r in rows}) == n


def test_resume_skips_done_and_force_rescores(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    for i in range(4):
        write_png(os.path.join(src, f"s{i}", "a.png"), seed=i)
    out = str(tmp_path / "out")
    cfg = ScoreConfig(bundle=bundle, input=src, output=out, workers=0, quiet=True)
    first = score(cfg)
    again = score(cfg)
    assert first["scored_this_run"] == 4 and again["scored_this_run"] == 0 and again["skipped_already_done"] == 4
    pd.testing.assert_frame_equal(_table(out), _table(out))
    write_png(os.path.join(src, "s9", "new.png"), seed=9)
    assert score(cfg)["scored_this_run"] == 1
    forced = score(ScoreConfig(bundle=bundle, input=src, output=out, workers=0, quiet=True, force=True))
    assert forced["scored_this_run"] == 5
    assert len(Journal(out).rows()) == 5 and len(pd.read_csv(os.path.join(out, "results.csv"))) == 5


def test_rerun_retries_error_rows_and_lost_outputs(tmp_path):
    """A plain re-run retries units whose row is `error` (the file may have been fixed) and `ok` units whose
    output files are gone; `ok` units are skipped; each unit keeps exactly one row."""
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    for i in range(2):
        write_png(os.path.join(src, f"s{i}", "a.png"), seed=i)
    bad = os.path.join(src, "s2", "a.png")
    os.makedirs(os.path.dirname(bad))
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)  # truncated
    out = str(tmp_path / "out")
    cfg = ScoreConfig(bundle=bundle, input=src, output=out, workers=0, quiet=True)
    first = score(cfg)
    assert (first["ok"], first["error"]) == (2, 1)

    again = score(cfg)  # still broken: retried, still one error row
    assert again["scored_this_run"] == 1 and again["errors_retried"] == 1 and again["skipped_already_done"] == 2
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(df) == 3 and df.unit_id.is_unique and (df.status == "error").sum() == 1

    write_png(bad, seed=2)  # the file is fixed
    fixed = score(cfg)
    assert fixed["scored_this_run"] == 1 and fixed["errors_retried"] == 1 and fixed["exit_code"] == 0
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(df) == 3 and df.unit_id.is_unique and (df.status == "ok").all()
    assert df.error.isna().all()

    # an ok unit whose output file disappeared (e.g. lost in a crash) is rescored; the others are skipped
    row = Journal(out).rows()[df.unit_id[0]]
    os.unlink(os.path.join(out, row["_outputs"]["overlays"][0]))
    redo = score(cfg)
    assert redo["scored_this_run"] == 1 and redo["skipped_already_done"] == 2
    assert os.path.exists(os.path.join(out, row["_outputs"]["overlays"][0]))
    assert len(pd.read_csv(os.path.join(out, "results.csv"))) == 3
    assert score(cfg)["scored_this_run"] == 0
