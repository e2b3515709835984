"""Operating thresholds saved with a model decide scoring's ``predicted`` column and the report's wording."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.inference.bundle_runner import file_sha256
from cadpipe.pipelines.outputs.calls import shown_pair
from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score
from cadpipe.pipelines.tasks.thresholds import ThresholdSaver
from tests.pipelines.scoring.score_helpers import write_png

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
OVERRIDES = {"use_clahe": False, "image_size": 32, "network_def#init_features": 8, "network_def#growth_rate": 4}


def _report_text(out: str, study: str) -> str:
    return open(os.path.join(out, study, "report.html"), encoding="utf-8").read()


def test_saved_threshold_decides_predicted_and_wording(tmp_path):
    bundle = copy_bundle_untrained(os.path.join(REPO, "bundles", "cxr_pneumonia_classification"),
                                   tmp_path / "bundle", OVERRIDES)
    for i in range(6):
        write_png(str(tmp_path / "in" / f"s{i}" / "synthetic_cxr.png"), seed=i, shape=(40, 40))
    out = str(tmp_path / "out")
    cfg = ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=out, workers=0, quiet=True,
                      overrides=OVERRIDES)
    assert score(cfg)["exit_code"] == EXIT_OK
    before = pd.read_csv(os.path.join(out, "results.csv"))
    assert (before.predicted == np.where(before.prob_PNEUMONIA >= 0.5, "PNEUMONIA", "NORMAL")).all()  # arg-max
    assert "No operating threshold saved with this model: 0.5 used." in _report_text(out, "s0")

    # a threshold between the images' probabilities, saved as training saves it
    probs = np.sort(before.prob_PNEUMONIA.to_numpy())
    thr = float((probs[2] + probs[3]) / 2)
    model = os.path.join(bundle, "models", "model.pt")
    saver = ThresholdSaver(os.path.join(bundle, "models"), ["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA",
                           target_sensitivity=1.0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    saver.save(np.stack([1 - probs, probs], 1), labels, file_sha256(model))
    assert score(ScoreConfig(**{**cfg.__dict__, "force": True}))["exit_code"] == EXIT_OK
    after = pd.read_csv(os.path.join(out, "results.csv"))
    saved_thr = probs[3]  # sensitivity 1.0 on these labels: the lowest positive probability
    assert (after.predicted == np.where(after.prob_PNEUMONIA >= saved_thr, "PNEUMONIA", "NORMAL")).all()
    assert (after.predicted == "PNEUMONIA").sum() == 3
    for _, row in after.iterrows():
        html = _report_text(out, row.study_id)
        call = "positive" if row.predicted == "PNEUMONIA" else "negative"
        # one image sits exactly on the threshold: "at or above", and the printed numbers agree with the call
        shown_p, shown_t = shown_pair(row.prob_PNEUMONIA, saved_thr)
        rel = "at or above" if row.predicted == "PNEUMONIA" else "below"
        phrase = f"probability {shown_p}, {rel} the operating threshold {shown_t}"
        assert f"PNEUMONIA: {call} ({phrase})." in html
        assert "No operating threshold" not in html
        assert f"Grad-CAM for PNEUMONIA ({call}: {phrase})" in html
        assert f"<td>PNEUMONIA</td><td>{shown_p}</td><td>{shown_t}</td><td>{rel}: {call}</td>" in html
    assert thr > 0  # the probabilities differ between images (a constant network would make this test vacuous)
    assert probs[0] < probs[-1]


def test_unreadable_thresholds_file_is_a_usage_error_naming_it(tmp_path):
    import pytest

    from cadpipe.errors import CadpipeInputError

    bundle = copy_bundle_untrained(os.path.join(REPO, "bundles", "cxr_pneumonia_classification"),
                                   tmp_path / "bundle", OVERRIDES)
    path = os.path.join(bundle, "models", "thresholds.json")
    with open(path, "w") as f:
        f.write("{")
    write_png(str(tmp_path / "in" / "s0" / "synthetic_cxr.png"))
    with pytest.raises(CadpipeInputError) as err:
        score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=str(tmp_path / "out"), workers=0,
                          quiet=True, overrides=OVERRIDES))
    assert path in str(err.value) and "not a readable thresholds file" in str(err.value)
