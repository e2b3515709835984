"""A streaming reader of ``multipart/related`` bodies (WADO-RS): each part's bytes go to a file as they arrive,
never a whole part in memory.

:class:`MultipartSplitter` is fed the body chunk by chunk; it keeps at most the delimiter's length plus one chunk
in memory, calls ``open_part(headers)`` at the start of each part (it returns a binary file to write to) and
``close_part(file, size)`` at its end. A part over ``max_part_bytes``, part headers over 16 KiB, more than 64 KiB
before the first delimiter or a body that ends inside a part raise :class:`MultipartError` with the reason.
"""

from __future__ import annotations

import re
from typing import BinaryIO, Callable

__all__ = ["MultipartSplitter", "MultipartError", "boundary_of"]

MAX_HEADERS = 16 << 10
MAX_PREAMBLE = 64 << 10


class MultipartError(Exception):
    """The multipart body cannot be used: ``str(err)`` says why (no body content in it)."""


def boundary_of(content_type: str) -> str:
    """The ``boundary`` parameter of a ``multipart/related`` Content-Type.

    Raises:
        MultipartError: not multipart, or no boundary.
    """
    if not content_type.lower().lstrip().startswith("multipart/"):
        raise MultipartError(f"the answer is not multipart (Content-Type {content_type[:60]!r})")
    m = re.search(r'boundary\s*=\s*(?:"([^"]{1,200})"|([^;\s]{1,200}))', content_type, re.IGNORECASE)
    if not m:
        raise MultipartError("the multipart answer has no boundary")
    return m.group(1) or m.group(2)


class MultipartSplitter:
    """Split a ``multipart/related`` body with ``boundary`` into files (module docstring)."""

    def __init__(self, boundary: str, open_part: Callable[[dict], BinaryIO],
                 close_part: Callable[[BinaryIO, int], None], max_part_bytes: int):
        self.delim = b"--" + boundary.encode("latin-1")
        self.open_part, self.close_part, self.max_part_bytes = open_part, close_part, max_part_bytes
        self.buf = bytearray()
        self.state = "preamble"  # preamble | after_delim | headers | body | done
        self.file: BinaryIO | None = None
        self.part_bytes = 0
        self.parts = 0
        self.seen = 0

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        self.buf += chunk
        while self._step():
            pass

    def _step(self) -> bool:
        """Consume what the buffer allows; True when the state changed (call again)."""
        buf = self.buf
        if self.state == "preamble":
            i = buf.find(self.delim)
            if i < 0:
                if len(buf) > MAX_PREAMBLE:
                    raise MultipartError("no multipart delimiter in the first 64 KiB of the answer")
                return False
            del buf[: i + len(self.delim)]
            self.state = "after_delim"
            return True
        if self.state == "after_delim":
            if len(buf) < 2:
                return False
            if buf[:2] == b"--":
                self.state = "done"
                buf.clear()
                return False
            j = buf.find(b"\n")
            if j < 0:
                if len(buf) > 1024:
                    raise MultipartError("malformed multipart delimiter line")
                return False
            if buf[:j].strip(b" \t\r"):
                raise MultipartError("malformed multipart delimiter line")
            del buf[: j + 1]
            self.state = "headers"
            return True
        if self.state == "headers":
            j = buf.find(b"\r\n\r\n")
            k = 4
            if j < 0 and buf.startswith(b"\r\n"):  # a part without headers
                j, k = 0, 2
            if j < 0:
                if len(buf) > MAX_HEADERS:
                    raise MultipartError("the headers of a part are over 16 KiB")
                return False
            headers = {}
            for line in bytes(buf[:j]).decode("latin-1").split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            del buf[: j + k]
            self.file, self.part_bytes = self.open_part(headers), 0
            self.state = "body"
            return True
        if self.state == "body":
            end = buf.find(b"\r\n" + self.delim)
            if end < 0:
                keep = len(self.delim) + 1  # a delimiter may start in this chunk and end in the next
                if len(buf) > keep:
                    self._write(buf[: len(buf) - keep])
                    del buf[: len(buf) - keep]
                return False
            self._write(buf[:end])
            del buf[: end + 2 + len(self.delim)]
            f, self.file = self.file, None
            self.parts += 1
            self.close_part(f, self.part_bytes)
            self.state = "after_delim"
            return True
        if self.state == "done":
            buf.clear()  # the epilogue is ignored
        return False

    def _write(self, data) -> None:
        self.part_bytes += len(data)
        if self.part_bytes > self.max_part_bytes:
            raise MultipartError(f"an instance is larger than the limit of {self.max_part_bytes >> 20} MiB")
        self.file.write(data)

    def finish(self) -> None:
        """The body ended: raise :class:`MultipartError` unless it ended after a part (closing delimiter or not)."""
        if self.state in ("body", "headers"):
            raise MultipartError("the answer ended inside an instance (cut short)")
        if self.state == "preamble" and self.seen:
            raise MultipartError("no multipart delimiter in the answer")
