"""Study discovery: DICOM by UID anywhere, NIfTI, DDSM cases, plain images; non-images ignored."""

from __future__ import annotations

import os

import pytest

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.scoring.discovery import discover
from tests.pipelines.scoring.score_helpers import mixed_2d_folder, write_dicom_series, write_nifti


def test_dicom_grouping_2d_vs_3d(tmp_path):
    from pydicom.uid import generate_uid

    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    a = write_dicom_series(str(tmp_path / "in" / "a"), study, s1, n=4)  # alone in its folder
    b = write_dicom_series(str(tmp_path / "in" / "deep" / "b"), study, s2, n=3, names=["1", "2", "3"])
    write_nifti(str(tmp_path / "in" / "deep" / "b" / "vol.nii.gz"))  # shares the folder with series b
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"\0" * 300)
    (tmp_path / "in" / "notes.txt").write_text("x")
    units3 = discover(str(tmp_path / "in"), spatial_dims=3, series_dir=str(tmp_path / "series"))
    dicom = [u for u in units3 if u.kind == "dicom"]
    assert len(dicom) == 2 and {u.series_id for u in dicom} == {s1, s2}
    by = {u.series_id: u for u in dicom}
    assert by[s1].image == str(tmp_path / "in" / "a") and sorted(by[s1].paths) == sorted(a)
    assert by[s2].image.startswith(str(tmp_path / "series"))  # symlinked, because vol.nii.gz sits beside it
    assert sorted(os.path.realpath(os.path.join(by[s2].image, f)) for f in os.listdir(by[s2].image)) == sorted(b)
    assert all(u.study_id == study for u in dicom)
    assert [u.kind for u in units3].count("nifti") == 1
    units2 = discover(str(tmp_path / "in"), spatial_dims=2)
    assert sum(u.kind == "dicom" for u in units2) == 7  # one unit per file


def test_mixed_folder_and_ddsm_case(tmp_path):
    exp = mixed_2d_folder(str(tmp_path / "in"))
    case = tmp_path / "in" / "A_0001_1"
    case.mkdir()
    (case / "A_0001_1.ics").write_text("ics_version 1.0\n")
    for view in ["LEFT_CC", "RIGHT_MLO"]:
        (case / f"A_0001_1.{view}.LJPEG").write_bytes(b"\xff\xd8junk")
    units = discover(str(tmp_path / "in"))
    paths = sorted(u.paths[0] for u in units)
    assert sorted(exp["ok"] + exp["bad"] + [str(case / "A_0001_1.LEFT_CC.LJPEG"),
                                            str(case / "A_0001_1.RIGHT_MLO.LJPEG")]) == paths
    ljpeg = [u for u in units if u.kind == "ljpeg"]
    assert {u.series_id for u in ljpeg} == {"LEFT_CC", "RIGHT_MLO"} and {u.study_id for u in ljpeg} == {"A_0001_1"}
    assert all(str(case / "A_0001_1.ics") in u.paths for u in ljpeg)
    assert len({u.unit_id for u in units}) == len(units)


def test_missing_input_names_the_path(tmp_path):
    with pytest.raises(CadpipeInputError) as e:
        discover(str(tmp_path / "nothing"))
    assert str(e.value) == f"{tmp_path / 'nothing'}: input does not exist"


def test_ground_truth_masks_are_not_studies(tmp_path):
    """LGG layout (`<slice>.tif` + `<slice>_mask.tif`), MSD `labelsTr/`, `*_seg`/`*_label` files, a `ManualMask`
    folder and a DICOM SEG object are skipped; `skip_ground_truth=False` lists them."""
    from pydicom.uid import generate_uid

    from cadpipe.pipelines.scoring.discovery import is_ground_truth
    from tests.pipelines.scoring.score_helpers import write_dicom_2d, write_png

    root = tmp_path / "in"
    case = root / "TCGA_CS_4941_19960909"
    images = [write_png(str(case / f"TCGA_CS_4941_19960909_{k}.tif"), seed=k) for k in (1, 2)]
    masks = [write_png(str(case / f"TCGA_CS_4941_19960909_{k}_mask.tif"), seed=k) for k in (1, 2)]
    images.append(write_nifti(str(root / "imagesTr" / "BRATS_001.nii.gz")))
    masks.append(write_nifti(str(root / "labelsTr" / "BRATS_001.nii.gz")))
    masks.append(write_nifti(str(root / "case9" / "t1_seg.nii.gz")))
    masks.append(write_png(str(root / "case9" / "view_Label.png")))
    masks.append(write_png(str(root / "case9" / "ManualMask" / "view.png")))
    images.append(write_png(str(root / "case9" / "segmented_view.png")))  # "seg" inside the name is fine
    os.makedirs(root / "dcm")
    images.append(write_dicom_2d(str(root / "dcm" / "IM1"), generate_uid(), generate_uid()))
    seg = write_dicom_2d(str(root / "dcm" / "OBJ2"), generate_uid(), generate_uid())
    import pydicom

    ds = pydicom.dcmread(seg)
    ds.Modality = "SEG"  # a DICOM object that is not an image to score
    ds.save_as(seg)
    masks.append(seg)

    units = discover(str(root))
    assert sorted(u.image for u in units) == sorted(images)
    everything = discover(str(root), skip_ground_truth=False)
    assert sorted(u.image for u in everything) == sorted(images + masks)
    assert is_ground_truth("a/B_MASK.tif") and is_ground_truth("masks/x.png") and not is_ground_truth("mask.png")


def test_dicom_objects_without_pixels_are_not_units(tmp_path):
    """An RT plan (no pixel data, Modality RTPLAN) is skipped whatever its name, also with
    ``skip_ground_truth=False``; DICOM images beside it are found, and a broken ``.dcm`` stays a unit (error row)."""
    import shutil

    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    plan = get_testdata_file("rtplan.dcm", download=False)
    (tmp_path / "in" / "s").mkdir(parents=True)
    shutil.copy(plan, tmp_path / "in" / "s" / "plan.dcm")
    shutil.copy(plan, tmp_path / "in" / "s" / "PLAN0001")
    images = write_dicom_series(str(tmp_path / "in" / "img"), generate_uid(), generate_uid(), n=2)
    (tmp_path / "in" / "s" / "broken.dcm").write_bytes(b"not dicom at all" * 10)
    for skip in (True, False):
        units = discover(str(tmp_path / "in"), skip_ground_truth=skip)
        assert sorted(u.paths[0] for u in units) == sorted(images + [str(tmp_path / "in" / "s" / "broken.dcm")])


def test_an_unexpected_exception_from_one_file_or_series_is_its_error_row(tmp_path, monkeypatch):
    """No exception from one input ends discovery: the file (or the 3D series) becomes an error unit with the
    reason, the other units are found as usual."""
    from cadpipe.pipelines.scoring import discovery
    from tests.pipelines.scoring.score_helpers import write_dicom_2d

    os.makedirs(tmp_path / "in")
    good = write_dicom_2d(str(tmp_path / "in" / "good.dcm"), "1.2.3", "1.2.3.1")
    bad = write_dicom_2d(str(tmp_path / "in" / "bad.dcm"), "1.2.4", "1.2.4.1")
    real = discovery._dicom_header

    def header(path):
        if path == bad:
            raise RuntimeError("something nobody expected")
        return real(path)

    monkeypatch.setattr(discovery, "_dicom_header", header)
    units = {u.paths[0]: u for u in discover(str(tmp_path / "in"))}
    assert not units[good].error and units[good].study_id == "1.2.3"
    assert units[bad].error == "could not be read (RuntimeError: something nobody expected)"

    monkeypatch.setattr(discovery, "_dicom_header", real)
    write_dicom_series(str(tmp_path / "vol" / "a"), "1.2.5", "1.2.5.1", n=3)
    write_dicom_series(str(tmp_path / "vol" / "b"), "1.2.6", "1.2.6.1", n=3)
    real_series = discovery._series_units

    def series_units(study, series, *args):
        if series == "1.2.6.1":
            raise OSError(13, "Permission denied")
        return real_series(study, series, *args)

    monkeypatch.setattr(discovery, "_series_units", series_units)
    units = {u.unit_id: u for u in discover(str(tmp_path / "vol"), spatial_dims=3)}
    assert not units["1.2.5.1"].error and units["1.2.6.1"].error == "permission denied"
    assert len(units["1.2.6.1"].paths) == 3
