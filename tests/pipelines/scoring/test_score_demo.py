"""The README demo for one bundle: synthetic data → 1-epoch training into a demo-local bundle copy → scoring."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from cadpipe.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.mark.slow
def test_demo_cxr(tmp_path, capsys):
    name = "cxr_pneumonia_classification"
    if not os.path.isfile(os.path.join(REPO, "bundles", name, "configs", "train.json")):
        pytest.skip("CXR bundle not complete")
    repo_models = os.path.join(REPO, "bundles", name, "models")
    before = sorted(os.listdir(repo_models)) if os.path.isdir(repo_models) else []
    rc = main(["demo", "--output", str(tmp_path / "demo"), "--bundles", name])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "SYNTHETIC" in text and "results.csv" in text
    df = pd.read_csv(tmp_path / "demo" / "results" / name / "results.csv")
    assert len(df) >= 7 and (df.status == "ok").all() and df.prob_PNEUMONIA.between(0, 1).all()
    assert os.path.isfile(tmp_path / "demo" / "bundles" / name / "models" / "model.pt")
    after = sorted(os.listdir(repo_models)) if os.path.isdir(repo_models) else []
    assert before == after  # the repository's bundle is left clean

    # the summary says where the trained bundle is and what to run next; the copy carries the demo's sizes
    copy = tmp_path / "demo" / "bundles" / name
    assert f"trained bundle: {copy}" in text
    assert json.loads((copy / "configs" / "inference.json").read_text())["image_size"] == 64
    score_cmd = next(line.strip() for line in text.splitlines() if line.strip().startswith("cadpipe score"))
    argv = shlex.split(score_cmd)[1:]
    assert argv[argv.index("--bundle") + 1] == str(copy)
    assert main(argv + ["--quiet", "--workers", "0", "--output", str(tmp_path / "next")]) == 0
    assert (pd.read_csv(tmp_path / "next" / "results.csv").status == "ok").all()
    # the README's `monai.bundle run` inference example, on the trained copy, with no override
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                        str(copy / "configs" / "inference.json"), "--bundle_root", str(copy), "--dataset_dir",
                        str(tmp_path / "demo" / "studies" / name / "kermany_style"), "--output_dir",
                        str(tmp_path / "infer_out")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.listdir(tmp_path / "infer_out")
