"""Operating thresholds saved with a model: loading, fallbacks, bad files, and the calls they give."""

from __future__ import annotations

import json

import pytest

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.inference.thresholds import (THRESHOLDS_FORMAT, OperatingThresholds, decide, load_thresholds,
                                                   result_calls)


def _write(models, classes, **extra):
    models.mkdir(exist_ok=True)
    (models / "model.pt").write_bytes(b"weights")
    doc = {"format": THRESHOLDS_FORMAT, "classes": classes} | extra
    (models / "thresholds.json").write_text(json.dumps(doc))
    return str(models / "model.pt")


def test_missing_file_falls_back_to_half_and_says_so(tmp_path):
    ops = load_thresholds(str(tmp_path / "model.pt"))
    assert not ops.saved and ops.threshold("PNEUMONIA") == 0.5
    assert ops.note == "no operating threshold saved with this model: 0.5 used"


def test_loaded_thresholds_and_sha_check(tmp_path):
    model = _write(tmp_path / "models", {"PNEUMONIA": {"threshold": 0.42, "method": "youden"}},
                   positive_class="PNEUMONIA", model_sha256="abc")
    ops = load_thresholds(model, "abc")
    assert ops.saved and ops.threshold("PNEUMONIA") == 0.42 and ops.positive_class == "PNEUMONIA" and not ops.note
    other = load_thresholds(model, "def")  # thresholds of other weights never decide
    assert not other.saved and "belong to other weights" in other.note and other.threshold("PNEUMONIA") == 0.5


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not a readable thresholds file"),
    (json.dumps({"classes": {"A": {"threshold": 0.3}}}), "not a thresholds file"),
    (json.dumps({"format": THRESHOLDS_FORMAT, "classes": {}}), "no \"classes\""),
    (json.dumps({"format": THRESHOLDS_FORMAT, "classes": {"A": {"threshold": 1.7}}}), "class 'A': threshold must"),
    (json.dumps({"format": THRESHOLDS_FORMAT, "classes": {"A": {"threshold": "0.3"}}}), "class 'A': threshold must"),
])
def test_bad_thresholds_file_names_file_and_reason(tmp_path, content, reason):
    (tmp_path / "thresholds.json").write_text(content)
    with pytest.raises(CadpipeInputError) as err:
        load_thresholds(str(tmp_path / "model.pt"))
    assert str(tmp_path / "thresholds.json") in str(err.value) and reason in str(err.value)


def test_binary_call_uses_the_positive_threshold():
    ops = OperatingThresholds({"PNEUMONIA": 0.3}, positive_class="PNEUMONIA", saved=True)
    names = ["NORMAL", "PNEUMONIA"]
    assert decide("classification", names, [0.65, 0.35], ops)["predicted"] == "PNEUMONIA"  # arg-max would say NORMAL
    assert decide("classification", names, [0.75, 0.25], ops)["predicted"] == "NORMAL"
    default = OperatingThresholds()
    assert decide("classification", names, [0.65, 0.35], default)["predicted"] == "NORMAL"  # today's behaviour


def test_multiclass_is_argmax():
    ops = OperatingThresholds({"a": 0.9, "b": 0.1, "c": 0.1}, saved=True)
    assert decide("classification", ["a", "b", "c"], [0.5, 0.3, 0.2], ops)["predicted"] == "a"


def test_multilabel_no_finding_never_beside_a_finding():
    names = ["Effusion", "Mass", "No Finding"]
    ops = OperatingThresholds({"Effusion": 0.2, "Mass": 0.6, "No Finding": 0.5}, saved=True)
    assert decide("multilabel", names, [0.25, 0.5, 0.9], ops)["predicted"] == "Effusion"
    assert decide("multilabel", names, [0.1, 0.5, 0.9], ops)["predicted"] == "No Finding"
    assert decide("multilabel", names, [0.1, 0.5, 0.2], ops)["predicted"] == ""
    assert decide("multilabel", names, [0.4, 0.7, 0.1], ops)["above"] == ["Effusion", "Mass"]


def test_result_calls_for_monai_label():
    ops = OperatingThresholds({"PNEUMONIA": 0.3}, positive_class="PNEUMONIA", saved=True)
    got = result_calls("classification", ["NORMAL", "PNEUMONIA"], [0.6, 0.4], ops)
    assert got["predicted"] == "PNEUMONIA" and got["thresholds_saved"] and got["note"] == ""
    assert got["classes"][1] == {"label": "PNEUMONIA", "score": 0.4, "threshold": 0.3, "call": "positive"}
    assert got["classes"][0]["call"] == "negative"
    fallback = result_calls("multilabel", ["Effusion", "No Finding"], [0.7, 0.6], OperatingThresholds(
        note="no operating threshold saved with this model: 0.5 used"))
    assert fallback["predicted"] == "Effusion" and [c["call"] for c in fallback["classes"]] == ["positive", "negative"]


def test_saved_threshold_for_bundle_configs(tmp_path):
    from cadpipe.pipelines.inference.thresholds import saved_threshold
    from cadpipe.pipelines.outputs.files import file_sha256

    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"weights")
    model = str(models / "model.pt")
    assert saved_threshold(model, "PNEUMONIA") == 0.5  # no file: the config's default
    _write(models, {"PNEUMONIA": {"threshold": 0.37}}, model_sha256=file_sha256(model))
    assert saved_threshold(model, "PNEUMONIA") == 0.37
    assert saved_threshold(model, "OTHER", 0.6) == 0.6
    (models / "model.pt").write_bytes(b"retrained")  # other weights: the old threshold is not used
    assert saved_threshold(model, "PNEUMONIA") == 0.5
    assert saved_threshold(str(tmp_path / "missing.pt"), "PNEUMONIA", 0.4) == 0.4
