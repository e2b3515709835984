"""Bounded DICOM header reads: junk named .dcm is refused fast, real headers are read without pixel data."""

from __future__ import annotations

import time

import pytest

from cadpipe.data.synthetic.dicom import write_cxr_dicom
from cadpipe.data.synthetic.hostile import write_sparse_file
from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.dicom_probe import read_dicom_header


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
