"""The DICOM SEG's frames are the mask mapped back onto each source instance's own pixel grid, with the geometry
read as the reader reads it: oblique series, a PixelSpacing of ``0\\0``, series without any position."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from cadpipe.data.synthetic.dicom import write_ct_series
from cadpipe.pipelines.outputs.dicom_seg import mask_to_source_frames
from cadpipe.transforms import LoadStudyImage


def _frames_of_threshold(folder: str, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(SEG frames from the loaded volume's mask, the same threshold on each source slice's stored pixels)."""
    img = LoadStudyImage(mode="keep")(folder)
    mask = (np.asarray(img[0]) > 200).astype(np.uint8)  # the sphere (+400 HU) in MONAI's (X, Y, Z)
    datasets = [pydicom.dcmread(p) for p in paths]
    frames = mask_to_source_frames(mask, np.asarray(img.affine), datasets)
    want = np.stack([(ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) > 200
                     for ds in datasets])
    return frames, want


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (0.8660254, 0.5, 0, 0, 0, -1),
                                         (0.569486, 0.822001, 0.0, 0.0, 0.0, -1.0)],
                         ids=["axial", "oblique-coronal", "oblique-like-MR2"])
def test_frames_line_up_with_each_source_slice(tmp_path, orientation):
    truth = write_ct_series(tmp_path / "s", n_slices=5, rows=16, cols=14, orientation=orientation)
    frames, want = _frames_of_threshold(truth["folder"], truth["paths"])
    assert want.any()
    np.testing.assert_array_equal(frames.astype(bool), want)


def test_frames_line_up_when_the_spacing_is_zero(tmp_path):
    """A series whose PixelSpacing is 0\\0: the reader steps one unit per pixel, so must the SEG's mapping."""
    truth = write_ct_series(tmp_path / "s", n_slices=4, rows=16, cols=14, orientation=(0.8660254, 0.5, 0, 0, 0, -1))
    for path in truth["paths"]:
        ds = pydicom.dcmread(path)
        ds.PixelSpacing = [0, 0]
        ds.save_as(path)
    with pytest.warns(UserWarning, match="PixelSpacing"):
        frames, want = _frames_of_threshold(truth["folder"], truth["paths"])
    np.testing.assert_array_equal(frames.astype(bool), want)


def test_frames_of_a_series_without_positions_follow_the_reader_slice_order(tmp_path):
    truth = write_ct_series(tmp_path / "s", n_slices=4, rows=16, cols=14, shuffle_names=True)
    for path in truth["paths"]:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient, ds.ImageOrientationPatient  # ordered by InstanceNumber alone
        ds.save_as(path)
    shuffled = list(reversed(truth["paths"]))  # the SEG's sources in another order than the reader's
    frames, want = _frames_of_threshold(truth["folder"], shuffled)
    np.testing.assert_array_equal(frames.astype(bool), want)
