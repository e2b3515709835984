"""NRRD (3D Slicer) and ITK MetaImage volumes, everywhere a NIfTI is accepted: the loader (geometry kept:
spacing, direction and origin give the RAS affine), discovery, the MSD-style lists, the portal's upload check and
scoring. Files are written by ``itk``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.io_any import LoadStudyImage, detect_format

itk = pytest.importorskip("itk")

SPACING = (0.5, 0.8, 2.0)
ORIGIN = (10.0, -20.0, 30.0)
DIRECTION = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # swapped and flipped axes
SUFFIXES = {".nrrd": "nrrd", ".nhdr": "nrrd", ".seg.nrrd": "nrrd", ".mha": "metaimage", ".mhd": "metaimage"}


def _volume(seed: int = 0) -> np.ndarray:
    """(x, y, z) int16 with distinct values, so any axis swap or flip shows."""
    return np.random.default_rng(seed).permutation(4 * 5 * 6).reshape(4, 5, 6).astype(np.int16)


def write_itk(path, vol=None) -> np.ndarray:
    vol = _volume() if vol is None else vol
    img = itk.image_from_array(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # itk arrays are (z, y, x)
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(itk.matrix_from_array(DIRECTION))
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    itk.imwrite(img, os.fspath(path))
    return vol


def ras_affine() -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = DIRECTION @ np.diag(SPACING)
    lps[:3, 3] = ORIGIN
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


@pytest.mark.parametrize("suffix", sorted(SUFFIXES))
def test_loader_keeps_voxels_and_geometry(tmp_path, suffix):
    path = tmp_path / f"case{suffix}"
    vol = write_itk(path)
    assert detect_format(path) == SUFFIXES[suffix]
    img = LoadStudyImage()(str(path))
    assert img.shape == (1, *vol.shape)
    np.testing.assert_array_equal(img[0].numpy(), vol)
    np.testing.assert_allclose(np.asarray(img.meta["affine"]), ras_affine(), atol=1e-6)
    assert img.meta["format"] == SUFFIXES[suffix]


def test_same_geometry_as_the_nifti_of_the_same_volume(tmp_path):
    import nibabel as nib

    vol = write_itk(tmp_path / "a.nrrd")
    nib.save(nib.Nifti1Image(vol, ras_affine()), str(tmp_path / "a.nii.gz"))
    a, b = LoadStudyImage()(str(tmp_path / "a.nrrd")), LoadStudyImage()(str(tmp_path / "a.nii.gz"))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(np.asarray(a.meta["affine"]), np.asarray(b.meta["affine"]), atol=1e-5)


def test_mode_does_not_mix_volume_channels(tmp_path):
    vol = write_itk(tmp_path / "v.mha")
    assert LoadStudyImage(mode="rgb")(str(tmp_path / "v.mha")).shape == (1, *vol.shape)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_unreadable_volume_names_the_file(tmp_path, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"NRRD0004\ntype: nonsense\n\n" if suffix == ".nrrd" else b"NDims = 3\nElementType = ???\n")
    with pytest.raises(CadpipeInputError) as err:
        LoadStudyImage()(str(path))
    assert err.value.path == str(path) and "cannot read" in err.value.reason


def test_discovery_finds_volumes_and_skips_data_files_and_slicer_segmentations(tmp_path):
    from cadpipe.pipelines.scoring.discovery import discover

    write_itk(tmp_path / "p1" / "t1.nrrd")
    write_itk(tmp_path / "p1" / "t1.seg.nrrd")  # 3D Slicer segmentation: ground truth
    write_itk(tmp_path / "p2" / "ct.mhd")  # + ct.raw beside it
    write_itk(tmp_path / "p3" / "mr.mha")
    assert (tmp_path / "p2" / "ct.raw").is_file()
    units = discover(str(tmp_path), spatial_dims=3)
    assert sorted((u.study_id, u.series_id, u.kind) for u in units) == [
        ("p1", "t1", "nrrd"), ("p2", "ct", "metaimage"), ("p3", "mr", "metaimage")]


def test_msd_style_lists_take_nrrd_and_metaimage(tmp_path):
    from cadpipe.data.msd import msd_datalist, msd_inference_list

    for name in ("case_001.nrrd", "case_002.mha"):
        write_itk(tmp_path / "imagesTr" / name)
        write_itk(tmp_path / "labelsTr" / name, (_volume() > 60).astype(np.int16))
    items = msd_datalist(str(tmp_path))
    assert [(os.path.basename(d["image"]), d["case"]) for d in items] == [("case_001.nrrd", "case_001"),
                                                                          ("case_002.mha", "case_002")]
    assert [d["case"] for d in msd_inference_list(str(tmp_path))] == ["case_001", "case_002"]


def test_portal_upload_check_accepts_nrrd_and_mha_by_content(tmp_path):
    from cadpipe.pipelines.portal.uploads import UploadRejected, sniff_kind

    write_itk(tmp_path / "v.nrrd")
    write_itk(tmp_path / "v.mha")
    assert sniff_kind("scan.nrrd", (tmp_path / "v.nrrd").read_bytes()[:512]) == "nrrd"
    assert sniff_kind("scan.seg.nrrd", (tmp_path / "v.nrrd").read_bytes()[:512]) == "nrrd"
    assert sniff_kind("scan.mha", (tmp_path / "v.mha").read_bytes()[:512]) == "metaimage"
    with pytest.raises(UploadRejected, match="scan.nrrd: not an NRRD file"):
        sniff_kind("scan.nrrd", b"\x89PNG\r\n\x1a\n....")
    with pytest.raises(UploadRejected, match="scan.mha: not a MetaImage file"):
        sniff_kind("scan.mha", b"\x00\x01\x02binary")


def test_scoring_an_nrrd_volume_writes_its_mask_in_the_input_geometry(tmp_path):
    import nibabel as nib
    import pandas as pd

    from cadpipe.pipelines.scoring.score import EXIT_OK, ScoreConfig, score
    from tests.pipelines.scoring.score_helpers import make_bundle

    bundle = make_bundle("tiny_segmentation_bundle", str(tmp_path / "b"))
    vol = write_itk(tmp_path / "in" / "p1" / "t1.nrrd")
    out = tmp_path / "out"
    summary = score(ScoreConfig(bundle=bundle, input=str(tmp_path / "in"), output=str(out), workers=0, quiet=True))
    assert summary["exit_code"] == EXIT_OK and summary["units"] == 1
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row.status == "ok"
    mask = nib.load(str(out / "p1" / "t1" / "t1_mask.nii.gz"))
    assert mask.shape == vol.shape
    np.testing.assert_allclose(mask.affine, ras_affine(), atol=1e-5)


@pytest.mark.parametrize("suffix,header", [
    (".nrrd", b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4000 4000 4000\nencoding: raw\nendian: little\n\n"),
    (".mha", b"ObjectType = Image\nNDims = 3\nDimSize = 4000 4000 4000\nElementType = MET_SHORT\n"
             b"ElementDataFile = LOCAL\n"),
])
def test_declared_size_over_the_limit_is_refused_before_decoding(tmp_path, suffix, header):
    from cadpipe.transforms.readers.limits import PixelLimits, check_declared_size, declared_shape

    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(header + b"\0" * 64)  # the header alone: decoding would need 128 GB
    assert declared_shape(str(path), SUFFIXES[suffix]) == ((4000, 4000, 4000), 1, True)
    with pytest.raises(CadpipeInputError, match=r"declared image size 4000x4000x4000 .* is over the limit"):
        check_declared_size(str(path), SUFFIXES[suffix], PixelLimits(max_voxels=10**9))
