"""Task kinds: the registry maps every bundle's declared task to its kind and refuses unknown ones by file; each
kind's columns, calls, batched eligibility, MONAI Label type and SR content."""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.inference.bundle_runner import BundleRunner
from cadpipe.pipelines.inference.thresholds import OperatingThresholds
from cadpipe.pipelines.kinds import KINDS, kind_of

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_every_bundle_declares_a_known_kind():
    bundles = os.path.join(REPO, "bundles")
    for name in sorted(os.listdir(bundles)):
        meta = os.path.join(bundles, name, "configs", "metadata.json")
        if os.path.isfile(meta):
            task = json.load(open(meta, encoding="utf-8"))["cadpipe"]["task"]
            assert kind_of(task, meta).name == task


def test_unknown_kind_names_the_file_and_the_reason():
    with pytest.raises(CadpipeInputError) as err:
        kind_of("regression", "b/configs/metadata.json")
    assert str(err.value).startswith("b/configs/metadata.json: unknown cadpipe.task 'regression'")
    assert "classification" in str(err.value)


def test_a_runner_refuses_a_bundle_of_unknown_kind(tmp_path):
    from tests.pipelines.scoring.score_helpers import make_bundle

    root = make_bundle("tiny_classification_bundle", str(tmp_path))
    meta_path = os.path.join(root, "configs", "metadata.json")
    meta = json.load(open(meta_path, encoding="utf-8"))
    meta["cadpipe"]["task"] = "regression"
    json.dump(meta, open(meta_path, "w", encoding="utf-8"))
    with pytest.raises(CadpipeInputError) as err:
        BundleRunner(root, device="cpu")
    assert err.value.path == meta_path and "unknown cadpipe.task 'regression'" in err.value.reason


def _runner(**kw):
    base = dict(class_names=["NORMAL", "PNEUMONIA"], thresholds=OperatingThresholds(), display_min_score=0.3,
                max_boxes_shown=2, label_map=BundleRunner.label_map, unit_size=lambda out, ndim: 0.5)
    return types.SimpleNamespace(**(base | kw))


def test_classification_and_multilabel_calls_differ_only_by_kind():
    ops = OperatingThresholds({"Effusion": 0.2, "Mass": 0.6, "No Finding": 0.5}, saved=True)
    names = ["Effusion", "Mass", "No Finding"]
    assert KINDS["multilabel"].decide(names, [0.3, 0.7, 0.9], ops)["predicted"] == "Effusion;Mass"
    assert KINDS["classification"].decide(names, [0.3, 0.7, 0.9], ops)["predicted"] == "No Finding"  # arg-max
    row = KINDS["classification"].columns(_runner(), {"pred": torch.tensor([0.25, 0.75])})
    assert row == {"prob_NORMAL": 0.25, "prob_PNEUMONIA": 0.75, "predicted": "PNEUMONIA"}


def test_segmentation_columns_follow_the_dimension():
    seg = KINDS["segmentation"]
    mask2 = torch.zeros(1, 8, 8)
    mask2[0, :2, :4] = 1
    assert seg.columns(_runner(), {"pred": mask2}) == {"lesion_voxels": 8, "lesion_area_cm2": 8 * 0.5 / 100}
    mask3 = torch.zeros(1, 4, 4, 4)
    mask3[0, 0, 0, :3] = 1
    assert seg.columns(_runner(), {"pred": mask3}) == {"lesion_voxels": 3, "lesion_volume_ml": 3 * 0.5 / 1000}
    no_spacing = _runner(unit_size=lambda out, ndim: None)
    assert seg.columns(no_spacing, {"pred": mask2})["lesion_area_cm2"] is None


def test_detection_columns_count_the_boxes_shown():
    out = {"box": torch.zeros(3, 4), "label": torch.tensor([0, 1, 1]), "score": torch.tensor([0.9, 0.5, 0.1]),
           "malignancy": torch.tensor([0.2, 0.8, 0.4]), "pred": torch.tensor([0.9, 0.5, 0.1])}
    row = KINDS["detection"].columns(_runner(), out)
    assert row["n_findings"] == 2 and row["top_score"] == pytest.approx(0.9)
    assert row["top_malignancy"] == pytest.approx(0.8)
    assert [b["label"] for b in KINDS["detection"].boxes(_runner(), out)] == ["NORMAL", "PNEUMONIA", "PNEUMONIA"]


def test_batched_path_and_heatmaps_by_kind():
    assert KINDS["classification"].batched_unsupported(2) is None
    assert KINDS["multilabel"].batched_unsupported(2) is None
    assert KINDS["segmentation"].batched_unsupported(2) is None
    assert "3D segmentation" in KINDS["segmentation"].batched_unsupported(3)
    assert "no batched preprocessing" in KINDS["detection"].batched_unsupported(2)
    assert [k for k, v in KINDS.items() if v.heatmaps] == ["classification", "multilabel"]


def test_monailabel_serves_each_kind_as_a_type_it_derives_from_a_folder_name():
    from cadpipe.pipelines.monailabel.app import monailabel_type

    for name, kind in KINDS.items():
        assert monailabel_type(f"x_{kind.monailabel_type}") == kind.monailabel_type, name
    assert KINDS["multilabel"].monailabel_type == "classification"


def test_multilabel_heatmap_classes_skip_no_finding():
    runner = _runner(class_names=["Effusion", "No Finding", "Mass"], cam_threshold=0.5, cam_layers="x")
    assert KINDS["multilabel"].cam_classes(runner, [0.6, 0.9, 0.4]) == [0]
    assert KINDS["classification"].cam_classes(runner, [0.6, 0.9, 0.4]) == []
    assert KINDS["multilabel"].cam_classes(_runner(cam_threshold=None, cam_layers="x"), [0.9, 0.9]) == []


def test_sr_content_by_kind(tmp_path):
    row = {"prob_NORMAL": 0.25, "prob_PNEUMONIA": 0.75, "predicted": "PNEUMONIA"}
    assert KINDS["classification"].sr_content(row, {}, str(tmp_path), {}) == {
        "probabilities": {"NORMAL": 0.25, "PNEUMONIA": 0.75}, "predicted": ["PNEUMONIA"], "thresholds": {}}
    assert KINDS["multilabel"].sr_content({"prob_a": 0.9, "predicted": "a;b"}, {}, "", {})["predicted"] == ["a", "b"]
    boxes = [{"box": [1, 2, 3, 4], "label": "mass", "score": 0.5}]
    (tmp_path / "u_boxes.json").write_text(json.dumps({"boxes": boxes}))
    assert KINDS["detection"].sr_content({}, {"boxes": "u_boxes.json"}, str(tmp_path), {}) == {"boxes": boxes}
    assert KINDS["detection"].sr_content({}, {}, str(tmp_path), {}) == {}
    assert KINDS["segmentation"].sr_content({"lesion_area_cm2": 1.0}, {}, str(tmp_path), {}) == {}


def test_training_labels_and_saved_thresholds_by_kind():
    cls, ml = KINDS["classification"], KINDS["multilabel"]
    assert int(cls.target_labels(np.array([0.0, 1.0]))) == 1 and int(cls.target_labels(np.array([1.0]))) == 1
    np.testing.assert_array_equal(ml.target_labels(np.array([1.0, 0.0, 1.0])), [1.0, 0.0, 1.0])
    chosen = {"NORMAL": {"threshold": 0.4}, "PNEUMONIA": {"threshold": 0.6}}
    assert cls.thresholds_to_save(chosen, ["NORMAL", "PNEUMONIA"], "PNEUMONIA") == {"PNEUMONIA": {"threshold": 0.6}}
    assert ml.thresholds_to_save(chosen, ["NORMAL", "PNEUMONIA"], None) == chosen
