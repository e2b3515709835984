"""Read a secret (credentials, an access token) from a file without ever showing it.

:func:`read_secret_file` refuses a file that other users may read or write (the secret would not be one), a file
that is not a regular file, over 64 KiB, not UTF-8, or not exactly one line; each refusal is a
:class:`~cadpipe.errors.CadpipeInputError` naming the file and the problem, never its content. Used by
``cadpipe score --dicomweb-auth-file`` and ``cadpipe serve --token-file``.
"""

from __future__ import annotations

import os
import stat

from cadpipe.errors import CadpipeInputError

__all__ = ["read_secret_file", "MAX_SECRET_BYTES"]

MAX_SECRET_BYTES = 64 << 10


def read_secret_file(path: str, what: str = "credentials file") -> str:
    """The one line of ``path``, stripped (module docstring for what is refused)."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise CadpipeInputError(path, f"{what} is not a regular file")
            if mode & 0o077:
                raise CadpipeInputError(path, f"{what} is readable or writable by other users (mode "
                                              f"{stat.S_IMODE(mode):03o}); make it private: chmod 600 {path}")
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as err:
        raise CadpipeInputError(path, f"{what} cannot be read ({err.strerror})") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise CadpipeInputError(path, f"{what} is over 64 KiB")
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CadpipeInputError(path, f"{what} is not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise CadpipeInputError(path, f"{what} must hold one line (found {len(lines)})")
    if any(not c.isprintable() for c in text):
        raise CadpipeInputError(path, f"{what} holds a control character")
    return text
