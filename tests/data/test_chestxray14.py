"""NIH ChestX-ray14 adapter: labels, official split lists honoured, patient-wise validation, bad rows reported."""

import csv
import os

import numpy as np
import pytest

from cadpipe.data.chestxray14 import NIH_LABELS, chestxray14_splits, read_entries
from cadpipe.data.synthetic.chestxray14 import write_synthetic_chestxray14
from cadpipe.errors import CadpipeInputError


@pytest.mark.parametrize("nested", [True, False])
def test_labels_and_layouts(tmp_path, nested):
    truth = write_synthetic_chestxray14(str(tmp_path), 6, 2, size=32, nested=nested, seed=1)
    items = read_entries(str(tmp_path))
    assert len(items) == 12 and len(NIH_LABELS) == 15
    for it in items:
        vec = np.array(it["label"])
        assert vec.shape == (15,) and [NIH_LABELS[i] for i in np.nonzero(vec)[0]] == sorted(
            truth[it["name"]], key=NIH_LABELS.index)
        assert os.path.isfile(it["image"])
    assert any(t == ["No Finding"] for t in truth.values()) and any(t != ["No Finding"] for t in truth.values())


def test_official_lists_honoured_and_val_by_patient(tmp_path):
    write_synthetic_chestxray14(str(tmp_path), 12, 3, size=32, seed=2)
    test_names = set(open(tmp_path / "test_list.txt").read().split())
    s = chestxray14_splits(str(tmp_path), val_fraction=0.25, seed=0)
    assert {i["name"] for i in s["test"]} == test_names
    assert not ({i["name"] for i in s["train"] + s["val"]} & test_names)
    pats = {k: {i["patient"] for i in v} for k, v in s.items()}
    assert pats["train"] and pats["val"] and pats["test"]
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    assert s == chestxray14_splits(str(tmp_path), val_fraction=0.25, seed=0)


def _rewrite(csv_path, edit):
    rows = list(csv.reader(open(csv_path)))
    edit(rows)
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return rows


def test_bad_rows_reported_with_row_and_file(tmp_path, caplog):
    write_synthetic_chestxray14(str(tmp_path), 4, 2, size=32, seed=3)
    csv_path = tmp_path / "Data_Entry_2017.csv"

    def edit(rows):
        rows[2][1] = "Atelectasis|Pneumonitis"  # unknown label, CSV row 3
        rows[5][0] = "missing_file.png"  # CSV row 6

    rows = _rewrite(csv_path, edit)
    with pytest.raises(CadpipeInputError) as e:
        read_entries(str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(str(csv_path)) and "2 bad row(s)" in msg
    assert f"row 3 ({rows[2][0]}): unknown label(s) ['Pneumonitis']" in msg
    assert "row 6 (missing_file.png): image file not found" in msg
    with caplog.at_level("WARNING"):
        items = read_entries(str(tmp_path), strict=False)
    assert len(items) == 6 and "row 3" in caplog.text and "missing_file.png" in caplog.text


def test_missing_files_and_overlapping_lists(tmp_path):
    with pytest.raises(CadpipeInputError, match="ChestX-ray14 label file not found"):
        read_entries(str(tmp_path))
    write_synthetic_chestxray14(str(tmp_path), 4, 1, size=32, seed=4)
    first_test = open(tmp_path / "test_list.txt").read().split()[0]
    with open(tmp_path / "train_val_list.txt", "a") as f:
        f.write(first_test + "\n")
    with pytest.raises(CadpipeInputError) as e:
        chestxray14_splits(str(tmp_path))
    assert "test_list.txt" in str(e.value) and first_test in str(e.value)
    os.remove(tmp_path / "test_list.txt")
    with pytest.raises(CadpipeInputError, match="official split list not found"):
        chestxray14_splits(str(tmp_path))


def test_rsna_merge_and_bad_rows(tmp_path):
    from cadpipe.data.chestxray14 import rsna_items
    from cadpipe.data.synthetic.chestxray14 import write_synthetic_rsna

    write_synthetic_chestxray14(str(tmp_path / "nih"), 6, 1, size=32, seed=5)
    rsna = tmp_path / "rsna"
    truth = write_synthetic_rsna(str(rsna), 6, size=32, p_pneumonia=0.5, seed=3)
    rows = list(csv.DictReader(open(rsna / "stage_2_train_labels.csv")))
    assert len(rows) == sum(max(1, len(t["boxes"])) for t in truth.values())
    assert any(len(t["boxes"]) > 1 for t in truth.values())  # several box rows for one patient
    assert {t["target"] for t in truth.values()} == {0, 1}
    items = rsna_items(str(rsna))
    assert len(items) == len(truth)  # one item per patient, however many box rows
    for it in items:
        pid = it["name"][: -len(".dcm")]
        assert NIH_LABELS[int(np.argmax(it["label"]))] == ("Pneumonia" if truth[pid]["target"] else "No Finding")
        assert sum(it["label"]) == 1 and it["patient"] == f"rsna:{pid}" and it["image"] == truth[pid]["path"]
    s = chestxray14_splits(str(tmp_path / "nih"), 0.3, layout="nih+rsna", rsna_dir=str(rsna))
    names = [i["name"] for i in s["train"] + s["val"]]
    assert {f"{pid}.dcm" for pid in truth} <= set(names) and len(names) == len(set(names))
    assert not any(i["name"].endswith(".dcm") for i in s["test"])
    pats = {k: {i["patient"] for i in v} for k, v in s.items()}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    assert any(p.startswith("rsna:") for p in pats["val"]) or any(p.startswith("rsna:") for p in pats["train"])
    bad = open(rsna / "stage_2_train_labels.csv").read() + "synthetic-cc,,,,,0\n" + f"{next(iter(truth))},,,,,2\n"
    (rsna / "stage_2_train_labels.csv").write_text(bad)
    n = len(rows) + 2
    with pytest.raises(CadpipeInputError) as e:
        rsna_items(str(rsna))
    assert str(e.value).startswith(str(rsna / "stage_2_train_labels.csv"))
    assert f"row {n} (synthetic-cc.dcm): image file not found" in str(e.value)
    assert f"row {n + 1} ({next(iter(truth))}): Target '2'" in str(e.value)
    with pytest.raises(CadpipeInputError, match="needs rsna_dir"):
        chestxray14_splits(str(tmp_path / "nih"), layout="nih+rsna")


def test_rsna_dicoms_are_real_and_show_the_boxes(tmp_path):
    """The synthetic RSNA files are DICOM radiographs our loader reads; the opacity lies inside the CSV boxes."""
    from cadpipe.data.synthetic.chestxray14 import write_synthetic_rsna
    from cadpipe.transforms import LoadStudyImage

    truth = write_synthetic_rsna(str(tmp_path), 6, size=48, p_pneumonia=1.0, seed=4)
    load = LoadStudyImage(mode="gray")
    for pid, t in truth.items():
        assert open(t["path"], "rb").read()[128:132] == b"DICM"
        img = np.asarray(load(t["path"])[0])  # (X = col, Y = row)
        assert img.shape == (48, 48) and load(t["path"]).meta["PatientID"] == pid
        for x, y, w, h in t["boxes"]:
            assert img[x : x + w, y : y + h].mean() > img.mean() + 10


def test_train_val_split_keeps_patients_together(tmp_path):
    """Validation is carved by patient: all images of a patient (NIH follow-ups) land on one side."""
    write_synthetic_chestxray14(str(tmp_path), 10, 3, size=32, seed=6)
    s = chestxray14_splits(str(tmp_path), val_fraction=0.3, seed=1)
    by_patient = {}
    for split in ("train", "val"):
        for it in s[split]:
            by_patient.setdefault(it["patient"], set()).add(split)
    assert all(len(v) == 1 for v in by_patient.values()) and len(by_patient) == 10 - 2  # 2 test patients
