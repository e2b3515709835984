"""Window / Windowd: explicit, presets, DICOM tags (vs pydicom apply_voi_lut), VOI LUT, min-max fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.transforms.readers.io_dicom import DicomReader, meta_windows
from cadpipe.transforms.window import WINDOW_PRESETS, Window, Windowd, window_from_meta

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def load(path):
    return LoadImage(image_only=True)(path, reader=DicomReader())  # our reader alone, no fallback


def test_explicit_window_numpy_and_torch():
    x = np.array([[-1000.0, -200.0, 0.0, 40.0, 80.0, 240.0, 3000.0]], dtype=np.float32)
    y = Window(center=40, width=400)(x)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_allclose(y, [[0.0, 0.0, 0.4, 0.5, 0.6, 1.0, 1.0]], atol=1e-6)
    t = Window(center=40, width=400, out_min=-1, out_max=1)(torch.from_numpy(x))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), 2 * y - 1, atol=1e-6)
    # integer input gives float output
    assert Window(center=5, width=10)(np.arange(10, dtype=np.int16)).dtype == np.float32


def test_presets_are_standard_and_unknown_rejected():
    assert WINDOW_PRESETS["lung"] == (-600.0, 1500.0)
    assert WINDOW_PRESETS["mediastinum"] == (50.0, 350.0)
    assert WINDOW_PRESETS["abdomen"] == WINDOW_PRESETS["soft_tissue"] == (50.0, 400.0)
    assert WINDOW_PRESETS["bone"] == (400.0, 1800.0)
    assert WINDOW_PRESETS["brain"] == (40.0, 80.0)
    assert WINDOW_PRESETS["stroke"] == (32.0, 8.0)
    hu = torch.tensor([-1350.0, -600.0, 150.0])
    np.testing.assert_allclose(Window(preset="lung")(hu).numpy(), [0.0, 0.5, 1.0], atol=1e-6)
    np.testing.assert_allclose(Window(preset="Brain")(torch.tensor([0.0, 40.0, 80.0])).numpy(), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="unknown preset"):
        Window(preset="liverish")
    with pytest.raises(ValueError, match="both center and width"):
        Window(center=10)


def test_explicit_window_beats_meta_and_minmax_fallback():
    meta_img = MetaTensor(torch.tensor([[0.0, 50.0, 100.0]]), meta={"WindowCenter": [0.0], "WindowWidth": [10.0]})
    np.testing.assert_allclose(Window(center=50, width=100)(meta_img).numpy(), [[0.0, 0.5, 1.0]])
    plain = torch.tensor([[10.0, 20.0, 30.0]])  # a JPEG: no tags -> min-max
    np.testing.assert_allclose(Window()(plain).numpy(), [[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(Window()(torch.full((2, 2), 7.0)).numpy(), np.zeros((2, 2)))


def pydicom_normalised(ds, index=0, prefer_lut=True):
    """pydicom's VOI output scaled to [0, 1] with pydicom's own output range rules."""
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, index=index, prefer_lut=prefer_lut)
    if prefer_lut and ds.get("VOILUTSequence"):
        return out / (2 ** int(ds.VOILUTSequence[index].LUTDescriptor[2]) - 1)
    if ds.PixelRepresentation == 0:
        y_min, y_max = 0, 2**ds.BitsStored - 1
    else:
        y_min, y_max = -(2 ** (ds.BitsStored - 1)), 2 ** (ds.BitsStored - 1) - 1
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        y_min = y_min * ds.RescaleSlope + ds.RescaleIntercept
        y_max = y_max * ds.RescaleSlope + ds.RescaleIntercept
    return (out - y_min) / (y_max - y_min)


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_RLE.dcm", "examples_overlay.dcm", "693_J2KI.dcm"])
def test_window_from_tags_matches_pydicom(name):
    path = get_testdata_file(name, download=False)
    ds = pydicom.dcmread(path)
    img = load(path)
    n = len(meta_windows(img.meta)[0])
    assert n >= 1
    for index in range(n):  # first window by default; others with index
        ref = pydicom_normalised(ds, index=index)
        np.testing.assert_allclose(np.asarray(Window(index=index)(img)).T, ref, atol=1e-5)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_match_pydicom(tmp_path, function):
    info = write_cxr_dicom(tmp_path / f"synthetic_{function}.dcm", voi_function=function)
    ds = pydicom.dcmread(info["path"])
    img = load(info["path"])
    assert img.meta["VOILUTFunction"] == function
    arr = ds.pixel_array
    for index in range(2):
        ref = apply_windowing(arr.astype(np.float64), ds, index=index) / 4095.0
        np.testing.assert_allclose(np.asarray(Window(index=index)(img)).T, ref, atol=1e-5)


def test_voi_lut_sequence_preferred_like_pydicom(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_lut.dcm", voi_lut=True)
    ds = pydicom.dcmread(info["path"])
    img = load(info["path"])
    spec = window_from_meta(img.meta)
    assert "lut" in spec and spec["lut"][0] == 0 and spec["lut"][2] == 16
    np.testing.assert_allclose(np.asarray(Window()(img)).T, pydicom_normalised(ds), atol=1e-6)
    # prefer_lut=False falls back to the first window, like pydicom
    np.testing.assert_allclose(
        np.asarray(Window(prefer_lut=False)(img)).T, pydicom_normalised(ds, prefer_lut=False), atol=1e-5
    )


def test_windowd_uses_each_images_meta(tmp_path):
    a = write_cxr_dicom(tmp_path / "synthetic_a.dcm", windows=[(1000.0, 500.0)])
    b = write_cxr_dicom(tmp_path / "synthetic_b.dcm", windows=[(3000.0, 200.0)])
    d = {"a": load(a["path"]), "b": load(b["path"]), "c": torch.tensor([[1.0, 3.0]])}
    out = Windowd(["a", "b", "c"])(d)
    ref_a = pydicom_normalised(pydicom.dcmread(a["path"]))
    ref_b = pydicom_normalised(pydicom.dcmread(b["path"]))
    np.testing.assert_allclose(np.asarray(out["a"]).T, ref_a, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["b"]).T, ref_b, atol=1e-5)
    np.testing.assert_allclose(out["c"].numpy(), [[0.0, 1.0]])
    assert isinstance(out["a"], MetaTensor) and out["a"].meta["WindowCenter"] == 1000.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU here")
def test_gpu_same_as_cpu(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_gpu.dcm", voi_lut=True)
    img = load(info["path"])
    for w in (Window(), Window(prefer_lut=False), Window(preset="lung")):
        cpu = w(img)
        gpu = w(img.to("cuda"))
        assert gpu.device.type == "cuda"
        np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-6)
