"""Checks shared by the DICOM results tests: the journal's output files per unit, and a Secondary Capture read back
through highdicom (``highdicom.imread``: highdicom 0.28 has no ``SCImage.from_dataset``) and compared with the
overlay PNG it was made from."""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["journal_outputs", "assert_sc_matches_png"]


def journal_outputs(out: str) -> dict[str, dict]:
    """unit_id -> the ``_outputs`` of its last journal line (paths relative to ``out``)."""
    rows = {}
    with open(os.path.join(out, ".cadpipe", "journal.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            rows[row["unit_id"]] = row["_outputs"]
    return rows


def assert_sc_matches_png(sc_file, png_path: str, source=None):
    """Read the Secondary Capture ``sc_file`` (path or file object) with ``highdicom.imread`` and check that frame 1
    is the PNG's RGB pixels exactly (and, given the ``source`` dataset, that it is a new series of its study, same
    patient). Returns the ``highdicom.Image``."""
    import highdicom as hd
    import pydicom
    from PIL import Image

    sc = hd.imread(sc_file)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
    assert "not for clinical use" in sc.SeriesDescription
    with Image.open(png_path) as im:
        png = np.asarray(im.convert("RGB"))
    assert (sc.Rows, sc.Columns) == png.shape[:2]
    frame = sc.get_frame(1, dtype=np.uint8)
    np.testing.assert_array_equal(frame, png)
    if source is not None:
        assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
        assert sc.PatientID == source.PatientID
    return sc
