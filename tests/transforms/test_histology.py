import json

import numpy as np
import pytest
import torch
from PIL import Image

from cadpipe.data.synthetic.histology import synthetic_tissue
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.histology import (
    MACENKO_REFERENCE,
    GridTissuePatches,
    GridTissuePatchesd,
    LuminanceCLAHE,
    MacenkoNormalize,
    RandColorJitter,
    RandTissuePatchesd,
    fit_macenko,
    grid_positions,
    load_rgb,
    tissue_mask,
)


def _half_blank(x=128, y=96):
    """(3, X, Y) image: left half (x < X/2) tissue, right half white glass."""
    rng = np.random.default_rng(0)
    img = np.ones((3, x, y), np.float32) * 0.96
    img[:, : x // 2] = np.array([0.9, 0.6, 0.8], np.float32)[:, None, None] + rng.normal(0, 0.03, (3, x // 2, y))
    return np.clip(img, 0, 1)


def test_tissue_mask_otsu_on_saturation():
    m = tissue_mask(_half_blank())
    assert m[:64].mean() > 0.95 and m[64:].mean() < 0.05
    assert not tissue_mask(np.full((3, 32, 32), 0.97, np.float32)).any()  # blank glass


def test_tissue_filter_drops_blank_patches():
    patches, locs, frac = GridTissuePatches(32, 16, min_tissue=0.5)(torch.from_numpy(_half_blank()))
    assert len(patches) > 0
    assert (locs[:, 0] + 32 <= 64 + 16).all()  # no patch lies mostly in the blank half
    assert (frac >= 0.5).all()
    all_patches = grid_positions((128, 96), 32, 16)
    assert len(patches) < len(all_patches)
    # blank image: keep_one keeps the single best patch, keep_one=False keeps none
    blank = torch.full((3, 64, 64), 0.97)
    assert len(GridTissuePatches(32, 16, 0.5)(blank)[0]) == 1
    assert len(GridTissuePatches(32, 16, 0.5, keep_one=False)(blank)[0]) == 0


def test_grid_positions_cover_the_image():
    pos = grid_positions((100, 70), 32, 16)
    cover = np.zeros((100, 70), bool)
    for x, y in pos:
        cover[x:x + 32, y:y + 32] = True
    assert cover.all()
    assert max(x for x, _ in pos) == 68 and max(y for _, y in pos) == 38


def test_image_smaller_than_patch_is_padded_with_white():
    small = torch.from_numpy(_half_blank(20, 10))
    patches, locs, _ = GridTissuePatches(32, 16, 0.0)(small)
    assert patches.shape == (1, 3, 32, 32)
    assert torch.allclose(patches[0, :, 20:, :], torch.ones(3, 12, 32))


def test_grid_patches_dict_stack_and_list():
    d = {"image": torch.from_numpy(_half_blank()), "label": 1}
    out = GridTissuePatchesd("image", 32, 16, 0.5, stack=True)(d)
    assert out["image"].ndim == 4 and out["patch_locations"].shape == (out["image"].shape[0], 2)
    lst = GridTissuePatchesd("image", 32, 16, 0.5, stack=False)(d)
    assert isinstance(lst, list) and len(lst) == out["image"].shape[0] and lst[0]["label"] == 1


def test_random_patches_prefer_tissue():
    t = RandTissuePatchesd("image", patch_size=32, num_samples=6, min_tissue=0.8)
    t.set_random_state(0)
    out = t({"image": torch.from_numpy(_half_blank()), "label": 0})
    assert len(out) == 6
    for o in out:
        assert o["image"].shape == (3, 32, 32)
        assert tissue_mask(o["image"]).mean() >= 0.8


def test_macenko_maps_stains_to_the_reference():
    img, _ = synthetic_tissue(3, (128, 96), rng=0, n_classes=4)
    x = torch.from_numpy(img.transpose(2, 1, 0).astype(np.float32) / 255)
    out = MacenkoNormalize()(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    fitted = np.asarray(fit_macenko(out)["stain_matrix"])
    ref = np.asarray(MACENKO_REFERENCE["stain_matrix"])
    cos = (fitted * ref).sum(0) / np.linalg.norm(fitted, axis=0) / np.linalg.norm(ref, axis=0)
    assert (cos > 0.95).all(), cos
    # blank glass has no stain to fit: returned unchanged
    blank = torch.full((3, 16, 16), 0.98)
    assert torch.equal(MacenkoNormalize()(blank), blank)


def test_macenko_reference_from_json_and_bad_json(tmp_path):
    good = tmp_path / "ref.json"
    good.write_text(json.dumps(MACENKO_REFERENCE))
    MacenkoNormalize(str(good))
    bad = tmp_path / "bad.json"
    bad.write_text('{"stain_matrix": [1, 2]}')
    with pytest.raises(CadpipeInputError) as e:
        MacenkoNormalize(str(bad))
    assert str(bad) in str(e.value) and "Macenko reference" in str(e.value)


def test_luminance_clahe_keeps_colour_and_range():
    img, _ = synthetic_tissue(1, (128, 96), rng=0)
    x = img.transpose(2, 1, 0).astype(np.float32) / 255 * 0.5 + 0.25  # low contrast
    out = LuminanceCLAHE(clip_limit=0.02)(x)
    assert out.shape == x.shape and isinstance(out, np.ndarray)
    assert 0 <= out.min() and out.max() <= 1
    assert out.mean(0).std() > x.mean(0).std()  # luminance contrast increased


def test_colour_jitter_seeded_and_clipped():
    x = torch.rand(3, 16, 16)
    a = RandColorJitter(prob=1.0, brightness=0.3).set_random_state(3)(x)
    b = RandColorJitter(prob=1.0, brightness=0.3).set_random_state(3)(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(RandColorJitter(prob=0.0)(x), x)


def test_load_rgb_greyscale_is_replicated_and_axes(tmp_path):
    arr = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)  # rows, cols
    p = tmp_path / "grey.png"
    Image.fromarray(arr).save(p)
    img = load_rgb(p)
    assert img.shape == (3, 30, 20)  # (C, X=cols, Y=rows)
    assert torch.equal(img[0], img[2]) and img[0, 5, 3] == arr[3, 5]
    assert img.meta["converted_from"] == "L"


def test_truncated_tiff_names_the_file(tmp_path):
    p = tmp_path / "photo.tif"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CadpipeInputError) as e:
        load_rgb(p)
    assert str(p) in str(e.value) and "truncated" in str(e.value)
    with pytest.raises(CadpipeInputError) as e:
        load_rgb(tmp_path / "missing.tif")
    assert "missing.tif" in str(e.value) and "not found" in str(e.value)


def _region_case(tmp_path, unlabelled="image"):
    """A synthetic benign-looking tissue image (X=128, Y=96) whose ImageScope XML marks a malignant rectangle."""
    from cadpipe.transforms.readers.io_imagescope import write_imagescope_xml

    img, _ = synthetic_tissue(0, (128, 96), rng=1, n_classes=2, blank_fraction=0.0)
    x = torch.from_numpy(img.transpose(2, 1, 0).astype(np.float32) / 255)
    xml = write_imagescope_xml(tmp_path / "img.xml", [{"class_name": "Malignant", "vertices": np.array(
        [[20.0, 10.0], [80.0, 10.0], [80.0, 70.0], [20.0, 70.0]])}])
    op = RandTissuePatchesd("image", patch_size=32, num_samples=60, min_tissue=0.0, class_names=["benign", "malignant"],
                            min_region_overlap=0.5, unlabelled=unlabelled)
    return x, xml, op.set_random_state(0)


def test_rand_patches_take_the_region_label(tmp_path):
    from cadpipe.transforms.readers.io_imagescope import annotation_mask, patch_label

    x, xml, op = _region_case(tmp_path)
    out = op({"image": x, "label": 0, "annotation": xml})
    mask = annotation_mask(xml, (128, 96), ["benign", "malignant"])  # region name 'Malignant' matched ignoring case
    assert mask[50, 40] == 2 and mask[100, 40] == 0 and (mask == 2).sum() > 55 * 55
    labels = [int(o["label"]) for o in out]
    for o, lab in zip(out, labels):
        cx, cy = (int(v) for v in o["patch_location"])
        assert torch.equal(o["image"], x[:, cx:cx + 32, cy:cy + 32])
        inside = float((mask[cx:cx + 32, cy:cy + 32] == 2).mean())
        assert lab == (1 if inside >= 0.5 else 0), (cx, cy, inside)  # region, else the image label
        assert lab == max(patch_label(mask, (cx, cy), 32), 0)
    assert 0 < sum(labels) < len(labels)  # both region-labelled and image-labelled patches were drawn
    # no annotation: every patch keeps the image label
    assert {int(o["label"]) for o in op({"image": x, "label": 0, "annotation": ""})} == {0}
    assert {int(o["label"]) for o in op({"image": x, "label": 0})} == {0}


def test_rand_patches_drop_unlabelled_and_bad_xml(tmp_path):
    from cadpipe.transforms.readers.io_imagescope import annotation_mask

    x, xml, op = _region_case(tmp_path, unlabelled="drop")
    out = op({"image": x, "label": 0, "annotation": xml})
    mask = annotation_mask(xml, (128, 96), ["benign", "malignant"])
    assert len(out) == 60 and {int(o["label"]) for o in out} == {1}
    for o in out:
        cx, cy = (int(v) for v in o["patch_location"])
        assert (mask[cx:cx + 32, cy:cy + 32] == 2).mean() >= 0.5
    # a region too small for any 32x32 patch to be half covered: error naming the XML (drop mode)
    from cadpipe.transforms.readers.io_imagescope import write_imagescope_xml

    tiny = write_imagescope_xml(tmp_path / "tiny.xml", [{"class_name": "malignant", "vertices": np.array(
        [[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]])}])
    with pytest.raises(CadpipeInputError) as e:
        op({"image": x, "label": 0, "annotation": tiny})
    assert str(tiny) in str(e.value) and "min_region_overlap" in str(e.value)
    # malformed XML and a vertex outside the image: errors naming the file
    bad = tmp_path / "bad.xml"
    bad.write_text("<Annotations><Annotation Name='malignant'>")
    with pytest.raises(CadpipeInputError) as e:
        op({"image": x, "label": 0, "annotation": str(bad)})
    assert str(bad) in str(e.value) and "malformed ImageScope XML" in str(e.value)
    out_xml = write_imagescope_xml(tmp_path / "out.xml", [{"class_name": "malignant", "vertices": np.array(
        [[0.0, 0.0], [200.0, 0.0], [10.0, 10.0]])}])
    with pytest.raises(CadpipeInputError) as e:
        op({"image": x, "label": 0, "annotation": out_xml})
    assert str(out_xml) in str(e.value) and "outside the image (128, 96)" in str(e.value)
