"""A bounded pool of writer threads: a unit's output files (PNG overlays, masks, DICOM SEG, JSON) and its journal
line are written off the thread that feeds the accelerator.

:class:`WriterPool` runs submitted callables on ``threads`` threads and lets at most ``max_pending`` wait or run
at once: :meth:`WriterPool.submit` blocks when that many are pending, so a slow disk slows the forward down
instead of filling memory with finished batches. A task writes its files and then emits its row (files renamed
into place first, journal line after), so the journal keeps its guarantee: a unit is journalled only once all its
files are in place. PNG encoding (zlib) and file I/O release the GIL, so threads overlap with the forward.

``threads=0`` runs each task at once on the calling thread (what scoring did before; the tests use it to compare).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

__all__ = ["WriterPool", "default_writer_threads"]


def default_writer_threads() -> int:
    """Writer threads when not given: a quarter of the CPUs, at least 1, at most 4 (PNG encoding and renames are
    short; more threads mostly fight over the GIL)."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


class WriterPool:
    """``submit(fn, *args)`` runs ``fn(*args)`` on a writer thread; at most ``max_pending`` tasks queued or running.

    Exceptions raised by a task are kept and re-raised by :meth:`close` (tasks are expected to turn per-unit
    failures into error rows themselves; an exception here is a bug, not bad input).
    """

    def __init__(self, threads: int, max_pending: int | None = None):
        self.threads = max(0, int(threads))
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="cadpipe-writer") if self.threads else None
        self._slots = threading.BoundedSemaphore(max_pending or max(1, 4 * self.threads))
        self._futures: set[Future] = set()
        self._lock = threading.Lock()
        self._errors: list[BaseException] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._pool is None:
            fn(*args)
            return
        self._slots.acquire()
        try:
            fut = self._pool.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._futures.discard(fut)
        if not fut.cancelled() and fut.exception() is not None:
            self._errors.append(fut.exception())
        self._slots.release()

    def close(self) -> None:
        """Wait for every submitted task; re-raise the first exception a task raised."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        if self._errors:
            raise self._errors[0]

    def __enter__(self) -> "WriterPool":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._pool is not None:
            self._pool.shutdown(wait=True)
