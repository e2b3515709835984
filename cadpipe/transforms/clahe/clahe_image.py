"""CLAHE of one 2D image in torch, tuned for the CPU (``clahe_2d``), with skimage's semantics.

No MONAI import here (the MONAI transforms are in ``cadpipe.transforms.clahe.transforms``; the batched, vectorised
kernel for GPUs in ``cadpipe.transforms.clahe.clahe_batched``). ``clahe_2d`` reproduces
:func:`skimage.exposure.equalize_adapthist` (scikit-image 0.26, after Zuiderveld, "Contrast Limited Adaptive
Histogram Equalization", Graphics Gems IV, 1994) step by step:

1. the image is min-max rescaled to ``2**14`` grey levels (``round``, half to even) and binned into
   ``nbins`` bins of ``1 + 2**14 // nbins`` levels each;
2. it is cut into tiles of ``kernel_size`` pixels starting at the first pixel; tiles that run over the
   end are filled by ``reflect`` padding (numpy's, i.e. mirrored without repeating the edge pixel);
3. each tile's histogram is clipped at ``int(max(clip_limit * tile_pixels, 1))`` and the excess is
   redistributed exactly as skimage's ``clip_histogram`` does (uniform increment, then the strided
   residual loop);
4. the tile mappings are ``floor(min(cumsum * (2**14 - 1) / tile_pixels, 2**14 - 1))``;
5. each pixel is mapped with the bilinear interpolation of the mappings of the 4 tiles around it (tiles
   centred half a kernel in; the outer half-kernel band uses the nearest tiles only), truncated to an
   integer level (done here in the final rescale pass, in cache), and the result is min-max rescaled to
   ``[0, 1]``.

The implementation is vectorised torch, no Python loop over pixels:

- histograms: one ``bincount`` per tile, straight on the pixel values when they are small non-negative
  integers (else on ``value - min``), at the resolution of the input values; the value -> bin folding
  happens once on the small (tiles, values) table. When that table would be larger than the image (floats,
  quantised to 65536 values, in a small image) the pixels are binned first (one lookup each). Small tiles
  (below ``_TILE_HIST_MIN_PX`` pixels): one ``bincount`` per row chunk of a whole tile row over
  ``tile_column * length + index``;
- the clip and redistribution for all tiles at once (the residual loop only on the tiles still active);
- mapping: per image row, a small table of the vertically interpolated LUTs of every tile column
  (``(tile columns + 2) * nbins`` floats), so a pixel costs one value -> bin lookup, one add, two gathers
  (left and right tile, the same index into the table and into the table shifted by ``nbins``) and one
  ``lerp`` with its column weight. With very many tile columns (tables more than ``_ROW_TABLE_RATIO``
  times larger than a row), one gather of the 4 neighbouring tile values per pixel (packed in a 16-byte
  complex128) and 3 ``addcmul`` instead;
- the output min/max come from one ``aminmax`` per chunk (in cache), the final truncation + rescale is one
  pass (``floor`` is monotonic: the truncated image's min/max are the floors of the min/max).

Rows are processed in cache-sized chunks on the CPU and in whole tile rows on a GPU; with
``num_threads > 1`` bands of tile rows run on Python threads (torch ops release the GIL), each with one
intra-op thread. The loops of torch ops (per-tile histograms of a tile row, the clip, the mapping of a
block of rows, the rescale of a band: ``_hist_tiles_py``, ``_clip_histogram_py``, ``_map_rows_py``,
``_rescale_rows_py``) are compiled by TorchScript when available (``_scripted``): each then runs as one
call without the GIL, so the threads do not wait on each other between ops, and the clip's many small
steps cost less (the plain Python functions are the fallback, same code; compiling takes ~50 ms once per
process). The same code runs
wherever the tensor is (only the memory of a large CPU output comes from numpy's allocator, for its
transparent huge pages; see ``_empty_float32``).

Differences from skimage, together below ``1e-4`` mean absolute difference on ``[0, 1]`` output:

- the interpolation's float32 rounding differs (order of operations), so a level that falls within
  about 1e-3 of an integer can truncate one level (1/16383 before the rescale) the other way;
- arithmetic in float32 where skimage uses float64 (the interpolation accumulates in float32 in both);
- integer images are rescaled from their own min-max: identical to skimage for ``uint8`` and ``uint16``;
  signed integers (skimage first converts them by its dtype rules, negative values to 0) are min-max
  rescaled directly. Float images inside ``[0, 1]`` are quantised to 16 bits like ``img_as_uint`` does
  (rounding half up rather than to even); float images outside ``[0, 1]`` (CT in HU, say), which skimage
  refuses (or clips at 0), are min-max normalised first; such an image that is constant counts as level 0.
- colour images: skimage equalises the HSV value of an RGB image; this transform equalises each channel.
"""

from __future__ import annotations

import functools
import math
import numbers
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch

from cadpipe.errors import CadpipeInputError

__all__ = ["clahe_2d"]

NR_OF_GRAY = 2**14  # grey levels skimage's CLAHE works with
# elements per row chunk on the CPU: the per-chunk intermediates stay in L2 cache
_CPU_CHUNK = 1 << 16
# histograms per bin (one value -> bin lookup per pixel) when per-value ones would be this many times the image
_BIN_HIST_RATIO = 1
# run the mapping's chunk loop through TorchScript (no GIL while it runs); the plain function otherwise
_USE_TORCHSCRIPT = True
# band threads (``workers``) only for images with at least this many pixels per thread
_MIN_PX_PER_WORKER = 1 << 17
# one bincount per tile (rather than per row chunk of all tiles) from this many pixels per tile
_TILE_HIST_MIN_PX = 1 << 14
# per-row mapping tables when a row's table ((tile columns + 2) * nbins) is at most this many times the row
_ROW_TABLE_RATIO = 16


def _reflect_index(idx: torch.Tensor, size: int) -> torch.Tensor:
    """numpy ``mode="reflect"`` source index for (possibly out-of-range) positions ``idx`` along an axis."""
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    m = torch.remainder(idx, period)
    return torch.where(m < size, m, period - m)


def _clip_histogram(hist: torch.Tensor, clim: int) -> torch.Tensor:
    """skimage's ``clip_histogram`` for every row of ``hist`` (tiles, nbins) at once (int64, exact)."""
    return _scripted(_clip_histogram_py)(hist, clim)


def _clip_histogram_py(hist: torch.Tensor, clim: int) -> torch.Tensor:
    """``_clip_histogram``; TorchScript-compatible: its loop of small steps runs much faster compiled."""
    n = hist.shape[1]
    over = hist > clim
    n_excess = ((hist - clim) * over).sum(1)
    hist = torch.where(over, torch.full_like(hist, clim), hist)
    bin_incr = n_excess // n
    upper = (clim - bin_incr)[:, None]
    low = hist < upper
    n_excess = n_excess - low.sum(1) * bin_incr
    hist = hist + low * bin_incr[:, None]
    mid = (hist >= upper) & (hist < clim)
    n_excess = n_excess + (hist * mid).sum(1) - mid.sum(1) * clim
    hist = torch.where(mid, torch.full_like(hist, clim), hist)

    # residual: skimage's `while n_excess > 0: for index in range(nbins): ...` loop, all tiles in step;
    # the loop runs on the still active tiles only (int32), finished ones are written back
    rows = torch.nonzero(n_excess > 0).flatten()
    if rows.numel() == 0:
        return hist
    h = hist.index_select(0, rows)
    ne = n_excess.index_select(0, rows)
    prev = ne.clone()
    rel = torch.arange(n, device=hist.device)
    # every[s - 1, q] = (q % s == 0): the strided selection as one row lookup (small nbins only)
    every: Optional[torch.Tensor] = None
    if n <= 512:
        every = rel[None, :] % (rel[:, None] + 1) == 0
    index = 0
    while True:
        under = h < clim
        step = torch.div(under.sum(1), ne, rounding_mode="floor").clamp_min_(1)
        if every is not None:
            hit = every[:, : n - index].index_select(0, step - 1)
        else:
            hit = torch.remainder(rel[: n - index], step[:, None]) == 0
        sel = under[:, index:] & hit
        h[:, index:].add_(sel)
        ne -= sel.sum(1)
        index += 1
        end_of_pass = index == n
        if int(ne.min()) > 0 and not end_of_pass:
            continue
        done = ne <= 0
        if end_of_pass:  # end of one `for` pass: tiles that made no progress stop
            done |= ne == prev
            prev = ne.clone()
            index = 0
        fin = torch.nonzero(done).flatten()
        if fin.numel():
            hist.index_copy_(0, rows.index_select(0, fin), h.index_select(0, fin))
            if fin.numel() == rows.numel():
                return hist
            keep = torch.nonzero(~done).flatten()
            rows, h = rows.index_select(0, keep), h.index_select(0, keep)
            ne, prev = ne.index_select(0, keep), prev.index_select(0, keep)
    return hist  # (not reached)


class _Levels:
    """Maps chunks of one 2D image to integer grey-level indices ``0..n_levels-1`` (plus an offset).

    ``vlut[level]`` is skimage's histogram bin of that level; ``level`` indexes the distinct input values
    (integer images with a range below 2**16, floats quantised to 16 bits), so the per-pixel work is one
    integer add; the rescale-round-bin arithmetic runs once per level on the small ``vlut``.
    """

    def __init__(self, x: torch.Tensor, nbins: int, path):
        dev = x.device
        dt = x.dtype
        if dt == torch.bool:
            x = x.to(torch.uint8)
        elif dt in (torch.uint32, torch.uint64):
            x = x.to(torch.float64)
        elif dt in (torch.float16, torch.bfloat16):
            x = x.to(torch.float32)
        u16_scale = None  # factor img_as_uint applies to this dtype (for the constant-image case)
        if x.dtype == torch.uint16:  # few ops exist for uint16: work on the same bits as int16
            v = x.view(torch.int16)
            mn, mx = (int(t) for t in torch.aminmax(v))
            if mn >= 0:
                x = v
            else:  # values >= 2**15 present
                x = x.to(torch.int32)
                mn, mx = (int(t) for t in torch.aminmax(x))
            u16_scale = 1
        elif not x.dtype.is_floating_point:
            mn, mx = (int(t) for t in torch.aminmax(x))
            if x.dtype == torch.uint8:
                u16_scale = 257
            if mx - mn > 65535:
                x = x.to(torch.float64)
        self.float_mode = x.dtype.is_floating_point
        self.a, self.b = 1.0, 0.0  # float images: level = int(x * a + b + 0.5)
        if self.float_mode:
            fmn, fmx = (float(t) for t in torch.aminmax(x))
            if not (np.isfinite(fmn) and np.isfinite(fmx)):
                raise CadpipeInputError(path, "CLAHE input contains NaN or infinite values")
            # img_as_uint: round(x * 65535) for floats in [0, 1]; other ranges are min-max normalised first
            if 0.0 <= fmn and fmx <= 1.0:
                self.a, self.b = 65535.0, 0.0
            elif fmx == fmn:  # constant outside [0, 1]: no range to normalise, level 0
                self.a, self.b = 0.0, 0.0
            else:
                self.a = 65535.0 / (fmx - fmn)
                self.b = -fmn * self.a
            ends = torch.tensor([fmn, fmx], dtype=x.dtype, device=dev)
            mn, mx = (int(t) for t in (ends * self.a + (self.b + 0.5)).to(torch.int64))  # as __call__
        self.x = x
        self.mn = mn
        span = mx - mn
        self.n_levels = span + 1
        bin_size = 1 + NR_OF_GRAY // nbins
        if span > 0:
            r = torch.arange(self.n_levels, dtype=torch.float64, device=dev)
            level = torch.round(r / span * (NR_OF_GRAY - 1)).to(torch.int64)
        else:  # constant image: skimage clips it to the 14-bit range, unscaled
            if self.float_mode:
                c = mn
            elif u16_scale is not None:
                c = mn * u16_scale
            else:
                c = max(mn, 0)
            level = torch.full((1,), min(c, NR_OF_GRAY - 1), dtype=torch.int64, device=dev)
        self.constant = span == 0
        self.vlut = level // bin_size
        # pixel indices are taken relative to `base`: 0 when the minimum is small (no subtraction per pixel;
        # the tables then hold `mn` unused leading entries), else the minimum itself
        self.base = 0 if 0 <= mn <= self.n_levels else mn
        self.n_index = mx - self.base + 1
        self.vbin = torch.cat([self.vlut.new_zeros(mn - self.base), self.vlut])  # index - base -> bin
        # the pixel values themselves are the indices (no conversion pass needed before a bincount)
        int_types = (torch.uint8, torch.int16, torch.int32, torch.int64)
        self.direct = not self.float_mode and self.base == 0 and x.dtype in int_types

    def __call__(self, chunk: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Writes ``level(chunk) - base`` into the int32/int64 buffer ``out`` (same shape) and returns it."""
        if self.float_mode:  # round half up (no vml/omp unary op); ties differ from numpy's rint only
            f = torch.mul(chunk, self.a)
            f.add_(self.b + 0.5)
            out.copy_(f)
        else:
            out.copy_(chunk)
        if self.base:
            out.sub_(self.base)
        return out



def kernel_pair(kernel_size, H: int, W: int) -> tuple[int, int]:
    """``(kh, kw)`` from ``kernel_size`` (None: 1/8 of each side, at least 1; one number: both; two numbers), checked."""
    if kernel_size is None:
        k0, k1 = max(H // 8, 1), max(W // 8, 1)
    elif isinstance(kernel_size, (numbers.Real, np.integer)) or (isinstance(kernel_size, torch.Tensor)
                                                                 and kernel_size.ndim == 0):
        k0 = k1 = int(kernel_size)
    else:
        if len(kernel_size) != 2:
            raise ValueError(f"kernel_size needs 2 values (one per in-plane axis), got {kernel_size}")
        k0, k1 = (int(k) for k in kernel_size)
    if k0 < 1 or k1 < 1:
        raise ValueError(f"kernel_size must be >= 1, got {(k0, k1)}")
    return k0, k1


def clahe_2d(
    x: torch.Tensor,
    kernel_size: Sequence[int] | int | None = None,
    clip_limit: float = 0.01,
    nbins: int = 256,
    path=None,
    out: torch.Tensor | None = None,
    workers: int = 1,
) -> torch.Tensor:
    """CLAHE of one 2D image ``x`` (H, W) of any real dtype; returns float32 (H, W) in [0, 1] on x's device.

    ``out``: optional contiguous float32 (H, W) tensor on x's device to write the result into.
    ``workers``: Python threads that process bands of tile rows concurrently (torch ops release the GIL);
    meant for the CPU with one torch intra-op thread each.
    """
    if x.ndim != 2:
        raise ValueError(f"clahe_2d expects a 2D image, got shape {tuple(x.shape)}")
    if nbins < 1:
        raise ValueError(f"nbins must be >= 1, got {nbins}")
    H, W = (int(s) for s in x.shape)
    k0, k1 = kernel_pair(kernel_size, H, W)
    workers = max(1, min(workers, H * W // _MIN_PX_PER_WORKER))  # small images: threads cost more than they give
    if workers == 1:
        return _clahe_2d(x, k0, k1, clip_limit, nbins, path, out, None, 1)
    with ThreadPoolExecutor(workers) as pool:
        return _clahe_2d(x, k0, k1, clip_limit, nbins, path, out, pool, workers)


def _map_rows_py(
    x: torch.Tensor, out: torch.Tensor, top: torch.Tensor, dtb: torch.Tensor, wy: torch.Tensor, wx: torch.Tensor,
    vbin: torch.Tensor, coloff: torch.Tensor, tbuf: torch.Tensor, ibuf: torch.Tensor, bbuf: torch.Tensor,
    left: torch.Tensor, right: torch.Tensor, rpc: int, C: int, nbins: int, float_mode: bool, a: float, b: float,
    base: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-row-table mapping of the rows of one block (see ``_clahe_2d``), chunk by chunk; returns the
    min and max of the mapped values. TorchScript-compatible (``_scripted``): it then runs as one call
    without the GIL, so several threads map their blocks in parallel instead of handing the GIL over at
    every op."""
    lows: list[torch.Tensor] = []
    highs: list[torch.Tensor] = []
    for c0 in range(0, x.shape[0], rpc):
        c1 = min(c0 + rpc, x.shape[0])
        r = c1 - c0
        torch.addcmul(top, wy[c0:c1], dtb, out=tbuf[: r * C].view(r, C))  # the rows' tables
        ib, bb, lf, rt = ibuf[:r], bbuf[:r], left[:r], right[:r]
        if float_mode:  # as _Levels.__call__
            ib.copy_(x[c0:c1] * a + (b + 0.5))
        else:
            ib.copy_(x[c0:c1])
        if base != 0:
            ib.sub_(base)
        torch.index_select(vbin, 0, ib.view(-1), out=bb.view(-1))  # value -> bin
        bb.add_(coloff[:r])  # + tile column * nbins + row * C
        torch.index_select(tbuf, 0, bb.view(-1), out=lf.view(-1))
        torch.index_select(tbuf[nbins:], 0, bb.view(-1), out=rt.view(-1))
        oc = out[c0:c1]
        torch.lerp(lf, rt, wx, out=oc)
        lo_hi = torch.aminmax(oc)
        lows.append(lo_hi[0])
        highs.append(lo_hi[1])
    return torch.stack(lows).min(), torch.stack(highs).max()


def _hist_tiles_py(
    xr: torch.Tensor, hist_row: torch.Tensor, k1: int, last_cols: torch.Tensor, direct: bool, by_bin: bool,
    vbin: torch.Tensor, buf: torch.Tensor, float_mode: bool, a: float, b: float, base: int,
) -> None:
    """Histograms of the tiles of one tile row ``xr`` (k0, W) into ``hist_row`` (tiles, length): one
    ``bincount`` per tile, on the pixel values themselves when ``direct``, else on ``value - base`` (or on
    bins when ``by_bin``); the last tile column reads the columns ``last_cols`` (reflect padding).
    TorchScript-compatible, like ``_map_rows_py``."""
    W = xr.shape[1]
    for j in range(hist_row.shape[0]):
        q0 = j * k1
        if q0 + k1 <= W:
            xt = xr[:, q0 : q0 + k1]
        else:
            xt = xr.index_select(1, last_cols)
        if direct:
            vals = xt.reshape(-1)
        else:
            ib = buf.view(xt.shape[0], k1)
            if float_mode:  # as _Levels.__call__
                ib.copy_(xt * a + (b + 0.5))
            else:
                ib.copy_(xt)
            if base != 0:
                ib.sub_(base)
            vals = ib.view(-1)
            if by_bin:
                vals = vbin.index_select(0, vals)
        hist_row[j] = torch.bincount(vals, minlength=hist_row.shape[1])


def _rescale_rows_py(out: torch.Tensor, lo: float, hi: float, rows: int) -> None:
    """``out = (floor(out) - lo) / (hi - lo)`` in place, ``rows`` rows at a time (``floor(out)`` clipped to
    [0, 1] when ``hi <= lo``): skimage truncates the interpolated levels to integers before its rescale.
    TorchScript-compatible, like ``_map_rows_py``."""
    for c0 in range(0, out.shape[0], rows):
        o = out[c0 : c0 + rows]
        o.floor_()
        if hi > lo:
            if lo != 0.0:  # (the minimum is often 0: one op less)
                o.sub_(lo)
            o.div_(hi - lo)
        else:
            o.clamp_(0.0, 1.0)


_SCRIPT_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _scripted(fn):
    """``fn`` (one of the ``*_py`` loops) compiled by TorchScript where that works and ``_USE_TORCHSCRIPT``, else
    ``fn`` itself; compiled once per process."""
    if _USE_TORCHSCRIPT:
        try:
            with _SCRIPT_LOCK, warnings.catch_warnings():
                # deprecated in favour of torch.compile, which needs a compiler at run time; kept working
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.script(fn)
        except Exception:  # pragma: no cover - TorchScript missing or unable to compile
            pass
    return fn


def _clahe_2d(x, k0, k1, clip_limit, nbins, path, out, pool, workers) -> torch.Tensor:
    """``clahe_2d`` after the argument checks; ``pool``: ``workers`` threads for bands of rows, or None."""
    H, W = (int(s) for s in x.shape)
    # the (compiled) loops, fetched here rather than first in the worker threads
    hist_tiles, map_rows, rescale_rows = (_scripted(f) for f in (_hist_tiles_py, _map_rows_py, _rescale_rows_py))
    dev = x.device
    x = x.contiguous()
    lev = _Levels(x, nbins, path)
    x = lev.x
    L = lev.n_index  # pixel indices 0..L-1 (value - base)
    nt0, nt1 = -(-H // k0), -(-W // k1)  # tiles (histogram regions) per axis
    n_px = k0 * k1
    on_cpu = dev.type == "cpu"
    chunk_px = _CPU_CHUNK if on_cpu else 1 << 62
    # per-row mapping tables (see below) when they are not much larger than a row; else per-pixel 4 corners
    row_tables = (nt1 + 2) * nbins <= _ROW_TABLE_RATIO * W
    n_idx = max((nt1 + 1) * L, (nt1 + 2) * nbins * max(1, min(k0, chunk_px // W)), nt0 * nt1 * L)
    idx_dtype = torch.int32 if n_idx < 2**31 else torch.int64

    # ---- histograms: tile (i, j) holds rows [i*k0, (i+1)*k0), cols [j*k1, (j+1)*k1), reflect-padded.
    # Counted per value index (then folded to bins once on the small table) unless the per-value tables
    # would outgrow the image (e.g. floats, 65536 values, in a small image): then per bin, through one
    # value -> bin lookup per pixel.
    by_bin = nt0 * nt1 * L > _BIN_HIST_RATIO * H * W
    vbin = lev.vbin.to(idx_dtype)
    NB = nbins if by_bin else L  # histogram length per tile
    hist_raw = torch.zeros((nt0, nt1, NB), dtype=torch.int64, device=dev)
    if n_px >= _TILE_HIST_MIN_PX:
        # large tiles: one bincount per tile, straight on the pixel values where they are the indices
        last_cols = _reflect_index(torch.arange((nt1 - 1) * k1, nt1 * k1, device=dev), W)

        def hist_tile_row(i: int) -> None:
            r0, r1 = i * k0, (i + 1) * k0
            xr = x[r0:r1] if r1 <= H else x.index_select(0, _reflect_index(torch.arange(r0, r1, device=dev), H))
            buf = torch.empty(n_px, dtype=idx_dtype, device=dev)
            hist_tiles(xr, hist_raw[i], k1, last_cols, lev.direct and not by_bin, by_bin, vbin, buf,
                          lev.float_mode, lev.a, lev.b, lev.base)

    else:
        # small tiles: bincount over whole rows of tiles at once, indices tile_column * NB + value/bin
        wp = nt1 * k1
        cols = torch.arange(wp, device=dev)
        hadd = (torch.div(cols, k1, rounding_mode="floor") * NB).to(idx_dtype)
        extra_src = _reflect_index(cols[W:], W)  # padded columns beyond the image
        rows_per_chunk = max(1, min(k0, chunk_px // wp))

        def hist_tile_row(i: int) -> None:
            buf = torch.empty(rows_per_chunk * wp, dtype=idx_dtype, device=dev)
            acc = hist_raw[i].view(-1)
            r0, r1 = i * k0, (i + 1) * k0
            for c0 in range(r0, r1, rows_per_chunk):
                c1 = min(c0 + rows_per_chunk, r1)
                if c1 <= H:
                    xc = x[c0:c1]
                else:
                    xc = x.index_select(0, _reflect_index(torch.arange(c0, c1, device=dev), H))
                n = (c1 - c0) * wp
                bv = buf[:n].view(c1 - c0, wp)
                if wp > W:
                    lev(xc, bv[:, :W])
                    lev(xc.index_select(1, extra_src), bv[:, W:])
                else:
                    lev(xc, bv)
                if by_bin:
                    bv = vbin.index_select(0, buf[:n]).view(c1 - c0, wp)
                bv.add_(hadd)
                acc += torch.bincount(bv.view(-1), minlength=nt1 * NB)

    _run(hist_tile_row, range(nt0), pool)
    if by_bin:
        hist = hist_raw.view(nt0 * nt1, nbins)
    else:
        hist = torch.zeros((nt0 * nt1, nbins), dtype=torch.int64, device=dev)
        hist.index_add_(1, lev.vbin, hist_raw.view(nt0 * nt1, L))

    if out is None:
        out = torch.empty((H, W), dtype=torch.float32, device=dev)
    # while this thread clips the histograms (small serial steps), another one faults the output's pages
    # in, 8 MB at a time, until the clip is done (the mapping's own writes fault the rest)
    clipped = threading.Event()

    def touch_output() -> None:
        flat = out.view(-1)
        for a in range(0, flat.numel(), 1 << 21):
            if clipped.is_set():
                return
            flat[a : a + (1 << 21) : 1024].zero_()  # one write per 4 KiB page

    touched = pool.submit(touch_output) if pool is not None and on_cpu else None

    # ---- clip, redistribute, cumulate: one LUT per tile (levels 0..2**14-1, integers as float32)
    clim = int(max(clip_limit * n_px, 1)) if clip_limit > 0 else n_px
    hist = _clip_histogram(hist, clim)
    lut = hist.cumsum(1).to(torch.float64) * ((NR_OF_GRAY - 1) / n_px)
    lut = torch.floor(torch.clamp_max(lut, NR_OF_GRAY - 1)).to(torch.float32).view(nt0, nt1, nbins)
    clipped.set()
    if touched is not None:
        touched.result()

    # ---- mapping: pixel (y, x) sits in block (jy, jx) of the image shifted by half a kernel and is the
    # bilinear interpolation of the LUTs of tiles (jy-1|jy, jx-1|jx), clamped at the borders.
    xs = torch.arange(W, device=dev) + k1 // 2
    jx = torch.div(xs, k1, rounding_mode="floor")  # 0..nt1
    wx = ((xs - jx * k1).to(torch.float32) / k1)[None, :]
    rows_per_chunk = max(1, min(k0, chunk_px // W))
    blocks = []  # (block row j, first image row, end row)
    for j in range(nt0 + 1):
        y0, y1 = max(j * k0 - k0 // 2, 0), min((j + 1) * k0 - k0 // 2, H)
        if y1 > y0:
            blocks.append((j, y0, y1))

    def wy_of(j: int, y0: int, y1: int) -> torch.Tensor:
        return ((torch.arange(y0, y1, device=dev) + (k0 // 2 - j * k0)).to(torch.float32) / k0)[:, None]

    if row_tables:
        # Per image row y (weight wy between tile rows jy-1 and jy), a table over (extended tile column,
        # bin) of the vertically interpolated LUTs, tile columns clamped: e[0] = t[0], e[c] = t[c-1],
        # e[nt1+1] = t[nt1-1]. A pixel in block column jx then reads its left value at e[jx] and its right
        # value at e[jx+1] (the same index into the table shifted by nbins) and lerps with wx: per pixel
        # one bin lookup, one add, two gathers, one lerp; the tables cost (nt1+2)*nbins per row.
        C = (nt1 + 2) * nbins
        ext = torch.cat([lut[:, :1], lut, lut[:, -1:]], 1).reshape(nt0, C)
        coloff = (jx * nbins)[None, :] + (torch.arange(rows_per_chunk, device=dev) * C)[:, None]
        coloff = coloff.to(idx_dtype)

        def map_block(blk) -> tuple:
            j, y0, y1 = blk
            rpc = rows_per_chunk
            ibuf = torch.empty((rpc, W), dtype=idx_dtype, device=dev)
            # the left values go into the level indices' memory (dead once the bins are looked up)
            left = ibuf.view(torch.float32) if idx_dtype == torch.int32 else torch.empty((rpc, W), device=dev)
            top, bot = ext[max(j - 1, 0)], ext[min(j, nt0 - 1)]
            return map_rows(
                x[y0:y1], out[y0:y1], top, bot - top, wy_of(j, y0, y1), wx, vbin, coloff,
                torch.empty(rpc * C, dtype=torch.float32, device=dev), ibuf,
                torch.empty((rpc, W), dtype=idx_dtype, device=dev), left,
                torch.empty((rpc, W), dtype=torch.float32, device=dev),
                rpc, C, nbins, lev.float_mode, lev.a, lev.b, lev.base,
            )

    else:
        # a + wx*(b - a) + wy*((c - a) + wx*((d - c) - (b - a))) with a, b the top-left/right and c, d the
        # bottom-left/right tile values; per block row, the 4 float32 terms for each (block column, bin)
        # are packed in one 16-byte complex128, so one gather per pixel fetches all four.
        jcs = torch.arange(nt1 + 1, device=dev)
        clo, chi = torch.clamp(jcs - 1, 0, nt1 - 1), torch.clamp(jcs, 0, nt1 - 1)
        madd = (jx * L).to(idx_dtype)
        vlut2 = (vbin[None, :] + (jcs * nbins)[:, None]).to(idx_dtype).reshape(-1)  # index + jx*L -> jx*nbins + bin

        def map_block(blk) -> list:
            j, y0, y1 = blk
            ibuf = torch.empty(rows_per_chunk * W, dtype=idx_dtype, device=dev)
            lo, hi = lut[max(j - 1, 0)], lut[min(j, nt0 - 1)]
            a, b, c, d = lo[clo], lo[chi], hi[clo], hi[chi]
            p4 = torch.stack([a, b - a, c - a, (d - c) - (b - a)], -1).reshape(-1).view(torch.complex128)
            wy = wy_of(j, y0, y1)
            ends = []
            for c0 in range(y0, y1, rows_per_chunk):
                c1 = min(c0 + rows_per_chunk, y1)
                r = c1 - c0
                li = lev(x[c0:c1], ibuf[: r * W].view(r, W))
                li.add_(madd)
                li = vlut2.index_select(0, li.view(-1))
                g = p4.index_select(0, li).view(torch.float32).view(r, W, 4)
                t1 = torch.addcmul(g[..., 2], wx, g[..., 3])
                t0 = torch.addcmul(g[..., 0], wx, g[..., 1])
                o = out[c0:c1]
                torch.addcmul(t0, wy[c0 - y0 : c1 - y0], t1, out=o)
                ends.append(torch.aminmax(o))
            return torch.stack([e[0] for e in ends]).min(), torch.stack([e[1] for e in ends]).max()

    ends = _run(map_block, blocks, pool)
    lo_v = math.floor(float(torch.stack([e[0] for e in ends]).min()))  # of the truncated levels
    hi_v = math.floor(float(torch.stack([e[1] for e in ends]).max()))

    # ---- rescale to [0, 1] (skimage's final rescale_intensity; a constant result is clipped instead),
    # in cache-sized chunks (one memory pass)
    step = max(1, chunk_px // W)

    def rescale(band: tuple[int, int]) -> None:
        rescale_rows(out[band[0] : band[1]], lo_v, hi_v, step)

    edges = [H * k // workers for k in range(workers + 1)]  # one band per thread (few, large tasks)
    _run(rescale, zip(edges[:-1], edges[1:]), pool)
    return out


def _run(fn, items, pool: ThreadPoolExecutor | None) -> list:
    """``[fn(i) for i in items]``, on the threads of ``pool`` when there is one (torch ops release the GIL)."""
    items = list(items)
    if pool is None or len(items) <= 1:
        return [fn(i) for i in items]
    return list(pool.map(fn, items))


def _empty_float32(shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """``torch.empty(shape, float32)``; a large CPU buffer comes from numpy's allocator instead.

    Allocation only (all computation stays in torch): numpy asks Linux for transparent huge pages on large
    blocks (``madvise``), so the first write faults in 2 MiB pages instead of 4 KiB ones. For a 4000x3000
    output that is about 10 ms less per call, and page faults from several threads no longer contend.
    """
    if device.type == "cpu" and int(np.prod(shape)) >= 1 << 20:
        return torch.from_numpy(np.empty(tuple(shape), dtype=np.float32))
    return torch.empty(tuple(shape), dtype=torch.float32, device=device)


@contextmanager
def _one_intra_op_thread(device: torch.device):
    """Run with ``torch.set_num_threads(1)`` on the CPU, restoring the previous value afterwards."""
    prev = torch.get_num_threads()
    if device.type != "cpu" or prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
