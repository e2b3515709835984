"""Code the Ray cluster tests run inside Ray's worker processes (importable there: the workers inherit the test's
``PYTHONPATH``): an audit hook that refuses writes into the output folders, and runner hooks that slow a batch
down or make a "poison" unit kill its worker process."""

from __future__ import annotations

import os
import sys
import time

FORBIDDEN_ENV = "CADPIPE_TEST_NO_WRITES_UNDER"  # workers may not write under this folder
LOG_ENV = "CADPIPE_TEST_WRITE_LOG"  # where refused writes are recorded (one line each)
POISON = "poison"  # a file whose name starts with this kills the worker process that forwards it

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _under(path, root: str) -> bool:
    if isinstance(path, int) or path is None:
        return False
    try:
        p = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return p == root or p.startswith(root + os.sep)


def forbid_output_writes() -> None:
    """``worker_process_setup_hook``: a ``sys`` audit hook in this worker that raises ``PermissionError`` on any
    write, create, rename, removal or folder creation under ``$CADPIPE_TEST_NO_WRITES_UNDER`` (and notes it in
    ``$CADPIPE_TEST_WRITE_LOG``), as if the worker had no write access there."""
    root = os.path.realpath(os.environ[FORBIDDEN_ENV])
    log = os.environ.get(LOG_ENV)

    def refuse(event, what):
        if log:
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{os.getpid()} {event} {what}\n".encode())
            os.close(fd)
        raise PermissionError(f"test: worker {os.getpid()} may not write {what}")

    def hook(event, args):
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS)
            if writing and _under(path, root):
                refuse(event, path)
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate",
                       "os.chmod", "os.utime") and args and _under(args[0], root):
            refuse(event, args[0])
        elif event == "os.rename" and len(args) >= 2 and (_under(args[0], root) or _under(args[1], root)):
            refuse(event, args[1])

    sys.addaudithook(hook)


def slow_forward(runner) -> None:
    """runner_hook: each batch's forward takes 0.3 s longer (so a fault can land in the middle of a batch)."""
    forward = runner.forward_batch

    def slow(x, *a, **k):
        time.sleep(0.3)
        return forward(x, *a, **k)

    runner.forward_batch = slow


def poison_kills_worker(runner) -> None:
    """runner_hook: the batched plan of this runner ends the process (``os._exit``, as a crash in native code would)
    when a batch holds an image whose file name starts with :data:`POISON`."""
    get = runner.batched_preprocessing

    def wrapped():
        plan, why = get()
        if plan is None:
            return plan, why
        return _PoisonPlan(plan), why

    runner.batched_preprocessing = wrapped


class _PoisonPlan:
    def __init__(self, plan):
        self.plan = plan

    def __getattr__(self, name):
        return getattr(self.plan, name)

    def __call__(self, raws, device):
        if any(os.path.basename(r.path).startswith(POISON) for r in raws):
            os._exit(17)
        return self.plan(raws, device)
