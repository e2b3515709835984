"""Batched preprocessing steps on the model's device, for images decoded by :func:`cadpipe.transforms.readers.io_raw.read_raw_2d`.

Each step takes a batch ``(B, H, W)`` (or ``(B, C, H, W)`` where noted) on any device and returns a tensor on the
same device; the per-image parameters come as sequences of length ``B``. The steps reproduce the per-item chain
``LoadStudyImage`` → ``Window`` → ``CLAHE`` → ``Resize`` → ``NormalizeIntensity`` (float32 arithmetic throughout,
so results agree to float32 rounding; ``tests/transforms/test_batched.py`` checks them against the per-item
transforms):

- :func:`upload`: numpy arrays as stored → one tensor on the device (a pinned host buffer and one ``non_blocking``
  copy on CUDA; ``uint16`` travels as its ``int16`` bits and is widened on the device);
- :func:`modality_lut`: ``stored * slope + intercept`` as float32, then ``MONOCHROME1`` inversion
  ``S - value`` (:mod:`cadpipe.transforms.readers.io_dicom`);
- :func:`window_batch`: :class:`cadpipe.transforms.window.Window`'s formulas, linear windows and min-max for the
  whole batch in one pass, sigmoid / VOI LUT / one-wide LINEAR windows per image with ``Window``'s own code;
- :func:`clahe_images`: CLAHE by :func:`cadpipe.transforms.clahe.clahe_batch` (vectorised over the batch on a GPU);
- :func:`resize_batch`: ``torch.nn.functional.interpolate`` as MONAI's ``Resize`` calls it;
- :func:`normalize_batch`: MONAI's ``NormalizeIntensity`` (whole image: mean, population std, std 0 → 1).

Layout: images are ``(rows, cols)`` as stored; MONAI's readers give ``(cols, rows)``. Every step here is symmetric in
the two axes (CLAHE tiles and area/bilinear resizing are separable), so the caller works in stored order, gives
sizes in that order, and transposes the small result once at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["upload", "modality_lut", "window_batch", "clahe_images", "resize_batch", "normalize_batch"]


def upload(arrays: Sequence[np.ndarray | torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """Stack same-shape, same-dtype 2D arrays into ``(B, H, W)`` on ``device``.

    CUDA: the stack is written into a pinned host buffer (torch's caching host allocator reuses it once the copy
    has finished) and sent with one ``non_blocking`` copy. ``uint16`` (12/16-bit X-rays) is sent as its ``int16``
    bits and widened to ``int32`` on the device (few torch ops exist for ``uint16``)."""
    device = torch.device(device)
    first = arrays[0]
    unsigned16 = (first.dtype == np.uint16) if isinstance(first, np.ndarray) else first.dtype == torch.uint16
    parts = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            a = torch.from_numpy(a.view(np.int16) if unsigned16 else a)
        elif unsigned16:
            a = a.view(torch.int16)
        parts.append(a)
    shape = (len(parts), *parts[0].shape)
    if device.type == "cuda":
        host = torch.empty(shape, dtype=parts[0].dtype, pin_memory=True)
        torch.stack(parts, out=host)
        x = host.to(device, non_blocking=True)
    else:
        x = torch.stack(parts).to(device)
    if unsigned16:
        x = x.to(torch.int32).bitwise_and_(0xFFFF)
    return x


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """``(B, 1, 1)`` float32 tensor of per-image values on ``device``."""
    return torch.tensor(list(values), dtype=torch.float32).to(device, non_blocking=True).view(-1, 1, 1)


def modality_lut(x: torch.Tensor, slope: Sequence[float], intercept: Sequence[float],
                 inversion_sum: Sequence[float | None]) -> torch.Tensor:
    """``(B, H, W)`` stored values → float32 after the modality LUT, ``MONOCHROME1`` images inverted
    (``inversion_sum[i]`` not None: ``value → inversion_sum[i] - value``)."""
    y = x.to(torch.float32)
    if any(s != 1.0 for s in slope):
        y = y.mul_(_column(slope, x.device))
    if any(b != 0.0 for b in intercept):
        y = y.add_(_column(intercept, x.device))
    inverted = [s is not None for s in inversion_sum]
    if any(inverted):
        sums = _column([s if s is not None else 0.0 for s in inversion_sum], x.device)
        flip = _column([1.0 if f else 0.0 for f in inverted], x.device).bool()
        y = torch.where(flip, sums - y, y)  # S - value for MONOCHROME1 images, unchanged for the others
    return y


def _linear_params(spec: dict[str, Any] | None) -> tuple[float, float] | None:
    """``(lo, scale)`` with ``y = clip((x - lo) * scale, 0, 1)`` for a linear window; ``None`` when the window is
    not linear (sigmoid, VOI LUT, one-wide LINEAR step) or is min-max (``spec`` None, handled by the caller)."""
    if spec is None or "lut" in spec:
        return None
    c, w, func = float(spec["center"]), float(spec["width"]), spec["function"]
    if func == "LINEAR" and w > 1:
        return c - 0.5 - (w - 1.0) / 2.0, 1.0 / (w - 1.0)
    if func == "LINEAR_EXACT" and w > 0:
        return c - w / 2.0, 1.0 / w
    return None


def window_batch(x: torch.Tensor, specs: Sequence[dict[str, Any] | None], out_min: float = 0.0,
                 out_max: float = 1.0) -> torch.Tensor:
    """Window each image of ``x`` ``(B, H, W)`` float32 with its spec (:meth:`Window.spec_for`): the same values
    as :class:`cadpipe.transforms.window.Window` applied image by image, float32 in ``[out_min, out_max]``.

    Raises:
        ValueError: a window width ``Window`` refuses (LINEAR < 1, others <= 0).
    """
    from cadpipe.transforms.window import Window

    x = x.to(torch.float32)
    b = x.shape[0]
    params = [_linear_params(s) for s in specs]
    minmax = [s is None for s in specs]
    lo = [p[0] if p else 0.0 for p in params]
    scale = [p[1] if p else 0.0 for p in params]
    lo_t, scale_t = _column(lo, x.device), _column(scale, x.device)
    if any(minmax):
        mn = x.amin(dim=(1, 2), keepdim=True)
        mx = x.amax(dim=(1, 2), keepdim=True)
        span = mx - mn
        is_mm = _column([1.0 if m else 0.0 for m in minmax], x.device).bool()
        lo_t = torch.where(is_mm, mn, lo_t)
        scale_t = torch.where(is_mm, torch.where(span > 0, 1.0 / span.clamp_min(1e-30), torch.zeros_like(span)),
                              scale_t)
    y = (x - lo_t).mul_(scale_t).clamp_(0.0, 1.0)
    for i in range(b):  # sigmoid, VOI LUT and one-wide LINEAR windows: Window's own code, image by image
        if params[i] is None and not minmax[i]:
            y[i] = Window._apply(x[i], specs[i])
    if (out_min, out_max) != (0.0, 1.0):
        y = y * (out_max - out_min) + out_min
    return y


def clahe_images(x: torch.Tensor, kernel_size: Sequence[int] | int | None = None, clip_limit: float = 0.01,
                 nbins: int = 256, path=None, impl: str = "auto") -> torch.Tensor:
    """CLAHE of each image of ``x`` ``(B, H, W)`` (skimage's semantics): float32 ``(B, H, W)`` in ``[0, 1]`` on
    ``x``'s device, by :func:`cadpipe.transforms.clahe.clahe_batch` (one vectorised pass on a GPU, per image on
    the CPU; the per-item ``CLAHE`` runs the same kernels). ``kernel_size`` is in ``(H, W)`` order; ``path`` names
    the file in the error for non-finite input; ``impl``: ``clahe_batch``'s kernel choice (``"vectorised"`` runs
    the GPU kernel on the CPU, as the tests do)."""
    from cadpipe.transforms.clahe.transforms import clahe_batch

    return clahe_batch(x[:, None], kernel_size, clip_limit, nbins, path=path, impl=impl)[:, 0]


def resize_batch(x: torch.Tensor, size: Sequence[int], mode: str = "area",
                 align_corners: bool | None = None) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, C, *size)`` float32 by ``torch.nn.functional.interpolate`` (MONAI ``Resize``'s
    call); unchanged when the size already matches (as ``Resize`` does)."""
    size = tuple(int(s) for s in size)
    x = x.to(torch.float32)
    if tuple(x.shape[2:]) == size:
        return x
    kwargs = {} if mode in ("area", "nearest", "nearest-exact") else {"align_corners": align_corners}
    return torch.nn.functional.interpolate(x, size=size, mode=mode, **kwargs)


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """MONAI ``NormalizeIntensity()`` (defaults) for each image of ``x`` ``(B, ...)``: ``(x - mean) / std`` over the
    whole image, population std, std 0 taken as 1."""
    dims = tuple(range(1, x.ndim))
    std, mean = torch.std_mean(x, dim=dims, keepdim=True, correction=0)
    std = torch.where(std == 0, torch.ones_like(std), std)
    return (x - mean).div_(std)
