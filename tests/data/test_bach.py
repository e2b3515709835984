import pytest

from cadpipe.data.bach import BACH_CLASSES, bach_datalist, split_by_patient
from cadpipe.data.synthetic.histology import write_synthetic_bach
from cadpipe.errors import CadpipeInputError


def test_bach_datalist_and_split(tmp_path):
    gt = write_synthetic_bach(tmp_path, n_per_class=4, size=(64, 48))
    items = bach_datalist(tmp_path)
    assert len(items) == 16
    assert [it["label"] for it in items] == [g["label"] for g in gt]
    assert {it["class_name"] for it in items} == set(BACH_CLASSES)
    assert bach_datalist(tmp_path / "Photos") == items
    split = split_by_patient(items, (0.5, 0.25, 0.25), seed=0)
    paths = [{it["image"] for it in v} for v in split.values()]
    assert sum(len(p) for p in paths) == 16 and not (paths[0] & paths[1]) and not (paths[0] & paths[2])
    assert {it["label"] for it in split["test"]} == {0, 1, 2, 3}


def test_bach_missing_layout(tmp_path):
    with pytest.raises(CadpipeInputError) as e:
        bach_datalist(tmp_path)
    assert str(tmp_path) in str(e.value) and "BACH layout" in str(e.value)
    (tmp_path / "Photos" / "Normal").mkdir(parents=True)
    with pytest.raises(CadpipeInputError) as e:
        bach_datalist(tmp_path)
    assert "no .tif photos" in str(e.value)
