"""No process of a scoring run outlives it: DataLoader workers die with the scoring process.

PyTorch's workers poll for their parent only between items; a worker blocked elsewhere (a futex in a thread pool,
a full pipe) after the scoring process was killed with SIGKILL stays forever, holding its memory. On Linux
:func:`die_with_parent` (the DataLoader's ``worker_init_fn``) asks the kernel to send the worker ``SIGKILL`` when
its parent dies (``prctl(PR_SET_PDEATHSIG)``), then checks that the parent is still the process that started it
(it may have died before the ``prctl`` call: the worker then exits at once). Elsewhere it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["die_with_parent", "set_parent_death_signal"]

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread exits; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class die_with_parent:  # noqa: N801 - used like a function: worker_init_fn=die_with_parent(os.getpid())
    """A picklable DataLoader ``worker_init_fn``: the worker gets ``SIGKILL`` when ``parent_pid`` dies."""

    def __init__(self, parent_pid: int):
        self.parent_pid = parent_pid

    def __call__(self, worker_id: int) -> None:
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != self.parent_pid:  # the parent died before prctl: nobody will read our results
            os._exit(1)
