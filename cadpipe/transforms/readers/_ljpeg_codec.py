"""Minimal lossless-JPEG (ITU T.81 process 14, SOF3, Huffman) parser, fallback decoder and test encoder.

This is *not* the normal decode path: :mod:`cadpipe.transforms.readers.io_ljpeg` decodes with imagecodecs
(libjpeg-turbo / lj92 / jpegsof3). The code here exists for one thing those libraries cannot do: streams written by
old encoders (the Stanford PVRG codec that wrote DDSM, early DNG writers) that put **16 additional bits after a
difference of category SSSS=16**. T.81 (H.1.2.2) says no additional bits follow SSSS=16 (the difference is 32768), so
a standard decoder desynchronises at the first such symbol and the rest of the image turns into garbage.

* :func:`parse_ljpeg` reads the markers (SOF3, DHT, SOS, DRI) without decoding pixels (cheap).
* :func:`decode_ljpeg_python` decodes one-component SOF3 streams in pure Python + numpy, either the standard way or
  with the extra 16 bits after SSSS=16 (``ssss16_extra_bits=True``). It is **slow**: the Huffman walk is a Python
  loop (roughly 1-3 microseconds per pixel on one core, i.e. about a minute for a 4000x6000 mammogram), and
  predictors 6 and 7 reconstruct per pixel as well. It is used only when the library result fails the checks.
* :func:`encode_ljpeg_python` writes a one-component SOF3 stream (predictor 1) and can write the SSSS=16 extra bits,
  so tests and the synthetic writer can produce such a file.
* :func:`swap_header_dims` swaps height/width in the SOF3 frame header bytes.

Restart intervals (DRI) and multi-component frames are not supported by the fallback decoder (DDSM files have
neither); they raise ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__: list[str] = []  # private module; public names are re-exported by io_ljpeg

_SOF_MARKERS = {0xC0 + i for i in range(16)} - {0xC4, 0xC8, 0xCC}


@dataclass
class LJPEGHeader:
    """What the markers of a lossless-JPEG stream say."""

    sof: int = 0  # SOF marker low byte (3 = lossless Huffman)
    precision: int = 0
    height: int = 0
    width: int = 0
    components: int = 0
    sof_offset: int = -1  # byte offset of the SOF segment's precision byte
    huffman: dict = field(default_factory=dict)  # (class, id) -> (bits[16], values)
    table_ids: list = field(default_factory=list)  # DC table id per scan component
    predictor: int = 0
    point_transform: int = 0
    restart_interval: int = 0
    scan_offset: int = -1  # first byte of entropy-coded data

    def has_ssss16(self) -> bool:
        """Whether a Huffman table used by the scan holds a code for difference category 16."""
        return any(16 in self.huffman.get((0, t), ((), ()))[1] for t in self.table_ids)


def parse_ljpeg(data: bytes) -> LJPEGHeader:
    """Parse the markers of a JPEG stream up to the first scan. Raises ``ValueError`` if it is not one."""
    buf = memoryview(data)
    if len(buf) < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise ValueError("not a JPEG stream (no SOI marker)")
    hdr = LJPEGHeader()
    pos = 2
    n = len(buf)
    while pos < n:
        if buf[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        while pos < n and buf[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = buf[pos]
        pos += 1
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:
            raise ValueError("EOI before any scan")
        if pos + 2 > n:
            raise ValueError("truncated marker segment")
        length = (buf[pos] << 8) | buf[pos + 1]
        seg = bytes(buf[pos + 2 : pos + length])
        if len(seg) != length - 2:
            raise ValueError("truncated marker segment")
        if marker in _SOF_MARKERS:
            hdr.sof = marker - 0xC0
            hdr.sof_offset = pos + 2
            hdr.precision = seg[0]
            hdr.height = (seg[1] << 8) | seg[2]
            hdr.width = (seg[3] << 8) | seg[4]
            hdr.components = seg[5]
        elif marker == 0xC4:
            i = 0
            while i < len(seg):
                tc, th = seg[i] >> 4, seg[i] & 15
                counts = list(seg[i + 1 : i + 17])
                total = sum(counts)
                values = list(seg[i + 17 : i + 17 + total])
                if len(values) != total:
                    raise ValueError("truncated DHT segment")
                hdr.huffman[(tc, th)] = (counts, values)
                i += 17 + total
        elif marker == 0xDD:
            hdr.restart_interval = (seg[0] << 8) | seg[1]
        elif marker == 0xDA:
            ns = seg[0]
            hdr.table_ids = [seg[2 + 2 * k] >> 4 for k in range(ns)]
            hdr.predictor = seg[1 + 2 * ns]
            hdr.point_transform = seg[3 + 2 * ns] & 15
            hdr.scan_offset = pos + length
            return hdr
        pos += length
    raise ValueError("no SOS marker")


def swap_header_dims(data: bytes) -> bytes:
    """Return ``data`` with height and width exchanged in the SOF frame header (nothing else changes)."""
    hdr = parse_ljpeg(data)
    out = bytearray(data)
    o = hdr.sof_offset
    out[o + 1 : o + 3], out[o + 3 : o + 5] = data[o + 3 : o + 5], data[o + 1 : o + 3]
    return bytes(out)


def set_header_dims(data: bytes, height: int, width: int) -> bytes:
    """Return ``data`` with the SOF frame header's height/width set to the given values."""
    hdr = parse_ljpeg(data)
    out = bytearray(data)
    o = hdr.sof_offset
    out[o + 1 : o + 5] = bytes([height >> 8, height & 255, width >> 8, width & 255])
    return bytes(out)


def _entropy_bytes(data: bytes, start: int) -> bytes:
    """Entropy-coded segment from ``start`` up to the next marker, with the 0xFF00 stuffing removed."""
    arr = np.frombuffer(data, dtype=np.uint8, offset=start)
    ff = np.flatnonzero(arr[:-1] == 0xFF)
    nxt = arr[ff + 1]
    markers = ff[nxt != 0x00]
    if markers.size and 0xD0 <= arr[markers[0] + 1] <= 0xD7:
        raise ValueError("restart markers are not supported by the fallback decoder")
    end = int(markers[0]) if markers.size else arr.size
    seg = arr[:end]
    stuffed = ff[(ff < end) & (nxt == 0x00)] + 1
    return np.delete(seg, stuffed).tobytes()


def _lookup_table(counts: list[int], values: list[int]) -> tuple[list[int], list[int]]:
    """16-bit peek -> (code length, symbol); length 0 marks an invalid code."""
    lengths = [0] * 65536
    symbols = [0] * 65536
    code = 0
    k = 0
    for length in range(1, 17):
        for _ in range(counts[length - 1]):
            lo = code << (16 - length)
            hi = (code + 1) << (16 - length)
            lengths[lo:hi] = [length] * (hi - lo)
            symbols[lo:hi] = [values[k]] * (hi - lo)
            code += 1
            k += 1
        code <<= 1
    return lengths, symbols


def decode_ljpeg_python(
    data: bytes, ssss16_extra_bits: bool = False, shape: tuple[int, int] | None = None
) -> tuple[np.ndarray, int]:
    """Decode a one-component SOF3 stream in pure Python + numpy (slow; see the module docstring).

    Args:
        data: the whole JPEG stream.
        ssss16_extra_bits: skip 16 additional bits after each SSSS=16 difference (old encoders) instead of
            none (T.81).
        shape: (rows, cols) to decode with instead of the frame header's (used for transposed headers).

    Returns:
        ``(image, leftover_bits)``: the uint16 image of ``shape`` (or the header's), and the number of entropy-coded
        bits left unread after the last pixel (negative when the decoder ran past the end of the data). A stream
        decoded with the right interpretation leaves 0-7 bits (the padding of the last byte).
    """
    hdr = parse_ljpeg(data)
    if hdr.sof != 3:
        raise ValueError(f"SOF{hdr.sof} is not lossless Huffman (SOF3)")
    if hdr.components != 1 or len(hdr.table_ids) != 1:
        raise ValueError("the fallback decoder supports one-component images only")
    if hdr.restart_interval:
        raise ValueError("restart intervals are not supported by the fallback decoder")
    rows, cols = shape if shape is not None else (hdr.height, hdr.width)
    if (0, hdr.table_ids[0]) not in hdr.huffman:
        raise ValueError("the scan's Huffman table is missing")
    lengths, symbols = _lookup_table(*hdr.huffman[(0, hdr.table_ids[0])])
    ent = _entropy_bytes(data, hdr.scan_offset)
    nbytes = len(ent)
    ent = ent + b"\x00" * 16

    npx = rows * cols
    diffs = np.empty(npx, dtype=np.int64)
    acc = 0
    nbits = 0
    pos = 0
    extra16 = 16 if ssss16_extra_bits else 0
    for i in range(npx):
        if nbits < 32:
            acc = ((acc & 0xFFFFFFFF) << 32) | int.from_bytes(ent[pos : pos + 4], "big")
            pos += 4
            nbits += 32
        peek = (acc >> (nbits - 16)) & 0xFFFF
        ln = lengths[peek]
        if ln == 0:
            raise ValueError(f"invalid Huffman code at pixel {i}")
        nbits -= ln
        s = symbols[peek]
        if s == 0:
            diffs[i] = 0
        elif s == 16:
            diffs[i] = 32768
            nbits -= extra16  # >= 0: after a refill 32+ bits are held and a code takes at most 16
        else:
            v = (acc >> (nbits - s)) & ((1 << s) - 1)
            nbits -= s
            diffs[i] = v if v >> (s - 1) else v - (1 << s) + 1
        if pos > nbytes + 8:
            raise ValueError("entropy-coded data ended before the last pixel")
    leftover = nbytes * 8 - (pos * 8 - nbits)
    img = _reconstruct(diffs.reshape(rows, cols), hdr.predictor, hdr.precision, hdr.point_transform)
    return img, leftover


def _reconstruct(d: np.ndarray, predictor: int, precision: int, pt: int) -> np.ndarray:
    """Undo the prediction (T.81 H.1.2.1), modulo 2**16."""
    rows, cols = d.shape
    x = np.zeros((rows, cols), dtype=np.int64)
    mask = 0xFFFF
    # first row: 2**(P-Pt-1) then the left neighbour; first column: the pixel above
    row0 = np.cumsum(d[0])
    row0 += 1 << (precision - pt - 1)
    x[0] = row0 & mask
    if rows > 1:
        x[1:, 0] = (x[0, 0] + np.cumsum(d[1:, 0])) & mask
    if rows == 1 or cols == 1:
        return (x << pt).astype(np.uint16)
    if predictor == 1:
        x[1:] = (x[1:, :1] + np.concatenate([np.zeros((rows - 1, 1), np.int64), np.cumsum(d[1:, 1:], 1)], 1)) & mask
    elif predictor == 2:
        x[1:, 1:] = (x[0, 1:] + np.cumsum(d[1:, 1:], 0)) & mask
    elif predictor == 3:
        for r in range(1, rows):
            x[r, 1:] = (x[r - 1, :-1] + d[r, 1:]) & mask
    elif predictor in (4, 5):
        for r in range(1, rows):
            rb_rc = x[r - 1, 1:] - x[r - 1, :-1]
            step = (rb_rc if predictor == 4 else rb_rc >> 1) + d[r, 1:]
            x[r, 1:] = (x[r, 0] + np.cumsum(step)) & mask
    elif predictor in (6, 7):
        xl = x.tolist()
        dl = d.tolist()
        for r in range(1, rows):
            prev, cur, dr = xl[r - 1], xl[r], dl[r]
            ra = cur[0]
            for c in range(1, cols):
                if predictor == 6:
                    p = prev[c] + ((ra - prev[c - 1]) >> 1)
                else:
                    p = (ra + prev[c]) >> 1
                ra = (p + dr[c]) & mask
                cur[c] = ra
        x = np.asarray(xl, dtype=np.int64)
    else:
        raise ValueError(f"predictor {predictor} is not a lossless-JPEG predictor (1-7)")
    return (x << pt).astype(np.uint16)


def encode_ljpeg_python(image: np.ndarray, precision: int = 16, ssss16_extra_bits: bool = False) -> bytes:
    """Encode a 2D uint16 image as one-component SOF3 with predictor 1 and a fixed 5-bit Huffman table.

    Args:
        image: (rows, cols) unsigned integers below ``2**precision``.
        precision: the frame header's sample precision (2-16). DDSM files say 16 for 12-bit data; with 16 the first
            pixel is predicted from 32768, so a first pixel of 0 gives the difference category SSSS=16.
        ssss16_extra_bits: write 16 additional bits after each SSSS=16 difference, as old encoders did (the
            non-standard variant). ``False`` writes what T.81 specifies (no additional bits).

    Vectorised numpy; meant for tests and synthetic data (memory is ~ rows*cols*21 bytes while packing).
    """
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError("encode_ljpeg_python takes a 2D image")
    rows, cols = img.shape
    x = img.astype(np.int64)
    if x.min() < 0 or x.max() >= (1 << precision):
        raise ValueError(f"values do not fit {precision} bits")
    pred = np.empty_like(x)
    pred[:, 1:] = x[:, :-1]
    pred[1:, 0] = x[:-1, 0]
    pred[0, 0] = 1 << (precision - 1)
    diff = (x - pred) & 0xFFFF
    diff = np.where(diff >= 32768, diff - 65536, diff).ravel()
    mag = np.abs(diff)
    ssss = np.zeros(diff.shape, np.int64)
    nz = mag > 0
    ssss[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
    ssss[diff == -32768] = 16
    extra_len = np.where(ssss == 16, 16 if ssss16_extra_bits else 0, ssss)
    extra_val = np.where(diff < 0, diff - 1, diff) & ((1 << extra_len) - 1)
    code_len = 5  # symbols 0..16 get the 5-bit codes 0..16 (never all ones)
    field_len = code_len + extra_len
    field_val = (ssss << extra_len) | extra_val
    ends = np.cumsum(field_len)
    starts = ends - field_len
    total = int(ends[-1]) if ends.size else 0
    nbytes = (total + 7) // 8
    bits = np.ones(nbytes * 8, dtype=np.uint8)  # padding bits are ones
    for k in range(int(field_len.max()) if field_len.size else 0):
        sel = k < field_len
        bits[starts[sel] + k] = (field_val[sel] >> (field_len[sel] - 1 - k)) & 1
    ent = np.packbits(bits)
    ff = np.flatnonzero(ent == 0xFF)
    ent = np.insert(ent, ff + 1, 0).astype(np.uint8).tobytes()

    counts = [0] * 16
    counts[code_len - 1] = 17
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sof = bytes([precision, rows >> 8, rows & 255, cols >> 8, cols & 255, 1, 1, 0x11, 0])
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # Ns=1, Cs=1, Td/Ta=0, Ss=predictor 1, Se=0, Ah/Al=0

    def seg(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    return b"\xff\xd8" + seg(0xC4, dht) + seg(0xC3, sof) + seg(0xDA, sos) + ent + b"\xff\xd9"
