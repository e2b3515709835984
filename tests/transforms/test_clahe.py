"""CLAHE / CLAHEd against skimage.exposure.equalize_adapthist (the reference semantics)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage import exposure

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms import CLAHE, CLAHEd
from cadpipe.transforms import clahe as clahe_mod
from cadpipe.transforms.clahe import clahe_2d


def natural(h, w, seed=0, dtype=np.float64, maxv=1.0):
    """A natural-ish image: smooth shading, an edge, a bright blob, texture noise; values span [0, maxv]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    f = 0.45 + 0.25 * np.sin(xx / (w / 5.3)) * np.cos(yy / (h / 3.1)) + 0.15 * (xx > 0.6 * w)
    f += 0.3 * np.exp(-((xx - 0.3 * w) ** 2 + (yy - 0.6 * h) ** 2) / (0.02 * h * w))
    f += 0.06 * rng.normal(size=(h, w))
    f = (f - f.min()) / (f.max() - f.min())
    if np.issubdtype(dtype, np.integer):
        return np.round(f * maxv).astype(dtype)
    return (f * maxv).astype(dtype)


def ours_2d(img, **kw):
    """Run CLAHE on a numpy (rows, cols) image the MONAI way: channel-first, X = columns (img.T)."""
    ks = kw.pop("kernel_size", None)
    if ks is not None and not np.isscalar(ks):
        ks = tuple(ks)[::-1]  # skimage's (rows, cols) -> our (X, Y) = (cols, rows)
    out = CLAHE(kernel_size=ks, **kw)(np.ascontiguousarray(img.T)[None])
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (1,) + img.T.shape
    return out[0].T


CASES = [
    # (h, w, dtype, maxv, kernel_size, clip_limit, nbins)
    (96, 128, np.uint8, 255, None, 0.01, 256),
    (131, 97, np.uint16, 4095, None, 0.01, 256),  # 12-bit, sizes not divisible by the kernel
    (120, 90, np.float64, 1.0, (17, 13), 0.03, 128),
    (75, 110, np.float32, 0.8, 20, 0.0, 64),  # plain AHE, float32 inside [0, 1]
    (64, 80, np.uint16, 65535, (9, 30), 0.05, 100),  # full 16-bit range
    (40, 33, np.uint8, 200, 50, 0.01, 256),  # kernel larger than the image
    (150, 140, np.uint16, 4095, 16, 1.0, 256),  # clip_limit >= 1: no clipping
]


# (histogram per tile, histogram per value (else per bin), mapping by per-row tables (else 4 corners))
PATHS = {
    "tiles-values-rows": (True, True, True),
    "tiles-bins-corners": (True, False, False),
    "chunks-bins-rows": (False, False, True),
    "chunks-values-corners": (False, True, False),
}


@pytest.fixture(params=list(PATHS))
def mapping_path(request, monkeypatch):
    """Run a test through each implementation choice that clahe_2d makes by image, tile and table sizes."""
    per_tile, per_value, row_tables = PATHS[request.param]
    monkeypatch.setattr(clahe_mod, "_TILE_HIST_MIN_PX", 1 if per_tile else 1 << 62)
    monkeypatch.setattr(clahe_mod, "_BIN_HIST_RATIO", 1e18 if per_value else 0)
    monkeypatch.setattr(clahe_mod, "_ROW_TABLE_RATIO", 1e9 if row_tables else 0)
    return request.param


@pytest.mark.parametrize("h,w,dtype,maxv,kernel_size,clip_limit,nbins", CASES)
def test_matches_skimage(h, w, dtype, maxv, kernel_size, clip_limit, nbins, mapping_path):
    img = natural(h, w, seed=h + w, dtype=dtype, maxv=maxv)
    ref = exposure.equalize_adapthist(img, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    out = ours_2d(img, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    diff = np.abs(out.astype(np.float64) - ref)
    assert diff.mean() < 1e-3, diff.mean()  # the issue asks < 0.01; we are exact up to float32 rounding
    assert diff.max() < 2e-4, diff.max()  # at most a one-level (1/16383) floor flip
    assert out.min() == 0.0 and out.max() == 1.0
    # CLAHE really changes the image (guards against an identity/min-max implementation)
    plain = (img - img.min()) / (img.max() - img.min())
    assert np.abs(out - plain).mean() > 0.02


def test_clip_redistribution_heavy_case(mapping_path):
    """Tiny tiles (clip at 1 count) exercise skimage's residual redistribution loop."""
    img = natural(48, 48, seed=3, dtype=np.uint8, maxv=255)
    ref = exposure.equalize_adapthist(img, kernel_size=6, clip_limit=0.01, nbins=256)
    out = ours_2d(img, kernel_size=6, clip_limit=0.01, nbins=256)
    assert np.abs(out - ref).mean() < 1e-4


def test_constant_image_like_skimage():
    img = np.full((32, 40), 1000, np.uint16)
    ref = exposure.equalize_adapthist(img)
    np.testing.assert_allclose(ours_2d(img), ref, atol=1e-6)


def test_axes_and_kernel_order():
    """kernel_size follows the tensor's own axes: (X, Y) on a (C, X, Y) tensor."""
    img = natural(90, 60, seed=5, dtype=np.uint16, maxv=4095)
    ref = exposure.equalize_adapthist(img, kernel_size=(30, 10))  # rows 30, cols 10
    out = CLAHE(kernel_size=(10, 30))(img.T[None])[0].T
    assert np.abs(out - ref).mean() < 1e-3
    wrong = CLAHE(kernel_size=(30, 10))(img.T[None])[0].T
    assert np.abs(wrong - ref).mean() > 5e-3


def test_multichannel_per_channel():
    a = natural(70, 50, seed=1, dtype=np.uint16, maxv=4095)
    b = natural(70, 50, seed=2, dtype=np.uint16, maxv=1000)[::-1].copy()
    out = CLAHE(clip_limit=0.02)(np.stack([a, b]))
    assert out.shape == (2, 70, 50)
    for ch, img in enumerate((a, b)):
        ref = exposure.equalize_adapthist(img, clip_limit=0.02)
        assert np.abs(out[ch] - ref).mean() < 1e-3


def test_volume_slice_wise_along_last_axis(mapping_path):
    vol = np.stack([natural(48, 40, seed=s, dtype=np.float32) * (s + 1) / 4 for s in range(3)], -1)  # (H, W, D)
    out = CLAHE(kernel_size=12)(vol[None])
    assert out.shape == (1, 48, 40, 3)
    for z in range(3):
        ref = exposure.equalize_adapthist(vol[..., z], kernel_size=12)
        assert np.abs(out[0, ..., z] - ref).mean() < 1e-3


def test_tensor_in_tensor_out_dtype_device_meta(mapping_path):
    img = natural(64, 48, seed=7, dtype=np.uint16, maxv=4095)
    t = MetaTensor(torch.from_numpy(img.astype(np.int32))[None], meta={"filename_or_obj": "x.dcm"})
    out = CLAHE()(t)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.device == t.device
    assert out.meta["filename_or_obj"] == "x.dcm"
    ref = exposure.equalize_adapthist(img)
    assert np.abs(out[0].numpy() - ref).mean() < 1e-3
    plain = CLAHE(dtype=torch.float64)(torch.from_numpy(img)[None])
    assert type(plain) is torch.Tensor and plain.dtype == torch.float64
    np.testing.assert_allclose(plain.numpy(), out.numpy(), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_same_result():
    img = natural(80, 64, seed=8, dtype=np.uint16, maxv=4095)
    cpu = CLAHE()(torch.from_numpy(img)[None])
    gpu = CLAHE()(torch.from_numpy(img)[None].cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().mean() < 1e-4


def test_dict_twin():
    img = natural(50, 60, seed=9, dtype=np.uint8, maxv=255)
    d = {"image": img[None], "label": np.ones((1, 50, 60), np.uint8)}
    out = CLAHEd(keys="image", kernel_size=10, clip_limit=0.02, nbins=128)(d)
    np.testing.assert_array_equal(out["label"], d["label"])
    np.testing.assert_allclose(out["image"], CLAHE(10, 0.02, 128)(img[None]))
    assert CLAHEd(keys=["image", "missing"], allow_missing_keys=True)(d)["image"].dtype == np.float32
    with pytest.raises(KeyError):
        CLAHEd(keys="missing")(d)


def test_nan_input_names_file_and_reason():
    img = natural(32, 32, seed=10, dtype=np.float32)
    img[3, 4] = np.nan
    t = MetaTensor(torch.from_numpy(img)[None], meta={"filename_or_obj": "/data/case7.nii.gz"})
    with pytest.raises(CadpipeInputError) as err:
        CLAHE()(t)
    assert str(err.value) == "/data/case7.nii.gz: CLAHE input contains NaN or infinite values"


def test_bad_arguments():
    with pytest.raises(ValueError, match="expects"):
        CLAHE()(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="kernel_size"):
        clahe_2d(torch.zeros(8, 8), kernel_size=(2, 2, 2))
    with pytest.raises(ValueError, match="nbins"):
        CLAHE(nbins=0)


def test_num_threads_restored(mapping_path, monkeypatch):
    monkeypatch.setattr(clahe_mod, "_MIN_PX_PER_WORKER", 1)  # threads even for this tiny image
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        img = natural(40, 30, seed=11, dtype=np.uint16, maxv=4095)[None]
        a = CLAHE()(img)  # one thread
        assert torch.get_num_threads() == 2
        np.testing.assert_array_equal(a, CLAHE(num_threads=None)(img))  # 2 band threads: same result
        np.testing.assert_array_equal(CLAHE(kernel_size=7)(img), CLAHE(kernel_size=7, num_threads=3)(img))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)


@pytest.mark.parametrize("offset", [700, 30000])
def test_offset_values_like_skimage(offset, mapping_path):
    """A minimum far above 0 (indices relative to the minimum) or near it (tables padded from 0)."""
    img = (natural(70, 90, seed=12, dtype=np.uint16, maxv=1000) + offset).astype(np.uint16)
    ref = exposure.equalize_adapthist(img, kernel_size=20)
    out = ours_2d(img, kernel_size=20)
    assert np.abs(out - ref).mean() < 1e-4


@pytest.mark.parametrize("scripted", [True, False])
def test_clip_histogram_matches_skimage_exactly(scripted):
    """The batched clip + redistribution equals skimage's per-tile loop, count for count."""
    from skimage.exposure._adapthist import clip_histogram

    clip = clahe_mod._clip_histogram if scripted else clahe_mod._clip_histogram_py

    rng = np.random.default_rng(0)
    for nbins in (7, 256, 600):  # 600: the strided selection by remainder instead of the lookup table
        for clim_frac in (0.002, 0.02, 0.3):
            n_px = 3000
            hists = np.stack(
                [np.bincount(rng.geometric(rng.uniform(0.01, 0.5), n_px) % nbins, minlength=nbins) for _ in range(5)]
            )
            clim = int(max(clim_frac * n_px, 1))
            ref = np.stack([clip_histogram(h.copy(), clim) for h in hists])
            out = clip(torch.from_numpy(hists.astype(np.int64)), clim).numpy()
            np.testing.assert_array_equal(out, ref)


def test_numpy_inputs_read_only_and_big_endian():
    img = natural(40, 36, seed=13, dtype=np.uint16, maxv=4095)[None]
    ref = CLAHE()(img)
    frozen = img.copy()
    frozen.setflags(write=False)
    np.testing.assert_array_equal(CLAHE()(frozen), ref)
    np.testing.assert_array_equal(CLAHE()(img.astype(">u2")), ref)  # e.g. from a big-endian file


@pytest.mark.parametrize("per_value", [True, False])
def test_torchscript_and_plain_python_agree(monkeypatch, per_value):
    """The per-tile histogram and per-row-table mapping loops give the same result compiled by TorchScript
    and as plain Python."""
    monkeypatch.setattr(clahe_mod, "_ROW_TABLE_RATIO", 1e9)
    monkeypatch.setattr(clahe_mod, "_TILE_HIST_MIN_PX", 1)
    monkeypatch.setattr(clahe_mod, "_BIN_HIST_RATIO", 1e18 if per_value else 0)
    imgs = [natural(60, 70, seed=14, dtype=np.uint16, maxv=4095), natural(60, 70, seed=15, dtype=np.float32) * 3 - 1,
            (natural(60, 70, seed=16, dtype=np.uint16, maxv=1000) + 5000).astype(np.uint16)]
    scripted = [CLAHE(kernel_size=(16, 25))(img[None]) for img in imgs]
    assert isinstance(clahe_mod._scripted(clahe_mod._map_rows_py), torch.jit.ScriptFunction)
    assert isinstance(clahe_mod._scripted(clahe_mod._hist_tiles_py), torch.jit.ScriptFunction)
    try:
        monkeypatch.setattr(clahe_mod, "_USE_TORCHSCRIPT", False)
        clahe_mod._scripted.cache_clear()
        assert clahe_mod._scripted(clahe_mod._map_rows_py) is clahe_mod._map_rows_py
        for img, ref in zip(imgs, scripted):
            np.testing.assert_array_equal(CLAHE(kernel_size=(16, 25))(img[None]), ref)
    finally:
        monkeypatch.undo()
        clahe_mod._scripted.cache_clear()
