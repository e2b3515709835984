"""Detection results: 50 overlapping candidate boxes become at most N numbered boxes on the overlay and in the
findings, sorted by score; the boxes file keeps them all."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import torch

from cadpipe.pipelines.scoring.discovery import Unit
from cadpipe.pipelines.scoring.score import _finish_unit
from tests.pipelines.scoring.score_helpers import write_png


def test_at_most_max_boxes_shown_numbered_by_score(tmp_path):
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner

    rng = np.random.default_rng(0)
    image = write_png(str(tmp_path / "in" / "case" / "synthetic_mammo.png"), shape=(64, 80))
    xy = rng.uniform(5, 30, (50, 2))
    boxes = np.concatenate([xy, xy + 20], 1)  # 50 heavily overlapping boxes
    scores = rng.uniform(0.05, 0.99, 50)
    out = {"box": torch.as_tensor(boxes), "label": torch.as_tensor(rng.integers(0, 2, 50)),
           "score": torch.as_tensor(scores), "malignancy": torch.as_tensor(rng.uniform(0, 1, 50)),
           "pred": torch.as_tensor(scores)}
    from cadpipe.pipelines.kinds import kind_of

    runner = types.SimpleNamespace(kind=kind_of("detection"), class_names=["benign", "malignant"],
                                   display_min_score=0.3, max_boxes_shown=5)
    runner.summarise = lambda o: BundleRunner.summarise(runner, o)
    unit = Unit("case/synthetic_mammo", "case", "synthetic_mammo", "image", image, [image])
    info = {"name": "mammo", "version": "1", "model_sha256": "0" * 64}
    row = _finish_unit(runner, unit, {"image": torch.zeros(1, 80, 64)}, out, str(tmp_path / "out"), info)

    expected = sorted(scores[scores >= 0.3], reverse=True)[:5]
    texts = [f["text"] for f in row["_findings"]]
    assert row["n_findings"] == 5 == len(texts)
    assert [t.split(":")[0] for t in texts] == [f"Box {i}" for i in range(1, 6)]
    np.testing.assert_allclose([f["probability"] for f in row["_findings"]], expected, rtol=1e-6)  # float32 boxes
    assert "Boxes 1–5 numbered by score" in row["_captions"][0]
    saved = json.load(open(os.path.join(str(tmp_path / "out"), row["_outputs"]["boxes"])))
    assert len(saved["boxes"]) == 50  # every candidate stays in the boxes file
