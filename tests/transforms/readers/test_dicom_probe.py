"""Bounded DICOM header reads: junk named .dcm is refused fast, real headers are read without pixel data."""

from __future__ import annotations

import time

import pytest

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.hostile import write_sparse_file
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.dicom_probe import read_dicom_header


def test_real_header(tmp_path):
    path = str(tmp_path / "synthetic.dcm")
    write_cxr_dicom(path, rows=48, cols=40)
    h = read_dicom_header(path)
    assert h.has_pixels and (h.rows, h.cols, h.frames, h.samples) == (48, 40, 1, 1)
    assert h.get("StudyInstanceUID")


def test_sparse_gigabyte_without_preamble_is_not_parsed(tmp_path):
    path = write_sparse_file(tmp_path / "big.dcm", 1 << 30)["path"]
    t0 = time.perf_counter()
    with pytest.raises(CadpipeInputError, match=r"big.dcm: not a DICOM file \(no DICM marker"):
        read_dicom_header(path)
    assert time.perf_counter() - t0 < 60  # a bound against a hang, not a speed claim (it reads 132 bytes)


def test_junk_after_a_dicm_preamble_stops_at_the_read_budget(tmp_path):
    path = str(tmp_path / "junk.dcm")
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        f.truncate(64 << 20)
    with pytest.raises(CadpipeInputError, match=r"junk.dcm: not a DICOM file"):
        read_dicom_header(path, max_read=256 << 10)


def test_permission_error_reason(tmp_path, monkeypatch):
    import builtins

    path = str(tmp_path / "synthetic.dcm")
    write_cxr_dicom(path)
    real_open = builtins.open

    def deny(p, *a, **k):
        if str(p) == path:
            raise PermissionError(13, "Permission denied", path)
        return real_open(p, *a, **k)

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(CadpipeInputError, match=r"synthetic.dcm: permission denied$"):
        read_dicom_header(path)


_KEYWORDS = ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "Modality", "StudyInstanceUID",
             "PatientSex", "PatientAge", "PatientBirthDate", "StudyDescription", "BodyPartExamined", "ViewPosition",
             "ImageLaterality", "Laterality", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber",
             "SpecificCharacterSet", "ImageType", "Rows")


def _pydicom_files() -> list[str]:
    from pydicom.data import get_testdata_files

    return [p for p in get_testdata_files("*") if p.lower().endswith((".dcm", ".dicom")) or "charset" in p.lower()]


def _size(h) -> tuple | str:
    try:
        return h.rows, h.cols, h.frames, h.samples
    except CadpipeInputError as err:
        return err.reason


def test_header_text_and_integers_equal_pydicoms_on_its_own_files():
    """The header's own decoding of plain ASCII values gives what pydicom gives, on every DICOM file pydicom
    ships (other character sets, multiple values, numbers: pydicom's conversion), with and without ``keywords``."""
    import pydicom

    checked = 0
    for path in _pydicom_files():
        try:
            ref = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            full = read_dicom_header(path)
        except Exception:  # noqa: BLE001 - files pydicom itself cannot read (deliberately broken ones)
            continue
        kept = read_dicom_header(path, keywords=_KEYWORDS)
        for key in _KEYWORDS:
            try:
                expected = str(getattr(ref, key, "") or "")
            except Exception:  # noqa: BLE001 - a value pydicom cannot convert is not compared
                continue
            assert full.get(key) == expected, (path, key)
            assert kept.get(key) == expected, (path, key)
        try:
            number = int(getattr(ref, "InstanceNumber", 0) or 0)
        except (TypeError, ValueError):
            number = 0
        assert kept.get_int("InstanceNumber") == number, path
        assert _size(kept) == _size(full), path
        checked += 1
    assert checked >= 40  # pydicom ships ~100 DICOM files


def test_keywords_keep_only_those_elements(tmp_path):
    path = str(tmp_path / "synthetic.dcm")
    write_cxr_dicom(path, rows=48, cols=40)
    h = read_dicom_header(path, keywords=("StudyInstanceUID",))
    assert h.get("StudyInstanceUID") and h.has_pixels and (h.rows, h.cols) == (48, 40)
    assert "PhotometricInterpretation" not in h.dataset


def test_malformed_size_is_an_input_error_naming_the_file(tmp_path):
    import pydicom

    path = str(tmp_path / "synthetic_frames.dcm")
    write_cxr_dicom(path, rows=48, cols=40)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00280008, "IS", None)
    ds[0x00280008]._value = "1A"
    ds.save_as(path)
    with pytest.raises(CadpipeInputError, match=r"synthetic_frames.dcm: malformed NumberOfFrames"):
        read_dicom_header(path).frames


def test_values_over_the_defer_size_are_read_before_the_file_is_closed(tmp_path):
    """Issue: a value over 1 KiB was deferred and read after the file was closed ("seek of closed file")."""
    import pydicom

    from cadpipe.data.synthetic.hostile import write_long_header_dicom

    made = write_long_header_dicom(tmp_path / "synthetic_long.dcm", length=3000)
    full = pydicom.dcmread(made["path"], stop_before_pixels=True)
    for keywords in (None, ("StudyDescription", "PatientName", "SeriesInstanceUID")):
        h = read_dicom_header(made["path"], keywords=keywords)
        assert h.get("StudyDescription") == str(full.StudyDescription) and len(h.get("StudyDescription")) == 3000
        assert h.get("PatientName") == str(full.PatientName) and len(h.get("PatientName")) > 1024
        assert h.get("SeriesInstanceUID") == made["series_uid"] and h.dropped == ()
        assert str(h.dataset)  # every element converts without touching the (closed) file


def test_a_value_over_the_read_back_limit_is_dropped_not_read(tmp_path):
    import pydicom

    from cadpipe.transforms.readers.dicom_probe import VALUE_READ_LIMIT

    path = str(tmp_path / "synthetic.dcm")
    write_cxr_dicom(path, rows=48, cols=40)
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "OB", b"\0" * (VALUE_READ_LIMIT + 2))  # a private blob
    ds.StudyDescription = "kept"
    ds.save_as(path)
    h = read_dicom_header(path)
    assert h.dropped == (0x00091010,) and 0x00091010 not in h.dataset
    assert h.get("StudyDescription") == "kept" and (h.rows, h.cols) == (48, 40) and str(h.dataset)
