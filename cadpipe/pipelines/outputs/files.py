"""Atomic output files: a reader never sees a partial file, a killed process leaves the old file or the new one.

Every per-unit output (overlays, masks, reports, DICOM objects) and the results table are written through
:func:`atomic_write_bytes` / :func:`atomic_writer_path`; see :mod:`cadpipe.pipelines.scoring.results` for how the
journal relies on this.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_writer_path", "atomic_save_dicom", "current_umask",
           "file_sha256"]

_UMASK_LOCK = threading.Lock()


def atomic_write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder + ``os.replace`` (readers never see a
    partial file; a killed process leaves the old file or the new one). ``durable`` also ``fsync``-s the data
    before the rename (survives a power loss; slow: one disk flush per file).

    The file gets the permissions a plain ``open(path, "w")`` would give (``0o666`` less the process's umask), not
    the ``0o600`` of the temp file ``mkstemp`` creates.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask, read without changing it (``/proc/self/status`` on Linux; elsewhere set and restored
    under a lock, as ``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_text(path: str, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_writer_path(path: str) -> str:
    """A temp path beside ``path`` for libraries that write files themselves; ``os.replace`` it afterwards.

    The temp name keeps the final suffix(es) so writers that pick a format by suffix still work.
    """
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".tmp_{os.getpid()}_{base}")


def file_sha256(path: str) -> str:
    """The sha256 of a file's content (hex), read in 1 MiB blocks: names the exact weights a result came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_save_dicom(ds, path: str, mode: int | None = None) -> None:
    """``ds.save_as`` (a pydicom Dataset, DICOM file format enforced) through a temp file beside ``path``; ``mode``:
    the file's permissions (default: the umask's, as ``open`` gives)."""
    tmp = atomic_writer_path(path)
    try:
        ds.save_as(tmp, enforce_file_format=True)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
