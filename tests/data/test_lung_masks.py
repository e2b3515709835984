"""Montgomery / Shenzhen lung-mask datalists, merged masks, patient-level splits and bad-input errors."""

import os

import numpy as np
import pytest
import torch

from cadpipe.data.lung_masks import lung_items, lung_splits, patient_id
from cadpipe.data.synthetic.lungs import write_synthetic_montgomery, write_synthetic_shenzhen
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms import LoadLungMaskd, LoadStudyImaged, LungBoxd, LungThreshold, MorphOpening


@pytest.fixture()
def both(tmp_path):
    truth = write_synthetic_montgomery(str(tmp_path / "mont"), 6, 48, seed=0)
    truth.update(write_synthetic_shenzhen(str(tmp_path / "shen"), 6, 48, seed=1))
    return tmp_path, truth


def test_layouts_and_merged_masks(both):
    root, truth = both
    mont = lung_items(str(root / "mont"), "montgomery")
    shen = lung_items(str(root / "shen"), "shenzhen")
    assert len(mont) == len(shen) == 6 and len(lung_items(str(root), "both")) == 12
    assert all(len(i["label"]) == 2 for i in mont) and all(i["label"][0].endswith("_mask.png") for i in shen)
    for item in (mont[0], shen[3]):
        d = LoadLungMaskd()(LoadStudyImaged(keys="image", mode="gray")(dict(item)))
        assert d["label"].shape == d["image"].shape == (1, 48, 48)
        assert np.array_equal(d["label"][0].numpy().T > 0, truth[item["image"]])  # left | right, (X, Y) axes
    assert patient_id("MCUCXR_0001_0.png") == "MCUCXR_0001" and patient_id("CHNCXR_0042_1.png") == "CHNCXR_0042"


def test_patient_level_seeded_split(both, tmp_path):
    root, _ = both
    # a second image of one patient must land on the same side
    import shutil

    src = root / "shen" / "CXR_png" / "synthetic_CHNCXR_0002_0.png"
    shutil.copy(src, root / "shen" / "CXR_png" / "synthetic_CHNCXR_0002_1.png")
    shutil.copy(root / "shen" / "mask" / "synthetic_CHNCXR_0002_0_mask.png",
                root / "shen" / "mask" / "synthetic_CHNCXR_0002_1_mask.png")
    s1 = lung_splits(str(root), "both", 0.25, 0.25, seed=3)
    s2 = lung_splits(str(root), "both", 0.25, 0.25, seed=3)
    assert s1 == s2 and all(s1[k] for k in s1)
    assert sum(len(v) for v in s1.values()) == 13
    sides = {k: {(i["source"], i["patient"]) for i in v} for k, v in s1.items()}
    assert not (sides["train"] & sides["val"]) and not (sides["train"] & sides["test"]) and not (sides["val"] & sides["test"])
    assert lung_splits(str(root), "both", 0.25, 0.25, seed=4) != s1


def test_missing_masks_and_bad_layouts(both, caplog):
    root, _ = both
    os.remove(root / "mont" / "ManualMask" / "rightMask" / "synthetic_MCUCXR_0001_1.png")
    with pytest.raises(CadpipeInputError) as e:
        lung_items(str(root / "mont"), "montgomery")
    assert "synthetic_MCUCXR_0001_1.png" in str(e.value) and "lung mask missing" in str(e.value)
    os.remove(root / "shen" / "mask" / "synthetic_CHNCXR_0003_1_mask.png")
    with caplog.at_level("WARNING"):
        items = lung_items(str(root / "shen"), "shenzhen")
    assert len(items) == 5 and "synthetic_CHNCXR_0003_1.png: lung mask missing" in caplog.text.replace("skipping ", "")
    with pytest.raises(CadpipeInputError, match="unknown dataset_layout"):
        lung_items(str(root), "nih")
    with pytest.raises(CadpipeInputError, match="dataset folder not found"):
        lung_items(str(root / "nope"), "shenzhen")
    with pytest.raises(CadpipeInputError, match="mask folder"):
        lung_items(str(root / "mont"), "shenzhen")


def test_mask_size_mismatch_names_the_file(both):
    root, _ = both
    from PIL import Image

    p = root / "shen" / "mask" / "synthetic_CHNCXR_0000_0_mask.png"
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(p)
    item = lung_items(str(root / "shen"), "shenzhen")[0]
    with pytest.raises(CadpipeInputError) as e:
        LoadLungMaskd()(LoadStudyImaged(keys="image", mode="gray")(dict(item)))
    assert str(p) in str(e.value) and "differs from image size" in str(e.value)


def test_postprocessing_transforms():
    prob = torch.zeros(2, 40, 30)
    prob[1, 5:15, 4:20] = 0.45  # above 0.4, below 0.5
    prob[1, 25:35, 4:20] = 0.9
    prob[1, 20, 25] = 0.9  # a speck removed by opening
    prob[0] = 1 - prob[1]
    m = LungThreshold(0.4)(prob)
    assert m.shape == (1, 40, 30) and m.sum() == 2 * 160 + 1
    assert LungThreshold(0.5)(prob).sum() == 161
    o = MorphOpening(1)(m)
    assert o[0, 20, 25] == 0 and o.sum() == 320 - 8  # speck gone; a disk of radius 1 (a cross) rounds the 8 corners
    assert MorphOpening(0)(m) is m
    assert isinstance(MorphOpening(1)(m.numpy()), np.ndarray)
    d = LungBoxd(keys="pred")({"pred": o})
    assert d["lung_box"] == [5.0, 4.0, 35.0, 20.0] and d["lung_found"]
    assert d["result_columns"] == {"lung_box": "[5.0, 4.0, 35.0, 20.0]", "lung_found": True}  # for cadpipe score
    d = LungBoxd(keys="pred")({"pred": torch.zeros(1, 8, 8)})
    assert d["lung_box"] == [] and d["lung_found"] is False
    assert d["result_columns"] == {"lung_box": "", "lung_found": False}
    assert "result_columns" not in LungBoxd(keys="pred", result_keys=False)({"pred": o})
