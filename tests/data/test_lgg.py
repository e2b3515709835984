"""LGG kaggle_3m layout adapter: numeric slice order, patient-level seeded splits, stacking, bad-input errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from cadpipe.data import lgg
from cadpipe.data.synthetic.brain import write_lgg_synthetic
from cadpipe.errors import CadpipeInputError


@pytest.fixture()
def dataset(tmp_path):
    truth = write_lgg_synthetic(tmp_path / "kaggle_3m", n_patients=5, n_slices=11, size=32, seed=0)
    return tmp_path / "kaggle_3m", truth


def test_numeric_slice_order_and_pairs(dataset):
    root, truth = dataset
    patients = lgg.find_patients(root)
    assert sorted(patients) == sorted(truth)
    items = next(iter(patients.values()))
    assert [d["slice"] for d in items] == list(range(1, 12))  # _2 before _10 (lexicographic would put 10, 11 after 1)
    for d in items:
        assert d["label"] == d["image"][: -len(".tif")] + "_mask.tif"


def test_stack_patient_matches_written_volume(dataset):
    root, truth = dataset
    name, t = sorted(truth.items())[0]
    image, mask, files = lgg.stack_patient(root / name)
    np.testing.assert_array_equal(mask, t["mask"])
    np.testing.assert_array_equal(image, t["image"])
    assert os.path.basename(files[9]) == f"{name}_10.tif"


def test_patient_level_split_is_seeded_and_disjoint(dataset):
    root, _ = dataset
    a = lgg.split_patients(lgg.find_patients(root), val_fraction=0.2, test_fraction=0.2, seed=3)
    b = lgg.split_patients(lgg.find_patients(root), val_fraction=0.2, test_fraction=0.2, seed=3)
    assert a == b
    sets = [set(a[k]) for k in ("train", "val", "test")]
    assert sum(len(s) for s in sets) == 5 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert len(a["val"]) == 1 and len(a["test"]) == 1
    train = lgg.lgg_datalist(root, "train", 0.2, 0.2, 3)
    val = lgg.lgg_datalist(root, "val", 0.2, 0.2, 3)
    assert {d["patient"] for d in train} == set(a["train"]) and {d["patient"] for d in val} == set(a["val"])
    assert len(train) == 3 * 11


def test_slice_without_mask_names_the_slice(dataset):
    root, truth = dataset
    name = sorted(truth)[1]
    os.remove(root / name / f"{name}_4_mask.tif")
    with pytest.raises(CadpipeInputError) as e:
        lgg.find_patients(root)
    assert e.value.path == str(root / name / f"{name}_4.tif")
    assert f"{name}_4.tif" in str(e.value) and "no mask" in str(e.value)


def test_mask_of_another_size_names_the_mask(dataset):
    root, truth = dataset
    name = sorted(truth)[2]
    bad = root / name / f"{name}_7_mask.tif"
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(bad)
    with pytest.raises(CadpipeInputError) as e:
        lgg.find_patients(root)
    assert e.value.path == str(bad)
    assert "16x16" in str(e.value) and "32x32" in str(e.value) and "differs" in str(e.value)


def test_empty_patient_folder_names_the_folder(dataset):
    root, _ = dataset
    (root / "TCGA_EMPTY_synthetic").mkdir()
    with pytest.raises(CadpipeInputError) as e:
        lgg.find_patients(root)
    assert e.value.path == str(root / "TCGA_EMPTY_synthetic")
    assert "empty patient folder" in str(e.value)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(CadpipeInputError, match="does not exist"):
        lgg.find_patients(tmp_path / "nope")
