"""Reasons for unreadable paths: link loops, dangling links, permission denied."""

from __future__ import annotations

import errno
import os

import pytest

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.readers.file_checks import check_readable, os_error_reason
from cadpipe.transforms.readers.io_any import LoadStudyImage


def test_link_loop_and_dangling_link(tmp_path):
    loop = tmp_path / "loop.dcm"
    os.symlink(loop, loop)
    with pytest.raises(CadpipeInputError, match=r"loop.dcm: symbolic link loop$"):
        LoadStudyImage()(str(loop))
    dangling = tmp_path / "gone.png"
    os.symlink(tmp_path / "nowhere.png", dangling)
    with pytest.raises(CadpipeInputError, match=r"gone.png: broken symbolic link"):
        check_readable(dangling)
    with pytest.raises(CadpipeInputError, match=r"missing.png: no such file or folder$"):
        check_readable(tmp_path / "missing.png")


def test_permission_denied_reason_mapping():
    assert os_error_reason(PermissionError(errno.EACCES, "Permission denied")) == "permission denied"
    assert os_error_reason(OSError(errno.EPERM, "x")) == "permission denied"
    assert os_error_reason(OSError(errno.ELOOP, "x")) == "symbolic link loop"


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root: root reads a chmod 000 file (the mapping is tested "
                                              "with a mocked PermissionError above)")
def test_chmod_000_file(tmp_path):
    from cadpipe.data.synthetic.images import write_image

    path = write_image(tmp_path / "synthetic.png")["path"]
    os.chmod(path, 0)
    with pytest.raises(CadpipeInputError, match=r"synthetic.png: permission denied$"):
        LoadStudyImage()(path)
