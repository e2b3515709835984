"""Unique output names: colliding, unicode and case-only input names never share an output file."""

from __future__ import annotations

import os

import pandas as pd

from cadpipe.data.synthetic.images import write_image
from cadpipe.pipelines.scoring.discovery import discover
from cadpipe.pipelines.outputs.output_names import unique_names
from cadpipe.pipelines.scoring.score import ScoreConfig, score
from tests.pipelines.scoring.score_helpers import make_bundle

NAMES = ["a b.png", "a_b.png", "A.png", "a.png", "é.png", "e\u0301.png", "è.png", "plain.png"]


def test_unique_names_rule():
    names = unique_names(["a b", "a_b", "A", "a", "1.2.840.1", "plain"])
    assert len({n.lower() for n in names.values()}) == 6
    assert names["1.2.840.1"] == "1.2.840.1" and names["plain"] == "plain"  # unchanged when safe and unique
    assert names["a b"].startswith("a_b_") and names["a_b"].startswith("a_b_") and names["a b"] != names["a_b"]
    assert unique_names(["a b"]) == {"a b": names["a b"]}  # stable: the hash comes from the id itself


def _folder(root):
    for i, name in enumerate(NAMES):
        tmp = os.path.join(root, "synthetic_tmp.png")
        write_image(tmp, rows=40, cols=40, seed=i)
        os.replace(tmp, os.path.join(root, name))


def test_colliding_names_keep_every_result(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _folder(str(src))
    units = discover(str(src))
    keys = {(u.out_study.lower(), u.out_series.lower(), u.out_prefix.lower()) for u in units}
    assert len(units) == len(NAMES) == len(keys)
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    out = str(tmp_path / "out")
    summary = score(ScoreConfig(bundle=bundle, input=str(src), output=out, workers=0, quiet=True))
    assert summary["ok"] == len(NAMES) and summary["reports"] >= len(NAMES)
    df = pd.read_csv(os.path.join(out, "results.csv"))
    assert len(df) == len(NAMES)
    # one heatmap and one report per input, none overwritten (compared case-insensitively)
    pngs = [os.path.relpath(os.path.join(r, f), out).lower() for r, _, fs in os.walk(out) for f in fs
            if f.endswith(".png")]
    reports = [r for r, _, fs in os.walk(out) for f in fs if f == "report.html"]
    assert len(set(pngs)) == len(pngs) == len(NAMES)
    assert len({r.lower() for r in reports}) == len(NAMES)
