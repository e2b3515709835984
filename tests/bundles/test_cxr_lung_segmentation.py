"""CXR lung segmentation bundle: schema, net in/out, config ids, and synthetic train -> evaluate -> inference."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cadpipe.data.synthetic.lungs import write_synthetic_montgomery, write_synthetic_shenzhen
from tests.bundles.helpers import bundle_workflow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(ROOT, "bundles", "cxr_lung_segmentation")
TINY = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


def test_metadata_classes():
    """The bundle's own classes and task in metadata.json (the schema and the common keys: test_conformance.py)."""
    meta = json.load(open(os.path.join(BUNDLE, "configs", "metadata.json")))
    assert meta["version"] in meta["changelog"]
    assert meta["cadpipe"]["task"] == "segmentation" and meta["cadpipe"]["spatial_dims"] == 2
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lung"}


def test_verify_net_in_out():
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=os.path.join(BUNDLE, "configs", "metadata.json"),
                      config_file=os.path.join(BUNDLE, "configs", "inference.json"), n=2, device="cpu")


def test_config_ids():
    infer = json.load(open(os.path.join(BUNDLE, "configs", "inference.json")))
    for k in ("bundle_root", "device", "dataset_dir", "output_dir", "network_def", "network", "inferer",
              "preprocessing", "postprocessing", "writers", "datalist", "dataset", "dataloader", "evaluator",
              "handlers", "initialize", "run", "threshold", "opening_radius", "keep_components", "image_size"):
        assert k in infer, k
    # the image size training recorded with the weights (models/preprocessing.json), 224 without a record
    assert infer["threshold"] == 0.4 and infer["keep_components"] == 2
    assert infer["image_size"] == ("$cadpipe.pipelines.inference.trained_preprocessing.trained(@ckpt_path, "
                                   "'image_size', 224)")
    train = json.load(open(os.path.join(BUNDLE, "configs", "train.json")))
    for k in ("bundle_root", "dataset_dir", "dataset_layout", "output_dir", "device", "epochs", "batch_size",
              "image_size", "learning_rate", "num_workers", "val_interval", "use_clahe"):
        assert k in train, k
    assert train["use_clahe"] is True


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic Montgomery + Shenzhen data and a bundle copy trained briefly (tiny UNet, 64x64)."""
    tmp = tmp_path_factory.mktemp("lung")
    bundle = str(tmp / "bundle")
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval", "outputs"))
    data = str(tmp / "data")
    truth = write_synthetic_montgomery(os.path.join(data, "montgomery"), 10, 96, seed=0)
    truth.update(write_synthetic_shenzhen(os.path.join(data, "shenzhen"), 10, 96, seed=1))
    common = dict(bundle_root=bundle, dataset_dir=data, dataset_layout="both", image_size=64, batch_size=4,
                  num_workers=0, **TINY)
    wf = bundle_workflow(bundle, ["train.json"], "train", epochs=6, learning_rate=1e-2, output_dir=str(tmp / "tout"), **common)
    wf.initialize()
    assert wf.check_properties() == []
    wf.run()
    wf.finalize()
    return {"tmp": tmp, "bundle": bundle, "data": data, "truth": truth, "common": common}


@pytest.mark.slow
def test_train_and_evaluate_learn_the_lung_fields(trained):
    assert {"model.pt", "model_last.pt"} <= set(os.listdir(os.path.join(trained["bundle"], "models")))
    out = str(trained["tmp"] / "eval")
    wf = bundle_workflow(trained["bundle"], ["train.json", "evaluate.json"], "eval", output_dir=out, **trained["common"])
    wf.initialize()
    wf.run()
    wf.finalize()
    m = json.load(open(os.path.join(out, "metrics.json")))
    from cadpipe.data.lung_masks import lung_splits

    test = lung_splits(trained["data"], "both")["test"]
    assert m["n"] == len(test) >= 2
    # trivial baseline: "everything is lung" -> Dice = 2|L| / (|L| + N)
    fr = np.mean([trained["truth"][i["image"]].mean() for i in test])
    baseline = 2 * fr / (1 + fr)
    assert m["test_mean_dice"] > max(0.75, baseline + 0.3), (m, baseline)
    assert m["test_pixel_accuracy"] > max(fr, 1 - fr) + 0.05 and 0 < m["test_mean_iou"] <= m["test_mean_dice"]


@pytest.mark.slow
def test_inference_writes_mask_and_box(trained):
    out = str(trained["tmp"] / "infer")
    img_dir = os.path.join(trained["data"], "shenzhen", "CXR_png")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           os.path.join(trained["bundle"], "configs", "inference.json"), "--bundle_root", trained["bundle"],
           "--dataset_dir", img_dir, "--output_dir", out, "--image_size", "64", "--device", "$torch.device('cpu')"]
    cmd += [a for k, v in TINY.items() for a in (f"--{k}", json.dumps(v) if isinstance(v, list) else str(v))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    dices, inside = [], []
    for name in sorted(os.listdir(img_dir)):
        stem = name[:-4]
        truth = trained["truth"][os.path.join(img_dir, name)]
        mask = np.asarray(Image.open(os.path.join(out, f"{stem}_lung.png"))) > 0
        assert mask.shape == truth.shape == (96, 96)  # back in the input's size
        import nibabel as nib

        nii = np.asarray(nib.load(os.path.join(out, f"{stem}_lung.nii.gz")).dataobj)
        assert np.array_equal(nii.T > 0, mask)  # NIfTI in MONAI (X, Y) axes
        rec = json.load(open(os.path.join(out, f"{stem}_lung_box.json")))
        assert rec["lung_found"] and len(rec["box_xyxy"]) == 4
        rows, cols = np.nonzero(mask)
        assert rec["box_xyxy"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        from scipy import ndimage

        assert ndimage.label(mask)[1] <= 2  # at most the two largest components kept
        dices.append(2 * (mask & truth).sum() / (mask.sum() + truth.sum()))
        tr, tc = np.nonzero(truth)
        c0, r0, c1, r1 = rec["box_xyxy"]
        inside.append(c0 <= tc.min() + 3 and r0 <= tr.min() + 3 and c1 >= tc.max() - 2 and r1 >= tr.max() - 2)
    assert np.mean(dices) > 0.75, dices
    assert np.mean(inside) >= 0.8, inside


@pytest.mark.slow
def test_inference_postprocessing_is_pure_and_properties(trained, tmp_path):
    wf = bundle_workflow(trained["bundle"], ["inference.json"], "infer", bundle_root=trained["bundle"],
                         dataset_dir=os.path.join(trained["data"], "montgomery", "CXR_png"), output_dir=str(tmp_path / "o"),
                         image_size=64, **TINY)
    wf.initialize()
    assert wf.check_properties() == []
    pre = wf.parser.get_parsed_content("preprocessing")
    post = wf.parser.get_parsed_content("postprocessing")
    path = sorted(trained["truth"])[0]
    item = pre({"image": path})
    assert tuple(item["image"].shape) == (1, 64, 64)
    net = wf.parser.get_parsed_content("network")
    net.load_state_dict(torch.load(os.path.join(trained["bundle"], "models", "model.pt"), weights_only=True))
    net.eval()
    with torch.no_grad():
        item["pred"] = net(item["image"][None])[0]
    res = post(item)
    assert tuple(res["pred"].shape) == (1, 96, 96) and set(torch.unique(res["pred"]).tolist()) <= {0.0, 1.0}
    assert res["lung_found"] and len(res["lung_box"]) == 4
    assert not (tmp_path / "o").exists()
