"""Intensity windowing (VOI) to ``[0, 1]`` (or a given output range): ``Window`` / ``Windowd``.

Where the window comes from, first match wins:

1. an explicit ``center`` and ``width``;
2. a named ``preset`` (CT, Hounsfield units, level/width as commonly used in radiology, e.g. Radiopaedia
   "Windowing (CT)"): ``lung`` (-600/1500), ``mediastinum`` (50/350), ``abdomen`` = ``soft_tissue`` (50/400),
   ``liver`` (30/150), ``bone`` (400/1800), ``brain`` (40/80), ``subdural`` (75/215), ``stroke`` (32/8);
3. the DICOM tags kept in the image metadata by :class:`cadpipe.transforms.DicomReader`: the VOI LUT Sequence
   when present (``prefer_lut=True``), else the first (or ``index``-th) WindowCenter/WindowWidth with the file's
   VOI LUT Function (``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID``), matching ``pydicom.pixels.apply_voi_lut``
   normalised to ``[0, 1]`` (DICOM PS3.3 C.11.2.1.2);
4. otherwise min-max of the image (so JPEG/PNG inputs pass through the same pipeline).

Formulas (``x`` input, output before scaling to ``[out_min, out_max]``)::

    LINEAR        y = clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    LINEAR_EXACT  y = clip((x - c) / w + 0.5, 0, 1)
    SIGMOID       y = 1 / (1 + exp(-4 (x - c) / w))
    VOI LUT       y = LUTData[clip(round(x) - first, 0, n - 1)] / (2**bits - 1)

Explicit centre/width and presets use ``function`` (default ``LINEAR_EXACT``: the window spans exactly
``[c - w/2, c + w/2]``). Works on numpy arrays and torch tensors (CPU or GPU, one code path), any shape;
``(C, spatial...)`` is the usual layout. Output dtype float32 (or the input's float dtype).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = ["Window", "Windowd", "WINDOW_PRESETS", "window_from_meta"]

#: name -> (centre/level, width), Hounsfield units
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "abdomen": (50.0, 400.0),
    "soft_tissue": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (32.0, 8.0),
}

_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def window_from_meta(meta: Mapping | None, index: int = 0, prefer_lut: bool = True) -> dict[str, Any] | None:
    """The window a DICOM image's metadata asks for: ``{"lut": (first, data, bits)}`` or
    ``{"center", "width", "function"}``; ``None`` when the metadata has neither."""
    if not meta:
        return None
    from cadpipe.transforms.readers.io_dicom import meta_voi_luts, meta_windows

    luts = meta_voi_luts(meta) if prefer_lut else []
    if luts:
        lut = luts[min(index, len(luts) - 1)]
        n, first, bits = (int(v) for v in np.asarray(lut["LUTDescriptor"]).ravel()[:3])
        return {"lut": (first, np.asarray(lut["LUTData"]), bits)}
    centres, widths = meta_windows(meta)
    if not centres or not widths:
        return None
    center, width = centres[min(index, len(centres) - 1)], widths[min(index, len(widths) - 1)]
    func = meta.get("VOILUTFunction", "LINEAR")
    func = (func[0] if isinstance(func, (list, tuple)) else str(func or "LINEAR")).upper()
    return {"center": center, "width": width, "function": func if func in _FUNCTIONS else "LINEAR"}


class Window(Transform):
    """Window an image to ``[out_min, out_max]``.

    Args:
        center, width: explicit window (level / width) in the image's units (HU for CT).
        preset: a name from :data:`WINDOW_PRESETS` (used when ``center``/``width`` are not given).
        function: ``"LINEAR_EXACT"`` (default), ``"LINEAR"`` (DICOM's discrete variant) or ``"SIGMOID"`` for an
            explicit window or preset; windows read from DICOM tags use the file's VOI LUT Function.
        out_min, out_max: output range.
        index: which window/VOI LUT to use when the tags hold several (0 = first).
        prefer_lut: use the VOI LUT Sequence over WindowCenter/Width when both are present (pydicom's default).
        use_meta: read the window from the MetaTensor's DICOM tags when no centre/width/preset is given.
        dtype: output float dtype (None keeps a float input's dtype, float32 otherwise).

    Input: numpy array or torch tensor of any shape, e.g. ``(C, H, W[, D])``; ``meta`` may be passed explicitly,
    otherwise a ``MetaTensor``'s ``.meta`` is used. Output: same shape and type (tensor stays on its device).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        center: float | None = None,
        width: float | None = None,
        preset: str | None = None,
        function: str = "LINEAR_EXACT",
        out_min: float = 0.0,
        out_max: float = 1.0,
        index: int = 0,
        prefer_lut: bool = True,
        use_meta: bool = True,
        dtype: torch.dtype | None = torch.float32,
    ):
        if (center is None) != (width is None):
            raise ValueError("Window: give both center and width, or neither")
        if preset is not None and preset.lower() not in WINDOW_PRESETS:
            raise ValueError(f"Window: unknown preset {preset!r}; known: {sorted(WINDOW_PRESETS)}")
        if function.upper() not in _FUNCTIONS:
            raise ValueError(f"Window: function must be one of {_FUNCTIONS}, got {function!r}")
        self.center, self.width = center, width
        self.preset = preset.lower() if preset else None
        self.function = function.upper()
        self.out_min, self.out_max = float(out_min), float(out_max)
        self.index, self.prefer_lut, self.use_meta = index, prefer_lut, use_meta
        self.dtype = dtype

    def spec_for(self, meta: Mapping | None) -> dict[str, Any] | None:
        """The window this transform applies to an image with metadata ``meta``: ``{"center", "width",
        "function"}``, ``{"lut": (first, data, bits)}``, or None (min-max); see the module docstring."""
        return self._spec(meta)

    def _spec(self, meta: Mapping | None) -> dict[str, Any] | None:
        if self.center is not None:
            return {"center": float(self.center), "width": float(self.width), "function": self.function}
        if self.preset is not None:
            c, w = WINDOW_PRESETS[self.preset]
            return {"center": c, "width": w, "function": self.function}
        if self.use_meta:
            return window_from_meta(meta, self.index, self.prefer_lut)
        return None

    @staticmethod
    def _apply(x: torch.Tensor, spec: dict[str, Any] | None) -> torch.Tensor:
        if spec is None:  # min-max fallback
            lo, hi = x.min(), x.max()
            return (x - lo) / (hi - lo) if bool(hi > lo) else torch.zeros_like(x)
        if "lut" in spec:
            first, data, bits = spec["lut"]
            lut = torch.as_tensor(np.asarray(data, dtype=np.float64), device=x.device).to(x.dtype)
            idx = (torch.round(x) - first).clamp(0, lut.numel() - 1).long()
            return lut[idx] / float(2**bits - 1)
        c, w, func = spec["center"], spec["width"], spec["function"]
        if func == "LINEAR":
            if w < 1:
                raise ValueError(f"Window: LINEAR window width must be >= 1, got {w}")
            if w <= 1:
                return (x > c - 0.5).to(x.dtype)
            # in place after the first op (a new tensor): same values, one allocation
            return (x - (c - 0.5)).div_(max(w - 1.0, 1e-12)).add_(0.5).clamp_(0.0, 1.0)
        if w <= 0:
            raise ValueError(f"Window: window width must be > 0, got {w}")
        if func == "LINEAR_EXACT":
            return (x - c).div_(w).add_(0.5).clamp_(0.0, 1.0)
        return torch.sigmoid(4.0 * (x - c) / w)

    def __call__(self, img, meta: Mapping | None = None):
        if meta is None and isinstance(img, MetaTensor):
            meta = img.meta
        x = convert_to_tensor(img, track_meta=False)
        dtype = self.dtype if self.dtype is not None else (x.dtype if x.is_floating_point() else torch.float32)
        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        y = self._apply(x.to(compute), self._spec(meta))
        if (self.out_min, self.out_max) != (0.0, 1.0):
            y = y * (self.out_max - self.out_min) + self.out_min
        out, *_ = convert_to_dst_type(y, img, dtype=dtype)
        return out


class Windowd(MapTransform):
    """Dictionary twin of :class:`Window`: windows ``d[key]`` for each key, using that image's own metadata
    (``MetaTensor.meta``, or ``d[f"{key}_{meta_key_postfix}"]`` for plain arrays)."""

    backend = Window.backend

    def __init__(
        self,
        keys: KeysCollection,
        center: float | None = None,
        width: float | None = None,
        preset: str | None = None,
        function: str = "LINEAR_EXACT",
        out_min: float = 0.0,
        out_max: float = 1.0,
        index: int = 0,
        prefer_lut: bool = True,
        use_meta: bool = True,
        dtype: torch.dtype | None = torch.float32,
        meta_key_postfix: str = "meta_dict",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.window = Window(center, width, preset, function, out_min, out_max, index, prefer_lut, use_meta, dtype)
        self.meta_key_postfix = meta_key_postfix

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = d[key].meta if isinstance(d[key], MetaTensor) else d.get(f"{key}_{self.meta_key_postfix}")
            d[key] = self.window(d[key], meta=meta)
        return d
