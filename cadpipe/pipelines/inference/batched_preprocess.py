"""A bundle's 2D greyscale preprocessing, split into decoding (per file, on the CPU) and the rest (batched, on the
model's device): :func:`plan_batched` and :class:`BatchedPreprocessing`.

The planner reads the bundle's *instantiated* ``preprocessing`` Compose (so overrides such as ``use_clahe=false``
are already resolved) and accepts this chain, in this order, each step after the loader optional:

========================================  ===================================================================
per-item transform                        batched step (:mod:`cadpipe.transforms.batched`)
========================================  ===================================================================
``LoadStudyImaged(mode="gray")``          :func:`cadpipe.transforms.readers.io_raw.read_raw_2d` in the DataLoader worker,
                                          then ``upload`` + ``modality_lut`` (+ ``MONOCHROME1`` inversion)
``Windowd``                               ``window_batch`` with each image's :meth:`Window.spec_for`
``CLAHEd``                                ``clahe_images`` (same ``kernel_size`` / ``clip_limit`` / ``nbins``)
``Resized`` (2 sizes, no anti-aliasing)   ``resize_batch``
``NormalizeIntensityd()`` (defaults)      ``normalize_batch``
``EnsureTyped`` (float32), ``Identityd``  nothing
========================================  ===================================================================

Anything else (a lung crop, stain normalisation, orientation/spacing of volumes, a detector's box transforms)
makes :func:`plan_batched` return ``(None, reason)``: scoring then keeps the per-item MONAI chain and logs the
reason. The result of :meth:`BatchedPreprocessing.__call__` is the batch the per-item chain would have collated:
``(B, 1, X, Y)`` float32 in MONAI's axis order, on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cadpipe.transforms import batched as B
from cadpipe.transforms.readers.io_raw import RawImage, read_raw_2d

__all__ = ["BatchedPreprocessing", "plan_batched", "flatten_compose"]


class BatchedPreprocessing:
    """Decode per file (:meth:`decode`), then everything else for a batch at once on a device (:meth:`__call__`).

    Args:
        reject_nan: as ``LoadStudyImage`` (float inputs with NaN are refused).
        window: the bundle's :class:`cadpipe.transforms.window.Window`, or None (no windowing step).
        clahe: ``{"kernel_size", "clip_limit", "nbins"}`` of the bundle's CLAHE (kernel in MONAI's ``(X, Y)``
            order), or None.
        resize: ``{"spatial_size": (X, Y), "mode", "align_corners"}``, or None.
        normalize: whether the chain ends with ``NormalizeIntensity()``.
    """

    def __init__(self, reject_nan: bool = True, window=None, clahe: dict | None = None, resize: dict | None = None,
                 normalize: bool = False):
        self.reject_nan, self.window, self.clahe, self.resize, self.normalize = (
            reject_nan, window, clahe, resize, normalize)

    def decode(self, path: str) -> RawImage:
        """The worker's part: the file decoded, nothing computed on its pixels."""
        return read_raw_2d(path, mode="gray", reject_nan=self.reject_nan)

    def batch_key(self, raw: RawImage) -> tuple:
        """Images with the same key make batches of the same output shape (all of them once there is a resize)."""
        if self.resize is not None:
            return ("resized",)
        return (str(raw.pixels.dtype), tuple(raw.pixels.shape))

    def __call__(self, raws: Sequence[RawImage], device: torch.device | str) -> torch.Tensor:
        """``(B, 1, X, Y)`` float32 on ``device`` for the decoded images ``raws`` (same output shape).

        Images are uploaded and processed in groups of one stored shape and dtype (one transfer per group; one
        per batch when all images agree), then concatenated in the order given."""
        device = torch.device(device)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(raws):
            groups.setdefault((str(r.pixels.dtype), tuple(r.pixels.shape)), []).append(i)
        if len(groups) == 1:
            return self._group([raws[i] for i in range(len(raws))], device)
        out: list[torch.Tensor | None] = [None] * len(raws)
        for idx in groups.values():
            y = self._group([raws[i] for i in idx], device)
            for j, i in enumerate(idx):
                out[i] = y[j]
        return torch.stack(out)  # type: ignore[arg-type]

    def _group(self, raws: Sequence[RawImage], device: torch.device) -> torch.Tensor:
        x = B.upload([r.pixels for r in raws], device)
        x = B.modality_lut(x, [r.slope for r in raws], [r.intercept for r in raws],
                           [r.inversion_sum for r in raws])
        if self.window is not None:
            w = self.window
            x = B.window_batch(x, [w.spec_for(r.meta) for r in raws], w.out_min, w.out_max)
        if self.clahe is not None:
            k = self.clahe["kernel_size"]
            if isinstance(k, Sequence) and not isinstance(k, str):
                k = (int(k[1]), int(k[0]))  # MONAI's (X, Y) -> stored (rows, cols)
            x = B.clahe_images(x, k, self.clahe["clip_limit"], self.clahe["nbins"], path=raws[0].path)
        x = x[:, None]  # channel axis
        if self.resize is not None:
            sx, sy = self.resize["spatial_size"]
            rows, cols = x.shape[-2:]
            size = (cols if sy == -1 else sy, rows if sx == -1 else sx)  # (X, Y) -> (rows, cols); -1 keeps
            x = B.resize_batch(x, size, self.resize["mode"], self.resize["align_corners"])
        if self.normalize:
            x = B.normalize_batch(x.to(torch.float32))
        return x.to(torch.float32).transpose(-1, -2).contiguous()  # (rows, cols) -> MONAI's (X, Y)


def plan_batched(preprocessing) -> tuple[BatchedPreprocessing | None, str | None]:
    """``(plan, None)`` when the bundle's ``preprocessing`` (an instantiated MONAI ``Compose``) is a chain the
    batched path reproduces (module docstring), else ``(None, reason)``."""
    from monai.transforms import Compose, EnsureTyped, Identity, Identityd, NormalizeIntensityd, Resized

    from cadpipe.transforms.clahe.transforms import CLAHEd
    from cadpipe.transforms.readers.io_any import LoadStudyImaged
    from cadpipe.transforms.window import Windowd

    if not isinstance(preprocessing, Compose):
        return None, f"preprocessing is a {type(preprocessing).__name__}, not a Compose"
    steps = [t for t in flatten_compose(preprocessing) if not isinstance(t, (Identityd, Identity))]
    if not steps or not isinstance(steps[0], LoadStudyImaged):
        return None, "the first transform is not cadpipe.transforms.LoadStudyImaged"
    load = steps[0]
    if list(load.keys) != ["image"]:
        return None, f"LoadStudyImaged keys {list(load.keys)} (batched: 'image' only)"
    if load.loader.mode != "gray" or np.dtype(load.loader.dtype) != np.float32:
        return None, f"LoadStudyImaged mode {load.loader.mode!r} dtype {load.loader.dtype} (batched: gray, float32)"
    kwargs: dict[str, Any] = {"reject_nan": load.loader.reject_nan}
    order = ["window", "clahe", "resize", "normalize"]
    seen = -1
    for t in steps[1:]:
        name = type(t).__name__
        if isinstance(t, EnsureTyped):
            dt = t.dtype[0] if isinstance(t.dtype, tuple) else t.dtype
            if dt not in (None, torch.float32, np.float32) or t.converter.data_type not in ("tensor", None):
                return None, f"EnsureTyped to {dt} / {t.converter.data_type}"
            if t.converter.device is not None:
                return None, "EnsureTyped moves the image to a device"
            continue
        if list(getattr(t, "keys", ())) != ["image"]:
            return None, f"{name} acts on keys {list(getattr(t, 'keys', ()))} (batched: 'image' only)"
        if isinstance(t, Windowd):
            step = "window"
            kwargs["window"] = t.window
        elif isinstance(t, CLAHEd):
            step = "clahe"
            c = t.clahe
            if str(getattr(c, "dtype", torch.float32)) not in ("torch.float32", "float32", "<class 'numpy.float32'>"):
                return None, f"CLAHEd output dtype {c.dtype}"
            kwargs["clahe"] = {"kernel_size": c.kernel_size, "clip_limit": c.clip_limit, "nbins": c.nbins}
        elif isinstance(t, Resized):
            step = "resize"
            r = t.resizer
            size = tuple(int(s) for s in np.ravel(r.spatial_size))
            if r.size_mode != "all" or len(size) != 2:
                return None, f"Resized spatial_size {r.spatial_size} size_mode {r.size_mode} (batched: 2 sizes, 'all')"
            if t.anti_aliasing[0]:
                return None, "Resized with anti_aliasing"
            mode = str(t.mode[0].value if hasattr(t.mode[0], "value") else t.mode[0])
            if mode not in ("area", "bilinear", "bicubic", "nearest", "nearest-exact"):
                return None, f"Resized mode {mode!r}"
            kwargs["resize"] = {"spatial_size": size, "mode": mode, "align_corners": t.align_corners[0]}
        elif isinstance(t, NormalizeIntensityd):
            step = "normalize"
            n = t.normalizer
            if n.subtrahend is not None or n.divisor is not None or n.nonzero:
                return None, "NormalizeIntensityd with subtrahend/divisor/nonzero"
            if np.dtype(n.dtype) != np.float32:
                return None, f"NormalizeIntensityd dtype {n.dtype}"
            kwargs["normalize"] = True  # channel_wise is the same for one channel
        else:
            return None, f"{type(t).__module__}.{name} has no batched equivalent"
        if order.index(step) <= seen:
            return None, f"{name} comes after a step the batched chain runs later"
        seen = order.index(step)
    return BatchedPreprocessing(**kwargs), None


def flatten_compose(compose) -> list:
    """The transforms of a (nested) Compose, in order."""
    from monai.transforms import Compose

    out = []
    for t in compose.transforms:
        out += flatten_compose(t) if isinstance(t, Compose) else [t]
    return out
