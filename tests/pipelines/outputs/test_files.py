"""Atomic writers give files the process's normal permissions (umask applied), like a plain open()."""

from __future__ import annotations

import os
import stat

import pytest

from cadpipe.pipelines.outputs.files import atomic_write_bytes, current_umask


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_write_applies_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        atomic_write_bytes(str(tmp_path / "a.html"), b"x", durable=False)
        with open(tmp_path / "b.pdf", "wb") as f:  # what reportlab/nibabel do
            f.write(b"x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a.html").st_mode)
    assert mode == 0o666 & ~mask == stat.S_IMODE(os.stat(tmp_path / "b.pdf").st_mode)
