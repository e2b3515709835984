"""The README demo for one bundle: synthetic data → 1-epoch training into a demo-local bundle copy → scoring."""

from __future__ import annotations

import os

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
