"""Kermany-layout datalists and bad-image handling for the CXR pneumonia bundle."""

import logging
import os

import pytest

from cadpipe.data.kermany import image_datalist, kermany_datalist, kermany_splits, validate_datalist
from cadpipe.data.synthetic.cxr import synthetic_cxr, write_bad_images, write_synthetic_kermany
from cadpipe.errors import CadpipeInputError


@pytest.fixture(scope="module")
def kermany(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kermany"))
    truth = write_synthetic_kermany(
        root, {"train": {"NORMAL": 10, "PNEUMONIA": 30}, "val": 2, "test": 4}, size=48, splits=("train", "val", "test"), n_dicom=1
    )
    return root, truth


def test_synthetic_signal_and_layout(kermany):
    root, truth = kermany
    assert len(truth) == 10 + 30 + 4 + 8
    assert all(os.path.basename(t["image"]).startswith("synthetic_") for t in truth)
    assert all(bool(t["opacities"]) == bool(t["label"]) for t in truth)
    assert any(t["image"].endswith(".dcm") for t in truth)
    normal, _ = synthetic_cxr(64, pneumonia=False, rng=1)
    sick, ops = synthetic_cxr(64, pneumonia=True, rng=1)
    r, c, _ = ops[0]
    assert sick[int(r), int(c)] > normal[int(r), int(c)] + 0.2  # bright opacity where the truth says


def test_stratified_seeded_carve_keeps_test_untouched(kermany):
    root, truth = kermany
    s = kermany_splits(root, val_fraction=0.2, seed=3)
    assert sum(d["label"] == 0 for d in s["val"]) == 2 and sum(d["label"] == 1 for d in s["val"]) == 6
    assert len(s["train"]) == 32
    assert not {d["image"] for d in s["train"]} & {d["image"] for d in s["val"]}
    assert all("/test/" in d["image"] for d in s["test"]) and len(s["test"]) == 8
    assert not any("/val/" in d["image"] for d in s["val"])  # public val not used by default
    assert s == kermany_splits(root, val_fraction=0.2, seed=3)  # seeded
    assert s["val"] != kermany_splits(root, val_fraction=0.2, seed=4)["val"]
    s0 = kermany_splits(root, val_fraction=0)
    assert len(s0["train"]) == 40 and all("/val/" in d["image"] for d in s0["val"]) and len(s0["val"]) == 4


def test_missing_dataset_dir_names_path(tmp_path):
    with pytest.raises(CadpipeInputError, match=r"nowhere: dataset folder not found"):
        kermany_splits(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CadpipeInputError, match=r"empty: no images in train"):
        kermany_datalist(str(tmp_path / "empty"))


def test_bad_images_reported_and_skipped(tmp_path, caplog):
    write_synthetic_kermany(str(tmp_path), {"train": 3}, size=40, splits=("train",))
    zero, corrupt = write_bad_images(str(tmp_path / "train" / "NORMAL"))
    report = []
    with caplog.at_level(logging.WARNING):
        good = validate_datalist(kermany_splits(str(tmp_path), val_fraction=0)["train"], report=report)
    assert len(good) == 6
    assert {p for p, _ in report} == {zero, corrupt}
    reasons = dict(report)
    assert reasons[zero] == "zero-byte file"
    assert reasons[corrupt]  # the loader's reason
    text = caplog.text
    assert f"{zero}: zero-byte file" in text and corrupt in text
    # inference datalist too
    assert len(image_datalist(str(tmp_path / "train"))) == 6
    assert image_datalist(good[0]["image"]) == [{"image": good[0]["image"]}]
    with pytest.raises(CadpipeInputError, match="missing.png: input file or folder not found"):
        image_datalist(str(tmp_path / "missing.png"))
