"""The demo's recipes train long enough for outputs that look like the task on the synthetic studies it scores:
boxes on the drawn masses, lung masks on the drawn lungs. Each test runs the demo for one bundle (training
included: slow)."""

from __future__ import annotations

import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest

from cadpipe.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_demo(out: str, name: str) -> None:
    if not os.path.isfile(os.path.join(REPO, "bundles", name, "configs", "train.json")):
        pytest.skip(f"{name} bundle not complete")
    assert main(["demo", "--output", out, "--bundles", name, "--quiet"]) == 0


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.slow
def test_mammography_recipe_shows_a_box_on_a_synthetic_mass(tmp_path):
    from cadpipe.data.synthetic.ddsm import write_ddsm_dataset

    name = "mammo_mass_detection"
    _run_demo(str(tmp_path / "demo"), name)
    truth = write_ddsm_dataset(tmp_path / "truth", n_cases=1, seed=3)[0]["views"]  # what the demo scored (same seed)
    assert any(len(t["boxes"]) for t in truth.values())
    results = tmp_path / "demo" / "results" / name
    display = json.loads((tmp_path / "demo" / "bundles" / name / "configs" / "inference.json").read_text())[
        "overlay_min_score"]
    best = []
    for view, t in truth.items():
        boxes_file, = glob.glob(str(results / "**" / f"*{view}*_boxes.json"), recursive=True)
        shown = [b for b in json.loads(open(boxes_file).read())["boxes"] if b["score"] >= display]
        best += [max((_iou(b["box"], m) for b in shown), default=0.0) for m in np.asarray(t["boxes"]).tolist()]
    assert max(best) >= 0.3, best  # a box the report shows lies on a synthetic mass
    report = open(glob.glob(str(results / "*" / "report.html"))[0], encoding="utf-8").read()
    assert "SYNTHETIC" in report and "Views as read" in report


@pytest.mark.slow
def test_lung_recipe_masks_the_synthetic_lungs(tmp_path):
    from cadpipe.data.synthetic.lungs import write_synthetic_montgomery

    name = "cxr_lung_segmentation"
    _run_demo(str(tmp_path / "demo"), name)
    truth = write_synthetic_montgomery(str(tmp_path / "truth"), n=2, size=96, seed=9)  # what the demo scored
    results = tmp_path / "demo" / "results" / name
    dice = []
    for path, lungs in truth.items():
        stem = os.path.splitext(os.path.basename(path))[0]
        mask_file, = glob.glob(str(results / "**" / f"*{stem}_mask.nii.gz"), recursive=True)
        pred = np.asarray(nib.load(mask_file).dataobj) > 0  # (X, Y) = (columns, rows)
        t = np.asarray(lungs).T > 0
        dice.append(2 * (pred & t).sum() / (pred.sum() + t.sum()))
    assert min(dice) > 0.8, dice  # the lungs, not the body and background
    report = open(glob.glob(str(results / "*" / "report.html"))[0], encoding="utf-8").read()
    assert "SYNTHETIC" in report
