"""Triton kernels for ``clahe_batch``: CLAHE of ``N`` images in seven launches, no host sync for integer input.

Same results as ``clahe_vectorised._clahe_vectorised`` (skimage's ``equalize_adapthist`` semantics), in fused
passes instead of ~300 torch ops:

1. ``_minmax_kernel``: per-image partial minima/maxima (``(N, P)`` programs, no atomics, no init);
2. ``_table_kernel``: reduces them and builds each image's value -> bin table (the ``(N, L)`` table of
   ``_Quantiser``, ``L`` fixed by the dtype: 256 for 8-bit, 65536 for 16-bit) and the per-image index
   offset, in float64 with round-half-to-even like ``torch.round``;
3. ``_hist_kernel``: one program per block of rows x columns of one tile (reflect padding by index):
   bins by table lookup, a block-local ``tl.histogram`` (warp ballots + shared memory), one masked
   ``atomic_add`` of its non-zero bins into the tile's histogram;
4. ``_clip_lut_kernel``: one program per tile runs skimage's ``clip_histogram`` loop literally (the tile's
   histogram lives in registers, ``nbins <= 4096``), then the cumulative mapping (float64, floored);
5. ``_map_kernel``: per pixel the bin, the four neighbouring tile mappings, skimage's bilinear
   interpolation (in ``_clahe_vectorised``'s operation order), truncation; stores the level and the
   block's minimum/maximum;
6. ``_rescale_kernel``: reduces those per image and rescales to ``[0, 1]`` in place.

Integer images of up to 16 bits (``bool``, ``uint8``, ``int8``, ``int16``, ``uint16``) take this path
without any host synchronisation, so it can be captured in a CUDA graph (``clahe_batch(..., graph=True)``).
``float32``/``float16``/``bfloat16`` images first go through ``_Quantiser`` (one host sync: the per-image
range and the NaN/infinity check) and a torch pass that computes their integer levels; then the same
kernels run. Other dtypes, ``nbins > 4096`` and index ranges beyond int32 are left to the vectorised torch
kernel (``supported``).

On the CPU the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is
imported), which the tests use.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from cadpipe.transforms.clahe.clahe_image import NR_OF_GRAY

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_NBINS = 4096
_SYNC_FREE = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16)
_QUANTISED = (torch.float32, torch.float16, torch.bfloat16)
_I32_MAX = 2**31 - 1


@triton.jit
def _load_int(ptr, mask, U16: tl.constexpr):
    v = tl.load(ptr, mask=mask, other=0).to(tl.int32)
    if U16:  # uint16 arrives as its int16 bits
        v = v & 0xFFFF
    return v


@triton.jit
def _minmax_kernel(x_ptr, part_ptr, HW, P, U16: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    p = tl.program_id(1)
    base = x_ptr + n.to(tl.int64) * HW
    lo = tl.full([BLOCK], 2147483647, tl.int32)
    hi = tl.full([BLOCK], -2147483648, tl.int32)
    for start in range(p * BLOCK, HW, P * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < HW
        v = _load_int(base + offs, m, U16)
        lo = tl.minimum(lo, tl.where(m, v, 2147483647))
        hi = tl.maximum(hi, tl.where(m, v, -2147483648))
    tl.store(part_ptr + (n * P + p) * 2, tl.min(lo, 0))
    tl.store(part_ptr + (n * P + p) * 2 + 1, tl.max(hi, 0))


@triton.jit
def _table_kernel(part_ptr, P, qoff_ptr, table_ptr, L, bin_size, CONST_MODE: tl.constexpr,
                  BLOCK_P: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    b = tl.program_id(1)
    lo = tl.full([BLOCK_P], 2147483647, tl.int32)
    hi = tl.full([BLOCK_P], -2147483648, tl.int32)
    for start in range(0, P, BLOCK_P):
        offs = start + tl.arange(0, BLOCK_P)
        m = offs < P
        lo = tl.minimum(lo, tl.load(part_ptr + (n * P + offs) * 2, mask=m, other=2147483647))
        hi = tl.maximum(hi, tl.load(part_ptr + (n * P + offs) * 2 + 1, mask=m, other=-2147483648))
    mn = tl.min(lo, 0)
    mx = tl.max(hi, 0)
    span = mx - mn
    r = b * BLOCK + tl.arange(0, BLOCK)
    # torch.round(r / span * (NR_OF_GRAY - 1)) in float64, round half to even
    f = r.to(tl.float64) / tl.maximum(span, 1).to(tl.float64) * 16383.0
    fl = tl.floor(f)
    d = f - fl
    odd = (fl.to(tl.int64) % 2) == 1
    level = (fl + tl.where((d > 0.5) | ((d == 0.5) & odd), 1.0, 0.0)).to(tl.int32)
    # a constant image: skimage's (img_as_uint) level of its value, clipped to the 14-bit range
    if CONST_MODE == 0:  # uint8 / bool: v * 257
        const = mn * 257
    elif CONST_MODE == 1:  # uint16: v
        const = mn
    else:  # signed: negative values count as 0
        const = tl.maximum(mn, 0)
    const = tl.minimum(const, 16383)
    level = tl.where(span > 0, level, const)
    tl.store(table_ptr + n * L + r, level // bin_size, mask=r < L)
    if b == 0:
        tl.store(qoff_ptr + n, n * L - mn)


@triton.jit
def _reflect(i, size):
    """numpy ``mode="reflect"`` source index of positions ``i >= 0``."""
    per = tl.maximum(2 * (size - 1), 1)
    m = i % per
    return tl.where(m < size, m, per - m)


@triton.jit
def _hist_kernel(x_ptr, qoff_ptr, table_ptr, hist_ptr, H, W, k0, k1, nt0, nt1, nbins,
                 U16: tl.constexpr, NB2: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0)  # flat tile index (n * nt0 + i) * nt1 + j
    rb = tl.program_id(1)
    cb = tl.program_id(2)
    j = t % nt1
    i = (t // nt1) % nt0
    n = t // (nt0 * nt1)
    offs = tl.arange(0, BR * BC)
    ry = rb * BR + offs // BC
    cx = cb * BC + offs % BC
    m = (ry < k0) & (cx < k1)
    y = _reflect(i * k0 + ry, H)
    x = _reflect(j * k1 + cx, W)
    v = _load_int(x_ptr + n.to(tl.int64) * H * W + y * W + x, m, U16)
    b = tl.load(table_ptr + v + tl.load(qoff_ptr + n), mask=m, other=0)  # masked lanes: bin 0, taken off
    bins = tl.arange(0, NB2)
    h = tl.histogram(b, NB2) - tl.where(bins == 0, BR * BC - tl.sum(m.to(tl.int32), 0), 0)
    tl.atomic_add(hist_ptr + t.to(tl.int64) * nbins + bins, h, mask=(bins < nbins) & (h > 0))


@triton.jit
def _clip_lut_kernel(hist_ptr, lut_ptr, scale_ptr, nbins, clim, NB: tl.constexpr):
    """skimage's ``clip_histogram`` of one tile, step by step, then its mapping (``_clahe_vectorised``'s)."""
    t = tl.program_id(0)
    bins = tl.arange(0, NB)
    valid = bins < nbins
    h = tl.load(hist_ptr + t.to(tl.int64) * nbins + bins, mask=valid, other=0)
    over = h > clim
    n_excess = tl.sum(tl.where(over, h - clim, 0), 0)
    h = tl.where(over, clim, h)
    bin_incr = n_excess // nbins
    upper = clim - bin_incr
    low = (h < upper) & valid
    n_excess -= tl.sum(low.to(tl.int32), 0) * bin_incr
    h = tl.where(low, h + bin_incr, h)
    mid = (h >= upper) & (h < clim) & valid
    n_excess += tl.sum(tl.where(mid, h - clim, 0), 0)
    h = tl.where(mid, clim, h)
    prev = n_excess + 1
    while (n_excess > 0) & (prev != n_excess):  # skimage: stop when a whole pass adds nothing
        prev = n_excess
        for index in range(0, nbins):
            go = n_excess > 0  # skimage breaks out of the pass once the excess is used up
            under = (h < clim) & valid
            step = tl.maximum(tl.sum(under.to(tl.int32), 0) // tl.maximum(n_excess, 1), 1)
            off = bins - index
            sel = under & (off >= 0) & ((off % step) == 0) & go
            h += sel.to(tl.int32)
            n_excess -= tl.sum(sel.to(tl.int32), 0)
    cs = tl.cumsum(h, 0)
    lut = cs.to(tl.float64) * tl.load(scale_ptr)
    lut = tl.floor(tl.minimum(lut, 16383.0))
    tl.store(lut_ptr + t.to(tl.int64) * nbins + bins, lut.to(tl.float32), mask=valid)


@triton.jit
def _map_kernel(x_ptr, qoff_ptr, table_ptr, lut_ptr, wy_ptr, wx_ptr, out_ptr, part_ptr,
                H, W, k0, k1, nt0, nt1, nbins, U16: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    n = tl.program_id(0)
    rb = tl.program_id(1)
    cb = tl.program_id(2)
    offs = tl.arange(0, BR * BC)
    y = rb * BR + offs // BC
    x = cb * BC + offs % BC
    m = (y < H) & (x < W)
    pix = n.to(tl.int64) * H * W + y * W + x
    v = _load_int(x_ptr + pix, m, U16)
    b = tl.load(table_ptr + v + tl.load(qoff_ptr + n), mask=m, other=0)
    # block (jy, jx) between tile rows jy-1 | jy and columns jx-1 | jx, clamped at the borders
    jy = (y + k0 // 2) // k0
    jx = (x + k1 // 2) // k1
    r0 = tl.minimum(tl.maximum(jy - 1, 0), nt0 - 1)
    r1 = tl.minimum(jy, nt0 - 1)
    c0 = tl.minimum(tl.maximum(jx - 1, 0), nt1 - 1)
    c1 = tl.minimum(jx, nt1 - 1)
    wy = tl.load(wy_ptr + y, mask=m, other=0.0)
    wx = tl.load(wx_ptr + x, mask=m, other=0.0)
    row0 = (n * nt0 + r0) * nt1
    row1 = (n * nt0 + r1) * nt1
    a = tl.load(lut_ptr + (row0 + c0) * nbins + b, mask=m, other=0.0)
    bb = tl.load(lut_ptr + (row0 + c1) * nbins + b, mask=m, other=0.0)
    c = tl.load(lut_ptr + (row1 + c0) * nbins + b, mask=m, other=0.0)
    d = tl.load(lut_ptr + (row1 + c1) * nbins + b, mask=m, other=0.0)
    t0 = a + wx * (bb - a)
    t1 = (c - a) + wx * ((d - c) - (bb - a))
    o = tl.floor(t0 + wy * t1)  # skimage truncates the interpolated levels
    tl.store(out_ptr + pix, o, mask=m)
    p = (n * tl.num_programs(1) + rb) * tl.num_programs(2) + cb
    tl.store(part_ptr + p * 2, tl.min(tl.where(m, o, float("inf")), 0))
    tl.store(part_ptr + p * 2 + 1, tl.max(tl.where(m, o, float("-inf")), 0))


@triton.jit
def _rescale_kernel(out_ptr, part_ptr, HW, P, BLOCK_P: tl.constexpr, BLOCK: tl.constexpr):
    n = tl.program_id(0)
    b = tl.program_id(1)
    lo = tl.full([BLOCK_P], float("inf"), tl.float32)
    hi = tl.full([BLOCK_P], float("-inf"), tl.float32)
    for start in range(0, P, BLOCK_P):
        offs = start + tl.arange(0, BLOCK_P)
        pm = offs < P
        lo = tl.minimum(lo, tl.load(part_ptr + (n * P + offs) * 2, mask=pm, other=float("inf")))
        hi = tl.maximum(hi, tl.load(part_ptr + (n * P + offs) * 2 + 1, mask=pm, other=float("-inf")))
    mn = tl.min(lo, 0)
    mx = tl.max(hi, 0)
    ok = mx > mn
    # a constant integer result v: (v - (v - clip(v, 0, 1))) / 1 = clip(v, 0, 1)
    lo_e = tl.where(ok, mn, mn - tl.minimum(tl.maximum(mn, 0.0), 1.0))
    den = tl.where(ok, mx - mn, 1.0)
    base = out_ptr + n.to(tl.int64) * HW
    for start in range(b * BLOCK, HW, tl.num_programs(1) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < HW
        o = tl.load(base + offs, mask=m, other=0.0)
        tl.store(base + offs, tl.math.div_rn(o - lo_e, den), mask=m)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


_CONST = {}  # per-device cached small tensors: ("scale", n_px) and weight tables


def _cached(key, make):
    t = _CONST.get(key)
    if t is None:
        t = _CONST[key] = make()
    return t


def _weights(size: int, k: int, dev: torch.device) -> torch.Tensor:
    """Interpolation weights along one axis, as ``_clahe_vectorised`` computes them (float32)."""
    def make():
        yk = torch.arange(size, device=dev) + k // 2
        return (yk - torch.div(yk, k, rounding_mode="floor") * k).to(torch.float32) / k
    return _cached(("w", size, k, str(dev)), make)


def supported(x: torch.Tensor, k0: int, k1: int, nbins: int) -> bool:
    """Whether ``clahe_triton`` handles ``x`` (N, H, W) with these parameters (else: vectorised kernel)."""
    if x.dtype not in _SYNC_FREE + _QUANTISED or nbins > MAX_NBINS:
        return False
    if x.device.type == "cpu" and not INTERPRET:
        return False
    N, H, W = (int(s) for s in x.shape)
    nt0, nt1 = -(-H // k0), -(-W // k1)
    return N * 65536 <= _I32_MAX and N * nt0 * nt1 * nbins <= _I32_MAX and H * W <= _I32_MAX // 2


def sync_free(x: torch.Tensor) -> bool:
    """Whether the Triton path needs no host synchronisation for ``x``'s dtype (CUDA-graph capturable)."""
    return x.dtype in _SYNC_FREE


def clahe_triton(x: torch.Tensor, k0: int, k1: int, clip_limit: float, nbins: int, path=None) -> torch.Tensor:
    """CLAHE of the ``N`` images of ``x`` (N, H, W) with the Triton kernels; float32 (N, H, W) in [0, 1]."""
    dev = x.device
    N, H, W = (int(s) for s in x.shape)
    HW = H * W
    x = x.contiguous()
    bin_size = 1 + NR_OF_GRAY // nbins
    if x.dtype in _SYNC_FREE:
        u16 = x.dtype == torch.uint16
        src = x.view(torch.int16) if u16 else (x.view(torch.uint8) if x.dtype == torch.bool else x)
        L = 65536 if x.dtype in (torch.int16, torch.uint16) else 256
        mode = 0 if x.dtype in (torch.uint8, torch.bool) else (1 if u16 else 2)
        BLOCK = 1024
        P = max(1, min(-(-HW // BLOCK), max(1, 1024 // N)))
        part = torch.empty((N, P, 2), dtype=torch.int32, device=dev)
        _minmax_kernel[(N, P)](src, part, HW, P, U16=u16, BLOCK=BLOCK)
        qoff = torch.empty(N, dtype=torch.int32, device=dev)
        table = torch.empty(N * L, dtype=torch.int32, device=dev)
        TB = 1024
        _table_kernel[(N, -(-L // TB))](part, P, qoff, table, L, bin_size, CONST_MODE=mode,
                                        BLOCK_P=min(1024, _pow2(P)), BLOCK=TB)
    else:  # floats: levels through _Quantiser (one host sync: range and NaN check), as the vectorised kernel
        from cadpipe.transforms.clahe.clahe_vectorised import _Quantiser

        quant = _Quantiser(x, nbins, path)
        if N * quant.L > _I32_MAX:  # level ranges beyond int32 indexing (huge float ranges): torch kernel
            from cadpipe.transforms.clahe.clahe_vectorised import _clahe_vectorised

            return _clahe_vectorised(x, k0, k1, clip_limit, nbins, path)
        src = quant.x.view(N, HW)
        if quant.affine is not None:
            a, c = quant.affine
            f = src.to(quant.work) * a[:, None] if src.dtype != quant.work else src * a[:, None]
            f += c[:, None]
            src = f.to(torch.int32)
            del f
        qoff = quant.qoff.to(torch.int32)
        table = quant.table
        u16 = False

    nt0, nt1 = -(-H // k0), -(-W // k1)
    T = N * nt0 * nt1
    n_px = k0 * k1
    NB2 = max(32, _pow2(nbins))  # tl.histogram: a power of 2, at least one bin per lane of a warp
    hist = torch.zeros(T * nbins, dtype=torch.int32, device=dev)
    BC = min(128, _pow2(k1))
    BR = max(1, min(_pow2(k0), 2048 // BC))
    _hist_kernel[(T, -(-k0 // BR), -(-k1 // BC))](src, qoff, table, hist, H, W, k0, k1, nt0, nt1, nbins,
                                                  U16=u16, NB2=NB2, BR=BR, BC=BC)
    clim = int(max(clip_limit * n_px, 1)) if clip_limit > 0 else n_px
    scale = _cached(("scale", n_px, str(dev)),
                    lambda: torch.full((1,), (NR_OF_GRAY - 1) / n_px, dtype=torch.float64, device=dev))
    lut = torch.empty(T * nbins, dtype=torch.float32, device=dev)
    NB = _pow2(nbins)
    _clip_lut_kernel[(T,)](hist, lut, scale, nbins, clim, NB=NB, num_warps=1 if NB <= 512 else 4)
    del hist

    out = torch.empty((N, H, W), dtype=torch.float32, device=dev)
    MC = min(256, _pow2(W))
    MR = max(1, min(_pow2(H), 4096 // MC))
    g1, g2 = -(-H // MR), -(-W // MC)
    opart = torch.empty((N, g1 * g2, 2), dtype=torch.float32, device=dev)
    _map_kernel[(N, g1, g2)](src, qoff, table, lut, _weights(H, k0, dev), _weights(W, k1, dev), out, opart,
                             H, W, k0, k1, nt0, nt1, nbins, U16=u16, BR=MR, BC=MC)
    RB = 4096
    per_img = max(1, min(-(-HW // RB), 512 // N))
    _rescale_kernel[(N, per_img)](out, opart, HW, g1 * g2, BLOCK_P=min(1024, _pow2(g1 * g2)), BLOCK=RB)
    return out


class GraphCache:
    """CUDA graphs of ``clahe_triton`` per (shape, dtype, device, parameters), replayed on a static input.

    A call copies the input into the graph's input buffer, replays the captured kernels and returns a copy
    of the graph's output buffer (so results of earlier calls are never overwritten). Only for the
    sync-free dtypes on CUDA.
    """

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, k0: int, k1: int, clip_limit: float, nbins: int) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, k0, k1, float(clip_limit), int(nbins))
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_entries:
                self.graphs.pop(next(iter(self.graphs)))
            static_in = x.detach().clone().contiguous()
            stream = torch.cuda.Stream(device=x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):  # compile / warm up outside the capture
                clahe_triton(static_in, k0, k1, clip_limit, nbins)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = clahe_triton(static_in, k0, k1, clip_limit, nbins)
            entry = self.graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()


GRAPHS = GraphCache()
