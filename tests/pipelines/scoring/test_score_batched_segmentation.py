"""cadpipe score of the lung segmentation bundle (random weights) with batched preprocessing: the batched path is
used, and its masks, boxes, areas and DICOM SEGs agree with the per-item path's."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.images import write_image
from cadpipe.data.synthetic.weights import copy_bundle_untrained
from cadpipe.pipelines.inference.bundle_runner import BundleRunner
from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score
from tests.pipelines.inference.test_batched_segmentation import lung_threshold

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LUNG = os.path.join(REPO, "bundles", "cxr_lung_segmentation")


def _studies(d: str) -> list[str]:
    """DICOM CXRs (MONOCHROME2 and 1) and PNGs, each of another size."""
    os.makedirs(os.path.join(d, "p1"))
    os.makedirs(os.path.join(d, "p2"))
    return [write_cxr_dicom(os.path.join(d, "p1", "synthetic_IM1"), rows=90, cols=70, seed=0)["path"],
            write_cxr_dicom(os.path.join(d, "p1", "synthetic_IM2"), rows=120, cols=100, seed=1,
                            photometric="MONOCHROME1", pixel_spacing=0.3)["path"],
            write_image(os.path.join(d, "p2", "synthetic_a.png"), rows=70, cols=90, seed=1)["path"],
            write_image(os.path.join(d, "p2", "synthetic_b.png"), rows=40, cols=48, bits=16, seed=2)["path"]]


def _threshold(bundle: str, overrides: dict, paths: list[str]) -> float:
    """A threshold that leaves masks covering part of each image (see ``lung_threshold``), from the per-item
    path's probabilities."""
    from monai.data import MetaTensor
    from monai.transforms import Compose

    runner = BundleRunner(bundle, device="cpu", overrides=overrides)
    first2 = Compose(runner.postprocessing.transforms[:2])  # Activationsd + Invertd
    probs = []
    for p in paths:
        item = runner.preprocess({"image": p})
        pred = MetaTensor(runner.forward_batch(item["image"].as_tensor()[None])[0])
        pred.copy_meta_from(item["image"])
        probs.append(first2({"image": item["image"], "pred": pred})["pred"][1])
    return lung_threshold(probs)


@pytest.mark.parametrize("use_clahe,workers", [(False, 0), (True, 1)])
def test_batched_segmentation_agrees_with_per_item(tmp_path, use_clahe, workers):
    overrides = {"image_size": 64, "use_clahe": use_clahe}
    bundle = copy_bundle_untrained(LUNG, str(tmp_path / "lung"), overrides)
    src = str(tmp_path / "in")
    paths = _studies(src)
    overrides["threshold"] = _threshold(bundle, overrides, paths)
    runs = {}
    for mode in ("per-item", "batched"):
        out = str(tmp_path / mode)
        s = score(ScoreConfig(bundle=bundle, input=src, output=out, device="cpu", batch_size=4, workers=workers,
                              quiet=True, preprocess=mode, overrides=overrides))
        assert s["preprocess"] == mode and s["exit_code"] == EXIT_OK
        df = pd.read_csv(os.path.join(out, "results.csv")).sort_values("unit_id").reset_index(drop=True)
        runs[mode] = (out, df)
    (out_a, a), (out_b, b) = runs["per-item"], runs["batched"]
    assert list(a.unit_id) == list(b.unit_id) and len(a) == len(paths) and (b.status == "ok").all()
    dicom = a.input_paths.str.contains("synthetic_IM")
    assert a[dicom].lesion_area_cm2.notna().all() and a[~dicom].lesion_area_cm2.isna().all()
    np.testing.assert_allclose(b[dicom].lesion_area_cm2, a[dicom].lesion_area_cm2, rtol=0.01)
    np.testing.assert_allclose(b.lesion_voxels, a.lesion_voxels, rtol=0.01)
    assert list(b.lung_found) == list(a.lung_found) == [True] * len(paths)
    for box_a, box_b in zip(a.lung_box, b.lung_box):
        assert np.abs(np.subtract(json.loads(box_a), json.loads(box_b))).max() <= 2
    journal = {m: pd.read_json(os.path.join(o, ".cadpipe", "journal.jsonl"), lines=True).set_index("unit_id")
               for m, (o, _) in runs.items()}
    for unit in a.unit_id:
        files = {m: journal[m].loc[unit, "_outputs"] for m in runs}
        ma = np.asarray(nib.load(os.path.join(out_a, files["per-item"]["mask"])).dataobj) > 0
        mb = np.asarray(nib.load(os.path.join(out_b, files["batched"]["mask"])).dataobj) > 0
        assert ma.shape == mb.shape and 0.02 < ma.mean() < 0.95, unit  # part of the image
        assert 2 * (ma & mb).sum() / (ma.sum() + mb.sum()) >= 0.99, unit
        np.testing.assert_allclose(nib.load(os.path.join(out_b, files["batched"]["mask"])).affine,
                                   nib.load(os.path.join(out_a, files["per-item"]["mask"])).affine, atol=1e-9)
        for m, o in ((m, runs[m][0]) for m in runs):
            for rel in files[m]["overlays"]:
                assert os.path.getsize(os.path.join(o, rel)) > 0
        assert ("dicom_seg" in files["batched"]) == ("dicom_seg" in files["per-item"]) == (
            "synthetic_IM" in a.set_index("unit_id").loc[unit, "input_paths"])
        if "dicom_seg" in files["batched"]:
            _same_seg(os.path.join(out_a, files["per-item"]["dicom_seg"]),
                      os.path.join(out_b, files["batched"]["dicom_seg"]))


def _same_seg(path_a: str, path_b: str) -> None:
    """Two DICOM SEGs of the same source image with masks of Dice >= 0.99."""
    import highdicom as hd
    import pydicom

    da, db = pydicom.dcmread(path_a), pydicom.dcmread(path_b)
    hd.seg.Segmentation.from_dataset(db)
    assert db.Modality == "SEG" and (db.Rows, db.Columns) == (da.Rows, da.Columns)
    ref = lambda ds: ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID  # noqa
    assert ref(da) == ref(db)
    pa, pb = da.pixel_array > 0, db.pixel_array > 0
    assert 2 * (pa & pb).sum() / (pa.sum() + pb.sum()) >= 0.99
