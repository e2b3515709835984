"""Items packed in a DataLoader worker come back as the same MetaTensors; scoring with workers equals in-process."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pandas as pd
import torch

from cadpipe.pipelines.scoring.item_transport import SHARED_MEMORY_BYTES, pack_item, unpack_item
from cadpipe.pipelines.scoring.score import ScoreConfig, score
from tests.pipelines.scoring.score_helpers import mixed_2d_folder, write_dicom_series, write_nifti


def _preprocessing():
    from monai.transforms import Compose, Orientationd, Resized, Spacingd

    from cadpipe.transforms import LoadStudyImaged

    return Compose([LoadStudyImaged("image", mode="keep"), Orientationd("image", "LPS"),
                    Spacingd("image", pixdim=(1.5, 1.5, 2.0)), Resized("image", (8, 9, 7))])


def test_round_trip_keeps_data_meta_and_inverse(tmp_path):
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    path = write_nifti(str(tmp_path / "synthetic_v.nii.gz"), shape=(14, 12, 10))
    pre = _preprocessing()
    item = pre({"image": path, "other": [1, "a"]})
    record = pickle.loads(pickle.dumps(pack_item(item)))  # what crosses the worker queue
    assert not isinstance(record["image"], MetaTensor) and isinstance(record["image"]["data"], np.ndarray)
    back = unpack_item(record)
    a, b = item["image"], back["image"]
    assert isinstance(b, MetaTensor) and b.dtype == a.dtype and torch.equal(a.as_tensor(), b.as_tensor())
    assert back["other"] == [1, "a"]
    assert set(a.meta) == set(b.meta)
    for key, value in a.meta.items():
        assert type(b.meta[key]) is type(value), key  # tensors stay tensors, arrays arrays
        np.testing.assert_array_equal(np.asarray(b.meta[key]), np.asarray(value))
    assert torch.equal(a.affine, b.affine) and b.is_batch == a.is_batch
    assert len(b.applied_operations) == len(a.applied_operations) == 3
    # the inverse (what Invertd does in segmentation postprocessing) works on the rebuilt tensor
    inv_a = Invertd("pred", pre, orig_keys="image")({"image": a, "pred": a.clone()})["pred"]
    inv_b = Invertd("pred", pre, orig_keys="image")({"image": b, "pred": b.clone()})["pred"]
    assert inv_b.shape == inv_a.shape == (1, 14, 12, 10)
    assert torch.allclose(inv_a.as_tensor(), inv_b.as_tensor()) and torch.equal(inv_a.affine, inv_b.affine)


def test_large_arrays_stay_tensors():
    from monai.data import MetaTensor

    n = SHARED_MEMORY_BYTES // 4 + 1
    item = {"image": MetaTensor(torch.ones(1, n))}
    record = pack_item(item)
    assert isinstance(record["image"]["data"], torch.Tensor)
    assert torch.equal(unpack_item(record)["image"].as_tensor(), item["image"].as_tensor())


def _seg_content(path) -> tuple:
    import pydicom

    ds = pydicom.dcmread(str(path))
    positions = [tuple(f.PlanePositionSequence[0].ImagePositionPatient) for f in ds.PerFrameFunctionalGroupsSequence
                 if "PlanePositionSequence" in f]
    return int(ds.NumberOfFrames), ds.PixelData, positions


def test_workers_score_like_in_process(tmp_path):
    """Classification (DICOM, PNG, corrupt files) and segmentation (NIfTI, DICOM series → DICOM SEG) score the same
    rows and masks with 2 worker processes as without workers."""
    import gzip

    from pydicom.uid import generate_uid

    from tests.pipelines.scoring.score_helpers import make_bundle

    cls_bundle = make_bundle("tiny_classification_bundle", str(tmp_path / "b"))
    seg_bundle = make_bundle("tiny_segmentation_bundle", str(tmp_path / "b"))
    mixed_2d_folder(str(tmp_path / "in"))
    vols = tmp_path / "vols"
    for i in range(3):
        write_nifti(str(vols / f"synthetic_{i}.nii.gz"), seed=i)
    write_dicom_series(str(vols / "series"), generate_uid(), generate_uid())
    tables, masks = {}, {}
    for workers in (0, 2):
        out = tmp_path / f"cls{workers}"
        score(ScoreConfig(bundle=cls_bundle, input=str(tmp_path / "in"), output=str(out), workers=workers,
                          batch_size=2, quiet=True, reports=False))
        tables[workers] = pd.read_csv(out / "results.csv").drop(columns=["elapsed_s"]).sort_values("unit_id")
        out = tmp_path / f"seg{workers}"
        s = score(ScoreConfig(bundle=seg_bundle, input=str(vols), output=str(out), workers=workers, batch_size=2,
                              quiet=True, reports=False))
        assert s["ok"] == 4 and s["error"] == 0
        masks[workers] = {p.relative_to(out): gzip.decompress(p.read_bytes()) for p in out.rglob("*_mask.nii.gz")}
        # the SEG's frames and their geometry (its new UIDs and times differ between runs, and so may its size)
        masks[workers].update({p.relative_to(out): _seg_content(p) for p in out.rglob("*_seg.dcm")})
    pd.testing.assert_frame_equal(tables[0].reset_index(drop=True), tables[2].reset_index(drop=True))
    assert len(masks[0]) == 5 and masks[0] == masks[2]
    assert os.path.isdir(tmp_path / "cls2")
