"""The pixel-count guard: declared sizes are refused before decoding, naming the file, the size and the limit."""

from __future__ import annotations

import os

import pytest

from cadpipe.data.synthetic.hostile import write_dicom_bomb, write_nifti_bomb, write_png_bomb
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.io_any import LoadStudyImage
from cadpipe.transforms.readers.limits import ENV_MAX_PIXELS, PixelLimits, check_declared_size


def test_png_bomb_is_refused_before_decoding(tmp_path):
    bomb = write_png_bomb(tmp_path / "synthetic_bomb.png")  # 30000 x 30000 declared, a few hundred bytes
    assert bomb["bytes"] < 10_000
    with pytest.raises(CadpipeInputError) as e:
        LoadStudyImage()(bomb["path"])
    msg = str(e.value)
    assert msg.startswith(bomb["path"] + ": ")
    assert "30000x30000" in msg and "900 M" in msg and "60 M" in msg and "--max-pixels" in msg


def test_limit_is_configurable_through_the_environment(tmp_path, monkeypatch):
    png = write_png_bomb(tmp_path / "synthetic_small.png", 300, 200, complete=True)["path"]
    assert LoadStudyImage()(png).shape == (1, 300, 200)
    monkeypatch.setenv(ENV_MAX_PIXELS, "50000")
    assert PixelLimits.current().max_pixels == 50000
    with pytest.raises(CadpipeInputError, match=r"200x300 .*over the limit of 0.05 M"):
        LoadStudyImage()(png)


def test_dicom_frames_count_as_a_volume(tmp_path):
    flat = write_dicom_bomb(tmp_path / "synthetic_flat.dcm", rows=9000, cols=8000)["path"]
    with pytest.raises(CadpipeInputError, match=r"9000x8000 \(72 M pixel values\).*2D image"):
        check_declared_size(flat, "dicom")
    cine = write_dicom_bomb(tmp_path / "synthetic_cine.dcm", rows=4000, cols=4000, frames=100)["path"]
    with pytest.raises(CadpipeInputError, match=r"100x4000x4000 .*1.6 G.*volume.*--max-voxels"):
        LoadStudyImage()(cine)
    assert check_declared_size(cine, "dicom", PixelLimits(max_voxels=2_000_000_000)) == 1_600_000_000


def test_nifti_header_shape_is_checked(tmp_path):
    path = write_nifti_bomb(tmp_path / "synthetic_bomb.nii", shape=(2048, 2048, 2048))["path"]
    with pytest.raises(CadpipeInputError) as e:
        LoadStudyImage()(path)
    assert str(e.value).startswith(path) and "2048x2048x2048" in str(e.value) and "1 G for a volume" in str(e.value)


def test_ljpeg_ics_dims_are_checked(tmp_path):
    from cadpipe.data.synthetic.ljpeg import write_ljpeg_case

    case = write_ljpeg_case(tmp_path / "case", rows=96, cols=64, views=("LEFT_CC",))
    ljpeg = next(os.path.join(r, f) for r, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".LJPEG"))
    assert check_declared_size(ljpeg, "ljpeg") == 96 * 64
    with pytest.raises(CadpipeInputError, match=r"96x64 .*over the limit"):
        check_declared_size(ljpeg, "ljpeg", PixelLimits(max_pixels=1000))
    del case


def test_batched_reader_checks_the_declared_size_too(tmp_path):
    from cadpipe.transforms.readers.io_raw import read_raw_2d

    bomb = write_dicom_bomb(tmp_path / "synthetic_bomb.dcm")["path"]
    with pytest.raises(CadpipeInputError, match=r"synthetic_bomb.dcm: declared image size 30000x30000"):
        read_raw_2d(bomb)
    png = write_png_bomb(tmp_path / "synthetic_bomb.png")["path"]
    with pytest.raises(CadpipeInputError, match=r"synthetic_bomb.png: declared image size 30000x30000"):
        read_raw_2d(png)
