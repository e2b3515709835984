"""Best-of-N wall time, shared by the benchmark scripts (``python benchmarks/<name>.py`` puts this folder on the
import path)."""

from __future__ import annotations

import time


def best_time(fn, repeat: int = 1, warmup: bool = False) -> float:
    """The shortest of ``repeat`` wall times (seconds) of ``fn()``; ``warmup``: one untimed call first."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
