"""MSD NIfTI layout adapter, label mapping and channel handling."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cadpipe.data import msd
from cadpipe.data.synthetic.brain import write_msd_synthetic
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.tasks.segmentation import MapLabeld, MatchChannelsd


@pytest.fixture()
def dataset(tmp_path):
    truth = write_msd_synthetic(tmp_path / "Task01", n_train=3, n_test=1, shape=(16, 16, 6), seed=0)
    return tmp_path / "Task01", truth


def test_datalist_from_dataset_json_and_from_folders(dataset):
    root, truth = dataset
    a = msd.msd_datalist(root)
    os.remove(root / "dataset.json")
    b = msd.msd_datalist(root)
    assert a == b
    assert [d["case"] for d in a] == ["BRATS_synthetic_000", "BRATS_synthetic_001", "BRATS_synthetic_002"]
    assert all(d["label"].endswith(os.path.join("labelsTr", d["case"] + ".nii.gz")) for d in a)
    assert [d["case"] for d in msd.msd_inference_list(root)] == ["BRATS_synthetic_003"]


def test_image_without_label_names_the_image(dataset):
    root, _ = dataset
    os.remove(root / "dataset.json")
    os.remove(root / "labelsTr" / "BRATS_synthetic_001.nii.gz")
    with pytest.raises(CadpipeInputError) as e:
        msd.msd_datalist(root)
    assert e.value.path == str(root / "imagesTr" / "BRATS_synthetic_001.nii.gz") and "no label" in str(e.value)


def test_dataset_json_listing_a_missing_file(dataset):
    root, _ = dataset
    os.remove(root / "imagesTr" / "BRATS_synthetic_002.nii.gz")
    with pytest.raises(CadpipeInputError) as e:
        msd.msd_datalist(root)
    assert "BRATS_synthetic_002.nii.gz" in str(e.value) and "does not exist" in str(e.value)


def test_broken_dataset_json(dataset):
    root, _ = dataset
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(CadpipeInputError, match="dataset.json: cannot parse"):
        msd.msd_datalist(root)


def test_split_is_seeded_and_disjoint(dataset):
    root, _ = dataset
    items = msd.msd_datalist(root)
    a, b = msd.split_cases(items, 0.34, seed=1), msd.split_cases(items, 0.34, seed=1)
    assert a == b and len(a["val"]) == 1 and len(a["train"]) == 2
    assert not {d["case"] for d in a["val"]} & {d["case"] for d in a["train"]}


def test_multimodal_channels_and_default_label_mapping(dataset):
    from monai.transforms import LoadImaged

    root, truth = dataset
    d = LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True)(msd.msd_datalist(root)[0])
    assert d["image"].shape == (2, 16, 16, 6)  # FLAIR, T1w as channels
    assert set(np.unique(d["label"].numpy())) <= {0, 1, 2, 3}
    out = MapLabeld("label")(d)
    np.testing.assert_array_equal(out["label"][0].numpy(), truth["BRATS_synthetic_000"]["mask"])
    only_enhancing = MapLabeld("label", mapping={3: 1})(d)["label"]
    assert only_enhancing.sum() == (d["label"] == 3).sum() and only_enhancing.max() == 1


def test_match_channels():
    img = torch.rand(1, 8, 8)
    assert MatchChannelsd("image", 3)({"image": img})["image"].shape == (3, 8, 8)
    from monai.data import MetaTensor

    bad = MetaTensor(torch.rand(2, 8, 8), meta={"filename_or_obj": "/data/two_channel.nii.gz"})
    with pytest.raises(CadpipeInputError) as e:
        MatchChannelsd("image", 3)({"image": bad})
    assert str(e.value).startswith("/data/two_channel.nii.gz: ") and "2 channels" in str(e.value)
