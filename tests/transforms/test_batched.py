"""Batched device-side steps against the per-item transforms they replace (CPU; the same code runs on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage, NormalizeIntensity, Resize

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.transforms import batched as B
from cadpipe.transforms.clahe.transforms import CLAHE
from cadpipe.transforms.readers.io_dicom import DicomReader
from cadpipe.transforms.readers.io_raw import read_raw_2d
from cadpipe.transforms.window import Window


def test_upload_keeps_uint16_values_and_other_dtypes():
    a = np.array([[0, 1, 40000], [65535, 32768, 7]], dtype=np.uint16)
    x = B.upload([a, a[::-1].copy()], "cpu")
    assert x.shape == (2, 2, 3)
    np.testing.assert_array_equal(x[0].numpy(), a.astype(np.int64))
    np.testing.assert_array_equal(x[1].numpy(), a[::-1].astype(np.int64))
    s = np.array([[-1000, 3000]], dtype=np.int16)
    np.testing.assert_array_equal(B.upload([torch.from_numpy(s)], "cpu")[0].numpy(), s)


@pytest.mark.parametrize("photometric,kw", [
    ("MONOCHROME2", {}), ("MONOCHROME1", {}), ("MONOCHROME1", {"voi_function": "LINEAR_EXACT"}),
    ("MONOCHROME2", {"voi_lut": True}), ("MONOCHROME1", {"voi_lut": True}), ("MONOCHROME2", {"voi_function": "SIGMOID"}),
    ("MONOCHROME2", {"windows": []}),
])
def test_modality_and_window_match_reader_and_window(tmp_path, photometric, kw):
    paths = [str(tmp_path / f"synthetic_{i}.dcm") for i in range(2)]
    for i, p in enumerate(paths):
        write_cxr_dicom(p, rows=40, cols=30, photometric=photometric, seed=i, **kw)
    raws = [read_raw_2d(p) for p in paths]
    assert all(r.pixels.dtype == np.uint16 for r in raws)  # sent as stored
    x = B.modality_lut(B.upload([r.pixels for r in raws], "cpu"), [r.slope for r in raws],
                       [r.intercept for r in raws], [r.inversion_sum for r in raws])
    ref = [LoadImage(image_only=True)(p, reader=DicomReader()) for p in paths]
    for i in range(2):  # reader output is (cols, rows)
        np.testing.assert_allclose(x[i].numpy(), ref[i].numpy().T, atol=1e-4)
    w = Window()
    y = B.window_batch(x, [w.spec_for(r.meta) for r in raws])
    for i in range(2):
        np.testing.assert_allclose(y[i].numpy(), w(ref[i]).numpy().T, atol=2e-6)


def test_window_batch_mixed_specs_equal_window_per_image():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-50, 4200, (7, 9, 11)).astype(np.float32))
    x[6] = 5.0  # constant image: min-max gives zeros
    lut = (0, np.round(np.linspace(0, 255, 300)).astype(np.int64), 8)
    specs = [{"center": 2000.0, "width": 1500.0, "function": "LINEAR"},
             {"center": 2000.0, "width": 1500.0, "function": "LINEAR_EXACT"},
             {"center": 1000.0, "width": 800.0, "function": "SIGMOID"},
             {"center": 100.0, "width": 1.0, "function": "LINEAR"},
             {"lut": lut}, None, None]
    y = B.window_batch(x, specs, -1.0, 2.0)
    for i, spec in enumerate(specs):
        ref = Window._apply(x[i].clone(), spec) * 3.0 - 1.0
        np.testing.assert_allclose(y[i].numpy(), ref.numpy(), atol=2e-6, err_msg=str(spec))
    with pytest.raises(ValueError, match="width"):
        B.window_batch(x[:1], [{"center": 0.0, "width": 0.5, "function": "LINEAR"}])


def test_clahe_resize_normalize_match_per_item_transforms():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0, 1, (3, 50, 37)).astype(np.float32))
    x[2] = 0.25  # constant image: normalisation divides by 1
    c = B.clahe_images(x, (8, 6), 0.02, 64)
    v = B.clahe_images(x, (8, 6), 0.02, 64, impl="vectorised")  # the kernel a GPU runs, here on the CPU
    for i in range(3):
        ref = CLAHE((8, 6), 0.02, 64)(x[i:i + 1].numpy())[0]
        np.testing.assert_allclose(c[i].numpy(), ref, atol=1e-6)
        np.testing.assert_allclose(v[i].numpy(), ref, atol=1e-4)
    for mode in ("area", "bilinear"):
        r = B.resize_batch(x[:, None], (20, 16), mode)
        for i in range(3):
            np.testing.assert_allclose(r[i].numpy(), Resize((20, 16), mode=mode)(x[i:i + 1]).numpy(), atol=1e-6)
    n = B.normalize_batch(x[:, None].clone())
    for i in range(3):
        np.testing.assert_allclose(n[i].numpy(), NormalizeIntensity()(x[i:i + 1].clone()).numpy(), atol=2e-5)
