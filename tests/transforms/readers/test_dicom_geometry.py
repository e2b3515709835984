"""The DICOM reader's geometry when the file's is missing, unusable or oblique: never guessed millimetres, never an
affine nibabel/MONAI cannot use (``Could not decompose affine``), a warning naming the file for defective values."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from cadpipe.data.synthetic.dicom import write_ct_series, write_cxr_dicom
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms import LoadStudyImage
from cadpipe.transforms.readers.io_any import spacing_known
from cadpipe.transforms.readers.io_dicom import (DicomReader, geometry_is_defective, geometry_note,
                                                 orthonormal_orientation, patient_geometry, pixel_spacing)
from cadpipe.transforms.readers.io_raw import read_raw_2d


def shipped(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not installed (pydicom-data; no downloads in tests)")
    return path


def load(path):
    return LoadImage(image_only=True)(path, reader=DicomReader())


def _ds(**tags) -> Dataset:
    ds = Dataset()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


# ------------------------------------------------------------------------------------------ the functions
@pytest.mark.parametrize("tags,want", [
    ({"PixelSpacing": [0.2, 0.3]}, [0.2, 0.3]),
    ({"PixelSpacing": [0, 0]}, None),  # RG1_UNCR.dcm: 0\0 means unknown
    ({"PixelSpacing": [0, 0], "ImagerPixelSpacing": [0.15, 0.15]}, [0.15, 0.15]),
    ({"ImagerPixelSpacing": [0.1, 0.1]}, [0.1, 0.1]),
    ({"PixelSpacing": [-0.5, 0.5]}, None),
    ({"PixelSpacing": [0.5]}, None),  # one value: not a row/column spacing
    ({}, None),
])
def test_pixel_spacing_is_only_a_usable_one(tags, want):
    assert pixel_spacing(_ds(**tags)) == (pytest.approx(want) if want else None)


def test_pixel_spacing_that_is_not_numbers():
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = Dataset()  # as read from a file: pydicom keeps the text it cannot convert
    ds[0x00280030] = RawDataElement(Tag(0x00280030), "DS", 7, b"abc\\def", 0, True, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own notice about the invalid DS value
        assert pixel_spacing(ds) is None
        assert "unusable PixelSpacing" in geometry_note(ds) and geometry_is_defective(ds)


def test_notes_say_why_and_warn_only_for_defects():
    assert geometry_note(_ds(PixelSpacing=[0.2, 0.2])) == ""
    zero = _ds(PixelSpacing=[0, 0])
    assert "PixelSpacing" in geometry_note(zero) and "pixels" in geometry_note(zero)
    assert geometry_is_defective(zero)
    absent = _ds()
    assert "no pixel spacing" in geometry_note(absent) and not geometry_is_defective(absent)  # SC, US: no defect
    flat = _ds(PixelSpacing=[0.5, 0.5], ImagePositionPatient=[0, 0, 0], ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    assert "not a plane" in geometry_note(flat) and geometry_is_defective(flat)


def test_orthonormal_orientation():
    np.testing.assert_allclose(orthonormal_orientation([2, 0, 0, 0, 0, -3]), [1, 0, 0, 0, 0, -1])
    oblique = [0.569486, 0.822001, 0.0, -0.0, 0.0, -1.0]  # MR2_UNCR.dcm: kept, directions of unit length
    out = orthonormal_orientation(oblique)
    np.testing.assert_allclose(np.linalg.norm(out[:3]), 1.0)
    np.testing.assert_allclose(out[3:], [0, 0, -1])
    assert orthonormal_orientation([0, 0, 0, 0, 1, 0]) is None  # a zero direction
    assert orthonormal_orientation([1, 0, 0, 1, 0, 0]) is None  # rows and columns along the same line
    assert orthonormal_orientation([1, 0, 0, 0.7071, 0.7071, 0]) is None  # 45 degrees apart: not a plane's axes
    assert orthonormal_orientation([np.nan, 0, 0, 0, 1, 0]) is None
    assert patient_geometry(_ds(ImagePositionPatient=[0, 0, 0], ImageOrientationPatient=[1, 0, 0, 1, 0, 0])) == \
        (None, None)


# ------------------------------------------------------------------------------------------ through the reader
def _cxr(tmp_path, name="synthetic_cr.dcm", **tags):
    info = write_cxr_dicom(tmp_path / name, rows=40, cols=32)
    ds = pydicom.dcmread(info["path"])
    for key, value in tags.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(info["path"])
    return info["path"]


def test_zero_spacing_reads_in_pixels_with_a_warning_naming_the_file(tmp_path):
    path = _cxr(tmp_path, PixelSpacing=[0, 0], ImagerPixelSpacing=[0, 0])
    with pytest.warns(UserWarning, match="PixelSpacing") as caught:
        img = LoadStudyImage()(path)
    assert str(path) in str(caught[0].message)
    np.testing.assert_allclose(np.asarray(img.affine), np.eye(4))  # one unit per pixel, an affine that decomposes
    assert img.meta["spacing_known"] is False and not spacing_known(img.meta)
    assert "pixels" in img.meta["geometry_note"]
    raw = read_raw_2d(path)  # the batched scoring path's reader says the same
    assert raw.spacing_known is False and raw.geometry_note == img.meta["geometry_note"]
    np.testing.assert_allclose(raw.affine, np.eye(4))


def test_imager_spacing_stands_in_for_a_zero_pixel_spacing(tmp_path):
    path = _cxr(tmp_path, PixelSpacing=[0, 0], ImagerPixelSpacing=[0.25, 0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a usable spacing: nothing to warn about
        img = LoadStudyImage()(path)
    np.testing.assert_allclose(np.diag(np.asarray(img.affine))[:2], [0.5, 0.25])  # (x = columns, y = rows)
    assert img.meta["spacing_known"] is True and spacing_known(img.meta)


def test_absent_spacing_is_unknown_without_a_warning(tmp_path):
    path = _cxr(tmp_path, PixelSpacing=None, ImagerPixelSpacing=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        img = LoadStudyImage()(path)
    assert img.meta["spacing_known"] is False and "no pixel spacing" in img.meta["geometry_note"]


def test_spacing_known_reads_collated_metadata():
    import torch

    assert spacing_known({"format": "dicom", "spacing_known": True})
    assert not spacing_known({"format": "dicom", "spacing_known": [False]})
    assert not spacing_known({"format": "dicom", "spacing_known": torch.tensor([False])})
    assert not spacing_known({"format": ["image"]})  # PNG/JPEG/TIFF never give a spacing
    assert spacing_known({"format": "nifti"}) and spacing_known({})


def test_orientation_that_is_not_a_plane_is_ignored_with_a_warning(tmp_path):
    truth = write_ct_series(tmp_path / "flat", n_slices=1, rows=12, cols=10)
    ds = pydicom.dcmread(truth["paths"][0])
    ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]  # rows and columns along x: no plane
    ds.save_as(truth["paths"][0])
    with pytest.warns(UserWarning, match="not a plane"):
        img = LoadStudyImage()(truth["paths"][0])
    aff = np.asarray(img.affine)
    assert abs(np.linalg.det(aff[:3, :3])) > 0  # placed as a radiograph: spacing only
    np.testing.assert_allclose(np.diag(aff)[:2], [0.7, 0.8])


def test_unnormalised_orientation_gives_the_normalised_affine(tmp_path):
    truth = write_ct_series(tmp_path / "s", n_slices=1, rows=12, cols=10, orientation=(0.8660254, 0.5, 0, 0, 0, -1))
    reference = np.asarray(load(truth["paths"][0]).affine)
    ds = pydicom.dcmread(truth["paths"][0])
    ds.ImageOrientationPatient = [2 * float(v) for v in ds.ImageOrientationPatient]
    ds.save_as(truth["paths"][0])
    np.testing.assert_allclose(np.asarray(load(truth["paths"][0]).affine), reference, atol=1e-6)


def test_series_with_repeated_positions_steps_along_the_normal(tmp_path):
    truth = write_ct_series(tmp_path / "same", n_slices=3, rows=12, cols=10, shuffle_names=False)
    for path in truth["paths"]:  # every slice at the same position (a broken export)
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [-50.0, -40.0, 100.0]
        ds.save_as(path)
    img = load(truth["folder"])
    aff = np.asarray(img.affine)
    np.testing.assert_allclose(aff[:3, 2], [0, 0, truth["slice_spacing"]])  # SliceThickness along the normal
    assert abs(np.linalg.det(aff[:3, :3])) > 0


def test_zero_slice_thickness_is_one_millimetre(tmp_path):
    truth = write_ct_series(tmp_path / "thin", n_slices=1, rows=12, cols=10)
    ds = pydicom.dcmread(truth["paths"][0])
    ds.SliceThickness = 0
    ds.save_as(truth["paths"][0])
    np.testing.assert_allclose(np.asarray(load(truth["paths"][0]).affine)[:3, 2], [0, 0, 1.0])


def test_a_file_cut_after_its_meta_header_is_named_truncated(tmp_path):
    path = tmp_path / "emri_small_jpeg_2k_lossless_too_short.dcm"
    shutil.copy(shipped("emri_small_jpeg_2k_lossless_too_short.dcm"), path)
    with pytest.raises(CadpipeInputError, match="truncated or corrupt") as caught:
        LoadStudyImage()(str(path))
    assert str(path) in str(caught.value)


# ------------------------------------------------------------------------------------------ real files
def test_real_cr_with_zero_spacing_rg1():
    path = shipped("RG1_UNCR.dcm")
    with pytest.warns(UserWarning, match=r"PixelSpacing \[0.000, 0.000\]"):
        img = LoadStudyImage()(path)
    assert img.meta["spacing_known"] is False
    np.testing.assert_allclose(np.asarray(img.affine), np.eye(4))


def test_real_oblique_mr_slice_mr2():
    path = shipped("MR2_UNCR.dcm")
    img = LoadStudyImage(mode="keep")(path)
    aff = np.asarray(img.affine)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    flip = np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    np.testing.assert_allclose(aff[:3, 0], flip * iop[:3] / np.linalg.norm(iop[:3]) * float(ds.PixelSpacing[1]),
                               atol=1e-6)
    np.testing.assert_allclose(aff[:3, 1], flip * iop[3:] * float(ds.PixelSpacing[0]), atol=1e-6)
    np.testing.assert_allclose(aff[:3, 3], flip * np.asarray(ds.ImagePositionPatient, dtype=float), atol=1e-6)
    assert img.meta["spacing_known"] is True and img.meta["geometry_note"] == ""
