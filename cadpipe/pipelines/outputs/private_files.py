"""Folders and files that hold patient data as received: created readable by their owner only.

Uploads to the portal and its job database, the DICOMweb retrieval cache and the DICOM listener's received instances
are copies of patient studies. Their folders are created ``0700`` and their files ``0600`` whatever the process's
umask, so other users of the machine cannot read them. Outputs meant to be shared (``results.csv``, reports,
overlays, DICOM results) keep the umask.

The user may ask otherwise with ``CADPIPE_DATA_UMASK`` (octal, e.g. ``027`` to let the folder's group read them):
folders then get ``0777 & ~mask`` and files ``0666 & ~mask``. A folder that exists already keeps its own mode (the
user made it); what cadpipe creates inside it follows the rules above. See ``docs/security.md``.
"""

from __future__ import annotations

import os

from cadpipe.errors import CadpipeInputError

__all__ = ["DATA_UMASK_ENV", "data_umask", "private_dir_mode", "private_file_mode", "make_private_dirs",
           "open_private", "restrict_file"]

DATA_UMASK_ENV = "CADPIPE_DATA_UMASK"
DEFAULT_DATA_UMASK = 0o077


def data_umask() -> int:
    """The mask for patient-data folders and files: ``$CADPIPE_DATA_UMASK`` (octal), default ``077``.

    Raises:
        CadpipeInputError: the variable is set to something that is not an octal mask.
    """
    text = os.environ.get(DATA_UMASK_ENV, "").strip()
    if not text:
        return DEFAULT_DATA_UMASK
    try:
        mask = int(text, 8)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0o777:
        raise CadpipeInputError(None, f"{DATA_UMASK_ENV}={text!r} is not an octal umask such as 077 or 027")
    return mask


def private_dir_mode() -> int:
    return 0o777 & ~data_umask()


def private_file_mode() -> int:
    return 0o666 & ~data_umask()


def make_private_dirs(path: str, under: str | None = None) -> str:
    """Create ``path`` and its missing parents. Those at or below ``under`` (default: ``path`` itself) get
    :func:`private_dir_mode` exactly, whatever the umask; those above it are made as ``os.makedirs`` makes them
    (the umask: e.g. a shared output folder holding a private cache). Folders that exist keep their mode.
    Returns ``path``."""
    mode = private_dir_mode()
    top = os.path.abspath(under if under is not None else path)
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for folder in reversed(missing):
        private = folder == top or folder.startswith(top.rstrip(os.sep) + os.sep)
        try:
            os.mkdir(folder, mode if private else 0o777)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
            continue  # made meanwhile by another thread or process: theirs
        if private:
            os.chmod(folder, mode)  # mkdir's mode is filtered by the umask
    return path


def open_private(path: str, mode: str = "wb"):
    """``open(path, mode)`` for writing a new or truncated file created with :func:`private_file_mode`."""
    if not any(c in mode for c in "wax"):
        raise ValueError(f"open_private writes files; mode {mode!r} does not")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if "x" in mode else os.O_APPEND if "a" in mode else os.O_TRUNC)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), private_file_mode())
    try:
        os.fchmod(fd, private_file_mode())  # os.open's mode is filtered by the umask
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def restrict_file(path: str) -> None:
    """Give an existing file (one a library wrote, e.g. SQLite) :func:`private_file_mode`."""
    os.chmod(path, private_file_mode())
