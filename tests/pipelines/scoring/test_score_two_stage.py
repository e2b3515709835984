"""Two-stage chest X-ray scoring (issue 10): ``cadpipe score --bundle <ChestX-ray14 bundle>`` with ``lung_crop: true``
runs the lung segmentation bundle's crop, then the 15-output classifier, and puts the probabilities, the lung box
(and whether the crop fell back to the whole image) and one heatmap per pathology above ``cam_threshold`` into
results.csv, the per-study outputs and report.html.

Both bundles are trained briefly on synthetic data into tmp copies (tiny networks, 64 px): this checks the plumbing
and that the box comes from a lung network that learned the fields, not accuracy of the classifier."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LUNG = {"image_size": 64, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
CX14 = {"image_size": 64, "lung_crop": True, "network_def": {"init_features": 16, "growth_rate": 8,
                                                             "block_config": [2, 2, 2, 2]}}


def _bake(bundle: str, values: dict) -> None:
    """Write config values into a bundle copy's train/inference configs (nested dicts are merged one level)."""
    for name in ("train.json", "inference.json"):
        path = os.path.join(bundle, "configs", name)
        cfg = json.load(open(path))
        for k, v in values.items():
            cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
        json.dump(cfg, open(path, "w"), indent=1)


def _train(bundle: str, **override) -> None:
    from monai.bundle import ConfigWorkflow

    cfg = os.path.join(bundle, "configs")
    wf = ConfigWorkflow(config_file=os.path.join(cfg, "train.json"), meta_file=os.path.join(cfg, "metadata.json"),
                        workflow_type="train", logging_file=False, bundle_root=bundle, num_workers=0, **override)
    wf.initialize()
    wf.run()
    wf.finalize()


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    from cadpipe.data.synthetic.chestxray14 import write_rsna_dicom, draw_pathology, write_synthetic_chestxray14
    from cadpipe.data.synthetic.lungs import _png, synthetic_lung_cxr, write_synthetic_montgomery

    tmp = tmp_path_factory.mktemp("two_stage")
    lung = str(tmp / "bundles" / "cxr_lung_segmentation")
    cx14 = str(tmp / "bundles" / "cxr_chestxray14_classification")
    for name, dest in (("cxr_lung_segmentation", lung), ("cxr_chestxray14_classification", cx14)):
        shutil.copytree(os.path.join(REPO, "bundles", name), dest,
                        ignore=shutil.ignore_patterns("models", "eval", "outputs", "__pycache__"))
    _bake(lung, LUNG)
    _bake(cx14, CX14)
    write_synthetic_montgomery(str(tmp / "lung_data"), 18, 64, seed=5)
    _train(lung, dataset_dir=str(tmp / "lung_data"), epochs=6, learning_rate=1e-2, batch_size=4,
           output_dir=str(tmp / "lung_out"))
    write_synthetic_chestxray14(str(tmp / "cx14_data"), 10, 2, size=64, classes=(0, 1, 2), p_finding=0.75, seed=0)
    _train(cx14, dataset_dir=str(tmp / "cx14_data"), epochs=1, batch_size=4, val_fraction=0.25,
           output_dir=str(tmp / "cx14_out"), **{"train#augmentation": []})
    assert os.path.isfile(os.path.join(lung, "models", "model.pt"))
    assert os.path.isfile(os.path.join(cx14, "models", "model.pt"))

    # the CXR folder: a PNG and an RSNA-style DICOM of synthetic radiographs (known lung masks), and a 12-bit
    # MONOCHROME1 DX DICOM from the foundation's writer (a different look; its lungs may or may not be found)
    from cadpipe.data.synthetic.dicom import write_cxr_dicom

    inp = tmp / "in"
    rng = np.random.default_rng(11)
    truth = {}
    img, left, right = synthetic_lung_cxr(80, rng)
    draw_pathology(img, 5, left, right, rng)  # a nodule inside a lung: the mask stays the truth
    _png(img, str(inp / "synthetic_png_study" / "synthetic_cxr.png"))
    truth["synthetic_cxr.png"] = left | right
    img, left, right = synthetic_lung_cxr(72, rng)
    os.makedirs(inp / "synthetic_dicom_study")
    write_rsna_dicom(str(inp / "synthetic_dicom_study" / "synthetic_rsna.dcm"), (img * 255).round(),
                      "synthetic-two-stage", rng)
    truth["synthetic_rsna.dcm"] = left | right
    os.makedirs(inp / "synthetic_dx")
    write_cxr_dicom(str(inp / "synthetic_dx" / "synthetic_IM1"), rows=80, cols=64, seed=1, photometric="MONOCHROME1")
    return {"tmp": tmp, "lung": lung, "cx14": cx14, "input": str(inp), "truth": truth}


def _rows(out: str) -> pd.DataFrame:
    df = pd.read_csv(os.path.join(out, "results.csv"), keep_default_na=False)
    df["name"] = [os.path.basename(p.split(";")[0]) for p in df.input_paths]
    return df.set_index("name")


@pytest.mark.slow
def test_cli_scores_two_stage(two_stage):
    """The issue's command, with the bundle config's ``lung_crop: true``; one DataLoader worker process."""
    out = str(two_stage["tmp"] / "out")
    cmd = [sys.executable, "-m", "cadpipe", "score", "--bundle", two_stage["cx14"], "--input", two_stage["input"],
           "--output", out, "--workers", "1", "--quiet", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = _rows(out)
    assert len(df) == 3 and set(df.status) == {"ok"}, df.error.tolist()
    from cadpipe.data.chestxray14 import NIH_LABELS

    assert [c for c in df.columns if c.startswith("prob_")] == sorted(f"prob_{n}" for n in NIH_LABELS)
    assert {"lung_box", "lung_crop_box", "lung_found", "lung_crop_fallback", "heatmaps"} <= set(df.columns)
    for name, mask in two_stage["truth"].items():
        r = df.loc[name]
        assert str(r.lung_found) == "True" and str(r.lung_crop_fallback) == "False"
        c0, r0, c1, r1 = json.loads(r.lung_box)  # xyxy = (col_min, row_min, col_max, row_max) in input pixels
        rows, cols = np.nonzero(mask)
        assert c0 < mask.shape[1] / 2 < c1, "the box spans both lung fields"
        # both fields, within a few pixels (a briefly trained net; the crop margin adds 5 % on each side)
        assert c0 <= cols.min() + 4 and r0 <= rows.min() + 4 and c1 >= cols.max() - 3 and r1 >= rows.max() - 3
        assert json.loads(r.lung_crop_box)[2] - json.loads(r.lung_crop_box)[0] <= mask.shape[1]
    dx = df.loc["synthetic_IM1"]
    assert str(dx.lung_crop_fallback) == str(str(dx.lung_found) != "True")
    # training saved an operating threshold per pathology with the weights: heatmaps and findings follow them
    saved = json.load(open(os.path.join(two_stage["cx14"], "models", "thresholds.json")))
    thr = {n: c["threshold"] for n, c in saved["classes"].items()}
    assert set(thr) == set(saved["class_names"]) and len(thr) == 15 and saved["task"] == "multilabel"
    for name, r in df.iterrows():
        probs = {c[5:]: float(r[c]) for c in df.columns if c.startswith("prob_")}
        above = sorted(n for n, p in probs.items() if p >= thr[n] and n != "No Finding")
        assert sorted(n for n in r.predicted.split(";") if n and n != "No Finding") == above
        assert not ("No Finding" in r.predicted.split(";") and above)  # never beside a finding
        maps = [m for m in str(r.heatmaps).split(";") if m]
        assert sorted(os.path.basename(m).split("_heatmap_")[1][:-4] for m in maps) == above
        assert all(os.path.isfile(os.path.join(out, m)) for m in maps)
        folder = os.path.join(out, r.study_id, r.series_id)
        details = [f for f in os.listdir(folder) if f.endswith("_details.json")]
        assert len(details) == 1
        rec = json.load(open(os.path.join(folder, details[0])))
        assert rec["lung_box"] == r.lung_box and rec["lung_found"] == (str(r.lung_found) == "True")
        html = open(os.path.join(out, r.study_id, "report.html")).read()
        assert "Lung crop:" in html and html.count("<img") == 2 + len(maps)  # the image as acquired, its heat map(s)


@pytest.mark.slow
def test_fallback_and_per_pathology_heatmaps(two_stage):
    """No lung found (threshold above 1): the whole image is classified and results say so; ``cam_threshold`` 0
    gives a heatmap for each of the 14 pathologies (never for No Finding)."""
    from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score

    out = str(two_stage["tmp"] / "out_fallback")
    ovr = {"lung_overrides": {"threshold": 1.01}, "cam_threshold": 0.0}
    # cam_threshold decides the heatmaps of a model without saved operating thresholds (trained before them)
    saved = os.path.join(two_stage["cx14"], "models", "thresholds.json")
    os.replace(saved, saved + ".aside")
    try:
        summary = score(ScoreConfig(bundle=two_stage["cx14"], input=two_stage["input"], output=out, workers=0,
                                    quiet=True, device="cpu", overrides=ovr))
    finally:
        os.replace(saved + ".aside", saved)
    df = _rows(out)
    assert summary["exit_code"] == EXIT_OK, df.error.tolist()
    assert set(df.lung_found.astype(str)) == {"False"} and set(df.lung_crop_fallback.astype(str)) == {"True"}
    assert set(df.lung_box) == {""}
    assert json.loads(df.loc["synthetic_cxr.png"].lung_crop_box) == [0, 0, 80, 80]  # whole image kept
    for _, r in df.iterrows():
        maps = str(r.heatmaps).split(";")
        assert len(maps) == 14 and not any("No Finding" in m or "No_Finding" in m for m in maps)
        html = open(os.path.join(out, r.study_id, "report.html")).read()
        assert "no lung region found, the whole image was classified" in html
        assert "No operating threshold saved with this model: 0.5 used." in html


@pytest.mark.slow
def test_lung_bundle_alone_scores_mask_and_box(two_stage):
    """``cadpipe score --bundle <lung bundle>``: the lung mask (NIfTI; DICOM SEG for DICOM input) and the lung box
    columns from the bundle's ``LungBoxd``."""
    from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score

    out = str(two_stage["tmp"] / "out_lung")
    summary = score(ScoreConfig(bundle=two_stage["lung"], input=two_stage["input"], output=out, workers=0,
                                quiet=True, device="cpu"))
    df = _rows(out)
    assert summary["exit_code"] == EXIT_OK, df.error.tolist()
    for name, mask in two_stage["truth"].items():
        r = df.loc[name]
        assert str(r.lung_found) == "True" and int(r.lesion_voxels) > 0
        c0, r0, c1, r1 = json.loads(r.lung_box)
        assert c0 < mask.shape[1] / 2 < c1 and r1 - r0 > mask.shape[0] / 3
    files = [f for _, _, fs in os.walk(out) for f in fs]
    assert sum(f.endswith("_mask.nii.gz") for f in files) == 3 and any(f.endswith("_seg.dcm") for f in files)
    # the report speaks of lung fields: cm² from the DICOM pixel spacing, pixels for a PNG (no spacing), never mL
    png, dcm = df.loc["synthetic_cxr.png"], df.loc["synthetic_rsna.dcm"]
    html_png = open(os.path.join(out, png.study_id, "report.html"), encoding="utf-8").read()
    html_dcm = open(os.path.join(out, dcm.study_id, "report.html"), encoding="utf-8").read()
    assert f"Lung fields found (shaded red on the image): area {int(png.lesion_voxels)} pixels" in html_png and png.lesion_area_cm2 == ""
    assert f"Lung fields found (shaded red on the image): area {float(dcm.lesion_area_cm2):.1f} cm²." in html_dcm
    assert " mL" not in html_png + html_dcm and "suspicious" not in html_png + html_dcm
