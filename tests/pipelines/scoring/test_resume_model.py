"""Resume keys on the unit and the model: a rerun skips units scored with the same weights (sha256) and rescores
those scored with other weights."""

from __future__ import annotations

import os
import shutil

import pandas as pd

from cadpipe.pipelines.scoring.score import ScoreConfig, score
from tests.pipelines.scoring.score_helpers import make_bundle


def test_rerun_skips_same_model_and_rescores_after_new_weights(tmp_path):
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    (tmp_path / "in").mkdir()
    for i in (1, 2):
        write_cxr_dicom(str(tmp_path / "in" / f"synthetic_IM{i}"), rows=32, cols=32, seed=i)
    cfg = ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=0,
                      quiet=True, reports=False)
    first = score(cfg)
    assert first["scored_this_run"] == 2
    assert score(cfg)["skipped_already_done"] == 2
    old = set(pd.read_csv(tmp_path / "out" / "results.csv").model_sha256)
    other = make_bundle("tiny_classification_bundle", str(tmp_path / "b2"), seed=1)  # "retrained" weights
    shutil.copy(os.path.join(other, "models", "model.pt"), os.path.join(bundle, "models", "model.pt"))
    again = score(cfg)
    assert again["scored_this_run"] == 2 and again["skipped_already_done"] == 0
    new = set(pd.read_csv(tmp_path / "out" / "results.csv").model_sha256)
    assert len(old) == len(new) == 1 and old != new
