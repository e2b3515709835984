"""Atomic output files: a reader never sees a partial file, a killed process leaves the old file or the new one.

Every per-unit output (overlays, masks, reports, DICOM objects) and the results table are written through
:func:`atomic_write_bytes` / :func:`atomic_writer_path`; see :mod:`cadpipe.pipelines.scoring.results` for how the
journal relies on this.
"""

from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_writer_path"]


def atomic_write_bytes(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder + ``os.replace`` (readers never see a
    partial file; a killed process leaves the old file or the new one). ``durable`` also ``fsync``-s the data
    before the rename (survives a power loss; slow: one disk flush per file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_", dir=folder)
    try:
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


def atomic_write_text(path: str, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_writer_path(path: str) -> str:
    """A temp path beside ``path`` for libraries that write files themselves; ``os.replace`` it afterwards.

    The temp name keeps the final suffix(es) so writers that pick a format by suffix still work.
    """
    folder, base = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f".tmp_{os.getpid()}_{base}")
