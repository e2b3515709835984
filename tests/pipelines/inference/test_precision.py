"""``--precision`` reaches every task's forward: a detection bundle's detector runs under the runner's autocast too
(it used to run fp32 whatever the precision said). CPU: bf16 autocast."""

from __future__ import annotations

import os

import torch

from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.inference.bundle_runner import BundleRunner

BUNDLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bundles")


def test_detection_forward_follows_precision(tmp_path):
    overrides = {"image_long_side": 256, "score_thresh": 0.0}  # untrained weights: keep every box
    root = copy_bundle_untrained(os.path.join(BUNDLES, "mammo_mass_detection"), tmp_path / "b", overrides)
    runner = BundleRunner(root, device="cpu", overrides=overrides)
    runner.postprocessing = lambda d: d  # the boxes as the detector gives them (no image metadata here)
    x = torch.rand(1, 256, 160, generator=torch.Generator().manual_seed(0))
    ref = runner.predict([{"image": x}])[0]
    assert ref["score"].numel() > 0
    runner.configure_inference("bf16")
    out = runner.predict([{"image": x}])[0]
    assert out["score"].dtype == torch.float32 and out["box"].dtype == torch.float32
    n = min(ref["score"].numel(), out["score"].numel())
    assert not torch.equal(out["score"][:n], ref["score"][:n]), "bf16 gave fp32's scores: the detector ran in fp32"
    assert float((out["score"][:n] - ref["score"][:n]).abs().max()) < 0.05  # top scores: close, not equal
    runner.configure_inference("fp32")
    again = runner.predict([{"image": x}])[0]
    assert torch.equal(again["score"], ref["score"])
