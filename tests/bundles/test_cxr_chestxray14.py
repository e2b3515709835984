"""ChestX-ray14 multi-label bundle: schema, net in/out, ids, and synthetic train -> evaluate (per-class AUC) ->
inference (15 probabilities + Grad-CAM), alone and with the lung crop."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14
from tests.bundles.helpers import bundle_workflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(ROOT, "bundles", "cxr_chestxray14_classification")
TINY = {"network_def#init_features": 16, "network_def#growth_rate": 8, "network_def#block_config": [2, 2, 2, 2]}
CLASSES = (0, 1, 2)  # pathologies drawn in the synthetic set (Atelectasis, Cardiomegaly, Effusion)


def test_metadata_classes():
    """The bundle's own classes and task in metadata.json (the schema and the common keys: test_conformance.py)."""
    meta = json.load(open(os.path.join(BUNDLE, "configs", "metadata.json")))
    from cadpipe.data.chestxray14 import NIH_LABELS

    assert meta["version"] in meta["changelog"] and meta["cadpipe"]["task"] == "multilabel"
    assert meta["cadpipe"]["class_names"] == list(NIH_LABELS)
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == list(NIH_LABELS)


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
                      config_file=os.path.join(BUNDLE, "configs", "inference.json"), n=1, any=64, device="cpu")


def test_config_ids():
    train = json.load(open(os.path.join(BUNDLE, "configs", "train.json")))
    for k in ("bundle_root", "dataset_dir", "dataset_layout", "output_dir", "device", "epochs", "batch_size",
              "image_size", "learning_rate", "num_workers", "pretrained_path", "lung_crop", "lung_bundle", "val_interval"):
        assert k in train, k
    assert train["learning_rate"] == 0.001 and train["batch_size"] == 16 and train["image_size"] == 224
    assert train["lr_factor"] == 0.1 and train["lr_patience"] == 8 and train["lung_crop"] is False
    infer = json.load(open(os.path.join(BUNDLE, "configs", "inference.json")))
    for k in ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "inferer",
              "preprocessing", "postprocessing", "writers", "cam_layers", "cam_threshold", "lung_crop", "lung_bundle"):
        assert k in infer, k


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cx14")
    bundle = str(tmp / "bundle")
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval", "outputs"))
    data = str(tmp / "data")
    truth = write_synthetic_chestxray14(data, 48, 2, size=64, classes=CLASSES, p_finding=0.75, test_fraction=0.25, seed=0)
    common = dict(bundle_root=bundle, dataset_dir=data, image_size=64, batch_size=8, num_workers=0, **TINY)
    # no augmentation: a short CPU run; the augmentation itself is exercised by the lung bundle tests
    wf = bundle_workflow(bundle, ["train.json"], "train", epochs=14, val_fraction=0.25, **{"train#augmentation": []}, output_dir=str(tmp / "tout"), **common)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return {"tmp": tmp, "bundle": bundle, "data": data, "truth": truth, "common": common}


@pytest.mark.slow
def test_evaluate_per_pathology_auc(trained):
    assert {"model.pt", "model_last.pt"} <= set(os.listdir(os.path.join(trained["bundle"], "models")))
    out = str(trained["tmp"] / "eval")
    wf = bundle_workflow(trained["bundle"], ["train.json", "evaluate.json"], "eval", output_dir=out, val_fraction=0.25,
                         **trained["common"])
    wf.initialize()
    wf.run()
    wf.finalize()
    m = json.load(open(os.path.join(out, "metrics.json")))
    test_names = open(os.path.join(trained["data"], "test_list.txt")).read().split()
    assert m["n"] == len(test_names) and m["split"] == "test"
    drawn = [m["auc"][c] for c in ("Atelectasis", "Cardiomegaly", "Effusion")]
    assert min(drawn) > 0.6 and np.mean(drawn) > 0.8, m["auc"]  # held-out, chance is 0.5
    assert m["auc"]["Hernia"] is None  # no positives: not scored, not faked
    assert m["mean_auc"] == pytest.approx(np.mean([v for v in m["auc"].values() if v is not None]))
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert len(rows) == len(test_names) and len([k for k in rows[0] if k.startswith("prob_")]) == 15
    assert {os.path.basename(r["path"]) for r in rows} == set(test_names)


@pytest.mark.slow
def test_inference_probabilities_and_heatmaps(trained):
    out = str(trained["tmp"] / "infer")
    img_dir = os.path.join(trained["data"], "images_001", "images")
    names = sorted(open(os.path.join(trained["data"], "test_list.txt")).read().split())[:6]
    sub = str(trained["tmp"] / "sub")
    os.makedirs(sub)
    for n in names:
        shutil.copy(os.path.join(img_dir, n), sub)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           os.path.join(trained["bundle"], "configs", "inference.json"), "--bundle_root", trained["bundle"],
           "--dataset_dir", sub, "--output_dir", out, "--image_size", "64", "--cam_threshold", "0.5",
           "--device", "$torch.device('cpu')"]
    cmd += [a for k, v in TINY.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert len(rows) == 6
    from PIL import Image

    for r in rows:
        probs = {k[5:]: float(v) for k, v in r.items() if k.startswith("prob_")}
        assert len(probs) == 15 and all(0 <= p <= 1 for p in probs.values())
        expect = [c for c, p in probs.items() if p >= 0.5 and c != "No Finding"]
        assert r["findings"].split("|") == expect or (not expect and r["findings"] == "")
        for png in filter(None, r["heatmaps"].split("|")):
            assert np.asarray(Image.open(png)).shape == (64, 64, 3)


@pytest.mark.slow
def test_two_stage_inference_with_lung_crop(trained):
    """The classifier with ``lung_crop: true`` runs a trained lung bundle first; the crop shrinks the image."""
    from monai.bundle import ConfigWorkflow

    from cadpipe.data.synthetic.lungs import write_synthetic_montgomery

    tmp = trained["tmp"]
    lung = str(tmp / "lung_bundle")
    shutil.copytree(os.path.join(ROOT, "bundles", "cxr_lung_segmentation"), lung,
                    ignore=shutil.ignore_patterns("*.pt", "eval", "outputs"))
    write_synthetic_montgomery(str(tmp / "lung_data"), 18, 64, seed=7)
    lung_ovr = {"image_size": 64, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
    cfg = os.path.join(lung, "configs")
    wf = ConfigWorkflow(config_file=os.path.join(cfg, "train.json"), meta_file=os.path.join(cfg, "metadata.json"),
                        workflow_type="train", bundle_root=lung, dataset_dir=str(tmp / "lung_data"), epochs=6,
                        learning_rate=1e-2, batch_size=4, num_workers=0, output_dir=str(tmp / "lung_out"), **lung_ovr)
    wf.initialize()
    wf.run()
    wf.finalize()
    out = str(tmp / "two_stage")
    img_dir = os.path.join(trained["data"], "images_001", "images")
    sub = str(tmp / "sub2")
    os.makedirs(sub)
    for n in sorted(os.listdir(img_dir))[:3]:
        shutil.copy(os.path.join(img_dir, n), sub)
    wf = bundle_workflow(trained["bundle"], ["inference.json"], "infer", bundle_root=trained["bundle"], dataset_dir=sub,
                         output_dir=out, image_size=64, lung_crop=True, lung_bundle=lung, lung_overrides=lung_ovr,
                         device="$torch.device('cpu')", **TINY)
    wf.initialize()
    pre = wf.parser.get_parsed_content("preprocessing")
    item = pre({"image": os.path.join(sub, sorted(os.listdir(sub))[0])})
    assert tuple(item["image"].shape) == (1, 64, 64)
    assert item["lung_found"] is True and len(item["lung_crop_box"]) == 4
    c0, r0, c1, r1 = item["lung_crop_box"]
    # cropped before the resize (that the box holds both fields is checked in test_cxr_lung_crop.py with a better
    # trained lung net; this briefly trained one may keep one field)
    assert (c1 - c0) * (r1 - r0) < 64 * 64
    wf.run()
    wf.finalize()
    rows = list(csv.DictReader(open(os.path.join(out, "predictions.csv"))))
    assert len(rows) == 3 and all(len([k for k in r if k.startswith("prob_")]) == 15 for r in rows)


@pytest.mark.slow
def test_train_nih_plus_rsna_layout(tmp_path):
    """``dataset_layout: nih+rsna`` end to end: the RSNA DICOMs (several box rows per patient) load and train with
    the NIH PNGs; RSNA patients are split by patient like NIH's."""
    from cadpipe.data.synthetic.chestxray14 import write_synthetic_rsna

    bundle = str(tmp_path / "bundle")
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval", "outputs"))
    write_synthetic_chestxray14(str(tmp_path / "nih"), 6, 1, size=48, classes=CLASSES, p_finding=0.75, seed=1)
    truth = write_synthetic_rsna(str(tmp_path / "rsna"), 6, size=48, p_pneumonia=0.5, seed=2)
    wf = bundle_workflow(bundle, ["train.json"], "train", bundle_root=bundle, dataset_dir=str(tmp_path / "nih"),
                         dataset_layout="nih+rsna", rsna_dir=str(tmp_path / "rsna"), image_size=32, batch_size=4,
                         num_workers=0, epochs=1, val_fraction=0.3, output_dir=str(tmp_path / "out"), **TINY)
    wf.initialize()
    splits = wf.parser.get_parsed_content("splits")
    dcm = [i for i in splits["train"] + splits["val"] if i["image"].endswith(".dcm")]
    assert sorted(os.path.basename(i["image"])[:-4] for i in dcm) == sorted(truth)
    assert not ({i["patient"] for i in splits["train"]} & {i["patient"] for i in splits["val"]})
    pneu = [i for i in dcm if i["label"][6] == 1]
    assert len(pneu) == sum(t["target"] for t in truth.values()) and all(sum(i["label"]) == 1 for i in dcm)
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert tuple(batch["image"].shape[1:]) == (1, 32, 32) and tuple(batch["label"].shape[1:]) == (15,)
    wf.run()
    wf.finalize()
    assert os.path.isfile(os.path.join(bundle, "models", "model.pt"))
