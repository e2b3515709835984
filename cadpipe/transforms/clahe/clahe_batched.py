"""Batched CLAHE: every channel of every image of a ``(B, C, H, W)`` tensor in a few vectorised torch steps.

``clahe_batch`` is the one entry point (the ``CLAHE``/``CLAHEd`` transforms call it). It gives exactly what
``cadpipe.transforms.clahe.clahe_image.clahe_2d`` gives for each 2D image (skimage's ``equalize_adapthist``
semantics, see that module), and picks the implementation by device:

- on a GPU (any non-CPU device): the Triton kernels of ``cadpipe.transforms.clahe.clahe_triton`` (seven launches,
  no host sync for integer images, optionally replayed as a CUDA graph) where Triton is importable and
  supports the input, else ``_clahe_vectorised`` below, one pass over the whole batch in torch ops;
- on the CPU: ``clahe_2d`` per image (cache-sized chunks, TorchScript loops, band threads), which is faster
  there than the batch-wide ops (``impl=`` chooses either one explicitly).

The vectorised kernel, for ``N = B * C`` images at once, with no Python loop over images, tiles or bins:

1. one ``aminmax`` over each image and one host sync to read the ``N`` minima/maxima (the per-image
   intensity range, the NaN check, the size of the value table);
2. grey-level bins through one lookup per pixel in a ``(N, L)`` table (``L`` = the largest value range + 1,
   at most 65536) built once from the per-image range in float64, exactly as ``clahe_2d`` does;
3. the histograms of all ``N * tiles`` tiles: one ``index_add_`` over flat ``(image, tile, bin)`` indices
   (main area, then the reflect-padded bottom rows and right columns, which are short);
4. skimage's clip and redistribution for all tiles at once (``_clip_histograms``): the uniform part in
   closed form, then skimage's strided residual loop followed exactly for all tiles together, its long runs
   of ``step == 1`` jumped in one move, one host check per round;
5. the tile mappings (cumsum) and, per (image, block row, block column, bin), the bilinear terms of the four
   neighbouring tiles packed in two ``complex64`` tables, so each pixel costs two gathers and three
   ``addcmul``;
6. truncation to integer levels and the per-image min-max rescale to ``[0, 1]`` (one ``aminmax`` over
   ``dim=1``, two in-place ops).

Rows are processed in chunks of at most ``_CHUNK_PX`` pixels, so the work buffers (an int32 index and an
8-byte gather per pixel) stay bounded: peak extra device memory is the float32 output plus at most about
3x the input in float32 for small batches, and well below that for large ones (the (N, L) value table adds
at most 256 KiB per image).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.transforms.clahe.clahe_image import _empty_float32, _one_intra_op_thread, clahe_2d, kernel_pair

from cadpipe.transforms.clahe.clahe_vectorised import _clahe_vectorised

__all__ = ["clahe_batch"]

def clahe_batch(
    x: torch.Tensor | Sequence[torch.Tensor],
    kernel_size: Sequence[int] | int | None = None,
    clip_limit: float = 0.01,
    nbins: int = 256,
    *,
    num_threads: int | None = 1,
    path=None,
    impl: str = "auto",
    graph: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """CLAHE of each channel of each image of a batch, ``skimage.exposure.equalize_adapthist`` semantics.

    Args:
        x: ``(B, C, H, W)`` tensor of any real dtype (``bool``, ``uint8``, ``int16``, ``uint16`` such as raw
            12-bit data, ``int32``, floats, ...), on any device; or a list of ``(C, H, W)`` tensors of any
            sizes, which are grouped by shape, dtype and device and each group run as one batch.
        kernel_size: tile size ``(kh, kw)`` in pixels along ``H`` and ``W`` (an int for both). Default
            ``None``: 1/8 of each side (at least 1), like skimage.
        clip_limit: normalised clip limit: a tile of ``n`` pixels has its histogram clipped at
            ``int(max(clip_limit * n, 1))``; ``0`` or ``>= 1`` gives plain AHE. Default 0.01.
        nbins: histogram bins. Default 256.
        num_threads: CPU threads per image for the per-image CPU path (see ``CLAHE``); ignored elsewhere.
        path: file name used in the error for NaN/infinite input.
        impl: ``"auto"``, ``"triton"``, ``"vectorised"`` or ``"per_image"``. ``"auto"`` picks, on a GPU, the
            Triton kernels (``clahe_triton``) when Triton is importable and they support the input (integer
            dtypes up to 16 bits, float32/16/bfloat16; ``nbins <= 4096``), else the vectorised torch kernel;
            on the CPU, the per-image kernel (if the Triton kernels raise there, e.g. cannot be compiled,
            ``"auto"`` warns once and uses the vectorised kernel from then on). ``"triton"`` on the CPU needs ``TRITON_INTERPRET=1`` (Triton's
            interpreter, for tests) and falls back to ``"vectorised"`` where the input is not supported.
        graph: replay a cached CUDA graph of the Triton kernels for repeated (shape, dtype, device,
            parameters), the input copied into the graph's buffer and the output copied out. Only where the
            Triton path needs no host sync (CUDA, integer dtypes up to 16 bits); elsewhere ignored.

    Returns:
        float32 ``(B, C, H, W)`` in ``[0, 1]`` on ``x``'s device (a list of ``(C, H, W)`` for a list input).

    Intensity range: each ``(H, W)`` image is equalised on its own, from its own minimum and maximum
    (per image and channel, never per batch). Integer images (``uint16`` 12-bit data included) use their
    values' min-max: ``round((v - min) / (max - min) * 16383)`` grey levels, as skimage does for ``uint8``
    and ``uint16``; signed integers are min-max rescaled the same way (skimage would first map negative
    values to 0); ``int32``/``int64`` images whose range exceeds 65535, and ``uint32``/``uint64`` images,
    are treated as floats. Float images with all values in ``[0, 1]`` are quantised to 16 bits
    (``int(v * 65535 + 0.5)``, skimage's ``img_as_uint``) and then min-max rescaled; float images outside
    ``[0, 1]`` (e.g. raw 12-bit data as float, or CT in HU) are min-max normalised to 16 bits first. So a
    12-bit image gives the same output whether it arrives as ``uint16``, ``int16`` or ``int32``, while the
    same values as float are quantised through 16 bits first (output within 1e-4 of the integer one).

    Raises:
        CadpipeInputError: NaN or infinite values (named by ``path``).
        ValueError / TypeError: bad shapes, dtypes or parameters.
    """
    if isinstance(x, (list, tuple)):
        return _clahe_list(x, kernel_size, clip_limit, nbins, num_threads=num_threads, path=path, impl=impl,
                           graph=graph)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"clahe_batch expects a torch.Tensor (B, C, H, W) or a list of (C, H, W), got {type(x)}")
    if x.ndim != 4:
        raise ValueError(f"clahe_batch expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"clahe_batch expects a real dtype, got {x.dtype}")
    if nbins < 1:
        raise ValueError(f"nbins must be >= 1, got {nbins}")
    if clip_limit < 0:
        raise ValueError(f"clip_limit must be >= 0, got {clip_limit}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    B, C, H, W = (int(s) for s in x.shape)
    if H < 1 or W < 1:
        raise ValueError(f"clahe_batch needs images of at least 1x1 pixels, got shape {tuple(x.shape)}")
    k0, k1 = kernel_pair(kernel_size, H, W)
    if B * C == 0:
        return torch.empty((B, C, H, W), dtype=torch.float32, device=x.device)
    auto = impl == "auto"
    if auto:
        impl = "per_image" if x.device.type == "cpu" else "triton"
    if impl == "triton" and auto:
        try:
            return clahe_batch(x, (k0, k1), clip_limit, nbins, path=path, impl="triton", graph=graph)
        except CadpipeInputError:
            raise
        except Exception as e:  # e.g. a Triton build that cannot compile here: the torch kernel, from now on
            warnings.warn(f"clahe_batch: Triton kernels failed ({type(e).__name__}: {e}); using the vectorised "
                          "torch kernel instead", RuntimeWarning, stacklevel=2)
            _TRITON[:] = [None]
            impl = "vectorised"
    if impl == "triton":
        triton_mod = _triton_module()
        xs = x.reshape(B * C, H, W)
        if triton_mod is None:
            if x.device.type == "cpu":
                raise ValueError("impl='triton' needs Triton, and on the CPU TRITON_INTERPRET=1")
            impl = "vectorised"
        elif not triton_mod.supported(xs, k0, k1, nbins):
            if x.device.type == "cpu" and not triton_mod.INTERPRET:
                raise ValueError("impl='triton' on the CPU needs TRITON_INTERPRET=1 (Triton's interpreter)")
            impl = "vectorised"
        elif graph and x.device.type == "cuda" and triton_mod.sync_free(xs):
            return triton_mod.GRAPHS(xs, k0, k1, float(clip_limit), int(nbins)).view(B, C, H, W)
        else:
            return triton_mod.clahe_triton(xs, k0, k1, float(clip_limit), int(nbins), path).view(B, C, H, W)
    if impl == "vectorised":
        out = _clahe_vectorised(x.reshape(B * C, H, W), k0, k1, float(clip_limit), int(nbins), path)
        return out.view(B, C, H, W)
    out = _empty_float32((B, C, H, W), x.device)
    workers = 1
    if x.device.type == "cpu":
        workers = max(1, torch.get_num_threads() if num_threads is None else int(num_threads))
    with _one_intra_op_thread(x.device):
        for s, o in zip(x.reshape(B * C, H, W), out.view(B * C, H, W)):
            clahe_2d(s, (k0, k1), clip_limit, nbins, path=path, out=o, workers=workers)
    return out


IMPLS = ("auto", "triton", "vectorised", "per_image")
_TRITON: list = []


def _triton_module():
    """``cadpipe.transforms.clahe.clahe_triton``, or None where Triton is not importable (cached)."""
    if not _TRITON:
        try:
            from cadpipe.transforms.clahe import clahe_triton
        except Exception:  # Triton missing or unusable here: the torch kernels remain
            clahe_triton = None
        _TRITON.append(clahe_triton)
    return _TRITON[0]


def _clahe_list(xs, kernel_size, clip_limit, nbins, **kw) -> list[torch.Tensor]:
    """``clahe_batch`` of a list of ``(C, H, W)`` tensors: one batch per (shape, dtype, device) group."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(xs):
        if not isinstance(t, torch.Tensor) or t.ndim != 3:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t)
            raise ValueError(f"clahe_batch: list item {i} must be a (C, H, W) tensor, got {shape}")
        groups.setdefault((tuple(t.shape), t.dtype, t.device), []).append(i)
    outs: list[torch.Tensor | None] = [None] * len(xs)
    for idx in groups.values():
        res = clahe_batch(torch.stack([xs[i] for i in idx]), kernel_size, clip_limit, nbins, **kw)
        for i, o in zip(idx, res):
            outs[i] = o
    return outs
