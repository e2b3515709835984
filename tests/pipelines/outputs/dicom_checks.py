"""Checks shared by the DICOM results tests: the journal's output files per unit, a Secondary Capture read back
through highdicom (``highdicom.imread``: highdicom 0.28 has no ``SCImage.from_dataset``) and compared with the
overlay PNG it was made from, and the checkers cadpipe did not write (``dciodvfy``, ``dsrdump``)."""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["journal_outputs", "assert_sc_matches_png", "require_tool", "dciodvfy", "assert_conformant",
           "assert_dsrdump_parses", "conformant_where_checkable", "EXPLAINED_WARNINGS"]

# dciodvfy warnings that remain, each explained in docs/pacs.md ("Conformance")
EXPLAINED_WARNINGS = (
    "Unrecognized defined term <99CADPIPE>",  # private codes: intended use, classes without a declared code
    "should be absent (not empty) if an unpaired body part",  # Laterality empty: side and body part unknown
    "not present in standard DICOM IOD",  # View Position copied into the Secondary Capture (hanging protocols)
    # copied from the source as it is (patient and study attributes of pydicom's test files / synthetic sources)
    "Value is zero for value 1 of attribute <Patient's Weight>",
    "Retired Person Name form",
    "Missing attribute or value that would be needed to build DICOMDIR",
)


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
    is the PNG's RGB pixels exactly, at the display geometry of ``source`` when given (its aspect ratio:
    ``secondary_capture.display_picture``), stored losslessly compressed, and that it is a new series of the
    source's study, same patient. Returns the ``highdicom.Image``."""
    from cadpipe.pipelines.outputs.secondary_capture import display_picture

    import highdicom as hd
    import pydicom
    from PIL import Image

    sc = hd.imread(sc_file)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "RGB" and sc.SamplesPerPixel == 3 and sc.BitsAllocated == 8
    assert "not for clinical use" in sc.SeriesDescription
    with Image.open(png_path) as im:
        png = np.asarray(im.convert("RGB"))
    if source is not None:
        png = display_picture(png, source)
        src_ratio, sc_ratio = source.Rows / source.Columns, sc.Rows / sc.Columns
        spacing = source.get("PixelSpacing") or source.get("ImagerPixelSpacing")
        if not spacing or float(spacing[0]) == float(spacing[1]):  # square pixels: the source's rows : columns
            assert abs(sc_ratio - src_ratio) <= src_ratio * (1.0 / min(sc.Rows, sc.Columns) + 1e-6)
    assert sc.file_meta.TransferSyntaxUID in (pydicom.uid.JPEGLSLossless, pydicom.uid.RLELossless)
    assert (sc.Rows, sc.Columns) == png.shape[:2]
    if isinstance(sc_file, (str, os.PathLike)):
        conformant_where_checkable(str(sc_file))
    frame = sc.get_frame(1, dtype=np.uint8)
    np.testing.assert_array_equal(frame, png)
    if source is not None:
        assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
        assert sc.PatientID == source.PatientID
    return sc


def require_tool(name: str) -> str:
    """The path of the command-line tool ``name``, or skip the test saying which package provides it."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        package = {"dciodvfy": "dicom3tools", "dsrdump": "dcmtk"}.get(name, name)
        pytest.skip(f"{name} is not installed (Debian package {package}; scripts/dicom_tools.sh installs it)")
    return path


def dciodvfy(path: str) -> tuple[list[str], list[str]]:
    """David Clunie's ``dciodvfy`` (dicom3tools) on ``path``: ``(errors, warnings)``, each a list of its lines."""
    import subprocess

    proc = subprocess.run([require_tool("dciodvfy"), path], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [ln for ln in lines if ln.startswith("Error")], [ln for ln in lines if ln.startswith("Warning")]


def assert_conformant(path: str, allowed_warnings=()) -> list[str]:
    """``dciodvfy`` finds no error in ``path``; its warnings are printed (shown with ``pytest -rA`` / ``-s``) and
    returned. Each warning must match one of ``allowed_warnings`` (substrings) when that is given."""
    errors, warnings = dciodvfy(path)
    if os.environ.get("CADPIPE_DCIODVFY_ALL"):  # while working on conformance: every warning, no failure on one
        allowed_warnings = ()
    for w in warnings:
        print(f"dciodvfy {os.path.basename(path)}: {w}")
    assert not errors, f"dciodvfy {path}:\n" + "\n".join(errors)
    if allowed_warnings:
        unexplained = [w for w in warnings if not any(a in w for a in allowed_warnings)]
        assert not unexplained, f"dciodvfy warnings not explained in docs/pacs.md ({path}):\n" + "\n".join(unexplained)
    return warnings


def assert_dsrdump_parses(path: str) -> str:
    """dcmtk's ``dsrdump`` reads the SR ``path`` without an error; returns its text."""
    import subprocess

    proc = subprocess.run([require_tool("dsrdump"), path], capture_output=True, text=True, errors="replace",
                          timeout=120)
    assert proc.returncode == 0, f"dsrdump {path}: {proc.stderr}"
    assert "E:" not in proc.stderr, proc.stderr
    return proc.stdout


def conformant_where_checkable(path: str) -> None:
    """:func:`assert_conformant` (and ``dsrdump`` for an SR) when the tools are installed; nothing otherwise (the
    conformance tests themselves skip with the reason)."""
    import shutil

    if shutil.which("dciodvfy"):
        assert_conformant(path, EXPLAINED_WARNINGS)
    if shutil.which("dsrdump") and pydicom_modality(path) == "SR":
        assert_dsrdump_parses(path)


def pydicom_modality(path: str) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
