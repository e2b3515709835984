"""CLAHE / CLAHEd against skimage.exposure.equalize_adapthist (the reference semantics)."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from skimage import exposure

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms import CLAHE, CLAHEd
from cadpipe.transforms.clahe import clahe_image as clahe_mod
from cadpipe.transforms.clahe.transforms import clahe_2d


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


# ------------------------------------------------------------------ clahe_batch (vectorised, batched kernel)
from cadpipe.transforms.clahe import clahe_batched, clahe_vectorised  # noqa: E402
from cadpipe.transforms.clahe.transforms import clahe_batch  # noqa: E402

BATCH_CASES = [
    # (h, w, dtype, maxv, kernel_size (rows, cols), clip_limit, nbins)
    (96, 128, np.uint8, 255, None, 0.01, 256),  # 8-bit
    (131, 97, np.uint16, 4095, None, 0.01, 256),  # 12-bit, sizes not divisible by the kernel
    (64, 80, np.uint16, 65535, (9, 30), 0.05, 100),  # full 16-bit range (values >= 2**15)
    (120, 90, np.float64, 1.0, (17, 13), 0.03, 128),  # float in [0, 1]
    (75, 110, np.float32, 0.8, 20, 0.0, 64),  # plain AHE
    (40, 33, np.uint8, 200, 50, 0.01, 256),  # kernel larger than the image
    (150, 140, np.uint16, 4095, 16, 1.0, 256),  # no clipping
    (48, 48, np.uint8, 255, 6, 0.01, 256),  # clip at 1 count: heavy residual redistribution
    (70, 90, np.uint16, 1000, 20, 0.01, 16),  # few bins, small tiles
]


def assert_same_levels(a, b):
    """The two kernels (vectorised, per image) round the interpolation differently: an interpolated level
    within ~1e-3 of an integer can truncate one level apart in a few pixels; otherwise equal."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert diff.mean() <= 1e-6 and diff.max() <= 2e-4, (diff.mean(), diff.max())


def vec(img, **kw):
    """clahe_batch's vectorised kernel on one numpy (rows, cols) image; numpy float32 out."""
    out = clahe_batch(torch.from_numpy(np.ascontiguousarray(img))[None, None], impl="vectorised", **kw)
    assert out.dtype == torch.float32 and out.shape == (1, 1) + img.shape
    return out[0, 0].numpy()


@pytest.mark.parametrize("h,w,dtype,maxv,kernel_size,clip_limit,nbins", BATCH_CASES)
def test_batch_vectorised_matches_skimage(h, w, dtype, maxv, kernel_size, clip_limit, nbins):
    img = natural(h, w, seed=h * w, dtype=dtype, maxv=maxv)
    ref = exposure.equalize_adapthist(img, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    out = vec(img, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    assert np.abs(out - ref).mean() <= 1e-4
    assert out.min() == 0.0 and out.max() == 1.0
    plain = (img - img.min()) / (img.max() - img.min())
    assert np.abs(out - plain).mean() > 0.01  # really equalised
    # the CPU per-image kernel gives the same result
    assert_same_levels(out, clahe_2d(torch.from_numpy(img), kernel_size, clip_limit, nbins).numpy())


def test_batch_odd_size_large_image():
    img = natural(1001, 777, seed=21, dtype=np.uint16, maxv=4095)
    ref = exposure.equalize_adapthist(img, kernel_size=(130, 90))
    assert np.abs(vec(img, kernel_size=(130, 90)) - ref).mean() <= 1e-4


@pytest.mark.parametrize("dtype,value", [(np.uint16, 1000), (np.uint8, 7), (np.float32, 0.25), (np.uint16, 0)])
def test_batch_constant_image(dtype, value):
    img = np.full((32, 40), value, dtype)
    ref = exposure.equalize_adapthist(img)
    np.testing.assert_allclose(vec(img), ref, atol=1e-6)


def test_batch_constant_float_outside_unit_range_is_level_0():
    """skimage refuses floats outside [-1, 1]; a constant one (e.g. an all-air CT slice) counts as level 0."""
    img = np.full((32, 40), -1024.0, np.float32)
    ref = exposure.equalize_adapthist(np.zeros((32, 40), np.float32))
    np.testing.assert_allclose(vec(img), ref, atol=1e-6)
    np.testing.assert_array_equal(clahe_2d(torch.from_numpy(img)).numpy(), vec(img))


def test_batch_one_bright_pixel():
    img = np.full((64, 72), 100, np.uint16)
    img[40, 9] = 4095
    ref = exposure.equalize_adapthist(img)
    out = vec(img)
    assert np.abs(out - ref).mean() <= 1e-4 and np.abs(out - ref).max() < 2e-4


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.float32, torch.float64])
def test_batch_other_dtypes_as_uint16(dtype):
    """Raw 12-bit values as int16/int32 give the uint16 result; as float (outside [0, 1]) they are quantised
    through 16 bits first (within 1e-4)."""
    img = natural(90, 70, seed=22, dtype=np.uint16, maxv=4095)
    ref = vec(img)
    out = clahe_batch(torch.from_numpy(img.astype(np.int32)).to(dtype)[None, None], impl="vectorised")[0, 0]
    if dtype in (torch.int16, torch.int32):
        np.testing.assert_array_equal(out.numpy(), ref)
    else:
        assert np.abs(out.numpy() - ref).mean() <= 1e-4


def test_batch_wide_int_and_negative_values():
    """int32 with a range above 65535 is treated as float (min-max to 16 bits); negative ints are min-max
    rescaled directly; both as the per-image kernel does."""
    base = natural(60, 50, seed=23, dtype=np.float64)
    for img in ((base * 300000 - 100000).astype(np.int32), (base * 4000 - 2000).astype(np.int16),
                (base * 6 - 3).astype(np.float64)):
        assert_same_levels(vec(img), clahe_2d(torch.from_numpy(img)).numpy())


def test_batch_equals_per_image_and_mixed_batch():
    """A batch of images of different dtype ranges and contents: each equals its own single-image result."""
    imgs = [natural(80, 100, seed=s, dtype=np.uint16, maxv=m) for s, m in ((30, 4095), (31, 1000), (32, 65535))]
    imgs.append(np.full((80, 100), 77, np.uint16))  # constant, in the same batch
    x = torch.from_numpy(np.stack(imgs)).view(2, 2, 80, 100)
    out = clahe_batch(x, kernel_size=(23, 17), impl="vectorised")
    assert out.shape == (2, 2, 80, 100) and out.dtype == torch.float32
    for i, img in enumerate(imgs):
        single = vec(img, kernel_size=(23, 17))
        np.testing.assert_allclose(out.view(4, 80, 100)[i].numpy(), single, atol=1e-6)
        if i < 3:  # (the constant one: see test_batch_flat_regions_float_noise)
            ref = exposure.equalize_adapthist(img, kernel_size=(23, 17))
            assert np.abs(single - ref).mean() <= 1e-4
    # the per-image CPU path (what "auto" picks on the CPU) gives the same batch result
    assert_same_levels(clahe_batch(x, kernel_size=(23, 17)).numpy(), out.numpy())


def test_batch_flat_regions_float_noise():
    """Where the four neighbouring tile mappings are equal (a constant image, or few bins all at the clip
    limit), skimage's float32 sum of the four weighted terms can fall just below the integer level and be
    truncated one level down in some pixels; ours stays on the level. With few output levels the rescale
    magnifies that: documented, not matched. Both kernels agree with each other."""
    img = np.full((80, 100), 77, np.uint16)
    ref = exposure.equalize_adapthist(img, kernel_size=(23, 17))
    assert set(np.unique(ref)) == {0.0, 1.0}  # skimage: 0/1 speckle from a constant image
    np.testing.assert_array_equal(vec(img, kernel_size=(23, 17)), 1.0)
    img = natural(70, 90, seed=70 * 90, dtype=np.uint16, maxv=1000)
    out = vec(img, kernel_size=20, nbins=7)
    assert_same_levels(out, clahe_2d(torch.from_numpy(img), 20, 0.01, 7).numpy())
    assert np.abs(out - exposure.equalize_adapthist(img, kernel_size=20, nbins=7)).mean() < 1e-3


def test_batch_small_chunks_same_result(monkeypatch):
    """Row chunks that split images (and a jump window of 4 redistribution steps) change nothing."""
    x = torch.from_numpy(np.stack([natural(50, 60, seed=s, dtype=np.uint8, maxv=255) for s in range(3)]))[:, None]
    ref = clahe_batch(x, kernel_size=7, impl="vectorised")
    monkeypatch.setattr(clahe_vectorised, "_CHUNK_PX", 130)
    monkeypatch.setattr(clahe_vectorised, "_CLIP_JUMP", 1)
    np.testing.assert_array_equal(clahe_batch(x, kernel_size=7, impl="vectorised").numpy(), ref.numpy())


def test_batch_list_of_sizes():
    a = torch.from_numpy(natural(40, 50, seed=40, dtype=np.uint16, maxv=4095))[None]
    b = torch.from_numpy(natural(64, 30, seed=41, dtype=np.uint16, maxv=4095))[None]
    c = torch.from_numpy(natural(40, 50, seed=42, dtype=np.uint16, maxv=4095))[None]
    outs = clahe_batch([a, b, c], impl="vectorised")
    assert [tuple(o.shape) for o in outs] == [(1, 40, 50), (1, 64, 30), (1, 40, 50)]
    for t, o in zip((a, b, c), outs):
        np.testing.assert_array_equal(o.numpy(), clahe_batch(t[None], impl="vectorised")[0].numpy())


@pytest.mark.parametrize("jump", [1, 64])
@pytest.mark.parametrize("nbins", [7, 64, 256, 600])
def test_clip_histograms_vectorised_matches_skimage_exactly(nbins, jump, monkeypatch):
    """The all-tiles-in-step clip + redistribution equals skimage's per-tile loop, count for count."""
    from skimage.exposure._adapthist import clip_histogram

    monkeypatch.setattr(clahe_vectorised, "_CLIP_JUMP", jump)  # 1: many rounds of plain steps
    rng = np.random.default_rng(nbins)
    for clim_frac in (0.0005, 0.002, 0.02, 0.3):
        n_px = 3000
        hists = np.stack(
            [np.bincount(rng.geometric(rng.uniform(0.01, 0.5), n_px) % nbins, minlength=nbins) for _ in range(6)]
            + [np.bincount(np.full(n_px, nbins // 2), minlength=nbins)]  # one bin: all excess
        )
        clim = int(max(clim_frac * n_px, 1))
        ref = np.stack([clip_histogram(h.copy(), clim) for h in hists])
        out = clahe_vectorised._clip_histograms(torch.from_numpy(hists.astype(np.int32)), clim).numpy()
        np.testing.assert_array_equal(out, ref)


def test_batch_bad_input():
    with pytest.raises(ValueError, match="B, C, H, W"):
        clahe_batch(torch.zeros(8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        clahe_batch(np.zeros((1, 1, 8, 8)))
    with pytest.raises(TypeError, match="real dtype"):
        clahe_batch(torch.zeros(1, 1, 8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="list item 1"):
        clahe_batch([torch.zeros(1, 8, 8), torch.zeros(8, 8)])
    with pytest.raises(ValueError, match="impl"):
        clahe_batch(torch.zeros(1, 1, 8, 8), impl="fast")
    with pytest.raises(ValueError, match="clip_limit"):
        clahe_batch(torch.zeros(1, 1, 8, 8), clip_limit=-1)
    img = torch.zeros(2, 1, 16, 16)
    img[1, 0, 3, 4] = float("inf")
    with pytest.raises(CadpipeInputError, match="case9.png: CLAHE input contains NaN or infinite values"):
        clahe_batch(img, path="case9.png", impl="vectorised")


def test_transform_uses_vectorised_kernel_when_asked():
    img = natural(70, 50, seed=43, dtype=np.uint16, maxv=4095)
    vol = np.stack([img, img[::-1]], -1)[None]  # (1, H, W, D)
    assert_same_levels(CLAHE(impl="vectorised")(vol), CLAHE()(vol))
    with pytest.raises(ValueError, match="impl"):
        CLAHE(impl="gpu")


def test_clip_histograms_fuzz_against_skimage():
    """Many tile-like histograms (narrow peaks anywhere: long step == 1 runs, several passes) at once, with
    the clip limits CLAHE uses (a fraction of the tile's pixels)."""
    from skimage.exposure._adapthist import clip_histogram

    rng = np.random.default_rng(5)
    for nbins in (16, 256):
        for frac in (0.001, 0.01, 0.05):
            n_px = int(rng.integers(50, 200000))
            hists = []
            for _ in range(60):
                centre, width = rng.uniform(0, nbins), rng.uniform(0.3, nbins / 3)
                vals = np.clip(np.round(rng.normal(centre, width, n_px)), 0, nbins - 1).astype(np.int64)
                hists.append(np.bincount(vals, minlength=nbins))
            hists = np.stack(hists)
            clim = int(max(frac * n_px, 1))
            ref = np.stack([clip_histogram(h.copy(), clim) for h in hists])
            out = clahe_vectorised._clip_histograms(torch.from_numpy(hists.astype(np.int32)), clim).numpy()
            np.testing.assert_array_equal(out, ref)


# ---- Triton kernels (clahe_triton): on the CPU through Triton's interpreter (TRITON_INTERPRET=1) ----


@pytest.fixture(scope="module")
def triton_interp():
    """``cadpipe.transforms.clahe.clahe_triton`` under Triton's interpreter (CPU tensors), on machines without CUDA.

    ``TRITON_INTERPRET=1`` takes effect when the module is first imported (the kernels are decorated then),
    so it is set here, for the rest of the test process, before that import (and Triton's)."""
    import os
    import sys

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the compiled kernels are tested by the gpu tests")
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton")
    from cadpipe.transforms.clahe import clahe_triton as ct

    if not ct.INTERPRET:
        pytest.skip("clahe_triton was imported before TRITON_INTERPRET=1 was set")
    clahe_batched._TRITON[:] = [ct]
    return ct


def tri(img, **kw):
    """clahe_batch's Triton kernels on one numpy (rows, cols) image; numpy float32 out."""
    out = clahe_batch(torch.from_numpy(np.ascontiguousarray(img))[None, None], impl="triton", **kw)
    assert out.dtype == torch.float32 and out.shape == (1, 1) + img.shape
    return out[0, 0].numpy()


TRITON_CASES = [
    # (dtype, maxv, kernel_size, clip_limit, nbins) on 64x48 images (the interpreter is slow)
    (np.uint16, 4095, (32, 24), 0.01, 64),
    (np.uint8, 255, (21, 17), 0.02, 32),  # odd kernels, reflect-padded tiles
    (np.float32, 1.0, (32, 24), 0.01, 64),  # float: levels through _Quantiser
    (np.int16, 1000, (27, 25), 0.05, 16),
    (np.uint16, 65535, (64, 48), 0.0, 128),  # one tile, plain AHE
]


@pytest.mark.parametrize("dtype,maxv,kernel_size,clip_limit,nbins", TRITON_CASES)
def test_triton_matches_vectorised_and_skimage(triton_interp, dtype, maxv, kernel_size, clip_limit, nbins):
    img = natural(64, 48, seed=int(maxv) + nbins, dtype=dtype, maxv=maxv)
    kw = dict(kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    out = tri(img, **kw)
    assert_same_levels(out, vec(img, **kw))
    assert out.min() == 0.0 and out.max() == 1.0
    if dtype != np.int16:  # (skimage maps negative/signed values differently, see clahe_batch)
        ref = exposure.equalize_adapthist(img, **kw)
        assert np.abs(out - ref).mean() <= 1e-4


@pytest.mark.parametrize("dtype,value", [(np.uint16, 1000), (np.uint8, 7), (np.int16, -5)])
def test_triton_constant_image(triton_interp, dtype, value):
    """As the vectorised kernel (see test_batch_constant_image and test_batch_flat_regions_float_noise for
    skimage's own result on constant images)."""
    img = np.full((64, 48), value, dtype)
    np.testing.assert_array_equal(tri(img, kernel_size=(32, 24)), vec(img, kernel_size=(32, 24)))


def test_triton_one_bright_pixel(triton_interp):
    """Equal to the vectorised kernel; within one output level of skimage, whose float32 sums in the flat
    background fall just below the level (see test_batch_flat_regions_float_noise)."""
    img = np.full((64, 48), 100, np.uint16)
    img[40, 9] = 4095
    out = tri(img, kernel_size=(32, 24), nbins=64)
    np.testing.assert_array_equal(out, vec(img, kernel_size=(32, 24), nbins=64))
    ref = exposure.equalize_adapthist(img, kernel_size=(32, 24), nbins=64)
    assert np.abs(out - ref).max() < 2e-4


def test_triton_batch_equals_single_images(triton_interp):
    imgs = [natural(64, 48, seed=s, dtype=np.uint16, maxv=m) for s, m in ((50, 4095), (51, 300), (52, 65535))]
    imgs.append(np.full((64, 48), 9, np.uint16))
    x = torch.from_numpy(np.stack(imgs)).view(2, 2, 64, 48)
    out = clahe_batch(x, kernel_size=(32, 24), nbins=64, impl="triton")
    assert out.shape == (2, 2, 64, 48) and out.dtype == torch.float32
    for i, img in enumerate(imgs):
        np.testing.assert_allclose(out.view(4, 64, 48)[i].numpy(), tri(img, kernel_size=(32, 24), nbins=64),
                                   atol=1e-6)
    assert_same_levels(out.numpy(), clahe_batch(x, kernel_size=(32, 24), nbins=64, impl="vectorised").numpy())


@pytest.mark.parametrize("nbins", [7, 64])
def test_triton_clip_kernel_matches_skimage_exactly(triton_interp, nbins):
    """The per-tile clip + redistribution kernel equals skimage's clip_histogram, count for count (seen
    through the tile mapping it writes: the floored cumulative sum)."""
    from skimage.exposure._adapthist import clip_histogram

    rng = np.random.default_rng(nbins)
    n_px = 3000
    hists = np.stack(
        [np.bincount(rng.geometric(rng.uniform(0.01, 0.5), n_px) % nbins, minlength=nbins) for _ in range(5)]
        + [np.bincount(np.full(n_px, nbins // 2), minlength=nbins)]  # one bin: all excess
    )
    for clim_frac in (0.0005, 0.02, 0.3):
        clim = int(max(clim_frac * n_px, 1))
        ref = np.stack([clip_histogram(h.copy(), clim) for h in hists])
        ref_lut = np.floor(np.minimum(ref.cumsum(1) * ((clahe_mod.NR_OF_GRAY - 1) / n_px), 16383))
        hist = torch.from_numpy(hists.astype(np.int32)).reshape(-1)
        lut = torch.empty(hist.numel(), dtype=torch.float32)
        scale = torch.full((1,), (clahe_mod.NR_OF_GRAY - 1) / n_px, dtype=torch.float64)
        triton_interp._clip_lut_kernel[(len(hists),)](hist, lut, scale, nbins, clim,
                                                       NB=triton_interp._pow2(nbins))
        np.testing.assert_array_equal(lut.view(len(hists), nbins).numpy(), ref_lut)


def test_triton_falls_back_where_unsupported(triton_interp):
    """float64 input and nbins > 4096 run the vectorised kernel under impl="triton"."""
    img = natural(40, 30, seed=60, dtype=np.float64)
    np.testing.assert_array_equal(tri(img), vec(img))
    img = natural(40, 30, seed=61, dtype=np.uint16, maxv=65535)
    np.testing.assert_array_equal(tri(img, nbins=5000), vec(img, nbins=5000))


def test_triton_on_cpu_needs_the_interpreter(triton_interp, monkeypatch):
    monkeypatch.setattr(triton_interp, "INTERPRET", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        clahe_batch(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), impl="triton")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
def test_gpu_triton_graph_and_vectorised_agree():
    """On CUDA: the Triton kernels (eager and CUDA-graph replay, twice with new data of the same shape) and
    the vectorised kernel give the same levels, close to skimage; float32 input through the Triton path."""
    pytest.importorskip("triton")
    imgs = [natural(300, 260, seed=s, dtype=np.uint16, maxv=4095) for s in (70, 71, 72)]
    x = torch.from_numpy(np.stack(imgs))[:, None].cuda()
    vec_out = clahe_batch(x, impl="vectorised").cpu().numpy()
    tri_out = clahe_batch(x, impl="triton").cpu().numpy()
    assert_same_levels(tri_out, vec_out)
    for i, img in enumerate(imgs):
        assert np.abs(tri_out[i, 0] - exposure.equalize_adapthist(img)).mean() <= 1e-4
    g1 = clahe_batch(x, impl="triton", graph=True)
    g2 = clahe_batch(x.flip(0), impl="triton", graph=True)
    np.testing.assert_array_equal(g1.cpu().numpy(), tri_out)
    np.testing.assert_array_equal(g2.cpu().numpy(), tri_out[::-1])
    f = torch.from_numpy(np.stack(imgs).astype(np.float32) / 4095)[:, None].cuda()
    assert_same_levels(clahe_batch(f, impl="triton").cpu().numpy(), clahe_batch(f, impl="vectorised").cpu().numpy())


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from cadpipe.transforms.clahe import clahe_triton as ct

target = GPUTarget("cuda", 90, 32)  # H100/H200


def comp(fn, sig, consts, **opts):
    triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target, options=opts)


dims = {n: "i32" for n in ("H", "W", "k0", "k1", "nt0", "nt1", "nbins")}
for ptr, u16 in (("*i16", True), ("*u8", False), ("*i8", False), ("*i32", False)):
    comp(ct._minmax_kernel, {"x_ptr": ptr, "part_ptr": "*i32", "HW": "i32", "P": "i32", "U16": "constexpr",
                             "BLOCK": "constexpr"}, {"U16": u16, "BLOCK": 1024})
    comp(ct._hist_kernel, {"x_ptr": ptr, "qoff_ptr": "*i32", "table_ptr": "*i32", "hist_ptr": "*i32", **dims,
                           "U16": "constexpr", "NB2": "constexpr", "BR": "constexpr", "BC": "constexpr"},
         {"U16": u16, "NB2": 256, "BR": 16, "BC": 128})
    comp(ct._map_kernel, {"x_ptr": ptr, "qoff_ptr": "*i32", "table_ptr": "*i32", "lut_ptr": "*fp32",
                          "wy_ptr": "*fp32", "wx_ptr": "*fp32", "out_ptr": "*fp32", "part_ptr": "*fp32", **dims,
                          "U16": "constexpr", "BR": "constexpr", "BC": "constexpr"}, {"U16": u16, "BR": 16, "BC": 256})
for mode in (0, 1, 2):
    comp(ct._table_kernel, {"part_ptr": "*i32", "P": "i32", "qoff_ptr": "*i32", "table_ptr": "*i32", "L": "i32",
                            "bin_size": "i32", "CONST_MODE": "constexpr", "BLOCK_P": "constexpr",
                            "BLOCK": "constexpr"}, {"CONST_MODE": mode, "BLOCK_P": 1024, "BLOCK": 1024})
for nb, warps in ((256, 1), (4096, 4)):
    comp(ct._clip_lut_kernel, {"hist_ptr": "*i32", "lut_ptr": "*fp32", "scale_ptr": "*fp64", "nbins": "i32",
                               "clim": "i32", "NB": "constexpr"}, {"NB": nb}, num_warps=warps)
comp(ct._rescale_kernel, {"out_ptr": "*fp32", "part_ptr": "*fp32", "HW": "i32", "P": "i32", "BLOCK_P": "constexpr",
                          "BLOCK": "constexpr"}, {"BLOCK_P": 1024, "BLOCK": 4096})
print("compiled")
"""


def test_triton_kernels_compile_for_sm90():
    """Every Triton kernel compiles to a cubin for an H100/H200 (sm_90) with the ptxas that ships with
    Triton, no GPU needed (a separate process: the kernels here may be the interpreter's)."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(clahe_batched.__file__).resolve().parents[3]) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0 and "ptxas" in res.stderr and "not found" in res.stderr.lower():
        pytest.skip("no ptxas for Triton's CUDA backend here")
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-3000:]
