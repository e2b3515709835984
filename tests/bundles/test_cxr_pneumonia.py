"""CXR pneumonia bundle: schema, workflow properties, network in/out, and train -> evaluate -> inference end to end."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cadpipe.data.synthetic.cxr import write_bad_images, write_synthetic_kermany
from tests.bundles.helpers import bundle_workflow

BUNDLE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "bundles", "cxr_pneumonia_classification")
# a small DenseNet121 keeps the CPU tests short; the network layout and ids stay those of the bundle
TINY = {"network_def#init_features": 16, "network_def#growth_rate": 8}


def test_metadata_classes():
    """The bundle's own classes and task in metadata.json (the schema and the common keys: test_conformance.py)."""
    meta = json.load(open(os.path.join(BUNDLE, "configs", "metadata.json")))
    assert meta["version"] in meta["changelog"]
    assert meta["cadpipe"]["class_names"] == ["NORMAL", "PNEUMONIA"] and meta["cadpipe"]["positive_class"] == "PNEUMONIA"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "NORMAL", "1": "PNEUMONIA"}


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def",
        meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
        config_file=os.path.join(BUNDLE, "configs", "inference.json"),
        n=1,
        any=64,
        device="cpu",
    )


def test_config_ids():
    infer = json.load(open(os.path.join(BUNDLE, "configs", "inference.json")))
    for k in ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "inferer",
              "preprocessing", "postprocessing", "writers", "datalist", "dataset", "dataloader", "evaluator",
              "handlers", "initialize", "run", "cam_layers"):
        assert k in infer, k
    assert infer["cam_layers"] == "class_layers.relu"
    train = json.load(open(os.path.join(BUNDLE, "configs", "train.json")))
    for k in ("bundle_root", "dataset_dir", "output_dir", "device", "epochs", "batch_size", "image_size",
              "learning_rate", "num_workers", "val_fraction", "pretrained_path", "val_interval", "threshold",
              "target_sensitivity", "use_clahe", "class_weighted_loss"):
        assert k in train, k
    assert train["use_clahe"] is True and train["class_weighted_loss"] is True and train["pretrained_path"] == ""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic Kermany data (with DICOM and bad files) and a bundle copy trained for 2 epochs."""
    tmp = tmp_path_factory.mktemp("cxr")
    bundle = str(tmp / "bundle")
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval", "outputs"))
    data = str(tmp / "data")
    write_synthetic_kermany(data, {"train": {"NORMAL": 8, "PNEUMONIA": 20}, "test": 5}, size=72, n_dicom=1)
    bad = write_bad_images(os.path.join(data, "train", "NORMAL")) + write_bad_images(os.path.join(data, "test", "PNEUMONIA"))
    common = dict(bundle_root=bundle, dataset_dir=data, image_size=64, batch_size=8, num_workers=0, **TINY)
    wf = bundle_workflow(bundle, ["train.json"], "train", epochs=2, learning_rate=1e-3, val_fraction=0.2,
                         output_dir=str(tmp / "train_out"), **common)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return {"tmp": tmp, "bundle": bundle, "data": data, "bad": bad, "common": common}


@pytest.mark.slow
def test_train_writes_checkpoints(trained):
    models = os.listdir(os.path.join(trained["bundle"], "models"))
    assert "model.pt" in models and "model_last.pt" in models
    import torch

    sd = torch.load(os.path.join(trained["bundle"], "models", "model.pt"), weights_only=True)
    assert "class_layers.out.weight" in sd and sd["class_layers.out.weight"].shape[0] == 2
    assert os.path.isdir(os.path.join(trained["tmp"], "train_out", "tensorboard"))


@pytest.mark.slow
def test_train_saves_operating_threshold_with_the_weights(trained):
    """The validation split's Youden point for PNEUMONIA, saved for exactly the weights in model.pt and used by
    the runner that scoring, the portal and MONAI Label share."""
    from cadpipe.pipelines.inference.bundle_runner import BundleRunner, file_sha256

    models = os.path.join(trained["bundle"], "models")
    doc = json.load(open(os.path.join(models, "thresholds.json")))
    assert doc["model_sha256"] == file_sha256(os.path.join(models, "model.pt"))
    assert doc["positive_class"] == "PNEUMONIA" and list(doc["classes"]) == ["PNEUMONIA"]
    assert doc["split"] == "validation" and doc["n"] > 0
    assert 0.0 <= doc["classes"]["PNEUMONIA"]["threshold"] <= 1.0
    runner = BundleRunner(trained["bundle"], device="cpu", overrides={"image_size": 64, **TINY})
    assert runner.thresholds.saved and runner.thresholds.threshold("PNEUMONIA") == doc["classes"]["PNEUMONIA"]["threshold"]


@pytest.mark.slow
def test_evaluate_writes_metrics_and_predictions(trained, capsys):
    out = str(trained["tmp"] / "eval")
    wf = bundle_workflow(trained["bundle"], ["train.json", "evaluate.json"], "eval", output_dir=out,
                         val_fraction=0.2, **trained["common"])  # logging.conf sends the log to stdout
    wf.initialize()
    wf.run()
    wf.finalize()
    log = "".join(capsys.readouterr())
    assert f"{trained['bad'][2]}: zero-byte file" in log  # the test split's bad files are reported and skipped
    assert f"skipping bad image {trained['bad'][3]}: cannot read image" in log
    m = json.load(open(os.path.join(out, "metrics.json")))
    for k in ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "confusion_matrix"):
        assert k in m
    # metrics at the operating threshold training saved with these weights, and at 0.5 for comparison
    saved = json.load(open(os.path.join(trained["bundle"], "models", "thresholds.json")))
    saved = saved["classes"]["PNEUMONIA"]["threshold"]
    assert m["n"] == 10 and m["split"] == "test" and m["threshold"] == pytest.approx(saved)
    assert saved == 0.5 or m["at_0.5"]["threshold"] == 0.5
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 10 and cm[1].sum() == 5  # 5 pneumonia rows
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert list(rows[0]) == ["path", "label", "prob_pneumonia", "predicted"] and len(rows) == 10
    probs = np.array([float(r["prob_pneumonia"]) for r in rows])
    pred = np.array([r["predicted"] == "PNEUMONIA" for r in rows])
    assert np.array_equal(pred, probs >= m["threshold"])  # the call at the operating threshold the metrics use
    assert sum(r["label"] == "PNEUMONIA" and p for r, p in zip(rows, pred)) == m["tp"]
    assert os.path.isfile(os.path.join(out, "val_metrics.json"))


@pytest.mark.slow
def test_evaluate_threshold_for_target_sensitivity(trained):
    out = str(trained["tmp"] / "eval_sens")
    wf = bundle_workflow(trained["bundle"], ["train.json", "evaluate.json"], "eval", output_dir=out, val_fraction=0.2,
                         target_sensitivity=1.0, **trained["common"])
    wf.initialize()
    wf.run()
    wf.finalize()
    val = json.load(open(os.path.join(out, "val_metrics.json")))
    test = json.load(open(os.path.join(out, "metrics.json")))
    assert val["sensitivity"] == 1.0  # picked on validation to reach the target
    assert test["threshold"] == pytest.approx(val["threshold"]) and test["threshold_source"] == "validation"
    vrows = list(csv.DictReader(open(os.path.join(out, "val_predictions.csv"))))
    lowest_pos = min(float(r["prob_pneumonia"]) for r in vrows if r["label"] == "PNEUMONIA")
    assert val["threshold"] == pytest.approx(lowest_pos, abs=1e-6)


@pytest.mark.slow
def test_inference_with_heatmaps(trained):
    out = str(trained["tmp"] / "infer")
    test_dir = os.path.join(trained["data"], "test")
    # the documented command line
    cmd = [sys.executable, "-m", "monai.bundle", "run",
           "--config_file", os.path.join(trained["bundle"], "configs", "inference.json"),
           "--bundle_root", trained["bundle"], "--dataset_dir", test_dir, "--output_dir", out,
           "--image_size", "64", "--device", "$torch.device('cpu')"]
    cmd += [a for k, v in TINY.items() for a in (f"--{k}", str(v))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for bad in trained["bad"][2:]:
        assert bad in proc.stdout + proc.stderr  # reported and skipped
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert len(rows) == 10
    assert {"path", "prob_pneumonia", "predicted", "heatmap_png", "heatmap"} <= set(rows[0])
    # the operating threshold training saved with these weights decides, as in cadpipe score
    saved = json.load(open(os.path.join(trained["bundle"], "models", "thresholds.json")))
    thr = saved["classes"]["PNEUMONIA"]["threshold"]
    for r in rows:
        assert 0.0 <= float(r["prob_pneumonia"]) <= 1.0
        assert r["predicted"] == ("PNEUMONIA" if float(r["prob_pneumonia"]) >= thr - 1e-6 else "NORMAL")
        cam = np.load(r["heatmap"])
        assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() <= 1
        assert np.asarray(Image.open(r["heatmap_png"])).shape == (64, 64, 3)


@pytest.mark.slow
def test_inference_workflow_properties_and_postprocessing_is_pure(trained, tmp_path):
    wf = bundle_workflow(trained["bundle"], ["inference.json"], "infer", bundle_root=trained["bundle"],
                         dataset_dir=os.path.join(trained["data"], "test"), output_dir=str(tmp_path / "o"), image_size=64, **TINY)
    wf.initialize()
    assert wf.check_properties() == []
    pre = wf.parser.get_parsed_content("preprocessing")
    post = wf.parser.get_parsed_content("postprocessing")
    item = pre({"image": os.path.join(trained["data"], "test", "NORMAL", "synthetic_test_normal_0000.dcm")})
    assert tuple(item["image"].shape) == (1, 64, 64)
    import torch

    net = wf.parser.get_parsed_content("network")
    net.load_state_dict(torch.load(os.path.join(trained["bundle"], "models", "model.pt"), weights_only=True))
    net.eval()
    with torch.no_grad():
        item["pred"] = net(item["image"][None].float())[0]
    res = post(item)
    assert torch.allclose(res["pred"].sum(), torch.tensor(1.0), atol=1e-5)
    assert not (tmp_path / "o").exists()  # postprocessing wrote nothing
