"""LoadStudyImage / LoadStudyImaged / detect_format over every supported format, and bad input."""

from __future__ import annotations

import os
import shutil
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image
from pydicom.data import get_testdata_file

from cadpipe.data.synthetic.dicom import write_ct_series, write_cxr_dicom
from cadpipe.data.synthetic.images import write_image, write_rgb_cxr
from cadpipe.data.synthetic.nifti import write_lesion_volume, write_nan_nifti
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.io_any import LoadStudyImage, LoadStudyImaged, detect_format
from cadpipe.transforms.window import Windowd

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")


def expect_error(path, *words, loader=None):
    with pytest.raises(CadpipeInputError) as caught:
        (loader or LoadStudyImage())(path)
    msg = str(caught.value)
    assert os.fspath(path) in msg, msg
    for w in words:
        assert w in msg.lower(), msg
    return caught.value


def test_detect_format(tmp_path):
    dcm = write_cxr_dicom(tmp_path / "synthetic_cxr.dcm")["path"]
    noext = tmp_path / "IM0001"
    shutil.copy(dcm, noext)
    series = write_ct_series(tmp_path / "series", n_slices=3)["folder"]
    png = write_image(tmp_path / "synthetic.png")["path"]
    png_noext = tmp_path / "picture"
    shutil.copy(png, png_noext)
    nii = write_lesion_volume(tmp_path / "synthetic_vol.nii.gz")["path"]
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(open(png, "rb").read())
    dicomdir = tmp_path / "DICOMDIR"
    shutil.copy(dcm, dicomdir)
    mixed = tmp_path / "mixed"
    os.makedirs(mixed)
    write_cxr_dicom(mixed / "synthetic_1.dcm", seed=1)
    write_cxr_dicom(mixed / "synthetic_2.dcm", seed=2)
    os.makedirs(tmp_path / "empty")
    assert detect_format(dcm) == "dicom"
    assert detect_format(noext) == "dicom"  # DICM preamble, no extension
    assert detect_format(series) == "dicom_series"
    assert detect_format(png) == "image" and detect_format(png_noext) == "image"
    assert detect_format(nii) == "nifti"
    assert detect_format(tmp_path / "A_0001_1.LEFT_CC.LJPEG") is None  # does not exist
    (tmp_path / "A_0001_1.LEFT_CC.LJPEG").write_bytes(b"\xff\xd8")
    assert detect_format(tmp_path / "A_0001_1.LEFT_CC.LJPEG") == "ljpeg"
    assert detect_format(tmp_path / "notes.txt") is None
    assert detect_format(tmp_path / ".hidden.png") is None
    assert detect_format(dicomdir) is None
    assert detect_format(mixed) is None  # two series: take the files one by one
    assert detect_format(tmp_path / "empty") is None
    for no_pixels in ("test-SR.dcm", "rtplan.dcm"):  # DICOM, but not images
        assert detect_format(get_testdata_file(no_pixels, download=False)) is None
        # the loader skips that (second) parse; its DICOM reader refuses the file
        assert detect_format(get_testdata_file(no_pixels, download=False), check_dicom_pixels=False) == "dicom"
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"")
    assert detect_format(broken) == "dicom"  # the loader will say why it cannot be read


@pytest.mark.parametrize(
    "name,kw",
    [
        ("synthetic_gray8.png", {}),
        ("synthetic_gray16.png", dict(bits=16)),
        ("synthetic_gray16.tif", dict(bits=16)),
        ("synthetic_rgb.png", dict(channels=3)),
        ("synthetic_rgb.tif", dict(channels=3)),
        ("synthetic_rgba.png", dict(channels=4)),
        ("synthetic_rgb.jpg", dict(channels=3)),
    ],
)
def test_plain_images_keep_exact_values(tmp_path, name, kw):
    info = write_image(tmp_path / name, **kw)
    arr = info["array"]
    img = LoadStudyImage(mode="keep")(info["path"])
    assert isinstance(img, MetaTensor) and img.dtype == torch.float32
    expected = arr.T[None] if arr.ndim == 2 else arr.transpose(2, 1, 0)  # (C, X=cols, Y=rows)
    np.testing.assert_array_equal(img.numpy(), expected.astype(np.float32))
    assert img.meta["format"] == "image" and img.meta["filename_or_obj"] == info["path"]
    gray = LoadStudyImage(mode="gray")(info["path"])
    rgb = LoadStudyImage(mode="rgb")(info["path"])
    assert gray.shape == (1, arr.shape[1], arr.shape[0]) and rgb.shape == (3, arr.shape[1], arr.shape[0])
    if arr.ndim == 3:  # luminance like PIL's convert("L") (which rounds to integers)
        pil = np.asarray(Image.fromarray(arr[..., :3]).convert("L"), dtype=np.float32)
        assert np.abs(gray[0].numpy() - pil.T).max() <= 0.5 + 1e-3
    else:
        np.testing.assert_array_equal(rgb.numpy(), np.repeat(expected, 3, axis=0))


def test_rgb_cxr_to_one_channel(tmp_path):
    info = write_rgb_cxr(tmp_path / "synthetic_cxr_rgb.png")
    img = LoadStudyImage()(info["path"])
    assert img.shape == (1, 40, 48)
    np.testing.assert_allclose(img[0].numpy(), info["gray"].T, atol=1e-3)


def test_dicom_file_series_and_colour(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_cxr.dcm", photometric="MONOCHROME1", transfer_syntax="rle")
    img = LoadStudyImage()(info["path"])
    assert img.shape == (1, 48, 64) and img.meta["format"] == "dicom"
    np.testing.assert_array_equal(img[0].numpy(), info["display"].T)
    truth = write_ct_series(tmp_path / "ct", n_slices=4)
    vol = LoadStudyImage()(truth["folder"])
    assert vol.shape == (1, 20, 24, 4) and vol.meta["format"] == "dicom_series"
    np.testing.assert_array_equal(vol[0].numpy(), np.swapaxes(truth["hu"], 0, 1))
    colour = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm", download=False)
    assert LoadStudyImage(mode="keep")(colour).shape == (3, 100, 100)
    assert LoadStudyImage(mode="gray")(colour).shape == (1, 100, 100)
    cine = get_testdata_file("examples_ybr_color.dcm", download=False)  # 30 colour frames
    keep, gray = LoadStudyImage(mode="keep")(cine), LoadStudyImage(mode="gray")(cine)
    assert keep.shape == (3, 320, 240, 30) and gray.shape == (1, 320, 240, 30)
    np.testing.assert_allclose(gray[0].numpy(), np.tensordot([0.299, 0.587, 0.114], keep.numpy(), 1), atol=1e-3)


@pytest.mark.parametrize("name", ["anatomical.nii", "example4d.nii.gz", "standard.nii.gz"])
def test_nifti_from_nibabel_test_data(name):
    path = os.path.join(NIB_DATA, name)
    ref = nib.load(path)
    img = LoadStudyImage()(path)
    data = np.asarray(ref.get_fdata(), dtype=np.float32)
    expected = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    np.testing.assert_allclose(img.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(img.affine), ref.affine, atol=1e-4)
    assert img.meta["format"] == "nifti"


def test_synthetic_nifti_lesions_and_affine(tmp_path):
    truth = write_lesion_volume(tmp_path / "synthetic_vol.nii.gz")
    img = LoadStudyImage()(truth["path"])
    mask = LoadStudyImage(mode="keep")(truth["mask_path"])
    np.testing.assert_allclose(img[0].numpy(), truth["image"])
    np.testing.assert_array_equal(mask[0].numpy(), truth["mask"])
    np.testing.assert_allclose(np.asarray(img.affine), truth["affine"])
    assert not np.allclose(truth["affine"], np.eye(4))


def test_dictionary_twin_in_a_pipeline(tmp_path):
    dcm = write_cxr_dicom(tmp_path / "synthetic_cxr.dcm")["path"]
    png = write_image(tmp_path / "synthetic.png", channels=3)["path"]
    pipeline = Compose([LoadStudyImaged("image"), Windowd("image")])
    for path in (dcm, png):
        out = pipeline({"image": path, "label": 1})
        assert out["label"] == 1 and out["image"].shape[0] == 1
        assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert float(pipeline({"image": png})["image"].max()) == 1.0  # no tags: min-max


def test_ljpeg_goes_to_ljpeg_reader(tmp_path):
    ddsm = pytest.importorskip("cadpipe.data.synthetic.ddsm")
    case = ddsm.write_ddsm_case(tmp_path, 1, rows=160, cols=120, radius_range=(5, 8))
    view = case["views"]["LEFT_CC"]
    img = LoadStudyImage()(view["image"])
    assert img.meta["format"] == "ljpeg" and img.shape == (1, view["cols"], view["rows"])
    np.testing.assert_array_equal(img[0].numpy(), np.asarray(view["pixels"], dtype=np.float32).T)
    lone = tmp_path / "lone" / "A_0009_1.LEFT_CC.LJPEG"
    os.makedirs(lone.parent)
    shutil.copy(view["image"], lone)  # no .ics beside it
    with pytest.raises(CadpipeInputError) as caught:
        LoadStudyImage()(lone)
    assert "ics" in str(caught.value).lower() and str(lone.parent) in str(caught.value)


# ---------------------------------------------------------------- bad input


def test_nifti_with_nan(tmp_path):
    full = write_nan_nifti(tmp_path / "synthetic_allnan.nii.gz")["path"]
    expect_error(full, "nan", "256 of 256")
    some = write_nan_nifti(tmp_path / "synthetic_somenan.nii.gz", fraction=0.1)["path"]
    expect_error(some, "nan")


def test_infinities_without_nan_load(tmp_path):
    """The NaN check sums the image first; +inf and -inf together also sum to NaN but are not refused."""
    data = np.zeros((6, 5, 4), np.float32)
    data[0, 0, 0], data[1, 1, 1] = np.inf, -np.inf
    path = str(tmp_path / "synthetic_inf.nii.gz")
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    img = LoadStudyImage()(path)
    assert torch.isinf(img).sum() == 2 and not torch.isnan(img).any()
    data[2, 2, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    expect_error(path, "nan", "1 of 120")


def test_unreadable_files_are_wrapped(tmp_path):
    bad_png = tmp_path / "broken.png"
    bad_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    expect_error(bad_png, "cannot read image")
    fake_jpg = tmp_path / "fake.jpg"
    fake_jpg.write_text("not a jpeg")
    expect_error(fake_jpg, "cannot read image")
    bad_nii = tmp_path / "broken.nii.gz"
    bad_nii.write_bytes(b"\x1f\x8b" + b"x" * 40)
    expect_error(bad_nii, "cannot read nifti")
    txt = tmp_path / "report.txt"
    txt.write_text("findings: none")
    expect_error(txt, "not a supported image format")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    expect_error(empty, "empty file")
    expect_error(tmp_path / "missing.dcm", "no such file")
    os.makedirs(tmp_path / "nodicom")
    expect_error(tmp_path / "nodicom", "no dicom files")


def test_bad_dicom_through_the_universal_loader(tmp_path):
    notdcm = tmp_path / "scan.dcm"
    notdcm.write_text("text" * 100)
    expect_error(notdcm, "not a dicom file")
    info = write_cxr_dicom(tmp_path / "synthetic_cut.dcm")
    data = open(info["path"], "rb").read()
    open(info["path"], "wb").write(data[: len(data) - 3000])
    expect_error(info["path"], "truncated")


def test_dicom_without_pixels_through_the_universal_loader(tmp_path):
    for name in ("test-SR.dcm", "rtplan.dcm"):
        path = tmp_path / f"IM_{name}"
        shutil.copy(get_testdata_file(name, download=False), path)
        expect_error(path, "no pixel data")



def test_building_the_loader_prints_no_nvimagecodec_notice(caplog, recwarn):
    """MONAI's LoadImage builds its GPU DICOM reader, which announces on every construction that nvImageCodec is
    missing; cadpipe reads DICOM itself, so building its loader says nothing."""
    import logging

    from cadpipe.transforms.readers.io_any import LoadStudyImage

    with caplog.at_level(logging.DEBUG):
        LoadStudyImage()
        LoadStudyImage(mode="rgb")
    text = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert "nvImageCodec" not in text
    assert logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").level == logging.NOTSET  # restored
