"""Mammography mass detection bundle: contract, geometry through the configs, training/eval/inference."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cadpipe.data.synthetic.ddsm import write_ddsm_case, write_ddsm_dataset
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.tasks.detection import DetectionJSONWriterd, DetectionMalignancyd, froc, mammo_datalist

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "mammo_mass_detection"
TINY = {
    "image_long_side": 256,
    "infer_patch_size": [256, 256],
    "num_workers": 0,
    "network_def#layers": [1, 1, 1, 1],
    "network_def#block_inplanes": [8, 16, 32, 64],
    "network_def#fpn_channels": 32,
}


def _bundle_copy(tmp_path):
    b = tmp_path / "bundle"
    shutil.copytree(BUNDLE, b, ignore=shutil.ignore_patterns("*.pt", "eval"))
    return b


def test_layout_and_metadata(tmp_path, metadata_schema):
    for f in ("metadata.json", "train.json", "evaluate.json", "inference.json", "multi_gpu_train.json", "logging.conf"):
        assert (BUNDLE / "configs" / f).is_file(), f
    assert (BUNDLE / "docs" / "README.md").is_file() and (BUNDLE / "models").is_dir()
    assert "detection" in BUNDLE.name
    schema = tmp_path / "metadata_schema.json"
    shutil.copy(metadata_schema, schema)
    r = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(BUNDLE / "configs/metadata.json"),
         "--filepath", str(schema)], capture_output=True, text=True)
    assert r.returncode == 0 and "verified with no error" in (r.stdout + r.stderr), r.stderr[-2000:]
    meta = json.loads((BUNDLE / "configs/metadata.json").read_text())
    assert meta["cadpipe"]["task"] == "detection" and meta["cadpipe"]["class_names"] == ["benign", "malignant"]
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values())[1:] == ["benign", "malignant"]
    assert meta["version"] in meta["changelog"]


def test_config_ids():
    from monai.bundle import ConfigParser

    inf = ConfigParser.load_config_file(BUNDLE / "configs/inference.json")
    for k in ("bundle_root", "device", "dataset_dir", "dataset_layout", "output_dir", "network_def", "network", "inferer",
              "preprocessing", "postprocessing", "writers", "detector", "detector_ops", "datalist", "dataset",
              "dataloader", "evaluator", "handlers", "initialize", "run", "finalize", "image_long_side", "num_workers"):
        assert k in inf, k
    tr = ConfigParser(ConfigParser.load_config_file(BUNDLE / "configs/train.json"))
    for k in ("bundle_root", "device", "dataset_dir", "dataset_layout", "output_dir", "epochs", "batch_size",
              "image_long_side", "learning_rate", "num_workers", "val_interval", "train#trainer",
              "train#trainer#max_epochs", "train#dataset#data", "train#handlers", "validate#evaluator",
              "validate#handlers", "validate#dataset#data", "network"):
        assert k in tr, k
    saver = [h for h in tr["validate#handlers"] if isinstance(h, dict) and h.get("_target_") == "CheckpointSaver"][0]
    assert saver["save_dict"] == {"model": "@network"} and saver["key_metric_filename"] == "model.pt"


@pytest.mark.parametrize("view", ["LEFT_CC", "RIGHT_MLO"])
def test_inference_geometry_round_trip_through_configs(tmp_path, view):
    """Boxes taken through the bundle's preprocessing and back through its postprocessing land exactly on the
    original boxes (crop + canonical flip + resize undone)."""
    from monai.bundle import ConfigParser

    truth = write_ddsm_case(tmp_path, 1, n_masses={"LEFT_CC": 2, "RIGHT_MLO": 1}, seed=2,
                            transposed_header_views=("LEFT_CC",))
    v = truth["views"][view]
    p = ConfigParser()
    p.read_config(BUNDLE / "configs/inference.json")
    p.update({"bundle_root": str(tmp_path), "output_dir": str(tmp_path / "out"), "image_long_side": 128})
    pre, post = p.get_parsed_content("preprocessing"), p.get_parsed_content("postprocessing")
    d = pre({"image": v["image"], "box": v["boxes"]})
    assert d["image"].shape[0] == 1 and max(d["image"].shape[1:]) == 128
    assert d["mammo_geometry"]["flipped"] == (view == "LEFT_CC")
    # pretend the detector found exactly the (working-space) masses, one benign one malignant class score each
    n = len(v["boxes"])
    d["box"], d["label"], d["score"] = d["box"], torch.ones(n, dtype=torch.long), torch.linspace(0.9, 0.5, n)
    out = post(d)
    order = np.argsort(-out["score"].numpy())
    np.testing.assert_allclose(out["box"].numpy()[order], v["boxes"], atol=0.01)
    assert set(out) >= {"box", "label", "score", "malignancy"}
    np.testing.assert_allclose(out["malignancy"].numpy(), 1.0)


def test_malignancy_merge_and_empty_json(tmp_path):
    d = {
        "box": torch.tensor([[10, 10, 30, 30], [11, 11, 31, 31], [100, 100, 120, 130]], dtype=torch.float32),
        "label": torch.tensor([0, 1, 0]),
        "score": torch.tensor([0.6, 0.2, 0.3]),
    }
    out = DetectionMalignancyd()(d)
    assert out["box"].shape == (2, 4) and out["score"].tolist() == pytest.approx([0.6, 0.3])
    assert out["malignancy"].tolist() == pytest.approx([0.2 / 0.8, 0.0])
    assert out["label"].tolist() == [0, 0]
    empty = DetectionMalignancyd()({"box": torch.zeros(0, 4), "label": torch.zeros(0), "score": torch.zeros(0)})
    DetectionJSONWriterd(str(tmp_path))({**empty, "source_path": "/x/A_0001_1.LEFT_CC.LJPEG"})
    assert json.loads((tmp_path / "A_0001_1.LEFT_CC.json").read_text()) == []


def test_froc_counts():
    gts = [{"box": np.array([[0, 0, 10, 10]])}, {"box": np.zeros((0, 4))}]
    preds = [
        {"box": np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), "score": np.array([0.9, 0.95])},
        {"box": np.array([[5, 5, 9, 9]]), "score": np.array([0.3])},
    ]
    f = froc(preds, gts)
    # thresholds: 0.95 -> 1 FP/2 images, 0 TP; 0.9 -> 0.5 FP/image, sens 1
    assert f["sensitivity@0.25"] == 0.0 and f["sensitivity@0.5"] == 1.0 and f["num_findings"] == 1


def test_bad_inputs(tmp_path):
    with pytest.raises(CadpipeInputError, match="nope: dataset_dir does not exist"):
        mammo_datalist(str(tmp_path / "nope"))
    with pytest.raises(CadpipeInputError, match="unknown dataset_layout 'xyz'"):
        mammo_datalist(str(tmp_path), "xyz")
    truth = write_ddsm_case(tmp_path, 3, n_masses={"RIGHT_CC": 1})
    ov = Path(truth["views"]["RIGHT_CC"]["overlay"])
    ov.write_text(ov.read_text().replace(" #", ""))
    with pytest.raises(CadpipeInputError) as e:
        mammo_datalist(str(tmp_path), "ddsm")
    assert str(ov) in str(e.value) and "line 9: BOUNDARY outline not ended by '#'" in str(e.value)


def _random_baseline(items, seed=0, n=20):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    for it in items:
        cols, rows = 200, 320
        w = rng.uniform(20, 40, n)
        x0, y0 = rng.uniform(0, cols - w), rng.uniform(0, rows - w)
        preds.append({"box": np.stack([x0, y0, x0 + w, y0 + w], 1), "score": rng.random(n)})
        gts.append({"box": it["gt_box"]})
    return froc(preds, gts)


@pytest.mark.slow
def test_train_evaluate_infer(tmp_path):
    from monai.bundle import ConfigWorkflow

    data = tmp_path / "data"
    write_ddsm_dataset(data, n_cases=12, seed=0, radius_range=(12, 20))
    b = _bundle_copy(tmp_path)
    ov = dict(TINY, bundle_root=str(b), dataset_dir=str(data), output_dir=str(tmp_path / "eval"), epochs=3,
              batch_size=2, learning_rate=1e-3, early_stop_patience=100)
    wf = ConfigWorkflow(config_file=str(b / "configs/train.json"), workflow_type="train", **ov)
    wf.initialize()
    assert wf.check_properties() in (None, [])
    wf.run()
    wf.finalize()
    ckpt = b / "models" / "model.pt"
    assert ckpt.is_file()
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert any(k.startswith("feature_extractor.") for k in sd)  # plain network state_dict

    # evaluation on the held-out patient split
    wf = ConfigWorkflow(config_file=[str(b / "configs/train.json"), str(b / "configs/evaluate.json")],
                        workflow_type="eval", **ov)
    wf.initialize()
    wf.run()
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "eval" / "per_finding.csv")))
    test = mammo_datalist(str(data), "ddsm", "test", 0, [0.7, 0.15, 0.15])
    assert m["froc"]["num_findings"] == len(rows) == sum(len(t["gt_box"]) for t in test) > 0
    base = _random_baseline(test)
    assert m["froc"]["sensitivity@1"] >= base["sensitivity@1"] + 0.4, (m["froc"], base)
    assert m["froc"]["froc_score"] >= base["froc_score"] + 0.3
    assert set(m["coco"]) >= {"mAP_IoU_0.10_0.50_0.05_MaxDet_100", "mAR_IoU_0.10_0.50_0.05_MaxDet_100"}
    assert m["coco"]["AP_IoU_0.10_MaxDet_100"] > 0.3
    assert {"auc_detected_findings", "num_detected_findings"} <= set(m["malignancy"])
    for f in (1, 2, 4):
        assert f"sensitivity@{f}" in m["froc"]

    # inference on a plain folder of mammograms (+ the .ics beside the LJPEGs): JSON for every image
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for it in test:
        shutil.copy(it["image"], imgs)
        for ics in Path(it["image"]).parent.glob("*.ics"):
            shutil.copy(ics, imgs)
    out = tmp_path / "out"
    wf = ConfigWorkflow(config_file=str(b / "configs/inference.json"), workflow_type="infer",
                        **dict(TINY, bundle_root=str(b), dataset_dir=str(imgs), output_dir=str(out)))
    wf.initialize()
    wf.run()
    wf.finalize()
    hits = total = 0
    for it in test:
        j = json.loads((out / f"{it['name']}.json").read_text())
        assert isinstance(j, list)
        assert (out / f"{it['name']}_overlay.png").is_file()
        for r in j:
            assert set(r) >= {"box", "score", "label", "malignant_probability", "benign_probability"}
            assert 0 <= r["box"][0] < r["box"][2] <= 200 and 0 <= r["box"][1] < r["box"][3] <= 324
        # original-coordinate boxes: the best box of each image with a mass overlaps one of its masses
        if len(it["gt_box"]):
            total += 1
            if j:
                from monai.data.box_utils import box_iou

                iou = box_iou(torch.tensor([j[0]["box"]]), torch.as_tensor(it["gt_box"]))
                hits += int(iou.max() >= 0.2)
    assert total > 0 and hits >= 0.7 * total, (hits, total)


def test_cbis_layout_through_bundle_preprocessing(tmp_path):
    """CBIS-DDSM root: datalist from the CSVs, DICOM loaded by the bundle's preprocessing, boxes round trip."""
    from monai.bundle import ConfigParser

    from cadpipe.data.synthetic.ddsm import write_cbis_dataset

    s = write_cbis_dataset(tmp_path, n_patients=1, seed=4)
    items = mammo_datalist(s["root"], "cbis")
    assert sorted(i["name"] for i in items) == ["Mass-Training_P_00001_LEFT_CC", "Mass-Training_P_00001_RIGHT_MLO"]
    p = ConfigParser()
    p.read_config(BUNDLE / "configs/inference.json")
    p.update({"bundle_root": str(tmp_path), "image_long_side": 128})
    pre, post = p.get_parsed_content("preprocessing"), p.get_parsed_content("postprocessing")
    for it in items:
        np.testing.assert_array_equal(it["gt_box"], s["truth"][it["image"]]["boxes"])
        d = pre({"image": it["image"], "box": it["box"]})
        assert d["mammo_geometry"]["flipped"] == ("LEFT" in it["name"])
        n = len(it["box"])
        d.update(label=torch.zeros(n, dtype=torch.long), score=torch.linspace(0.9, 0.5, n))
        out = post(d)
        np.testing.assert_allclose(out["box"].numpy(), it["gt_box"], atol=0.01)


def _tiny_detector(score_thresh=0.0):
    from monai.bundle import ConfigParser

    p = ConfigParser()
    p.read_config(BUNDLE / "configs/train.json")
    p.update({**TINY, "device": "$torch.device('cpu')", "score_thresh": score_thresh})
    det = p.get_parsed_content("detector")
    p.get_parsed_content("detector_ops")
    return det


def test_sliding_window_on_image_smaller_than_patch_is_not_shifted():
    """Regression (batch-size-1 validation crash): an image narrower than ``infer_patch_size`` used to be padded by
    the sliding window symmetrically (48 px for 160 in 256), a half cell of the stride-32 level, so the stitched
    maps were 8x4 instead of 8x5. The detector now pads at the end: sliding-window detections equal a plain
    forward of the image padded at the end to the patch size (clipped to the image)."""
    torch.manual_seed(0)
    det = _tiny_detector()
    det.eval()
    img = torch.rand(1, 256, 150)
    with torch.no_grad():
        sw = det([img], use_inferer=True)[0]
        plain = det([torch.nn.functional.pad(img, (0, 106))], use_inferer=False)[0]
    plain = det._clip_to(plain, [256, 150])
    assert sw["box"].shape[0] > 0 and float(sw["box"][:, 3].max()) <= 150
    torch.testing.assert_close(sw["box"], plain["box"])
    torch.testing.assert_close(sw["label_scores"], plain["label_scores"])


@pytest.mark.parametrize("width", [150, 160, 200])
def test_train_step_then_sliding_window_eval_batch_of_one(width):
    """Regression: a one-image training step (plain forward) cached anchors under the padded batch shape; the
    one-image sliding-window validation of an image with that shape reused them for other head maps:
    ``split_with_sizes expects split_sizes to sum exactly to 2520 ... [1920, 480, 96]`` (width 150/160)."""
    torch.manual_seed(0)
    det = _tiny_detector()
    img = torch.rand(1, 256, width)
    det.train()
    det([img], [{"box": torch.tensor([[10.0, 10.0, 60.0, 60.0]]), "label": torch.tensor([1])}])
    det.eval()
    with torch.no_grad():
        out = det([img], use_inferer=True)[0]
        again = det([img], use_inferer=False)[0]  # plain forward right after: anchors regenerated for its maps
    assert out["box"].shape[0] == out["label_scores"].shape[0] > 0
    assert float(out["box"][:, 2].max()) <= 256 and float(out["box"][:, 3].max()) <= width
    assert again["box"].shape[0] > 0


@pytest.mark.slow
def test_train_json_batch_size_one(tmp_path):
    """The bundle's ``train.json`` runs training + sliding-window validation with ``batch_size`` 1 at the tiny test
    size (it failed in validation before the fix) and writes the best checkpoint."""
    from monai.bundle import ConfigWorkflow

    data = tmp_path / "data"
    write_ddsm_dataset(data, n_cases=6, seed=1, radius_range=(12, 20))
    b = _bundle_copy(tmp_path)
    ov = dict(TINY, bundle_root=str(b), dataset_dir=str(data), output_dir=str(tmp_path / "eval"), epochs=1,
              batch_size=1, split_fractions=[0.5, 0.5, 0.0])
    wf = ConfigWorkflow(config_file=str(b / "configs/train.json"), workflow_type="train", **ov)
    wf.initialize()
    wf.run()
    wf.finalize()
    assert (b / "models" / "model.pt").is_file()
    assert wf.parser.get_parsed_content("validate#evaluator").state.iteration > 0
