"""breast_histology_classification bundle: metadata/net checks, preprocessing edge cases, and (slow) a short
training on synthetic BreaKHis images evaluated on held-out synthetic images, inference and CAM location."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from cadpipe.data.synthetic.histology import write_synthetic_bach, write_synthetic_breakhis
from cadpipe.errors import CadpipeInputError

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "..", "bundles", "breast_histology_classification")
TINY = {"network_def#block_config": [2, 2, 2, 2], "network_def#init_features": 16, "network_def#growth_rate": 8}


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.pt", "eval"))
    return root


def test_verify_metadata(tmp_path, shared_dir):
    schema = tmp_path / "meta_schema_20240725.json"
    shutil.copy(os.path.join(shared_dir, "monai", "meta_schema_20240725.json"), schema)
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file",
                        os.path.join(BUNDLE, "configs", "metadata.json"), "--filepath", str(schema)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "verified with no error" in r.stdout + r.stderr
    meta = json.load(open(os.path.join(BUNDLE, "configs", "metadata.json")))
    assert meta["cadpipe"]["task"] == "classification"
    assert meta["cadpipe"]["class_names"] == list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values())


def test_verify_net_in_out(bundle):
    r = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "--net_id", "network_def",
                        "--meta_file", str(bundle / "configs" / "metadata.json"), "--config_file",
                        str(bundle / "configs" / "inference.json"), "--n", "2", "--network_def#block_config",
                        "[2,2,2,2]", "--network_def#init_features", "16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def _parser(bundle, files=("inference.json",), **over):
    p = ConfigParser()
    p.read_config([str(bundle / "configs" / f) for f in files])
    p["bundle_root"] = str(bundle)
    for k, v in {**TINY, **over}.items():
        p[k] = v
    return p


def test_contract_ids_and_preprocessing_edge_cases(bundle, tmp_path):
    p = _parser(bundle)
    for key in ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "inferer",
                "preprocessing", "postprocessing", "writers", "cam_layers", "dataset_layout", "magnification",
                "batch_size", "patch_size", "stride", "num_workers"):
        assert key in p, key
    assert p["cam_layers"] == "class_layers.relu"
    pre = p.get_parsed_content("preprocessing")
    # greyscale photo: replicated to 3 channels
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 50), 120, np.uint8)).save(grey)
    out = pre({"image": str(grey)})
    assert out["image"].shape == (3, 50, 40) and float(out["image"].max()) <= 1.0
    # truncated TIFF: CadpipeInputError naming the file
    tif = tmp_path / "cut.tif"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(tif)
    tif.write_bytes(tif.read_bytes()[:3000])
    with pytest.raises(Exception) as e:
        pre({"image": str(tif)})
    chain, err = e.value, None
    while chain is not None:
        if isinstance(chain, CadpipeInputError):
            err = chain
        chain = chain.__cause__
    assert err is not None and str(tif) in str(err)
    # training config ids
    t = _parser(bundle, ("train.json",))
    for key in ("val_interval", "train#trainer", "train#trainer#max_epochs", "train#dataset#data", "train#handlers",
                "validate#evaluator", "validate#handlers", "validate#dataset#data", "epochs", "learning_rate",
                "pretrained_path"):
        assert key in t, key


@pytest.mark.slow
def test_train_evaluate_infer_and_cam(bundle, tmp_path):
    torch.set_num_threads(1)
    train_dir, held_dir = tmp_path / "train", tmp_path / "held"
    write_synthetic_breakhis(train_dir, n_patients=8, images_per_patient=4, magnifications=("40X",), seed=0)
    held = write_synthetic_breakhis(held_dir, n_patients=4, images_per_patient=3, magnifications=("40X",), seed=1)
    common = dict(bundle_root=str(bundle), dataset_layout="breakhis", patch_size=64, num_workers=0, **TINY)
    w = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                       dataset_dir=str(train_dir), epochs=8, learning_rate=0.001, batch_size=2, patches_per_image=16,
                       split_fractions=[0.75, 0.25, 0.0], output_dir=str(tmp_path / "tb"), **common)
    w.initialize()
    assert not w.check_properties()
    w.run()
    w.finalize()
    assert (bundle / "models" / "model.pt").is_file()

    e = ConfigWorkflow(config_file=[str(bundle / "configs" / f) for f in ("train.json", "evaluate.json")],
                       workflow_type="eval", dataset_dir=str(held_dir), eval_split=None,
                       output_dir=str(tmp_path / "eval"), **common)
    e.initialize()
    e.run()
    e.finalize()
    m = json.load(open(tmp_path / "eval" / "metrics.json"))
    assert m["n_images"] == len(held) == 12
    assert set(m["image"]) == {"average", "vote", "exist", "exist3"} and set(m["patient"]) == set(m["image"])
    assert m["image"]["average"]["accuracy"] > 0.75  # chance is 0.5 on held-out synthetic images
    assert m["image"]["average"]["auc_macro"] > 0.75
    assert m["patch"]["n"] > 12 and np.array(m["patch"]["confusion_matrix"]).sum() == m["patch"]["n"]
    with open(tmp_path / "eval" / "per_image.csv") as f:
        assert len(list(csv.DictReader(f))) == 12

    out = tmp_path / "inf"
    i = ConfigWorkflow(config_file=str(bundle / "configs" / "inference.json"), workflow_type="infer",
                       dataset_dir=str(held_dir), output_dir=str(out), **common)
    i.initialize()
    i.run()
    i.finalize()
    with open(out / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for r in rows:
        for pre in ("prob_", "patch_prob_", "whole_prob_"):
            assert abs(float(r[pre + "benign"]) + float(r[pre + "malignant"]) - 1) < 1e-4
        assert r["predicted_class"] in ("benign", "malignant")
    truth = {g["image"]: g for g in held}
    correct = sum(truth[r["path"]]["class_name"] == r["predicted_class"] for r in rows)
    assert correct >= 9
    # CAM of the true class over the lesion: the malignant class is carried by the lesion only
    hits, n = 0, 0
    for g in held:
        if g["label"] != 1:
            continue
        stem = os.path.splitext(os.path.basename(g["image"]))[0]
        assert (out / f"{stem}_cam_malignant.png").is_file() and (out / f"{stem}_cam_benign.png").is_file()
        cam = np.load(out / f"{stem}_cam.npy").astype(np.float32)
        assert cam.shape == (2, 256, 192)  # full resolution (X, Y)
        x0, y0, x1, y1 = g["box"]
        inside = np.zeros(cam.shape[1:], bool)
        inside[x0:x1, y0:y1] = True
        assert cam[1][inside].mean() > cam[1][~inside].mean()
        x, y = np.unravel_index(cam[1].argmax(), cam[1].shape)
        hits += bool(inside[x, y])
        n += 1
    assert n == 6 and hits >= 5


@pytest.mark.slow
def test_bach_layout_short_run(bundle, tmp_path):
    write_synthetic_bach(tmp_path / "bach", n_per_class=3, size=(128, 96))
    w = ConfigWorkflow(config_file=str(bundle / "configs" / "train.json"), workflow_type="train",
                       bundle_root=str(bundle), dataset_dir=str(tmp_path / "bach"), patch_size=64, num_workers=0,
                       epochs=1, batch_size=2, patches_per_image=2, output_dir=str(tmp_path / "tb"), **TINY)
    w.initialize()
    w.run()
    w.finalize()
    assert (bundle / "models" / "model.pt").is_file()
    sd = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert sd["class_layers.out.weight"].shape[0] == 4
