"""LungCrop / LungCropd: a trained lung segmentation bundle crops synthetic radiographs to both lung fields."""

import os
import shutil

import numpy as np
import pytest
import torch

from cadpipe.data.synthetic.lungs import write_synthetic_montgomery
from cadpipe.errors import CadpipeInputError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(ROOT, "bundles", "cxr_lung_segmentation")
TINY = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
OVR = {"image_size": 64, **TINY}


@pytest.fixture(scope="module")
def lung_bundle(tmp_path_factory):
    from monai.bundle import ConfigWorkflow

    tmp = tmp_path_factory.mktemp("crop")
    bundle = str(tmp / "bundle")
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("*.pt", "eval", "outputs"))
    data = str(tmp / "data")
    truth = write_synthetic_montgomery(data, 18, 96, seed=5)
    cfg = os.path.join(bundle, "configs")
    wf = ConfigWorkflow(config_file=os.path.join(cfg, "train.json"), meta_file=os.path.join(cfg, "metadata.json"),
                        workflow_type="train", bundle_root=bundle, dataset_dir=data, epochs=6, learning_rate=1e-2,
                        batch_size=4, num_workers=0, output_dir=str(tmp / "out"), **OVR)
    wf.initialize()
    wf.run()
    wf.finalize()
    from cadpipe.data.lung_masks import lung_splits

    test = [i["image"] for i in lung_splits(data, "montgomery")["test"] + lung_splits(data, "montgomery")["val"]]
    return {"bundle": bundle, "truth": truth, "held_out": test}


@pytest.mark.slow
def test_crop_box_contains_both_fields(lung_bundle):
    from cadpipe.transforms import LoadStudyImaged, LungCropd, load_lung_bundle

    crop = LungCropd(keys="image", bundle_path=lung_bundle["bundle"], margin=0.05, overrides=OVR)
    load = LoadStudyImaged(keys="image", mode="gray")
    ok = []
    for path in lung_bundle["held_out"]:
        d = crop(load({"image": path}))
        truth = lung_bundle["truth"][path]  # (rows, cols)
        assert d["lung_found"] is True and d["image"].meta["lung_found"] is True
        c0, r0, c1, r1 = d["lung_crop_box"]
        assert tuple(d["image"].shape) == (1, c1 - c0, r1 - r0) and d["image"].shape[1] < 96
        rows, cols = np.nonzero(truth)
        ok.append(c0 <= cols.min() and r0 <= rows.min() and c1 > cols.max() and r1 > rows.max())
        # both fields: the kept region spans the left and the right halves
        assert c0 < 40 and c1 > 56
    assert np.mean(ok) >= 0.75, ok
    # cached once per bundle path (and overrides)
    assert load_lung_bundle(lung_bundle["bundle"], "cpu", OVR) is load_lung_bundle(lung_bundle["bundle"], "cpu", OVR)


@pytest.mark.slow
def test_crop_of_resized_in_memory_image_scales_the_box(lung_bundle):
    from monai.data import MetaTensor
    from monai.transforms import Resize

    from cadpipe.transforms import LoadStudyImage, LungCrop

    path = lung_bundle["held_out"][0]
    img = LoadStudyImage(mode="gray")(path)
    big = Resize((192, 192))(img)  # file geometry via filename_or_obj, box scaled x2
    small = LungCrop(lung_bundle["bundle"], margin=0.0, overrides=OVR)
    a = small(img).meta["lung_box"]
    b = small(big).meta["lung_box"]
    assert b == pytest.approx([2 * v for v in a])
    bare = MetaTensor(img.as_tensor().clone())  # no source file: runs on the array
    c = small(bare).meta["lung_box"]
    assert np.abs(np.array(c) - np.array(a)).max() <= 4


@pytest.mark.slow
def test_no_lung_passes_whole_image(lung_bundle):
    from cadpipe.transforms import LoadStudyImaged, LungCropd

    crop = LungCropd(keys="image", bundle_path=lung_bundle["bundle"], overrides={**OVR, "threshold": 1.01})
    d = crop(LoadStudyImaged(keys="image", mode="gray")({"image": lung_bundle["held_out"][0]}))
    assert d["lung_found"] is False and np.isnan(d["lung_box"]).all() and len(d["lung_box"]) == 4
    assert d["image"].meta["lung_found"] is False
    assert tuple(d["image"].shape) == (1, 96, 96) and d["lung_crop_box"] == [0, 0, 96, 96]
    assert d["result_columns"] == {"lung_found": False, "lung_crop_fallback": True, "lung_box": "",
                                   "lung_crop_box": "[0, 0, 96, 96]"}
    assert "whole image" in d["result_notes"][0]


@pytest.mark.slow
def test_found_and_fallback_items_collate_into_one_batch(lung_bundle):
    """Training with lung_crop batches items with and without lungs: their crop keys must collate."""
    from monai.data import list_data_collate
    from monai.transforms import Resized

    from cadpipe.transforms import LoadStudyImaged, LungCropd

    load, size = LoadStudyImaged(keys="image", mode="gray"), Resized(keys="image", spatial_size=(32, 32))
    found = LungCropd(keys="image", bundle_path=lung_bundle["bundle"], overrides=OVR)
    none = LungCropd(keys="image", bundle_path=lung_bundle["bundle"], overrides={**OVR, "threshold": 1.01})
    a = size(found(load({"image": lung_bundle["held_out"][0]})))
    b = size(none(load({"image": lung_bundle["held_out"][0]})))
    assert a["lung_found"] and not b["lung_found"]
    batch = list_data_collate([a, b])
    assert tuple(batch["image"].shape) == (2, 1, 32, 32)


def test_missing_bundle_or_weights(tmp_path):
    from cadpipe.transforms import LungCrop

    img = torch.zeros(1, 32, 32)
    with pytest.raises(CadpipeInputError, match="configs/inference.json missing"):
        LungCrop(str(tmp_path))(img)
    b = tmp_path / "b"
    shutil.copytree(BUNDLE, b, ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(CadpipeInputError) as e:
        LungCrop(str(b))(img)
    assert "model.pt" in str(e.value) and "weights missing" in str(e.value)
