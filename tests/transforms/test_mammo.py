import numpy as np
import pytest
import torch

from cadpipe.data.synthetic.ddsm import outline_chain, synthetic_mammogram
from cadpipe.transforms.mammo import (
    GEOMETRY_KEY,
    BoxesToOriginald,
    BreastCropd,
    BreastMask,
    CanonicalSided,
    ResizeLongSided,
    boxes_to_original,
)


def _image(lat, seed=0, rows=300, cols=180):
    rng = np.random.default_rng(seed)
    wall = 0 if lat == "R" else cols - 1
    cc = wall + 50 if lat == "R" else wall - 50
    _, _, _, pts = outline_chain(cc, 150, 15, rng)
    img = synthetic_mammogram(rows, cols, lat, [(pts, 900.0)], rng)
    box = np.array([[pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max() + 1, pts[:, 1].max() + 1]], np.float32)
    return img, box  # img (rows, cols); project axes: (C, X=cols, Y=rows) = img.T[None]


@pytest.mark.parametrize("lat", ["L", "R"])
def test_breast_mask_drops_label_and_background(lat):
    img, _ = _image(lat)
    t = torch.as_tensor(img.T[None].astype(np.float32))
    m = BreastMask()(t)
    assert m.shape == t.shape and m.dtype == torch.bool
    mnp = BreastMask()(img.T[None].astype(np.float32))
    assert isinstance(mnp, np.ndarray) and (mnp == m.numpy()).all()
    m = m[0].numpy().T  # rows, cols
    cols = img.shape[1]
    # film label block (top, far from the chest wall) is not breast; the chest-wall middle is
    label_col = cols - 10 if lat == "R" else 10
    assert not m[5, label_col]
    wall_col = 2 if lat == "R" else cols - 3
    assert m[150, wall_col]
    assert not m[0, label_col] and not m[299, label_col]


@pytest.mark.parametrize("lat", ["L", "R"])
def test_crop_flip_resize_boxes_and_inverse(lat):
    img, box = _image(lat, seed=3)
    t = torch.as_tensor(img.T[None].astype(np.float32))
    d = {"image": t, "box": box}
    d = BreastCropd("image", "box")(d)
    g = d[GEOMETRY_KEY]
    x0, y0, x1, y1 = g["crop"]
    assert d["image"].shape[1:] == (x1 - x0, y1 - y0)
    # the label is cropped away: nothing as bright as the label (3900) remains
    assert float(d["image"].max()) < 3800
    np.testing.assert_allclose(d["box"].numpy(), box - [x0, y0, x0, y0])
    d = CanonicalSided("image", "box")(d)
    assert d[GEOMETRY_KEY]["flipped"] == (lat == "L")
    im = d["image"][0]
    assert im[: im.shape[0] // 4].mean() > im[-im.shape[0] // 4 :].mean()  # breast (chest wall) at x = 0
    d = ResizeLongSided("image", 128, "box")(d)
    assert max(d["image"].shape[1:]) == 128
    # the mass is where the working box says: brightest inside it
    b = d["box"][0].round().int().tolist()
    inside = d["image"][0, b[0] : b[2], b[1] : b[3]].mean()
    assert inside > d["image"][0].mean() + 300
    back = boxes_to_original(d["box"], d[GEOMETRY_KEY])
    np.testing.assert_allclose(back.numpy(), box, atol=1e-3)
    out = BoxesToOriginald("box")({"box": d["box"], GEOMETRY_KEY: d[GEOMETRY_KEY]})
    np.testing.assert_allclose(out["box"].numpy(), box, atol=1e-3)


def test_empty_boxes_pass_through():
    img, _ = _image("L")
    d = {"image": torch.as_tensor(img.T[None].astype(np.float32)), "box": np.zeros((0, 4), np.float32)}
    for t in (BreastCropd("image", "box"), CanonicalSided("image", "box"), ResizeLongSided("image", 64, "box")):
        d = t(d)
    assert d["box"].shape == (0, 4)
    assert boxes_to_original(d["box"], d[GEOMETRY_KEY]).shape == (0, 4)
