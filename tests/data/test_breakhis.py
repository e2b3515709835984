import os

import pytest

from cadpipe.data.breakhis import breakhis_datalist, parse_breakhis_name, split_by_patient
from cadpipe.data.synthetic.histology import write_synthetic_breakhis
from cadpipe.errors import CadpipeInputError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("breakhis")
    gt = write_synthetic_breakhis(root, n_patients=8, images_per_patient=2, size=(64, 48), magnifications=("40X", "400X"))
    return root, gt


def test_parse_name():
    info = parse_breakhis_name("x/SOB_B_A-14-22549AB-40-001.png")
    assert info == {"malignant": False, "subtype": "adenosis", "patient": "14-22549AB", "magnification": "40X", "seq": 1}
    assert parse_breakhis_name("SOB_M_DC-14-2523-400-015.png")["subtype"] == "ductal_carcinoma"
    with pytest.raises(CadpipeInputError) as e:
        parse_breakhis_name("/d/photo_01.png")
    assert "/d/photo_01.png" in str(e.value) and "BreaKHis file name" in str(e.value)


def test_datalist_binary_subtypes_and_magnification(tree):
    root, gt = tree
    items = breakhis_datalist(root)
    assert len(items) == len(gt) == 32
    assert {it["label"] for it in items} == {0, 1}
    assert all((it["label"] == 1) == (it["class_name"] == "malignant") for it in items)
    mag = breakhis_datalist(root, "400")
    assert len(mag) == 16 and {it["magnification"] for it in mag} == {"400X"}
    sub = breakhis_datalist(root, "40X", subtypes=True)
    assert {it["class_name"] for it in sub} <= {"adenosis", "fibroadenoma", "phyllodes_tumor", "tubular_adenoma",
                                                "ductal_carcinoma", "lobular_carcinoma", "mucinous_carcinoma",
                                                "papillary_carcinoma"}
    assert all((it["label"] >= 4) == (it["subtype"].endswith("carcinoma")) for it in sub)
    with pytest.raises(ValueError):
        breakhis_datalist(root, "63X")


def test_split_by_patient_is_disjoint_seeded_and_stratified(tree):
    root, _ = tree
    items = breakhis_datalist(root)
    a = split_by_patient(items, (0.5, 0.25, 0.25), seed=1)
    b = split_by_patient(items, (0.5, 0.25, 0.25), seed=1)
    assert a == b
    sets = {k: {it["patient"] for it in v} for k, v in a.items()}
    assert not (sets["training"] & sets["validation"]) and not (sets["training"] & sets["test"])
    assert not (sets["validation"] & sets["test"])
    assert sum(len(v) for v in a.values()) == len(items)
    for v in a.values():
        assert {it["label"] for it in v} == {0, 1}  # stratified: both classes on every side
    c = split_by_patient(items, (0.5, 0.25, 0.25), seed=2)
    assert any({it["patient"] for it in c[k]} != sets[k] for k in sets)


def test_folder_disagreeing_with_name_and_empty_tree(tmp_path):
    bad = tmp_path / "histology_slides" / "breast" / "benign" / "SOB" / "adenosis" / "p" / "40X"
    bad.mkdir(parents=True)
    f = bad / "SOB_M_DC-14-2523-40-001.png"
    f.write_bytes(b"")
    with pytest.raises(CadpipeInputError) as e:
        breakhis_datalist(tmp_path)
    assert str(f) in str(e.value) and "malignant" in str(e.value)
    with pytest.raises(CadpipeInputError) as e:
        breakhis_datalist(tmp_path / "nowhere")
    assert "nowhere" in str(e.value)
