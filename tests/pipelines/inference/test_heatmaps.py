import csv
import os

import numpy as np
import torch
from monai.data import MetaTensor
from monai.networks.nets import DenseNet121
from PIL import Image

from cadpipe.pipelines.inference.heatmaps import GradCAMWriter, compute_cam, normalize_map, overlay, save_heatmap, save_overlay_png


def _net():
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=4, block_config=(2, 2, 2, 2))


def test_compute_cam_shapes_range_and_mode_restored():
    net = _net().train()
    x = torch.rand(1, 40, 32)
    cam = compute_cam(net, x, "class_layers.relu", class_idx=1)
    assert cam.shape == (40, 32) and cam.dtype == np.float32
    assert cam.min() >= 0 and cam.max() <= 1
    assert net.training  # mode restored
    batch = compute_cam(net, torch.rand(3, 1, 40, 32), "class_layers.relu", class_idx=0)
    assert batch.shape == (3, 40, 32)


def test_cam_differs_between_classes():
    net = _net().eval()
    x = torch.rand(1, 32, 32)
    a = compute_cam(net, x, "class_layers.relu", 0)
    b = compute_cam(net, x, "class_layers.relu", 1)
    assert not np.allclose(a, b)


def test_normalize_constant_map_is_zero():
    assert normalize_map(np.full((3, 3), 5.0)).max() == 0


def test_overlay_png_is_transposed_to_rows_by_cols(tmp_path):
    # channel-first (C, X, Y): X = columns (8), Y = rows (5). Bright pixel at column 6, row 1.
    img = np.zeros((1, 8, 5), np.float32)
    img[0, 6, 1] = 1.0
    cam = np.zeros((8, 5), np.float32)
    cam[6, 1] = 1.0
    path = save_overlay_png(img, cam, str(tmp_path / "o.png"), alpha=0.5)
    png = np.asarray(Image.open(path))
    assert png.shape == (5, 8, 3)  # rows x cols
    grey = png.astype(int).sum(-1)
    assert np.unravel_index(grey.argmax(), grey.shape) == (1, 6)
    rgb = overlay(img, cam)
    assert rgb.shape == (8, 5, 3) and rgb.dtype == np.uint8


def test_save_heatmap_npy_and_nifti(tmp_path):
    cam = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    p = save_heatmap(cam, str(tmp_path / "h.npy"))
    assert np.array_equal(np.load(p), cam)
    p = save_heatmap(cam, str(tmp_path / "h.nii.gz"), affine=np.diag([0.5, 0.5, 1, 1]))
    import nibabel as nib

    img = nib.load(p)
    assert np.allclose(img.get_fdata(), cam) and img.affine[0, 0] == 0.5


def test_gradcam_writer(tmp_path):
    net = _net()
    w = GradCAMWriter(net, "class_layers.relu", str(tmp_path), ["NORMAL", "PNEUMONIA"], class_idx=1, threshold=0.3)
    for name, p in (("/data/a/x.png", 0.2), ("/data/b/x.png", 0.7)):
        img = MetaTensor(torch.rand(1, 48, 32), meta={"filename_or_obj": name})
        w({"image": img, "pred": torch.tensor([1 - p, p])})
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert [r["predicted"] for r in rows] == ["NORMAL", "PNEUMONIA"]
    assert rows[1]["prob_pneumonia"] == "0.700000"
    # same stem twice -> distinct heatmap names
    assert os.path.basename(rows[0]["heatmap_png"]) == "x_cam.png"
    assert os.path.basename(rows[1]["heatmap_png"]) == "x_1_cam.png"
    assert np.load(rows[1]["heatmap"]).shape == (48, 32)
    assert np.asarray(Image.open(rows[1]["heatmap_png"])).shape == (32, 48, 3)


def _evidence_net():
    """Class 1's logit is the mean of relu(image); class 0's is its negative: the evidence for class 1 is exactly
    where the image is bright, and there is none for class 0."""
    conv = torch.nn.Conv2d(1, 1, 1)
    fc = torch.nn.Linear(1, 2)
    with torch.no_grad():
        conv.weight.fill_(1.0), conv.bias.zero_()
        fc.weight.copy_(torch.tensor([[-1.0], [1.0]])), fc.bias.zero_()
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), fc)


def test_cam_is_hot_where_the_evidence_is():
    """1 = most evidence (MONAI's GradCAM with its default postprocessing would give 0 there)."""
    x = torch.zeros(1, 1, 16, 12)
    x[0, 0, 3:6, 7:10] = 1.0
    net = _evidence_net().eval()
    cam = compute_cam(net, x, "1", class_idx=1)[0]
    assert cam[4, 8] == 1.0 and cam[12, 2] == 0.0
    assert np.unravel_index(cam.argmax(), cam.shape) in {(r, c) for r in range(3, 6) for c in range(7, 10)}
    assert compute_cam(net, x, "1", class_idx=0).max() == 0.0  # no evidence for class 0 anywhere
    # class_idx=None: each image of a batch gets its own predicted class (here class 1 for the bright one,
    # class 0, a blank map, for the all-zero one: logits tie at 0 and argmax takes class 0)
    both = compute_cam(net, torch.cat([x, torch.zeros_like(x)]), "1", class_idx=None)
    np.testing.assert_array_equal(both[0], cam)
    assert both[1].max() == 0.0


def test_cam_matches_monai_gradcam_up_to_its_flip():
    from monai.transforms import ScaleIntensity
    from monai.visualize import GradCAM

    net = _net().eval()
    x = torch.rand(2, 1, 40, 32)
    ours = compute_cam(net, x, "class_layers.relu", class_idx=1)
    scale = lambda m: torch.as_tensor(np.stack([ScaleIntensity(minv=0.0, maxv=1.0)(i) for i in m.detach().numpy()]))
    monai = GradCAM(nn_module=net, target_layers="class_layers.relu", postprocessing=scale)(x=x, class_idx=1)
    np.testing.assert_allclose(ours, monai.numpy()[:, 0], atol=1e-5)


def test_cam_leaves_no_hooks_or_gradients_and_keeps_inputs():
    net = _net().eval()
    layer = dict(net.named_modules())["class_layers.relu"]
    x = MetaTensor(torch.rand(3, 1, 40, 32))
    before = x.clone()
    for _ in range(3):
        compute_cam(net, x, "class_layers.relu", class_idx=0)
    assert not layer._forward_hooks and not layer._backward_hooks
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(x, before) and not x.requires_grad
    with torch.inference_mode():  # callable from inference code
        assert compute_cam(net, x, "class_layers.relu", class_idx=0).shape == (3, 40, 32)
    try:
        compute_cam(net, x, "no.such.layer")
        raise AssertionError("expected ValueError")
    except ValueError as err:
        assert "no.such.layer" in str(err)


def test_cam_from_several_threads_on_one_network():
    """Each thread's map is the one it would get alone, while the other thread forwards through the same layer."""
    from concurrent.futures import ThreadPoolExecutor

    net = _net().eval()
    xs = [torch.rand(2, 1, 40, 32) for _ in range(6)]
    alone = [compute_cam(net, x, "class_layers.relu", class_idx=k % 2) for k, x in enumerate(xs)]

    def work(k):
        with torch.inference_mode():
            net(xs[k])  # a plain forward too, as a scoring stream does
        return compute_cam(net, xs[k], "class_layers.relu", class_idx=k % 2)

    with ThreadPoolExecutor(3) as pool:
        together = list(pool.map(work, range(6)))
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-6)
