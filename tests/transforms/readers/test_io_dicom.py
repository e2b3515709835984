"""DicomReader against pydicom's own pipeline, on the files pydicom ships and on synthetic files."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pydicom
import pytest
from monai.data import PydicomReader
from monai.transforms import Compose, LoadImage, LoadImaged
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from cadpipe.data.synthetic.dicom import write_ct_series, write_cxr_dicom, write_unsupported_syntax_dicom
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.io_dicom import DicomReader, meta_voi_luts, meta_windows, split_values
from cadpipe.transforms.window import Window, Windowd

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def shipped(name: str) -> str:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom (no downloads in tests)")
    return path


def load(path):
    """Our reader alone: ``LoadImage(reader=DicomReader())`` would try MONAI's other readers after an error."""
    return LoadImage(image_only=True)(path, reader=DicomReader())


def to_monai_layout(arr: np.ndarray, multi: bool = False) -> np.ndarray:
    """numpy (frames, rows, cols[, s]) / (rows, cols[, s]) -> (cols, rows[, frames][, s])."""
    if multi:
        arr = np.moveaxis(arr, 0, 2)
    return np.swapaxes(arr, 0, 1)


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # signed, slope/intercept -> HU
        "MR_small.dcm",
        "MR_small_RLE.dcm",  # RLE
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
        "693_J2KI.dcm",  # JPEG 2000, CT with intercept
        "JPGExtended.dcm",  # JPEG extended 12-bit
        "JPEG-LL.dcm",  # JPEG lossless (only when pydicom-data is installed)
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1 (process 14), RGB: shipped with pydicom
        "JPEG2000.dcm",  # JPEG 2000 (lossy allowed), signed
    ],
)
def test_values_match_pydicom_modality_lut(name):
    path = shipped(name)
    img = load(path)
    ds = pydicom.dcmread(path)
    ref = apply_modality_lut(ds.pixel_array, ds)
    assert img.shape == to_monai_layout(ref).shape
    np.testing.assert_array_equal(np.asarray(img), to_monai_layout(ref).astype(np.float32))


def test_ct_comes_out_in_hounsfield_units():
    path = shipped("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = np.asarray(load(path))
    raw = ds.pixel_array.astype(np.float64)
    np.testing.assert_array_equal(img, (raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).T)
    assert float(ds.RescaleIntercept) == -1024 and img.min() < raw.min()


def test_compressed_files_decode_to_the_same_image():
    ref = np.asarray(load(shipped("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(np.asarray(load(shipped(name))), ref)


def test_rgb_jpeg_baseline_is_channel_last_rgb():
    path = shipped("SC_rgb_jpeg_dcmtk.dcm")  # JPEG baseline, YBR_FULL
    img = load(path)
    ds = pydicom.dcmread(path)
    assert img.shape == (100, 100, 3)
    np.testing.assert_array_equal(np.asarray(img), to_monai_layout(ds.pixel_array).astype(np.float32))
    assert img.meta["original_channel_dim"] == -1
    assert img.meta["PhotometricInterpretation"] == "YBR_FULL"


def test_multiframe_files():
    path = shipped("rtdose.dcm")  # 15 frames, GridFrameOffsetVector
    img = load(path)
    ds = pydicom.dcmread(path)
    ref = apply_modality_lut(ds.pixel_array, ds)
    assert img.shape == (10, 10, 15)
    np.testing.assert_allclose(np.asarray(img), to_monai_layout(ref, multi=True), rtol=1e-6)
    step = float(ds.GridFrameOffsetVector[1]) - float(ds.GridFrameOffsetVector[0])
    assert np.isclose(abs(float(img.affine[2, 2])), abs(step))
    rgb = load(shipped("examples_ybr_color.dcm"))  # 30 JPEG baseline frames
    assert rgb.shape == (320, 240, 30, 3)
    emri = get_testdata_file("emri_small.dcm", download=False)
    if emri is not None:
        assert load(emri).shape[-1] == int(pydicom.dcmread(emri).NumberOfFrames)


def test_metadata_and_affine_match_monai_pydicom_reader():
    path = shipped("MR_small.dcm")
    img = load(path)
    ds = pydicom.dcmread(path)
    meta = img.meta
    assert meta["WindowCenter"] == 600.0 and meta["WindowWidth"] == 1600.0
    assert meta_windows(meta) == ([600.0], [1600.0])
    assert meta["Modality"] == "MR" and meta["PatientID"] == ds.PatientID
    assert meta["StudyInstanceUID"] == ds.StudyInstanceUID and meta["SeriesInstanceUID"] == ds.SeriesInstanceUID
    assert split_values(meta["SOPInstanceUIDs"]) == [ds.SOPInstanceUID]
    assert meta["PixelSpacing"] == [float(v) for v in ds.PixelSpacing]
    assert (meta["Rows"], meta["Columns"]) == (64, 64)
    assert meta["PhotometricInterpretation"] == "MONOCHROME2" and meta["ImageLaterality"] == ""
    monai_img = LoadImage(reader=PydicomReader(), image_only=True)(path)
    # same in-plane geometry and origin; MONAI puts 1 on the slice axis of a 2D image, we put the thickness
    np.testing.assert_allclose(np.asarray(img.affine)[:, [0, 1, 3]], np.asarray(monai_img.affine)[:, [0, 1, 3]])


def test_synthetic_cxr_metadata(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_cxr.dcm", laterality="L", view="AP", pixel_spacing=0.15)
    img = load(info["path"])
    assert img.meta["ImageLaterality"] == "L" and img.meta["ViewPosition"] == "AP"
    assert img.meta["PixelSpacing"] == [0.15, 0.15]
    assert meta_windows(img.meta) == ([w[0] for w in info["windows"]], [w[1] for w in info["windows"]])
    assert img.meta["WindowCenter"] == info["windows"][0][0] and img.meta["WindowWidth"] == info["windows"][0][1]
    np.testing.assert_array_equal(np.asarray(img), info["pixels"].T)


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg_lossless", "jpegls", "jpeg2000"])
def test_monochrome1_is_inverted_and_window_moves_with_it(tmp_path, syntax):
    info = write_cxr_dicom(tmp_path / f"synthetic_m1_{syntax}.dcm", photometric="MONOCHROME1", transfer_syntax=syntax)
    ds = pydicom.dcmread(info["path"])
    assert ds.file_meta.TransferSyntaxUID == info["transfer_syntax"]
    img = load(info["path"])
    # higher = brighter: the loader gives back the display image; inversion is (0 + 4095) - stored
    np.testing.assert_array_equal(np.asarray(img), info["display"].T.astype(np.float32))
    assert img.meta["MONOCHROME1_inverted"] and img.meta["inversion_sum"] == 4095
    assert img.meta["PhotometricInterpretation"] == "MONOCHROME1"
    # windowing the inverted image == what a viewer shows: 1 - normalised pydicom VOI output, for every window
    for index in range(2):
        ref = apply_voi_lut(ds.pixel_array, ds, index=index, prefer_lut=False) / 4095.0
        ours = np.asarray(Window(index=index)(img)).T
        np.testing.assert_allclose(ours, 1.0 - ref, atol=1e-6)


def test_monochrome1_voi_lut_mirrored(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_m1_lut.dcm", photometric="MONOCHROME1", voi_lut=True)
    ds = pydicom.dcmread(info["path"])
    img = load(info["path"])
    luts, stored = meta_voi_luts(img.meta), meta_voi_luts(img.meta, "VOILUTSequenceStored")
    assert len(luts) == 1 and len(stored) == 1
    np.testing.assert_array_equal(stored[0]["LUTData"], info["voi_lut"])
    np.testing.assert_array_equal(luts[0]["LUTData"], 65535 - info["voi_lut"][::-1])
    assert list(luts[0]["LUTDescriptor"]) == [4096, 0, 16]
    ref = apply_voi_lut(ds.pixel_array, ds) / 65535.0  # VOI LUT preferred over the window, like pydicom
    np.testing.assert_allclose(np.asarray(Window()(img)).T, 1.0 - ref, atol=1e-6)


def test_jpeg_lossless_round_trip(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_ljpeg.dcm", transfer_syntax="jpeg_lossless", bits=12)
    assert pydicom.dcmread(info["path"]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    np.testing.assert_array_equal(np.asarray(load(info["path"])), info["pixels"].T)


def test_series_folder_sorted_by_position(tmp_path):
    truth = write_ct_series(tmp_path / "series", n_slices=5, slope=2.0, intercept=-1000.0)
    img = load(truth["folder"])
    assert img.shape == (20, 24, 5)
    np.testing.assert_array_equal(np.asarray(img), np.swapaxes(truth["hu"], 0, 1))
    # affine maps voxel (0, 0, k) to each slice's ImagePositionPatient (LPS -> RAS flips x, y)
    for k, pos in enumerate(truth["positions"]):
        ras = np.asarray(img.affine) @ np.array([0, 0, k, 1.0])
        np.testing.assert_allclose(ras[:3], pos * np.array([-1, -1, 1]), atol=1e-6)
    np.testing.assert_allclose(img.meta["spacing"], [0.7, 0.8, 2.5])
    expected_uids = [str(pydicom.dcmread(p).SOPInstanceUID) for p in truth["paths"]]
    assert split_values(img.meta["SOPInstanceUIDs"]) == expected_uids and img.meta["is_series"]
    assert img.meta["SliceFilenames"].split("\n") == truth["paths"]
    # MONAI's own reader (InstanceNumber order) agrees on values and geometry
    ref = LoadImage(reader=PydicomReader(), image_only=True)(truth["folder"])
    np.testing.assert_allclose(np.asarray(img), np.asarray(ref))
    np.testing.assert_allclose(np.asarray(img.affine), np.asarray(ref.affine), atol=1e-6)


def test_oblique_series_sorted_along_normal_not_instance_number(tmp_path):
    # sagittal slices; InstanceNumber deliberately reversed relative to position
    truth = write_ct_series(tmp_path / "sag", n_slices=4, orientation=(0, 1, 0, 0, 0, -1))
    for p in truth["paths"]:
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = 100 - int(ds.InstanceNumber)
        ds.save_as(p)
    img = load(truth["folder"])
    np.testing.assert_array_equal(np.asarray(img), np.swapaxes(truth["hu"], 0, 1))
    normal = np.cross([0, 1, 0], [0, 0, -1])
    np.testing.assert_allclose(np.asarray(img.affine)[:3, 2], normal * 2.5 * np.array([-1, -1, 1]), atol=1e-6)


def test_series_without_positions_sorted_by_instance_number(tmp_path):
    truth = write_ct_series(tmp_path / "nopos", n_slices=4)
    for p in truth["paths"]:
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    np.testing.assert_array_equal(np.asarray(load(truth["folder"])), np.swapaxes(truth["hu"], 0, 1))


def test_series_of_float_pixel_data_slices(tmp_path):
    """A series folder whose slices carry Float Pixel Data (parametric maps) is read like one with Pixel Data."""
    truth = write_ct_series(tmp_path / "float", n_slices=3)
    for p, hu in zip(truth["paths"], np.moveaxis(truth["hu"], 2, 0)):
        ds = pydicom.dcmread(p)
        del ds.PixelData
        for tag in ("RescaleSlope", "RescaleIntercept", "BitsStored", "HighBit", "PixelRepresentation"):
            if tag in ds:
                delattr(ds, tag)
        ds.BitsAllocated = 32
        ds.FloatPixelData = (hu.astype("<f4") + 0.25).tobytes()
        ds.save_as(p)
    img = load(truth["folder"])
    assert img.meta["is_series"]
    np.testing.assert_array_equal(np.asarray(img), np.swapaxes(truth["hu"] + 0.25, 0, 1))


def test_compose_with_loadimaged_and_windowd(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_cxr.dcm", photometric="MONOCHROME1", transfer_syntax="rle")
    pipeline = Compose(
        [LoadImaged("image", reader=DicomReader(), ensure_channel_first=True), Windowd("image")]
    )
    out = pipeline({"image": info["path"]})["image"]
    assert out.shape == (1, 48, 64) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert meta_windows(out.meta)[0] == [w[0] for w in info["windows"]]
    assert out.meta["filename_or_obj"] == info["path"]


# ---------------------------------------------------------------- bad input


def load_strict(path):
    """``reader=`` given at call time: MONAI calls it directly, so our error reaches the caller unchanged.
    (``LoadImage(reader=DicomReader())`` tries its other readers after ours fails and raises MONAI's RuntimeError,
    whose text still carries our "path: reason"; ``LoadStudyImage`` always gives the CadpipeInputError.)"""
    return LoadImage(image_only=True)(path, reader=DicomReader())


def assert_input_error(path, reason_words, target=None):
    with pytest.raises(CadpipeInputError) as caught:
        load_strict(target or path)
    msg = str(caught.value)
    assert os.fspath(path) in msg, msg
    for word in reason_words:
        assert word in msg.lower(), msg
    return caught.value


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert_input_error(path, ["empty", "0 bytes"])


def test_truncated_files(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_full.dcm", rows=64, cols=64)
    data = open(info["path"], "rb").read()
    cut = tmp_path / "synthetic_cut.dcm"
    cut.write_bytes(data[: len(data) // 2])  # pixel data cut in half
    assert_input_error(cut, ["truncated"])
    header_cut = tmp_path / "synthetic_cut_header.dcm"
    header_cut.write_bytes(data[:200])  # inside the meta header
    assert_input_error(header_cut, ["truncated"])
    shipped_truncated = tmp_path / "MR_truncated.dcm"
    shutil.copy(shipped("MR_truncated.dcm"), shipped_truncated)
    assert_input_error(shipped_truncated, ["truncated"])


def test_not_dicom_named_dcm(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("this is a text file, not DICOM\n" * 20)
    assert_input_error(path, ["not a dicom file"])


def test_unsupported_transfer_syntax(tmp_path):
    info = write_unsupported_syntax_dicom(tmp_path / "synthetic_mpeg2.dcm")
    err = assert_input_error(info["path"], ["unsupported transfer syntax", "mpeg2", "1.2.840.10008.1.2.4.100"])
    assert err.path == info["path"]


def test_series_with_inconsistent_sizes(tmp_path):
    truth = write_ct_series(tmp_path / "bad_series", n_slices=3, rows=24, cols=20)
    ds = pydicom.dcmread(truth["paths"][1])
    ds.Rows, ds.Columns = 10, 10
    ds.PixelData = np.zeros((10, 10), np.int16).tobytes()
    ds.save_as(truth["paths"][1])
    assert_input_error(truth["folder"], ["inconsistent sizes"])


def test_folder_with_two_series_and_empty_folder(tmp_path):
    os.makedirs(tmp_path / "two")
    write_cxr_dicom(tmp_path / "two" / "synthetic_a.dcm", seed=1)
    write_cxr_dicom(tmp_path / "two" / "synthetic_b.dcm", seed=2)
    assert_input_error(tmp_path / "two", ["2 different series"])
    os.makedirs(tmp_path / "empty")
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    assert_input_error(tmp_path / "empty", ["no dicom files"])


def test_bad_slice_inside_series_is_named(tmp_path):
    truth = write_ct_series(tmp_path / "series_bad_slice", n_slices=3)
    open(truth["paths"][2], "wb").close()
    with pytest.raises(CadpipeInputError) as caught:
        load_strict(truth["folder"])
    assert truth["paths"][2] in str(caught.value) and "empty" in str(caught.value)


def test_reader_errors_directly_and_through_monai_loadimage(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("plain text")
    with pytest.raises(CadpipeInputError, match="not a DICOM file"):
        DicomReader().read(str(path))
    with pytest.raises(RuntimeError) as caught:  # MONAI tries its other readers, then wraps ours, keeping our message
        LoadImage(reader=DicomReader(), image_only=True)(path)
    assert f"{path}: not a DICOM file" in str(caught.value)
    with pytest.raises(CadpipeInputError, match="not a DICOM file"):  # our reader alone: our error as it is
        load(path)


def test_metadata_collates_across_different_files(tmp_path):
    """Different window counts / LUT lengths / slice counts still batch with MONAI's default collate."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import Resized

    files = [
        write_cxr_dicom(tmp_path / "synthetic_a.dcm", photometric="MONOCHROME1", voi_lut=True)["path"],
        write_cxr_dicom(tmp_path / "synthetic_b.dcm", windows=[(100.0, 50.0)], voi_lut=True, bits=10)["path"],
        write_cxr_dicom(tmp_path / "synthetic_c.dcm", windows=[])["path"],
    ]
    pipeline = Compose(
        [LoadImaged("image", reader=DicomReader(), ensure_channel_first=True), Windowd("image"), Resized("image", (16, 16))]
    )
    batch = next(iter(DataLoader(Dataset([{"image": f} for f in files], pipeline), batch_size=3)))
    assert batch["image"].shape == (3, 1, 16, 16)
    series = [write_ct_series(tmp_path / f"s{n}", n_slices=n)["folder"] for n in (3, 4)]
    vols = [load(f) for f in series]
    from monai.data import list_data_collate

    collated = list_data_collate([{"image": v[None, :, :, :3]} for v in vols])
    assert collated["image"].shape == (2, 1, 20, 24, 3)


def write_enhanced_multiframe(path, n=3, rows=8, cols=6):
    """A minimal enhanced multi-frame file: geometry and rescale only in the functional groups."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(0)
    stored = rng.integers(0, 1000, (n, rows, cols)).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "SYNTHETIC^CADPIPE", "SYNTHETIC-MF", "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.25], 3.0
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    ds.SharedFunctionalGroupsSequence = [shared]
    frames, slopes, intercepts = [], [1.0, 2.0, 0.5], [-1024.0, -1000.0, 0.0]
    for k in range(n):
        item, pos, rescale = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [10.0, 20.0, 30.0 + 3.0 * k]
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = slopes[k], intercepts[k], "HU"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = [pos], [rescale]
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    hu = stored * np.asarray(slopes)[:, None, None] + np.asarray(intercepts)[:, None, None]
    return stored, hu


def test_enhanced_multiframe_rescale_and_geometry(tmp_path):
    path = tmp_path / "synthetic_enhanced.dcm"
    _, hu = write_enhanced_multiframe(path)
    img = load(str(path))
    assert img.shape == (6, 8, 3)
    np.testing.assert_allclose(np.asarray(img), to_monai_layout(hu, multi=True))
    # column index along +x (0.25 mm), row index along +y (0.5 mm), frames along +z (3 mm); LPS -> RAS flips x, y
    np.testing.assert_allclose(np.diag(np.asarray(img.affine))[:3], [-0.25, -0.5, 3.0])
    np.testing.assert_allclose(np.asarray(img.affine)[:3, 3], [-10.0, -20.0, 30.0])
    assert img.meta["RescaleSlope"] == 1.0 and img.meta["RescaleIntercept"] == -1024.0


def test_oblique_series_geometry_matches_itk(tmp_path):
    """ITK (GDCM) is the reference for DICOM series geometry: same voxels, same RAS affine."""
    from monai.data import ITKReader

    truth = write_ct_series(tmp_path / "oblique", n_slices=4, orientation=(0.8660254, 0.5, 0, 0, 0, -1))
    ours = load(truth["folder"])
    itk = LoadImage(reader=ITKReader(), image_only=True)(truth["folder"])
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(itk))
    np.testing.assert_allclose(np.asarray(ours.affine), np.asarray(itk.affine), atol=1e-5)


def test_malformed_tags_are_named(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_badlut.dcm", voi_lut=True)
    ds = pydicom.dcmread(info["path"])
    ds.VOILUTSequence[0].LUTDescriptor = [4096, 0, 9]  # 9-bit LUT entries: not allowed (8, 10-16)
    ds.save_as(info["path"])
    assert_input_error(info["path"], ["cannot interpret dicom data"])


def test_undecodable_compressed_pixel_data(tmp_path):
    """pydicom's JPEG-lossy.dcm has a misplaced JPEG marker: no plugin decodes it -> error naming file and syntax."""
    path = tmp_path / "JPEG-lossy.dcm"
    shutil.copy(get_testdata_file("JPEG-lossy.dcm", download=False), path)
    assert_input_error(path, ["cannot decode pixel data", "jpeg extended"])


def test_monochrome1_with_rescale(tmp_path):
    """Inversion uses the modality-LUT range: S = (0*m + b) + ((2**12 - 1)*m + b)."""
    info = write_cxr_dicom(tmp_path / "synthetic_m1_rescale.dcm", photometric="MONOCHROME1", voi_function="LINEAR")
    ds = pydicom.dcmread(info["path"])
    ds.RescaleSlope, ds.RescaleIntercept = 2.0, -100.0
    ds.WindowCenter, ds.WindowWidth = [3000.0, 5000.0], [2000.0, 900.0]
    ds.save_as(info["path"])
    ds = pydicom.dcmread(info["path"])
    img = load(info["path"])
    s = (0 * 2.0 - 100.0) + (4095 * 2.0 - 100.0)
    assert img.meta["inversion_sum"] == s
    np.testing.assert_array_equal(np.asarray(img), (s - (info["pixels"] * 2.0 - 100.0)).T.astype(np.float32))
    y_min, y_max = -100.0, 4095 * 2.0 - 100.0
    for index in range(2):
        ref = (apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=index) - y_min) / (y_max - y_min)
        np.testing.assert_allclose(np.asarray(Window(index=index)(img)).T, 1.0 - ref, atol=1e-6)
