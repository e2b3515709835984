"""A model remembers how it was trained: training saves the preprocessing ids it used beside the weights
(``models/preprocessing.json``), inference (BundleRunner: ``cadpipe score``, the portal, the listener; MONAI Label
and ``monai.bundle run`` through ``inference.json``) and evaluation use them, and a conflicting explicit override is
honoured with a warning naming both values."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.inference.trained_preprocessing import (PREPROCESSING_FILE, conflicts,
                                                               load_trained_preprocessing, trained)
from cadpipe.pipelines.tasks.classification import ClassificationReport
from cadpipe.pipelines.tasks.training_record import PreprocessingSaver

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _model(folder, content=b"weights-1"):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.pt")
    with open(path, "wb") as f:
        f.write(content)
    return path


def test_saver_writes_a_record_per_new_checkpoint_and_reader_checks_the_weights(tmp_path):
    models = str(tmp_path / "models")
    saver = PreprocessingSaver(models, {"image_size": 128, "use_clahe": "false", "roi_size": (64, 64)})
    assert saver.maybe_save() is None  # no checkpoint yet: nothing to describe
    model = _model(models)
    path = saver.maybe_save()
    assert path == os.path.join(models, PREPROCESSING_FILE)
    assert saver.maybe_save() is None  # same weights: not rewritten
    assert load_trained_preprocessing(model) == {"image_size": 128, "use_clahe": "false", "roi_size": [64, 64]}
    assert trained(model, "image_size", 224) == 128
    assert trained(model, "window", "lung") == "lung"  # not recorded: the config's default
    _model(models, b"weights-2 (retrained, no record yet)")
    assert trained(model, "image_size", 224) == 224  # the record belongs to other weights
    assert saver.maybe_save() == path  # the new checkpoint gets its record
    assert trained(model, "image_size", 224) == 128


def test_a_broken_record_names_the_file(tmp_path):
    model = _model(str(tmp_path / "models"))
    record = os.path.join(os.path.dirname(model), PREPROCESSING_FILE)
    with open(record, "w") as f:
        f.write("{not json")
    with pytest.raises(CadpipeInputError) as err:
        load_trained_preprocessing(model)
    assert str(err.value).startswith(record + ": not a readable preprocessing record")
    with open(record, "w") as f:
        json.dump({"params": {}}, f)
    with pytest.raises(CadpipeInputError, match="not a preprocessing record"):
        load_trained_preprocessing(model)


def test_conflicts_name_both_values(tmp_path):
    models = str(tmp_path / "models")
    model = _model(models)
    PreprocessingSaver(models, {"image_size": 128, "use_clahe": False}).maybe_save()
    assert conflicts(model, {"image_size": 128, "use_clahe": "false", "batch_size": 9}) == []
    (line,) = conflicts(model, {"image_size": 96})
    assert "image_size 96" in line and "128" in line and "trained with" in line


@pytest.fixture(scope="module")
def pneumonia(tmp_path_factory):
    """The pneumonia bundle with random weights and a record saying it was trained at 64 px without CLAHE."""
    from monai.bundle import ConfigParser

    root = str(tmp_path_factory.mktemp("b") / "cxr_pneumonia_classification")
    shutil.copytree(os.path.join(REPO, "bundles", "cxr_pneumonia_classification"), root,
                    ignore=shutil.ignore_patterns("models", "eval", "outputs"))
    parser = ConfigParser()
    parser.read_config(os.path.join(root, "configs", "inference.json"))
    torch.manual_seed(0)
    os.makedirs(os.path.join(root, "models"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), os.path.join(root, "models", "model.pt"))
    PreprocessingSaver(os.path.join(root, "models"), {"image_size": 64, "use_clahe": False}).maybe_save()
    return root


def _image(tmp_path):
    from PIL import Image

    path = str(tmp_path / "cxr.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100), dtype=np.uint8)).save(path)
    return path


def test_runner_prepares_images_as_in_training(pneumonia, tmp_path, caplog):
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner

    image = _image(tmp_path)
    runner = BundleRunner(pneumonia, device="cpu")
    assert runner.preprocessing_conflicts == []
    assert runner.parser.get_parsed_content("use_clahe") is False
    assert tuple(runner.preprocess({"image": image})["image"].shape) == (1, 64, 64)
    with caplog.at_level(logging.WARNING):
        runner = BundleRunner(pneumonia, device="cpu", overrides={"image_size": 96})
    assert tuple(runner.preprocess({"image": image})["image"].shape) == (1, 96, 96)  # as asked
    assert any("image_size 96" in r.getMessage() and "64" in r.getMessage() for r in caplog.records)


def test_monai_bundle_run_configs_read_the_record(pneumonia, caplog):
    from monai.bundle import ConfigParser

    for files in (["inference.json"], ["train.json", "evaluate.json"]):
        parser = ConfigParser()
        parser.read_config([os.path.join(pneumonia, "configs", f) for f in files])
        parser["bundle_root"] = pneumonia
        assert parser.get_parsed_content("image_size") == 64, files
        assert parser.get_parsed_content("use_clahe") is False, files
        parser["image_size"] = 96  # what `--image_size 96` on the command line does
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            parser.get_parsed_content("initialize")
        assert any("image_size 96" in r.getMessage() and "64" in r.getMessage() for r in caplog.records), files


def test_evaluation_reports_the_saved_threshold_and_0_5(tmp_path):
    report = ClassificationReport(str(tmp_path), ["NORMAL", "PNEUMONIA"], positive_index=1, threshold=0.7,
                                  threshold_source="saved with the model")
    report.paths, report.labels = ["a", "b", "c", "d"], [0, 1, 1, 0]
    report.probs = [np.array([1 - p, p]) for p in (0.6, 0.8, 0.65, 0.2)]
    m = report.write()
    assert m["threshold"] == 0.7 and m["threshold_source"] == "saved with the model"
    assert m["sensitivity"] == 0.5 and m["specificity"] == 1.0  # at 0.7: 0.65 is missed, 0.6 is not called
    assert m["at_0.5"]["threshold"] == 0.5
    assert m["at_0.5"]["sensitivity"] == 1.0 and m["at_0.5"]["specificity"] == 0.5
    saved = json.load(open(tmp_path / "metrics.json"))
    assert saved["at_0.5"]["sensitivity"] == 1.0


def test_multilabel_evaluation_reports_saved_thresholds_and_0_5(tmp_path):
    from types import SimpleNamespace

    from cadpipe.pipelines.tasks.multilabel import MultiLabelReport

    report = MultiLabelReport(str(tmp_path), ["Effusion", "No Finding"], thresholds={"Effusion": 0.3})
    report._reset(None)  # noqa: SLF001 - the handler's events, driven by hand
    for p, y in (([0.4, 0.7], [1, 0]), ([0.2, 0.1], [1, 0]), ([0.35, 0.9], [0, 1]), ([0.1, 0.2], [0, 1])):
        report._collect(SimpleNamespace(state=SimpleNamespace(output=[{"pred": torch.tensor(p),  # noqa: SLF001
                                                                        "label": torch.tensor(y)}])))
    report._write(None)  # noqa: SLF001
    m = json.load(open(tmp_path / "metrics.json"))
    assert m["thresholds_saved"] is True
    assert m["at_threshold"]["Effusion"] == {"threshold": 0.3, "sensitivity": 0.5, "specificity": 0.5}
    assert m["at_0.5"]["Effusion"] == {"threshold": 0.5, "sensitivity": 0.0, "specificity": 1.0}
    assert m["at_threshold"]["No Finding"]["threshold"] == 0.5  # no saved threshold: 0.5
