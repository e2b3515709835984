"""Brain MRI tumour segmentation bundle: metadata, network shapes, and end to end on synthetic LGG and MSD data."""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from cadpipe.data.synthetic.brain import SYNTHETIC_AFFINE, write_lgg_synthetic, write_msd_synthetic
from cadpipe.pipelines.tasks import segmentation as seg

BUNDLE = os.path.join(os.path.dirname(__file__), "..", "..", "bundles", "brain_mri_tumor_segmentation")
TINY = {  # small UNet and windows so a few epochs train on 2 shared cores
    "roi_size": [32, 32],
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "num_workers": 0,
}


@pytest.fixture()
def bundle(tmp_path):
    root = tmp_path / "bundle"
    shutil.copytree(BUNDLE, root, ignore=shutil.ignore_patterns("*.pt", "*.ts", "eval", "outputs"))
    return root


def _run(bundle, config, **override):
    from monai.bundle import run

    files = [str(bundle / "configs" / c) for c in (config if isinstance(config, list) else [config])]
    run(config_file=files if len(files) > 1 else files[0], bundle_root=str(bundle),
        logging_file=str(bundle / "configs" / "logging.conf"), **{**TINY, **override})


def test_metadata_classes(bundle):
    """The bundle's own classes and task in metadata.json (the schema and the common keys: test_conformance.py)."""
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    cadpipe = dict(meta["cadpipe"])
    dicom = cadpipe.pop("dicom")  # the DICOM results' codes (docs/pacs.md, "Conformance")
    assert cadpipe == {"task": "segmentation", "class_names": ["background", "tumor"], "spatial_dims": 2}
    assert set(dicom["classes"]) == {"tumor"}
    assert list(meta["network_data_format"]["outputs"]["pred"]["channel_def"].values()) == ["background", "tumor"]


def test_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(bundle / "configs" / "metadata.json"),
                      config_file=str(bundle / "configs" / "inference.json"), n=4, any=1)


def test_workflow_properties(bundle, tmp_path):
    from monai.bundle import ConfigWorkflow

    write_lgg_synthetic(tmp_path / "lgg", n_patients=3, n_slices=2, size=32)
    for cfg, kind in (("inference.json", "infer"), ("train.json", "train")):
        wf = ConfigWorkflow(config_file=str(bundle / "configs" / cfg), workflow_type=kind,
                            logging_file=str(bundle / "configs" / "logging.conf"),
                            dataset_dir=str(tmp_path / "lgg"), bundle_root=str(bundle), **TINY)
        wf.initialize()
        assert not wf.check_properties(), cfg


def test_inferer_slices_and_volumes():
    net = torch.nn.Conv2d(3, 2, 1)  # pointwise: window borders do not change the result
    inf = seg.SegInferer(roi_size=[16, 16], spatial_dims=2, sw_batch_size=2, mode="constant")
    assert inf(torch.rand(1, 3, 40, 24), net).shape == (1, 2, 40, 24)
    vol = torch.rand(1, 3, 20, 24, 5)
    out = inf(vol, net)
    assert out.shape == (1, 2, 20, 24, 5)
    # slice by slice equals running the network on each axial slice
    torch.testing.assert_close(out[..., 3], net(vol[..., 3]), atol=1e-5, rtol=1e-5)
    net3 = torch.nn.Conv3d(3, 2, 3, padding=1)
    assert seg.SegInferer([8, 8, 4], spatial_dims=3)(vol, net3).shape == (1, 2, 20, 24, 5)


@pytest.mark.parametrize("name", ["dicece", "dice", "bce"])
def test_losses_selectable(name):
    loss = seg.make_loss(name)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad.abs().sum() > 0


def _baseline_dice(truth_masks):
    """Empty-mask baseline: Dice of an all-zero prediction on each tumour case (0 for every case with tumour)."""
    return float(np.mean([seg.volume_metrics(np.zeros_like(m), m, (1, 1, 1))["dice"] for m in truth_masks]))


@pytest.mark.slow
def test_lgg_end_to_end(bundle, tmp_path):
    data = tmp_path / "lgg"
    truth = write_lgg_synthetic(data, n_patients=6, n_slices=12, size=64, seed=1)
    common = dict(dataset_dir=str(data), dataset_layout="lgg", val_fraction=0.2, test_fraction=0.2, seed=0)
    _run(bundle, "train.json", epochs=8, batch_size=16, num_samples=2, learning_rate=0.01, **common)
    assert (bundle / "models" / "model.pt").is_file()

    out = tmp_path / "eval"
    _run(bundle, ["train.json", "evaluate.json"], output_dir=str(out), **common)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = (out / "per_case_metrics.csv").read_text().splitlines()
    test_patients = seg.train_datalist(str(data), "lgg", "test", 0.2, 0.2, 0)
    held_out = sorted({d["patient"] for d in test_patients})
    assert metrics["n_cases"] == len(held_out) == len(rows) - 1
    assert all(p not in {d["patient"] for d in seg.train_datalist(str(data), "lgg", "train", 0.2, 0.2, 0)} for p in held_out)
    baseline = _baseline_dice([truth[p]["mask"] for p in held_out])
    assert metrics["mean_dice"] > baseline + 0.5, metrics
    assert metrics["mean_dice_tumor_slices"] > 0.5, metrics
    assert np.isfinite(metrics["mean_hd95_mm"]) and metrics["mean_true_ml"] > 0

    # inference on one patient folder: a mask per slice with the slice's size, a montage per slice
    pdir = tmp_path / "infer_in"
    shutil.copytree(truth[held_out[0]]["folder"], pdir / held_out[0])
    res = tmp_path / "infer_out"
    _run(bundle, "inference.json", dataset_dir=str(pdir), output_dir=str(res))
    n = len(truth[held_out[0]]["mask"][0, 0])
    masks = sorted(res.glob("*_seg.nii.gz"))
    assert len(masks) == n and len(list(res.glob("*_montage.png"))) == n
    pmask = truth[held_out[0]]["mask"]
    k = int(pmask.sum(axis=(0, 1)).argmax())  # the slice with the largest tumour (file number k + 1)
    m = nib.load(res / f"{held_out[0]}_{k + 1}_seg.nii.gz").get_fdata()
    assert m.shape == (64, 64)
    truth_slice = pmask[..., k].T  # numpy [row, col] -> MONAI (X=col, Y=row)
    assert seg.volume_metrics(m > 0, truth_slice, (1, 1))["dice"] > 0.5


@pytest.mark.slow
def test_nifti_end_to_end_keeps_geometry(bundle, tmp_path):
    data = tmp_path / "msd"
    truth = write_msd_synthetic(data, n_train=6, n_test=2, shape=(48, 48, 12), seed=2)
    common = dict(dataset_dir=str(data), dataset_layout="nifti", in_channels=2, val_fraction=0.34, seed=0)
    _run(bundle, "train.json", epochs=16, batch_size=16, num_samples=16, learning_rate=0.01, **common)

    out = tmp_path / "eval"
    _run(bundle, ["train.json", "evaluate.json"], output_dir=str(out), **common)
    metrics = json.loads((out / "metrics.json").read_text())
    held_out = [d["case"] for d in seg.train_datalist(str(data), "nifti", "val", 0.34, 0.0, 0)]
    assert metrics["n_cases"] == len(held_out) == 2
    baseline = _baseline_dice([truth[c]["mask"] for c in held_out])
    assert metrics["mean_dice"] > baseline + 0.3, metrics  # volume Dice after 16 tiny epochs (~0.5-0.6 seen)

    res = tmp_path / "infer_out"
    _run(bundle, "inference.json", dataset_dir=str(data), output_dir=str(res), in_channels=2, save_prob=True)
    for case in ("BRATS_synthetic_006", "BRATS_synthetic_007"):  # the imagesTs volumes
        src = nib.load(truth[case]["image"])
        mask = nib.load(res / f"{case}_seg.nii.gz")
        assert mask.shape == src.shape[:3]
        np.testing.assert_allclose(mask.affine, src.affine, atol=1e-5)
        np.testing.assert_allclose(mask.affine, SYNTHETIC_AFFINE, atol=1e-5)
        assert seg.volume_metrics(mask.get_fdata() > 0, truth[case]["mask"], (1.5, 1.5, 2))["dice"] > 0.3
        assert nib.load(res / f"{case}_prob.nii.gz").shape == src.shape[:3]
        assert (res / f"{case}_montage.png").is_file()


@pytest.mark.slow
def test_spatial_dims_3_from_config(bundle, tmp_path):
    data = tmp_path / "msd"
    truth = write_msd_synthetic(data, n_train=3, n_test=1, shape=(32, 32, 16), modalities=("FLAIR",), seed=3)
    over = dict(dataset_dir=str(data), dataset_layout="nifti", in_channels=1, spatial_dims=3, roi_size=[16, 16, 8],
                channels=[4, 8], strides=[2], num_res_units=0)
    _run(bundle, "train.json", epochs=1, batch_size=2, num_samples=2, **over)
    res = tmp_path / "out"
    _run(bundle, "inference.json", output_dir=str(res), **over)
    mask = nib.load(res / "BRATS_synthetic_003_seg.nii.gz")
    assert mask.shape == (32, 32, 16)
    np.testing.assert_allclose(mask.affine, SYNTHETIC_AFFINE, atol=1e-5)


def test_volume_metrics_known_values():
    truth = np.zeros((20, 20, 4), bool)
    truth[5:15, 5:15, 1:3] = True  # 200 voxels
    pred = np.zeros_like(truth)
    pred[5:15, 5:15, 1] = True  # 100 voxels, all inside
    m = seg.volume_metrics(pred, truth, (0.5, 0.5, 2.0))
    assert m["dice"] == pytest.approx(2 * 100 / 300)
    assert m["dice_tumor_slices"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["true_ml"] == pytest.approx(200 * 0.5 / 1000) and m["pred_ml"] == pytest.approx(100 * 0.5 / 1000)
    shifted = np.roll(truth, 4, axis=0)  # 4 voxels of 0.5 mm = 2 mm
    assert seg.volume_metrics(shifted, truth, (0.5, 0.5, 2.0))["hd95_mm"] == pytest.approx(2.0, abs=0.01)
    empty = seg.volume_metrics(np.zeros_like(truth), np.zeros_like(truth), (1, 1, 1))
    assert empty["dice"] == 1.0 and np.isnan(empty["hd95_mm"])


def test_metrics_writer_stacks_lgg_slices_per_patient(tmp_path):
    from types import SimpleNamespace

    from monai.data import MetaTensor

    writer = seg.SegmentationMetricsWriter(str(tmp_path), slice_thickness_mm=2.0)
    out, batch = [], []
    for s in (10, 2, 1):  # arrives out of order; stacked by slice number
        lab = torch.zeros(1, 8, 8)
        lab[0, 2:6, 2:6] = float(s == 2)
        pred = torch.cat([1 - lab, lab])  # one-hot, perfect on every slice
        out.append({"pred": pred, "label": MetaTensor(lab), "image": MetaTensor(torch.zeros(3, 8, 8))})
        batch.append({"patient": "P1", "slice": s})
    engine = SimpleNamespace(state=SimpleNamespace(output=out, batch=batch))
    writer._collect(engine)
    writer._write(engine)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_cases"] == 1 and metrics["mean_dice"] == 1.0 and metrics["mean_dice_tumor_slices"] == 1.0
    assert metrics["mean_true_ml"] == pytest.approx(16 * 2.0 / 1000)
    rows = (tmp_path / "per_case_metrics.csv").read_text().splitlines()
    assert rows[1].startswith("P1,3,1.0")


def test_montage_draws_contour():
    img = np.zeros((32, 24, 3))
    pred = np.zeros((32, 24, 3), np.uint8)
    pred[4:10, 6:12, 1] = 1
    png = seg.montage(img, pred)
    assert png.shape == (24, 32, 3)  # only the tumour slice, rows = Y
    red = (png[..., 0] == 255) & (png[..., 1] == 0)
    rows, cols = np.nonzero(red)
    assert rows.min() == 6 and rows.max() == 11 and cols.min() == 4 and cols.max() == 9
