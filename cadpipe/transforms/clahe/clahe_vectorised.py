"""The vectorised torch CLAHE kernel over ``N`` images at once: the GPU fallback of
:func:`cadpipe.transforms.clahe.clahe_batched.clahe_batch` where the Triton kernels do not apply, and the grey-level
quantiser both GPU kernels share (steps 1-6 of :mod:`cadpipe.transforms.clahe.clahe_batched`'s docstring).
"""

from __future__ import annotations

import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.clahe.clahe_image import NR_OF_GRAY, _reflect_index

__all__: list[str] = []

# pixels per chunk of rows in the per-pixel passes (bounds the int32 index and 8-byte gather buffers)
_CHUNK_PX = 1 << 22
# longest run of step == 1 redistribution indices jumped in one move (a whole pass where the (tiles, J + 1,
# nbins) int32 state stays below 64 MiB)
_CLIP_JUMP = 1 << 16
# productive plain steps per round (after a step == 1 run, n_excess is small and each step uses ~1 of it)
_PLAIN_STEPS = 3
_SMALL_INTS = (torch.uint8, torch.int8, torch.int16, torch.uint16)


class _Quantiser:
    """Per-image grey-level bins of the ``N`` images of ``x`` (N, H, W), as ``clahe_2d``'s ``_Levels``.

    Each pixel value ``v`` of image ``n`` maps to an index ``q = level(v) - min_level[n] + n * L`` into
    ``self.table`` (N * L int32 bins, L = the largest level range + 1): for integer images up to 16 bits
    ``level(v) = v``; for the others ``level(v) = int(v * a[n] + c[n])`` in the working float dtype.
    """

    def __init__(self, x: torch.Tensor, nbins: int, path):
        dev = x.device
        N = x.shape[0]
        src_dtype = x.dtype
        if src_dtype == torch.bool:
            x = x.view(torch.uint8)
        elif src_dtype in (torch.uint32, torch.uint64):
            x = x.to(torch.float64)
        elif src_dtype in (torch.float16, torch.bfloat16):
            x = x.to(torch.float32)
        self.shift = 0  # uint16 works on its bits as int16 with the sign bit flipped: v - 32768
        if x.dtype == torch.uint16:
            x = torch.bitwise_xor(x.view(torch.int16), -32768)
            self.shift = 32768
        self.x = x
        flat = x.reshape(N, -1)
        lo, hi = torch.aminmax(flat, dim=1)
        stats = torch.stack([lo, hi], 1).cpu()  # the one host sync of the kernel (N x 2 numbers)
        wide_int = not x.dtype.is_floating_point and x.dtype not in _SMALL_INTS  # int32 / int64
        if x.dtype.is_floating_point or wide_int:
            work = torch.float64 if (x.dtype == torch.float64 or wide_int) else torch.float32
            fs = stats.to(torch.float64)
            fmn, fmx = fs[:, 0], fs[:, 1]
            if not bool(torch.isfinite(fs).all()):
                raise CadpipeInputError(path, "CLAHE input contains NaN or infinite values")
            # img_as_uint for floats in [0, 1]: level = int(v * 65535 + 0.5); other ranges min-max first
            in01 = (fmn >= 0) & (fmx <= 1)
            a = torch.where(fmx > fmn, 65535.0 / (fmx - fmn), torch.zeros_like(fmn))  # constant: level 0
            a = torch.where(in01, torch.full_like(a, 65535.0), a)
            c = torch.where(in01, torch.zeros_like(a), -fmn * a) + 0.5
            if wide_int:  # ranges up to 65535 stay integers (a = 1, c = 0: level = v exactly)
                st = stats.to(torch.int64)
                direct = (st[:, 1] - st[:, 0]) <= 65535
                a = torch.where(direct, torch.ones_like(a), a)
                c = torch.where(direct, torch.zeros_like(c), c)
            else:
                direct = torch.zeros(N, dtype=torch.bool)
            a, c = a.to(work), c.to(work)
            ends = (stats.to(work) * a[:, None] + c[:, None]).to(torch.int64)  # as the pixels below
            mn, mx = ends[:, 0], ends[:, 1]
            self.affine = (a.to(dev), c.to(dev))
            self.work = work
        else:
            mn, mx = stats[:, 0].to(torch.int64) + self.shift, stats[:, 1].to(torch.int64) + self.shift
            self.affine = None
        span = mx - mn
        L = int(span.max()) + 1
        self.L = L
        bin_size = 1 + NR_OF_GRAY // nbins
        # constant image: skimage clips its (img_as_uint) value to the 14-bit range, unscaled
        if self.affine is not None:
            const = torch.where(direct, mn.clamp_min(0), mn)
        elif src_dtype in (torch.uint8, torch.bool):
            const = mn * 257
        elif src_dtype == torch.uint16:
            const = mn
        else:
            const = mn.clamp_min(0)
        const = const.clamp_max(NR_OF_GRAY - 1)
        r = torch.arange(L, dtype=torch.float64, device=dev)
        spand = span.to(device=dev, dtype=torch.float64)
        level = torch.round(r[None, :] / spand[:, None] * (NR_OF_GRAY - 1)).to(torch.int64)
        level = torch.where((spand > 0)[:, None], level, const.to(dev)[:, None])
        self.table = (level // bin_size).to(torch.int32).view(-1)
        # per-image additive index offset: q = level - mn + n * L (uint16: the stored bits are v - 32768)
        self.qoff = (torch.arange(N, dtype=torch.int64) * L - mn + self.shift).to(dev)

    def bins(self, xr: torch.Tensor, img: torch.Tensor, idx_dtype: torch.dtype) -> torch.Tensor:
        """Bins (``idx_dtype``, same shape) of the rows ``xr`` (R, w) whose images are ``img`` (R,)."""
        qoff = self.qoff.index_select(0, img)[:, None]
        if self.affine is None:
            q = torch.add(xr, qoff.to(idx_dtype))  # small ints + int32: int32, one pass
        else:  # as clahe_2d: multiply, add, truncate to an integer
            a, c = (t.index_select(0, img)[:, None] for t in self.affine)
            f = xr.to(self.work) * a if xr.dtype != self.work else xr * a
            f += c
            q = f.to(idx_dtype)
            q += qoff.to(idx_dtype)
        return self.table.index_select(0, q.view(-1)).view(q.shape).to(idx_dtype)


def _clahe_vectorised(x: torch.Tensor, k0: int, k1: int, clip_limit: float, nbins: int, path) -> torch.Tensor:
    """CLAHE of the ``N`` images of ``x`` (N, H, W) at once (see the module docstring); float32 (N, H, W)."""
    dev = x.device
    N, H, W = (int(s) for s in x.shape)
    x = x.contiguous()
    quant = _Quantiser(x, nbins, path)
    xf = quant.x.view(N * H, W)  # flat rows: row r is row r % H of image r // H
    nt0, nt1 = -(-H // k0), -(-W // k1)
    n_px = k0 * k1
    T = N * nt0 * nt1
    big = max(N * quant.L, N * (nt0 + 1) * (nt1 + 1) * nbins)
    idx_dtype = torch.int32 if big < 2**31 else torch.int64
    rows_per_chunk = max(1, _CHUNK_PX // W)

    def ar(n: int) -> torch.Tensor:
        return torch.arange(n, device=dev)

    # ---- histograms: tile (i, j) of image n holds rows [i*k0, (i+1)*k0) and columns [j*k1, (j+1)*k1),
    # reflect-padded beyond the image; flat index ((n * nt0 + i) * nt1 + j) * nbins + bin
    hist = torch.zeros(T * nbins, dtype=torch.int32 if idx_dtype == torch.int32 else torch.int64, device=dev)
    one = torch.ones(1, dtype=hist.dtype, device=dev)
    row_img = torch.div(ar(N * H), H, rounding_mode="floor")
    row_y = ar(N * H) - row_img * H
    hoff = ((row_img * nt0 + torch.div(row_y, k0, rounding_mode="floor")) * (nt1 * nbins)).to(idx_dtype)
    hcol = (torch.div(ar(W), k1, rounding_mode="floor") * nbins).to(idx_dtype)
    rx = _reflect_index(ar(nt1 * k1 - W) + W, W) if nt1 * k1 > W else None  # padded columns' sources
    hcol_rx = torch.full((nt1 * k1 - W,), (nt1 - 1) * nbins, dtype=idx_dtype, device=dev)

    def accumulate(xr: torch.Tensor, img: torch.Tensor, roff: torch.Tensor, coff: torch.Tensor) -> None:
        b = quant.bins(xr, img, idx_dtype)
        b += roff[:, None]
        b += coff
        hist.index_add_(0, b.view(-1), one.expand(b.numel()))

    def hist_rows(rows: torch.Tensor, img: torch.Tensor, roff: torch.Tensor) -> None:
        for r0 in range(0, rows.shape[0], rows_per_chunk):
            sl = slice(r0, r0 + rows_per_chunk)
            accumulate(rows[sl], img[sl], roff[sl], hcol)
            if rx is not None:
                accumulate(rows[sl].index_select(1, rx), img[sl], roff[sl], hcol_rx)

    hist_rows(xf, row_img, hoff)
    if nt0 * k0 > H:  # padded rows below each image, all in the last tile row
        ry = _reflect_index(ar(nt0 * k0 - H) + H, H)
        pad_img = torch.repeat_interleave(ar(N), ry.numel())
        src = (pad_img * H).view(N, -1) + ry
        hist_rows(xf.index_select(0, src.view(-1)), pad_img,
                  ((pad_img * nt0 + nt0 - 1) * (nt1 * nbins)).to(idx_dtype))

    # ---- clip + redistribute (skimage's rules, all tiles at once), cumulate: one LUT per tile
    clim = int(max(clip_limit * n_px, 1)) if clip_limit > 0 else n_px
    h = _clip_histograms(hist.view(T, nbins), clim)
    lut = h.cumsum(1).to(torch.float64) * ((NR_OF_GRAY - 1) / n_px)
    lut = torch.floor(torch.clamp_max(lut, NR_OF_GRAY - 1)).to(torch.float32).view(N, nt0, nt1, nbins)

    # ---- interpolation tables: pixel (y, x) lies in block (jy, jx) = ((y + k0//2) // k0, (x + k1//2) // k1)
    # between tile rows jy-1|jy and columns jx-1|jx (clamped at the borders, skimage's edge padding).
    # value = t0 + wy * t1 with t0 = a + wx*(b - a), t1 = (c - a) + wx*((d - c) - (b - a)), a/b the top
    # left/right and c/d the bottom left/right tile values; (a, b - a) and (c - a, ...) as complex64 pairs.
    rlo, rhi = (ar(nt0 + 1) - 1).clamp(0, nt0 - 1), ar(nt0 + 1).clamp(max=nt0 - 1)
    clo, chi = (ar(nt1 + 1) - 1).clamp(0, nt1 - 1), ar(nt1 + 1).clamp(max=nt1 - 1)
    top, bot = lut.index_select(1, rlo), lut.index_select(1, rhi)
    a, b = top.index_select(2, clo), top.index_select(2, chi)
    c, d = bot.index_select(2, clo), bot.index_select(2, chi)
    p1 = torch.view_as_complex(torch.stack([a, b - a], -1)).view(-1)
    p2 = torch.view_as_complex(torch.stack([c - a, (d - c) - (b - a)], -1)).view(-1)
    del top, bot, a, b, c, d, lut

    yk = row_y + k0 // 2
    jy = torch.div(yk, k0, rounding_mode="floor")
    moff = ((row_img * (nt0 + 1) + jy) * ((nt1 + 1) * nbins)).to(idx_dtype)
    wy = ((yk - jy * k0).to(torch.float32) / k0)[:, None]
    xk = ar(W) + k1 // 2
    jx = torch.div(xk, k1, rounding_mode="floor")
    mcol = (jx * nbins).to(idx_dtype)
    wx = (xk - jx * k1).to(torch.float32) / k1

    out = torch.empty((N * H, W), dtype=torch.float32, device=dev)
    gbuf = torch.empty(min(rows_per_chunk, N * H) * W, dtype=torch.complex64, device=dev)
    for r0 in range(0, N * H, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, N * H)
        idx = quant.bins(xf[r0:r1], row_img[r0:r1], idx_dtype)
        idx += moff[r0:r1, None]
        idx += mcol
        idx = idx.view(-1)
        g = gbuf[: idx.numel()]
        gr = torch.view_as_real(g).view(r1 - r0, W, 2)
        o = out[r0:r1]
        torch.index_select(p1, 0, idx, out=g)
        torch.addcmul(gr[..., 0], wx, gr[..., 1], out=o)
        torch.index_select(p2, 0, idx, out=g)
        gr[..., 0].addcmul_(wx, gr[..., 1])
        o.addcmul_(wy[r0:r1], gr[..., 0])
        o.floor_()  # skimage truncates the interpolated levels to integers
    del gbuf

    # ---- per-image rescale to [0, 1] (skimage's final rescale_intensity); a constant result is clipped
    o = out.view(N, H * W)
    lo, hi = torch.aminmax(o, dim=1)
    ok = hi > lo
    lo_e = torch.where(ok, lo, lo - lo.clamp(0.0, 1.0))  # constant integer v: (v - (v - clip(v))) / 1 = clip(v)
    den = torch.where(ok, hi - lo, torch.ones_like(hi))
    o.sub_(lo_e[:, None]).div_(den[:, None])
    return out.view(N, H, W)


def _clip_histograms(hist: torch.Tensor, clim: int) -> torch.Tensor:
    """skimage's ``clip_histogram`` for every row of ``hist`` (tiles, nbins), all rows at once, exactly.

    The clip and the uniform redistribution are closed-form. skimage's residual loop (``while n_excess > 0:
    for index in range(nbins)``: add 1 to each under-limit bin among ``index, index + step, ...`` with
    ``step = max(1, n_under // n_excess)``) is followed tile by tile with a per-tile ``index``, alternating
    two exact moves for all tiles together:

    - a jump over a run of ``step == 1`` indices (``n_under < 2 * n_excess``, the long runs): ``t`` such
      indices from ``index`` add ``min(t, p - index + 1)`` to each bin ``p >= index``, capped at the room
      left below the limit, so the state after ``t = 0..J`` steps is one ``(tiles, J + 1, nbins)`` tensor
      and the run's length is where ``step`` would first exceed 1, ``n_excess`` reach 0 or the pass end;
    - one plain step at each tile's ``index`` (``step > 1``; once there ``n_under / n_excess`` only grows).

    A new pass starts at index 0; a tile is finished when ``n_excess <= 0`` or no bin is under the limit:
    with a bin under the limit a pass always adds to it (at its own index at the latest), so skimage's "no
    progress in a pass" exit is exactly that case, and a finished tile never changes again. One host check
    per round of the two moves.
    """
    n = hist.shape[1]
    T = hist.shape[0]
    over = hist > clim
    n_excess = ((hist - clim) * over).sum(1)
    hist = torch.where(over, torch.full_like(hist, clim), hist)
    bin_incr = torch.div(n_excess, n, rounding_mode="floor")
    upper = (clim - bin_incr)[:, None]
    low = hist < upper
    n_excess = n_excess - low.sum(1) * bin_incr
    hist = hist + low * bin_incr[:, None].to(hist.dtype)
    mid = (hist >= upper) & (hist < clim)
    n_excess = n_excess + (hist * mid).sum(1) - mid.sum(1) * clim
    hist = torch.where(mid, torch.full_like(hist, clim), hist)

    def active() -> bool:
        return bool(((n_excess > 0) & (hist < clim).any(1)).any())

    if not active():
        return hist
    dev = hist.device
    rel = torch.arange(n, device=dev)
    J = max(1, min(_CLIP_JUMP, n, (1 << 24) // max(1, T * n)))  # jump window (bounds the (T, J+1, n) state)
    t = torch.arange(J + 1, device=dev, dtype=torch.int32)
    index = torch.zeros(T, dtype=torch.int64, device=dev)
    while True:
        # -- jump over the step == 1 run from each tile's index
        room = (clim - hist)[:, None, :]  # (T, 1, n)
        reach = (rel[None, :] - index[:, None] + 1).clamp_min(0).to(torch.int32)  # increments bin p can get
        inc = torch.minimum(torch.minimum(t[None, :, None], reach[:, None, :]), room)  # (T, J+1, n)
        added = inc.sum(2)  # (T, J+1): excess used after t steps
        n_under = (inc < room).sum(2)
        left = n_excess[:, None] - added
        ok = (left > 0) & (n_under < 2 * left) & (index[:, None] + t < n)  # step t runs with step == 1
        stop = ~ok[:, :J]
        run = torch.where(stop.any(1), stop.to(torch.uint8).argmax(1), torch.full_like(index, J))  # (T,)
        hist = hist + inc.gather(1, run[:, None, None].expand(T, 1, n))[:, 0].to(hist.dtype)
        n_excess = n_excess - added.gather(1, run[:, None])[:, 0].to(n_excess.dtype)
        index = index + run
        index = torch.where(index >= n, torch.zeros_like(index), index)
        del inc, room, reach
        # -- ``_PLAIN_STEPS`` productive plain steps: indices that select no under-limit bin change nothing
        # (nor the step), so each tile skips to the next index that does, index + min((p - index) % step)
        # over its under-limit bins p >= index, or to the pass end when there is none
        for _ in range(_PLAIN_STEPS):
            under = hist < clim
            step = torch.div(under.sum(1), n_excess.clamp_min(1), rounding_mode="floor").clamp_min(1)[:, None]
            off = rel[None, :] - index[:, None]
            cand = under & (off >= 0)
            skip = torch.where(cand, torch.remainder(off, step), torch.full_like(off, n)).amin(1)  # (T,)
            has = (skip < n) & (n_excess > 0)
            off = off - skip[:, None]
            sel = cand & (off >= 0) & (torch.remainder(off, step) == 0) & has[:, None]
            hist = hist + sel.to(hist.dtype)
            n_excess = n_excess - sel.sum(1)
            index = torch.where(has, index + skip + 1, torch.full_like(index, n))
            index = torch.where(index >= n, torch.zeros_like(index), index)
        if not active():
            return hist
