"""The streaming multipart reader: parts come out byte for byte whatever the chunking (a delimiter split between
two chunks included), and each malformed body is refused with the reason."""

from __future__ import annotations

import io
import random

import pytest

from cadpipe.pipelines.pacs.multipart import MultipartError, MultipartSplitter, boundary_of


def _body(parts: list[bytes], boundary: str = "b0und") -> bytes:
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    return b"preamble\r\n" + b"".join(head + p + b"\r\n" for p in parts) + f"--{boundary}--\r\nepilogue".encode()


def _split(body: bytes, sizes, max_part: int = 1 << 20, boundary: str = "b0und") -> list[bytes]:
    out = []

    def open_part(headers):
        assert headers["content-type"] == "application/dicom"
        return io.BytesIO()

    def close_part(f, size):
        assert size == len(f.getvalue())
        out.append(f.getvalue())

    s = MultipartSplitter(boundary, open_part, close_part, max_part)
    i = 0
    for n in sizes:
        s.feed(body[i: i + n])
        i += n
    s.feed(body[i:])
    s.finish()
    return out


def test_parts_come_out_whole_whatever_the_chunks():
    rng = random.Random(0)
    parts = [bytes(rng.randrange(256) for _ in range(n)) for n in (0, 1, 300, 5000)]
    parts.append(b"\r\n--b0un almost a delimiter --b0und\r\n not at a line start\r\n-" * 3)
    body = _body(parts)
    assert _split(body, [len(body)]) == parts
    assert _split(body, [1] * len(body)) == parts
    for seed in range(5):
        r = random.Random(seed)
        assert _split(body, [r.randrange(1, 64) for _ in range(len(body) // 8)]) == parts


@pytest.mark.parametrize("body, reason", [
    (_body([b"x" * 2000]), "larger than the limit"),
    (_body([b"abc"])[:-20], "ended inside an instance"),
    (_body([b"abc"])[:-27], "ended inside an instance"),
    (b"no delimiter at all", "no multipart delimiter"),
    (b"--b0und\r\n" + b"H" * (20 << 10), "headers of a part are over 16 KiB"),
])
def test_malformed_bodies_are_refused_with_the_reason(body, reason):
    with pytest.raises(MultipartError, match=reason):
        _split(body, [7] * (len(body) // 7), max_part=1000)


def test_boundary_of():
    assert boundary_of('multipart/related; type="application/dicom"; boundary="a b"') == "a b"
    assert boundary_of("multipart/related; boundary=xyz; type=application/dicom") == "xyz"
    with pytest.raises(MultipartError, match="not multipart"):
        boundary_of("application/json")
    with pytest.raises(MultipartError, match="no boundary"):
        boundary_of("multipart/related")
