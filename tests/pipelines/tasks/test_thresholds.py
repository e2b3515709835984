"""Choosing operating thresholds on validation data and saving them with the checkpoint."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from cadpipe.pipelines.inference.bundle_runner import file_sha256
from cadpipe.pipelines.inference.thresholds import load_thresholds
from cadpipe.pipelines.tasks.thresholds import ThresholdSaver, choose_thresholds, youden_threshold


def test_youden_point_separates_the_classes():
    y = [0, 0, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.35, 0.3, 0.6, 0.9]
    # t=0.3: sens 1, spec 2/3 (J=0.67); t=0.6: sens 2/3, spec 1 (J=0.67): the higher threshold wins the tie
    assert youden_threshold(y, s) == pytest.approx(0.6)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8]) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        youden_threshold([1, 1], [0.2, 0.3])


def test_choose_per_class_with_sensitivity_target_and_one_class_columns():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]])
    out = choose_thresholds([0, 0, 1, 1, 1], probs, ["n", "p"], target_sensitivity=1.0)
    assert out["p"]["threshold"] == pytest.approx(0.4) and out["p"]["method"].startswith("sensitivity 1")
    ml = choose_thresholds(np.array([[1, 0], [0, 0], [1, 0]]), np.array([[0.8, 0.1], [0.2, 0.3], [0.6, 0.2]]),
                           ["Effusion", "Hernia"])
    assert ml["Effusion"] == {"threshold": pytest.approx(0.6), "method": "youden"}
    assert ml["Hernia"]["threshold"] == 0.5 and "no positive case" in ml["Hernia"]["method"]


def _engine(outputs, epoch=1):
    return types.SimpleNamespace(state=types.SimpleNamespace(output=outputs, epoch=epoch))


def test_saver_writes_thresholds_for_the_checkpoint_beside_it(tmp_path):
    saver = ThresholdSaver(str(tmp_path), ["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA")
    batch = [{"pred": torch.tensor([1 - p, p]), "label": torch.tensor([1 - y, y])}
             for p, y in [(0.1, 0), (0.3, 0), (0.35, 1), (0.8, 1)]]
    saver._reset()
    saver._collect(_engine(batch))
    assert saver._maybe_save(_engine(batch)) is None  # no model.pt yet: nothing to describe
    torch.save({"w": torch.ones(1)}, tmp_path / "model.pt")
    path = saver._maybe_save(_engine(batch))
    doc = json.load(open(path))
    assert doc["classes"] == {"PNEUMONIA": {"threshold": pytest.approx(0.35), "method": "youden"}}
    assert doc["model_sha256"] == file_sha256(str(tmp_path / "model.pt")) and doc["n"] == 4
    ops = load_thresholds(str(tmp_path / "model.pt"), file_sha256(str(tmp_path / "model.pt")))
    assert ops.saved and ops.threshold("PNEUMONIA") == pytest.approx(0.35)
    # a later validation run without a new checkpoint leaves the file alone
    saver._reset()
    saver._collect(_engine([{"pred": torch.tensor([0.5, 0.5]), "label": torch.tensor(1)},
                            {"pred": torch.tensor([0.9, 0.1]), "label": torch.tensor(0)}]))
    assert saver._maybe_save(_engine([], epoch=2)) is None
    assert json.load(open(path))["classes"]["PNEUMONIA"]["threshold"] == pytest.approx(0.35)
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")  # a new best checkpoint: new thresholds
    assert saver._maybe_save(_engine([], epoch=2)) == path
    assert json.load(open(path))["classes"]["PNEUMONIA"]["threshold"] == pytest.approx(0.5)
