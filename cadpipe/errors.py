"""The one error type cadpipe raises for bad input files."""

from __future__ import annotations

import os


class CadpipeInputError(ValueError):
    """A file (or folder) that cadpipe cannot use, with the reason.

    ``str(err)`` is ``"<path>: <reason>"`` so the user always sees which file failed and why.
    ``err.path`` and ``err.reason`` hold the two parts for programs (scoring writes them to its error rows).
    """

    def __init__(self, path: str | os.PathLike | None, reason: str):
        self.path = "" if path is None else os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)

    def __reduce__(self):  # picklable across DataLoader workers and Ray
        return (type(self), (self.path, self.reason))
