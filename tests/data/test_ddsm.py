import imagecodecs
import numpy as np
import pytest

from cadpipe.data.ddsm import (
    chain_to_points,
    ddsm_datalist,
    outline_box,
    outline_mask,
    parse_overlay,
    read_ics_views,
    split_by_patient,
)
from cadpipe.data.synthetic.ddsm import write_ddsm_case, write_ddsm_dataset
from cadpipe.errors import CadpipeInputError

OVERLAY = """TOTAL_ABNORMALITIES 2
ABNORMALITY 1
LESION_TYPE MASS SHAPE IRREGULAR MARGINS SPICULATED
ASSESSMENT 4
SUBTLETY 3
PATHOLOGY MALIGNANT
TOTAL_OUTLINES 2
BOUNDARY
10 5 2 2 4 4
6 6 0 0 #
CORE
11 6 4 #
ABNORMALITY 2
LESION_TYPE CALCIFICATION TYPE PLEOMORPHIC DISTRIBUTION CLUSTERED
LESION_TYPE MASS SHAPE OVAL MARGINS CIRCUMSCRIBED
ASSESSMENT 3
SUBTLETY 2
PATHOLOGY BENIGN_WITHOUT_CALLBACK
TOTAL_OUTLINES 1
BOUNDARY
3 30 3 3 3 #
"""


def test_chain_directions_column_then_row():
    # 0 up (row-1), 2 right (col+1), 4 down, 6 left; start is column 10, row 5
    pts = chain_to_points(10, 5, [2, 4, 6, 0, 1, 3, 5, 7])
    assert pts.tolist() == [[10, 5], [11, 5], [11, 6], [10, 6], [10, 5], [11, 4], [12, 5], [11, 6], [10, 5]]


def test_parse_overlay_fields_masks_and_boxes(tmp_path):
    f = tmp_path / "A_0001_1.LEFT_CC.OVERLAY"
    f.write_text(OVERLAY)
    abns = parse_overlay(f, size=(40, 20))
    assert [a.index for a in abns] == [1, 2]
    a, b = abns
    assert a.is_mass and a.pathology == "MALIGNANT" and a.assessment == 4 and a.subtlety == 3
    assert a.lesion_types[0] == {"LESION_TYPE": "MASS", "SHAPE": "IRREGULAR", "MARGINS": "SPICULATED"}
    assert [o.kind for o in a.outlines] == ["BOUNDARY", "CORE"]
    assert a.outlines[0].line == 9 and a.outlines[0].chain == [2, 2, 4, 4, 6, 6, 0, 0]
    assert b.is_mass and b.is_calcification and b.pathology == "BENIGN_WITHOUT_CALLBACK"
    assert b.lesion_types[0]["DISTRIBUTION"] == "CLUSTERED"
    pts = chain_to_points(a.boundary.start_col, a.boundary.start_row, a.boundary.chain)
    # a 3x3 square: columns 10..12, rows 5..7 -> xyxy (max exclusive)
    assert outline_box(pts).tolist() == [10, 5, 13, 8]
    m = outline_mask(pts, 40, 20)
    assert m.sum() == 9 and m[5:8, 10:13].all()
    pts2 = chain_to_points(3, 30, [3, 3, 3])
    assert outline_box(pts2).tolist() == [3, 30, 7, 34]


@pytest.mark.parametrize(
    "text, reason",
    [
        (OVERLAY.replace("3 30 3 3 3 #", "3 30 3 3 3"), "line 21: BOUNDARY outline not ended by '#'"),
        (OVERLAY.replace("TOTAL_ABNORMALITIES 2", "TOTAL_ABNORMALITIES 3"), "line 1: TOTAL_ABNORMALITIES says 3"),
        (OVERLAY.replace("TOTAL_OUTLINES 2", "TOTAL_OUTLINES 1"), "line 7: TOTAL_OUTLINES says 1 but abnormality 1"),
        (OVERLAY.replace("3 30 3 3 3 #", "3 30 6 6 6 6 #"), "line 21: chain code leaves the image"),
        (OVERLAY.replace("11 6 4 #", "11 6 4 9 #"), "line 12: invalid chain code direction"),
    ],
)
def test_broken_overlay_names_file_and_line(tmp_path, text, reason):
    f = tmp_path / "B_0002_1.RIGHT_MLO.OVERLAY"
    f.write_text(text)
    with pytest.raises(CadpipeInputError) as e:
        parse_overlay(f, size=(40, 20))
    assert str(f) in str(e.value) and reason in str(e.value)


def test_chain_leaving_bottom_edge(tmp_path):
    f = tmp_path / "x.OVERLAY"
    f.write_text(OVERLAY)
    with pytest.raises(CadpipeInputError, match=r"line 21: chain code leaves the image \(33 rows"):
        parse_overlay(f, size=(33, 20))  # row 33 is outside a 33-row image


def test_datalist_exact_boxes_and_pixels(tmp_path):
    truth = write_ddsm_case(tmp_path, 7, n_masses={"LEFT_CC": 2, "RIGHT_MLO": 1}, seed=3,
                            transposed_header_views=("LEFT_CC",))
    items = ddsm_datalist(tmp_path, with_masks=True)
    assert [i["view"] for i in items] == ["LEFT_CC", "LEFT_MLO", "RIGHT_CC", "RIGHT_MLO"]
    for it in items:
        t = truth["views"][it["view"]]
        assert it["patient_id"] == "A_0007_1" and it["laterality"] == it["view"][0]
        np.testing.assert_array_equal(it["box"], t["boxes"])
        np.testing.assert_array_equal(it["label"], t["labels"])
        np.testing.assert_array_equal(it["mask"], t["masks"])
        assert (it["rows"], it["cols"]) == t["pixels"].shape
        # decoded raster reshaped to the .ics size (the LEFT_CC header is transposed) equals what was written
        raw = imagecodecs.ljpeg_decode(open(it["image"], "rb").read())
        img = raw.reshape(it["rows"], it["cols"])
        np.testing.assert_array_equal(img, t["pixels"])
        for (c0, r0, c1, r1), m in zip(it["box"].astype(int), it["mask"]):
            # mask touches every box edge, and the mass is brighter than the surrounding breast
            assert m[r0, c0:c1].any() and m[r1 - 1, c0:c1].any() and m[r0:r1, c0].any() and m[r0:r1, c1 - 1].any()
            assert img[m].mean() > img[r0:r1, c0:c1][~m[r0:r1, c0:c1]].mean() + 200
    ljpeg = [i for i in items if i["view"] == "LEFT_CC"][0]
    assert ljpeg["findings"][0]["lesion_type"] == "MASS" and ljpeg["category"] in ("cancers", "benigns")


def test_ics_views_and_errors(tmp_path):
    truth = write_ddsm_case(tmp_path, 1)
    ics = list((tmp_path).rglob("*.ics"))[0]
    v = read_ics_views(ics)
    assert v["LEFT_CC"]["rows"] == truth["views"]["LEFT_CC"]["rows"] and v["LEFT_CC"]["overlay"]
    assert not v["RIGHT_CC"]["overlay"]
    (tmp_path / "other").mkdir()
    bad = tmp_path / "other" / "bad.ics"
    bad.write_text("ics_version 1.0\nLEFT_CC LINES x PIXELS_PER_LINE 3\nfilename A-0001-1\n")
    with pytest.raises(CadpipeInputError, match=r"bad.ics: malformed .ics line 2: LINES .x. is not a number"):
        read_ics_views(bad)
    # LJPEG named in the .ics but missing
    bad.unlink()
    (tmp_path / truth["views"]["RIGHT_CC"]["image"]).unlink()
    with pytest.raises(CadpipeInputError, match=r"A_0001_1.RIGHT_CC.LJPEG: LJPEG listed in the .ics is missing"):
        ddsm_datalist(tmp_path)
    with pytest.raises(CadpipeInputError, match="not a folder"):
        ddsm_datalist(tmp_path / "nope")


def test_patient_split_is_seeded_and_disjoint(tmp_path):
    write_ddsm_dataset(tmp_path, n_cases=6, seed=1)
    items = ddsm_datalist(tmp_path)
    parts = split_by_patient(items, (0.5, 0.25, 0.25), seed=4)
    again = split_by_patient(items, (0.5, 0.25, 0.25), seed=4)
    assert [[i["image"] for i in p] for p in parts] == [[i["image"] for i in p] for p in again]
    ids = [{i["patient_id"] for i in p} for p in parts]
    assert sum(len(p) for p in parts) == len(items) == 24
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert [len(s) for s in ids] == [3, 2, 1] or sum(len(s) for s in ids) == 6
