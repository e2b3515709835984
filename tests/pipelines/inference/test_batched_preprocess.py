"""Batched preprocessing agrees with each bundle's per-item MONAI chain (CPU; the same code runs on CUDA):
preprocessed images, and probabilities within 1e-3, for every classification bundle scoring batches; bundles or
overrides without a batched plan say why."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.images import write_image, write_rgb_cxr
from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.inference.batched_preprocess import plan_batched
from cadpipe.pipelines.inference.bundle_runner import BundleRunner

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLES = os.path.join(HERE, "..", "..", "..", "bundles")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """One file per input kind the batched path must handle like the per-item one."""
    d = tmp_path_factory.mktemp("studies")
    paths = []
    for i, (photometric, kw) in enumerate([
        ("MONOCHROME2", {}), ("MONOCHROME1", {}), ("MONOCHROME2", {"voi_lut": True}),
        ("MONOCHROME2", {"voi_function": "SIGMOID"}), ("MONOCHROME1", {"voi_function": "LINEAR_EXACT"}),
        ("MONOCHROME2", {"windows": []}), ("MONOCHROME2", {"transfer_syntax": "rle"}),
    ]):
        p = str(d / f"synthetic_{i}.dcm")
        write_cxr_dicom(p, rows=96 + 8 * i, cols=80, photometric=photometric, seed=i, **kw)
        paths.append(p)
    paths.append(write_image(d / "synthetic_8bit.png", rows=70, cols=90, seed=1)["path"])
    paths.append(write_image(d / "synthetic_16bit.png", rows=64, cols=64, bits=16, seed=2)["path"])
    paths.append(write_image(d / "synthetic.jpg", rows=60, cols=50, seed=3)["path"])
    paths.append(write_rgb_cxr(d / "synthetic_rgb.png", seed=4)["path"])
    return paths


def _runner(tmp_path, name, overrides=None):
    root = copy_bundle_untrained(os.path.join(BUNDLES, name), str(tmp_path / name), overrides)
    return BundleRunner(root, device="cpu", overrides=overrides)


@pytest.mark.parametrize("name,overrides", [
    ("cxr_pneumonia_classification", None),
    ("cxr_pneumonia_classification", {"use_clahe": False, "image_size": 64}),
    ("cxr_chestxray14_classification", None),
])
def test_batched_equals_per_item(tmp_path, studies, name, overrides):
    runner = _runner(tmp_path, name, overrides)
    plan, why = runner.batched_preprocessing()
    assert plan is not None, why
    assert (plan.clahe is not None) == (not overrides)
    per_item = [runner.preprocess({"image": p}) for p in studies]
    ref = torch.stack([torch.as_tensor(d["image"]).as_tensor() for d in per_item])
    raws = [plan.decode(p) for p in studies]
    assert [r.pixels.dtype for r in raws[:7]] == [np.uint16] * 7  # DICOM sent as stored
    x = plan(raws, "cpu")
    assert x.shape == ref.shape and x.dtype == torch.float32
    err = (x - ref).abs().amax(dim=(1, 2, 3))
    assert float(err.max()) < 1e-3, dict(zip(map(os.path.basename, studies), err.tolist()))
    ref_probs = torch.stack([o["pred"].as_tensor() if hasattr(o["pred"], "as_tensor") else o["pred"]
                             for o in runner.predict(per_item)])
    probs = runner.batched_postprocessing()(runner.forward_batch(x))
    assert float((probs - ref_probs).abs().max()) <= 1e-3


def test_bundles_without_a_batched_plan_say_why(tmp_path):
    r = _runner(tmp_path, "cxr_chestxray14_classification", {"lung_crop": True})
    plan, why = r.batched_preprocessing()
    assert plan is None and "no batched equivalent" in why
    for name in ("brain_mri_tumor_segmentation", "cxr_lung_segmentation", "mammo_mass_detection"):
        root = os.path.join(BUNDLES, name)
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(os.path.join(root, "configs", "inference.json"))
        parser["bundle_root"] = root
        plan, why = plan_batched(parser.get_parsed_content("preprocessing"))
        if name != "cxr_lung_segmentation":  # its chain is the CXR one (test_batched_segmentation.py)
            assert plan is None and why, name


def test_decode_errors_name_the_file(tmp_path):
    from cadpipe.errors import CadpipeInputError
    from cadpipe.transforms.readers.io_raw import read_raw_2d

    bad = tmp_path / "synthetic_bad.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(CadpipeInputError, match="synthetic_bad.dcm"):
        read_raw_2d(str(bad))
    nan = tmp_path / "synthetic_nan.tif"
    import tifffile

    tifffile.imwrite(str(nan), np.full((8, 8), np.nan, dtype=np.float32))
    with pytest.raises(CadpipeInputError, match="NaN"):
        read_raw_2d(str(nan))


def test_precision_and_layout(tmp_path):
    from cadpipe.errors import CadpipeInputError

    r = _runner(tmp_path, "cxr_pneumonia_classification", {"image_size": 64, "use_clahe": False})
    x = torch.randn(2, 1, 64, 64)
    ref = r.forward_batch(x)
    r.configure_inference("bf16", True)
    assert r.precision == "bf16" and r.channels_last
    assert next(r.network.parameters()).ndim != 4 or any(
        p.is_contiguous(memory_format=torch.channels_last) for p in r.network.parameters() if p.ndim == 4)
    out = r.forward_batch(x)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float((out - ref).abs().max()) < 0.1 * (float(ref.abs().max()) + 1)  # bf16: close, not equal
    with pytest.raises(CadpipeInputError, match="fp16"):
        r.configure_inference("fp16")
    with pytest.raises(CadpipeInputError, match="choose one of"):
        r.configure_inference("int8")
