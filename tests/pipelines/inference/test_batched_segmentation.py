"""Batched postprocessing of the lung segmentation bundle agrees with its per-item MONAI chain (CPU; the same code
runs on CUDA): probabilities after the inversion within 1e-3, the geometry scoring reads, masks; chains the planner
cannot split say why."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.images import write_image
from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.inference.batched_segmentation import plan_segmentation_postprocessing
from cadpipe.pipelines.inference.bundle_runner import BundleRunner, _plain

HERE = os.path.dirname(os.path.abspath(__file__))
BUNDLES = os.path.join(HERE, "..", "..", "..", "bundles")
LUNG = os.path.join(BUNDLES, "cxr_lung_segmentation")


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """DICOM CXRs (MONOCHROME2 and 1) and PNGs, each of another size, larger and smaller than the network's."""
    d = tmp_path_factory.mktemp("studies")
    paths = [write_cxr_dicom(d / "synthetic_0.dcm", rows=90, cols=70, seed=0)["path"],
             write_cxr_dicom(d / "synthetic_1.dcm", rows=120, cols=100, photometric="MONOCHROME1", seed=1,
                             pixel_spacing=0.3)["path"],
             write_cxr_dicom(d / "synthetic_2.dcm", rows=50, cols=61, seed=2)["path"]]
    paths.append(write_image(d / "synthetic_8bit.png", rows=70, cols=90, seed=1)["path"])
    paths.append(write_image(d / "synthetic_16bit.png", rows=40, cols=48, bits=16, seed=2)["path"])
    return paths


def lung_threshold(probabilities) -> float:
    """A threshold for masks that cover part of each image: random weights put the lung probability near 0.5
    everywhere (a little lower inside the body than at the borders), so the bundle's 0.4 keeps all of every image and
    the median of the network-sized maps (mostly border) keeps nothing after the opening. The 30th percentile of the
    probabilities at the inputs' sizes leaves masks of 3-55% of each image (after the bundle's opening and its two
    largest components) on the synthetic studies of these tests."""
    return float(torch.quantile(torch.cat([torch.as_tensor(p).reshape(-1) for p in probabilities]).float(), 0.3))


def _runner(tmp_path, overrides):
    root = copy_bundle_untrained(LUNG, str(tmp_path / "lung"), overrides)
    return BundleRunner(root, device="cpu", overrides=overrides)


def _per_item_probabilities(runner, item):
    """The per-item path's ``pred`` after the bundle's Activationsd + Invertd (before the threshold)."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    image = item["image"]
    pred = MetaTensor(runner.forward_batch(_plain(image)[None])[0])
    pred.copy_meta_from(image)
    with torch.inference_mode():
        return Compose(runner.postprocessing.transforms[:2])({"image": image, "pred": pred})["pred"]


@pytest.mark.parametrize("overrides", [
    {"image_size": 64, "use_clahe": False},
    {"image_size": 64, "use_clahe": True},
    {"image_size": 48, "use_clahe": False, "postprocessing#transforms#1#nearest_interp": True},
])
def test_batched_equals_per_item(tmp_path, studies, overrides):
    runner = _runner(tmp_path, overrides)
    plan, why = runner.batched_preprocessing()
    assert plan is not None, why
    seg = runner.batched_segmentation_postprocessing()
    assert seg is not None and seg.activation == "softmax"
    nearest = overrides.get("postprocessing#transforms#1#nearest_interp", False)
    assert seg.inverse[1]["extra_info"]["mode"] == ("nearest" if nearest else "area")
    raws = [plan.decode(p) for p in studies]
    x = plan(raws, "cpu")
    logits = runner.forward_batch(x)
    probs = seg.activate(logits)
    items = [runner.preprocess({"image": p}) for p in studies]
    inverted = []
    for path, raw, item, p in zip(studies, raws, items, probs):
        ref = _per_item_probabilities(runner, item)
        got = seg.invert(p, raw)
        assert got.shape == ref.shape == (2, raw.pixels.shape[1], raw.pixels.shape[0]), path
        assert float((got.as_tensor() - ref.as_tensor()).abs().max()) <= 1e-3, path
        inverted.append(got[1].reshape(-1))
    runner.postprocessing.transforms[2].t.threshold = lung_threshold(inverted)  # the bundle's LungThresholdd
    outs = seg(logits, raws)
    for path, item, out in zip(studies, items, outs):
        ref_out, = runner.predict([item])
        np.testing.assert_allclose(runner.affine(out), runner.affine(ref_out), atol=1e-9)
        if path.endswith(".dcm"):
            assert runner.unit_size(out, 2) == pytest.approx(runner.unit_size(ref_out, 2))
        else:  # no spacing in a PNG
            assert runner.unit_size(out, 2) is None and runner.unit_size(ref_out, 2) is None
        a, b = runner.label_map(ref_out) > 0, runner.label_map(out) > 0
        assert a.shape == b.shape and 0.02 < a.mean() < 0.95, (path, a.mean())  # part of the image
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice >= 0.99, (path, dice)
        assert out["lung_found"] == ref_out["lung_found"]
        assert np.abs(np.subtract(out["lung_box"], ref_out["lung_box"])).max() <= 2
        assert set(out["result_columns"]) == set(ref_out["result_columns"])


def test_inverted_geometry_is_the_readers(studies):
    """The decoded file's affine and format (what the batched mask is given back in) are LoadStudyImage's."""
    from cadpipe.transforms.readers.io_any import LoadStudyImage
    from cadpipe.transforms.readers.io_raw import read_raw_2d

    for path in studies:
        raw, img = read_raw_2d(path), LoadStudyImage(mode="gray")(path)
        assert raw.format == img.meta["format"] == ("dicom" if path.endswith(".dcm") else "image")
        np.testing.assert_allclose(raw.affine, np.asarray(img.meta["affine"], dtype=np.float64))
    assert read_raw_2d(studies[1]).affine[0, 0] == pytest.approx(0.3)


def _lung_chains(tmp_path):
    """The lung bundle's instantiated preprocessing and the transforms of its postprocessing."""
    from cadpipe.pipelines.inference.bundle_runner import bundle_config

    parser, _ = bundle_config(LUNG, "cpu", {"image_size": 64})
    return parser.get_parsed_content("preprocessing"), list(parser.get_parsed_content("postprocessing").transforms)


def test_chains_that_cannot_be_split_say_why(tmp_path):
    from monai.transforms import (Activationsd, AsDiscreted, Compose, Invertd, Lambda, Resized,
                                  ScaleIntensityd)

    pre, post = _lung_chains(tmp_path)
    act, inv, rest = post[0], post[1], post[2:]
    plan, why = plan_segmentation_postprocessing(Compose(post), pre)
    assert plan is not None and why is None
    cases = {
        "starts with": [inv, *rest],
        "Activationsd is not one softmax or sigmoid": [Activationsd("pred", softmax=True, sigmoid=True), inv],
        "another transform than the bundle's preprocessing": [act, Invertd("pred", Compose(list(pre.transforms)),
                                                                             orig_keys="image")],
        "a second Invertd": [act, inv, *rest, inv],
        "transforms the whole item": [act, inv, Lambda(lambda d: d)],
        "acts on keys ['image']": [act, inv, ScaleIntensityd("image")],
        "acts on keys ['pred', 'label']": [act, inv, AsDiscreted(["pred", "label"], argmax=True)],
    }
    for reason, chain in cases.items():
        plan, why = plan_segmentation_postprocessing(Compose(chain), pre)
        assert plan is None and reason in why, (reason, why)
    two = Compose([*pre.transforms, Resized("image", (32, 32))])
    plan, why = plan_segmentation_postprocessing(Compose([act, Invertd("pred", two, orig_keys="image")]), two)
    assert plan is None and "one Resized" in why


def test_bundles_without_a_batched_plan_say_why(tmp_path):
    """Segmentation bundles keep the per-item path, with the reason, when a chain cannot be split."""
    brain = copy_bundle_untrained(os.path.join(BUNDLES, "brain_mri_tumor_segmentation"), str(tmp_path / "brain"))
    plan, why = BundleRunner(brain, device="cpu").batched_preprocessing()
    assert plan is None and why
    lung = _runner(tmp_path, {"image_size": 64, "postprocessing#transforms#1#post_func": "$lambda x: x"})
    plan, why = lung.batched_preprocessing()
    assert plan is None and lung.batched_segmentation_postprocessing() is None
    assert why == "postprocessing: Invertd with a post_func"
    sigmoid = {"image_size": 64, "postprocessing#transforms#0#softmax": False,
               "postprocessing#transforms#0#sigmoid": True}
    lung = BundleRunner(copy_bundle_untrained(LUNG, str(tmp_path / "sigmoid"), sigmoid), "cpu", overrides=sigmoid)
    assert lung.batched_preprocessing()[0] is not None
    assert lung.batched_segmentation_postprocessing().activation == "sigmoid"
