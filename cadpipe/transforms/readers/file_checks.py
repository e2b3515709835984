"""What is wrong with a path, in words a user understands: symbolic link loops, permission denied, missing files.

``os.path.exists`` says ``False`` both for a missing file and for a link loop, and a library reading a file it may
not open reports ``PermissionError`` wrapped in its own words. :func:`os_error_reason` names the cause from the
error number; :func:`check_readable` raises :class:`~cadpipe.errors.CadpipeInputError` with it before a reader runs.
"""

from __future__ import annotations

import errno
import os

from cadpipe.errors import CadpipeInputError

__all__ = ["os_error_reason", "check_readable"]

_REASONS = {
    errno.ELOOP: "symbolic link loop",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOENT: "no such file or folder",
    errno.ENOTDIR: "no such file or folder (a part of the path is not a folder)",
    errno.EISDIR: "is a folder, not a file",
    errno.ENAMETOOLONG: "file name too long",
    errno.EIO: "input/output error while reading",
}


def os_error_reason(err: OSError) -> str:
    """A short reason for an ``OSError``: "symbolic link loop", "permission denied", "no such file or folder"..."""
    if err.errno in _REASONS:
        return _REASONS[err.errno]
    if isinstance(err, PermissionError):
        return "permission denied"
    return f"{type(err).__name__}: {err.strerror or err}"


def check_readable(path: str | os.PathLike) -> None:
    """Raise :class:`CadpipeInputError` naming ``path`` and the cause when it cannot be read: missing, a dangling
    link, a link loop, no permission (folders: cannot be listed). A readable file or folder passes."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ENOENT and os.path.islink(path):
            raise CadpipeInputError(path, "broken symbolic link (its target does not exist)") from err
        raise CadpipeInputError(path, os_error_reason(err)) from err
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb"):
                pass
    except OSError as err:
        raise CadpipeInputError(path, os_error_reason(err)) from err
    del st
