"""--ray on a local Ray gives the same results.csv as the local path."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from cadpipe.pipelines.score import ScoreConfig, score
from tests.pipelines.score_helpers import make_bundle, mixed_2d_folder

pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_matches_local(tmp_path):
    bundle = make_bundle("tiny_classification_bundle", str(tmp_path))
    src = str(tmp_path / "in")
    mixed_2d_folder(src)
    local = score(ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "local"), workers=0, quiet=True))
    on_ray = score(ScoreConfig(bundle=bundle, input=src, output=str(tmp_path / "ray"), workers=0, quiet=True,
                               ray="", ray_actors=2, batch_size=2))
    assert on_ray["exit_code"] == local["exit_code"] and on_ray["ok"] == local["ok"] == 8
    a = pd.read_csv(str(tmp_path / "local" / "results.csv")).drop(columns=["elapsed_s"])
    b = pd.read_csv(str(tmp_path / "ray" / "results.csv")).drop(columns=["elapsed_s"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5)
    listing = lambda root: sorted(os.path.relpath(os.path.join(d, f), root)  # noqa: E731
                                  for d, _, fs in os.walk(root) for f in fs if ".cadpipe" not in d)
    assert listing(str(tmp_path / "local")) == listing(str(tmp_path / "ray"))
