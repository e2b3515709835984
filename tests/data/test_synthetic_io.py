"""The synthetic DICOM / NIfTI / image writers: labelled synthetic, ground truth right, everything loadable."""

from __future__ import annotations

import os
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cadpipe.cli import main as cadpipe_main
from cadpipe.data.synthetic.dicom import write_ct_series, write_cxr_dicom
from cadpipe.data.synthetic.images import write_image
from cadpipe.data.synthetic.nifti import write_lesion_volume
from cadpipe.transforms.readers.io_any import LoadStudyImage, detect_format

warnings.filterwarnings("ignore", message=".*nvImageCodec.*")


def test_names_must_say_synthetic(tmp_path):
    for writer, name in ((write_cxr_dicom, "cxr.dcm"), (write_image, "a.png"), (write_lesion_volume, "v.nii.gz")):
        with pytest.raises(ValueError, match="synthetic"):
            writer(tmp_path / name)


def test_dicom_is_labelled_synthetic(tmp_path):
    info = write_cxr_dicom(tmp_path / "synthetic_cxr.dcm", photometric="MONOCHROME1", voi_lut=True)
    ds = pydicom.dcmread(info["path"])
    assert str(ds.PatientName) == "SYNTHETIC^CADPIPE" and "SYNTHETIC" in ds.StudyDescription
    assert ds.PhotometricInterpretation == "MONOCHROME1" and "VOILUTSequence" in ds
    np.testing.assert_array_equal(ds.pixel_array, info["pixels"])
    np.testing.assert_array_equal(info["pixels"], 4095 - info["display"])
    truth = write_ct_series(tmp_path / "series", n_slices=3, slope=0.5, intercept=-1024)
    for p in truth["paths"]:
        assert "synthetic" in os.path.basename(p)
        ds = pydicom.dcmread(p)
        assert float(ds.RescaleSlope) == 0.5 and float(ds.RescaleIntercept) == -1024
    # file names are shuffled relative to slice order, so a reader sorting by name would be wrong
    assert truth["paths"] != sorted(truth["paths"])
    assert np.isin(truth["hu"], [400.0]).sum() > 0  # the sphere exists


def test_nifti_masks_are_the_spheres(tmp_path):
    truth = write_lesion_volume(tmp_path / "synthetic_vol.nii.gz", n_lesions=2, seed=3)
    img = nib.load(truth["path"])
    assert b"SYNTHETIC" in img.header["descrip"].tobytes()
    mask = np.asarray(nib.load(truth["mask_path"]).dataobj)
    np.testing.assert_array_equal(mask, truth["mask"])
    grid = np.indices(mask.shape)
    expected = np.zeros(mask.shape, bool)
    for c, r in zip(truth["centers"], truth["radii"]):
        expected |= sum((grid[d] - c[d]) ** 2 for d in range(3)) <= r**2
    np.testing.assert_array_equal(mask.astype(bool), expected)
    assert (np.asarray(img.dataobj)[expected] > 200).mean() > 0.95  # lesions are bright


def test_cli_writes_a_loadable_mixed_folder(tmp_path, capsys):
    out = tmp_path / "synth"
    assert cadpipe_main(["synth", "--output", str(out), "--no-datasets"]) == 0
    assert "dicom" in capsys.readouterr().out
    formats = {}
    for root, dirs, files in os.walk(out):
        for name in files:
            path = os.path.join(root, name)
            assert "synthetic" in name
            fmt = detect_format(path)
            assert fmt is not None, path
            img = LoadStudyImage()(path)
            assert img.ndim >= 3 and np.isfinite(img.numpy()).all()
            formats[fmt] = formats.get(fmt, 0) + 1
    assert detect_format(out / "dicom" / "synthetic_ct_series") == "dicom_series"
    assert LoadStudyImage()(out / "dicom" / "synthetic_ct_series").shape[-1] == 6
    assert formats["dicom"] >= 6 + 6 and formats["nifti"] == 2 and formats["image"] == 5
    syntaxes = {str(pydicom.dcmread(out / "dicom" / n).file_meta.TransferSyntaxUID) for n in os.listdir(out / "dicom")
                if n.endswith(".dcm")}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80"} <= syntaxes
