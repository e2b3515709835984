"""Stopping a server started as its own process group (``subprocess.Popen(..., start_new_session=True)``).

Used wherever cadpipe starts a real server beside itself: the portal benchmark and the integration tests
(portal in Chromium, MONAI Label). SIGTERM to the whole group first so that worker children go too, SIGKILL after
``grace`` seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["stop_process_group"]


def stop_process_group(proc: subprocess.Popen, grace: float = 30.0) -> int | None:
    """Stop ``proc`` and its process group; return its exit code (None if it could not be reaped)."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(grace)
    except ProcessLookupError:
        return proc.poll()
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            return None
