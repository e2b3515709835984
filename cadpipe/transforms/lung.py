"""Lung-field transforms for chest X-rays: mask loading, the post-processing steps of the lung segmentation bundle
(threshold, morphological opening, lung bounding box; "keep the two largest components" is MONAI's
``KeepLargestConnectedComponentd(num_components=2)``), and ``LungCrop``/``LungCropd`` which run a trained lung
segmentation bundle and crop a radiograph to its lungs.

Axes follow MONAI's readers: ``(C, X, Y)`` with X = column, Y = row; boxes are ``xyxy`` =
``(col_min, row_min, col_max, row_max)`` in pixel-edge coordinates (``max`` is one past the last lung pixel).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from cadpipe.errors import CadpipeInputError

__all__ = [
    "LoadLungMask", "LoadLungMaskd", "LungThreshold", "LungThresholdd", "MorphOpening", "MorphOpeningd",
    "LungBox", "LungBoxd", "lung_box", "load_lung_bundle", "LungCrop", "LungCropd",
]

logger = logging.getLogger(__name__)


def _fname(x) -> str:
    return str((getattr(x, "meta", None) or {}).get("filename_or_obj", ""))


class LoadLungMask(Transform):
    """Read one or more mask files (Montgomery: left + right; Shenzhen: one) and merge them (logical OR).

    Returns a ``(1, X, Y)`` float32 ``MetaTensor`` of 0/1 with the first file's meta. Files of different sizes raise
    :class:`CadpipeInputError` naming the file.
    """

    backend = [TransformBackends.TORCH]

    def __call__(self, paths: str | Sequence[str]) -> MetaTensor:
        from cadpipe.transforms.readers.io_any import LoadStudyImage

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if not paths:
            raise CadpipeInputError("", "no mask file given")
        load = LoadStudyImage(mode="gray")
        out = None
        for p in paths:
            m = load(p)
            if out is not None and tuple(m.shape) != tuple(out.shape):
                raise CadpipeInputError(p, f"mask size {tuple(m.shape[1:])} differs from {tuple(out.shape[1:])} of {paths[0]}")
            out = (m > 0) if out is None else (out | (m > 0))
        res = out.to(torch.float32)
        return res


class LoadLungMaskd(MapTransform):
    """Dictionary twin of :class:`LoadLungMask`; also checks that the mask has the size of ``image_key``."""

    backend = LoadLungMask.backend

    def __init__(self, keys: KeysCollection = "label", image_key: str | None = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader, self.image_key = LoadLungMask(), image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = d[key]
            d[key] = self.loader(paths)
            img = d.get(self.image_key) if self.image_key else None
            if isinstance(img, torch.Tensor) and tuple(img.shape[1:]) != tuple(d[key].shape[1:]):
                first = paths if isinstance(paths, str) else list(paths)[0]
                raise CadpipeInputError(first, f"mask size {tuple(d[key].shape[1:])} differs from image size "
                                        f"{tuple(img.shape[1:])} of {_fname(img)}")
        return d


class LungThreshold(Transform):
    """Probability map ``(C, X, Y)`` → lung mask ``(1, X, Y)`` (float 0/1): ``img[channel] >= threshold``.

    The thesis thresholds the lung probability at 0.4 (default) rather than 0.5 to keep faint lung borders.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, threshold: float = 0.4, channel: int = 1):
        self.threshold, self.channel = float(threshold), int(channel)

    def __call__(self, img):
        ch = min(self.channel, img.shape[0] - 1)
        out = img[ch : ch + 1] >= self.threshold
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class LungThresholdd(MapTransform):
    """Dictionary twin of :class:`LungThreshold`."""

    backend = LungThreshold.backend

    def __init__(self, keys: KeysCollection = "pred", threshold: float = 0.4, channel: int = 1, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.t = LungThreshold(threshold, channel)

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = self.t(d[k])
        return d


class MorphOpening(Transform):
    """Binary morphological opening of each channel of a ``(C, X, Y)`` mask with a disk of ``radius`` pixels
    (``radius <= 0``: unchanged). Removes thin bridges and specks before component selection."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, radius: int = 3):
        self.radius = int(radius)

    def __call__(self, img):
        if self.radius <= 0:
            return img
        from scipy.ndimage import binary_opening
        from skimage.morphology import disk

        arr = np.asarray(convert_to_tensor(img, track_meta=False).detach().cpu().numpy()) > 0
        fp = disk(self.radius)
        out = np.stack([binary_opening(c, structure=fp) for c in arr]).astype(np.float32)
        return convert_to_dst_type(out, img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]


class MorphOpeningd(MapTransform):
    """Dictionary twin of :class:`MorphOpening`."""

    backend = MorphOpening.backend

    def __init__(self, keys: KeysCollection = "pred", radius: int = 3, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.t = MorphOpening(radius)

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            d[k] = self.t(d[k])
        return d


def lung_box(mask) -> list[float] | None:
    """``xyxy`` box ``[col_min, row_min, col_max + 1, row_max + 1]`` of the non-zero pixels of a ``(1, X, Y)`` or
    ``(X, Y)`` mask, or ``None`` when it is empty."""
    arr = np.asarray(convert_to_tensor(mask, track_meta=False).detach().cpu().numpy())
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim == 3 else arr
    xs, ys = np.nonzero(arr > 0)
    if xs.size == 0:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


class LungBox(Transform):
    """Mask ``(1, X, Y)`` → ``xyxy`` float tensor ``(4,)`` of the lungs' bounding box, or an empty ``(0,)`` tensor."""

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, mask) -> torch.Tensor:
        b = lung_box(mask)
        return torch.tensor(b if b is not None else [], dtype=torch.float32)


class LungBoxd(MapTransform):
    """Adds ``box_key`` (``xyxy`` list of 4 floats, or ``[]``) and ``found_key`` (bool) computed from ``keys``; with
    ``result_keys`` (default) also ``result_columns`` ``{box_key: JSON or "", found_key: bool}`` so that
    ``cadpipe score`` puts the box in ``results.csv`` (see :mod:`cadpipe.pipelines.inference.bundle_runner`)."""

    backend = LungBox.backend

    def __init__(self, keys: KeysCollection = "pred", box_key: str = "lung_box", found_key: str = "lung_found",
                 result_keys: bool = True, allow_missing_keys=False):
        super().__init__(keys, allow_missing_keys)
        self.box_key, self.found_key, self.result_keys = box_key, found_key, bool(result_keys)

    def __call__(self, data):
        d = dict(data)
        for k in self.key_iterator(d):
            b = lung_box(d[k])
            d[self.box_key] = b if b is not None else []
            d[self.found_key] = b is not None
            if self.result_keys:
                cols = {self.box_key: json.dumps(b) if b is not None else "", self.found_key: b is not None}
                d["result_columns"] = {**dict(d.get("result_columns") or {}), **cols}
        return d


# ------------------------------------------------------------------------------------------------------ lung crop
_BUNDLES: dict[tuple, tuple] = {}
_BUNDLES_LOCK = threading.Lock()


def load_lung_bundle(bundle_path: str, device: str | torch.device = "cpu", overrides: Mapping | None = None,
                     ckpt_name: str = "model.pt") -> tuple:
    """``(preprocessing, network, postprocessing)`` of a trained lung segmentation bundle, built once per
    ``(bundle_path, device, overrides)`` and cached: ``configs/inference.json`` through MONAI ``ConfigParser`` with
    ``bundle_root`` = ``bundle_path``, weights from ``models/<ckpt_name>`` (a plain ``state_dict``), network in eval mode.

    Raises:
        CadpipeInputError: no ``configs/inference.json`` or no weights in the bundle.
    """
    from monai.bundle import ConfigParser

    bundle_path = os.path.abspath(os.fspath(bundle_path))
    key = (bundle_path, str(device), tuple(sorted((k, repr(v)) for k, v in dict(overrides or {}).items())), ckpt_name)
    with _BUNDLES_LOCK:
        if key in _BUNDLES:
            return _BUNDLES[key]
        cfg = os.path.join(bundle_path, "configs", "inference.json")
        ckpt = os.path.join(bundle_path, "models", ckpt_name)
        if not os.path.isfile(cfg):
            raise CadpipeInputError(bundle_path, "not a lung segmentation bundle: configs/inference.json missing")
        if not os.path.isfile(ckpt):
            raise CadpipeInputError(ckpt, "lung segmentation weights missing (train the lung bundle first)")
        parser = ConfigParser()
        parser.read_config(cfg)
        parser["bundle_root"] = bundle_path
        parser["device"] = f"$torch.device('{torch.device(device)}')"
        for k, v in dict(overrides or {}).items():
            parser[k] = v
        net = parser.get_parsed_content("network_def").to(torch.device(device))
        net.load_state_dict(torch.load(ckpt, map_location=torch.device(device), weights_only=True))
        net.eval()
        entry = (parser.get_parsed_content("preprocessing"), net, parser.get_parsed_content("postprocessing"))
        _BUNDLES[key] = entry
        return entry


class LungCrop(Transform):
    """Crop a chest radiograph ``(C, X, Y)`` to its lungs, found by a trained lung segmentation bundle.

    The bundle's preprocessing reads the image's source file (``meta["filename_or_obj"]``) when it exists, otherwise
    it runs on the given array (its loader skipped); its network and pure postprocessing give the lung mask and box in
    the source's pixels, which are scaled to the given image when it was already resized. The box is enlarged by
    ``margin`` (fraction of its width/height) plus ``margin_px`` pixels on each side and clipped to the image. When no
    lung is found, the whole image passes through (the thesis' fallback).

    Output meta: ``lung_found`` (bool), ``lung_box`` (``xyxy`` in the input's pixels; four NaNs when none, so that
    items with and without lungs still collate into one batch), ``lung_crop_box`` (the region kept, ``xyxy``). The
    crop is a MONAI ``SpatialCrop`` (affine updated).

    Args:
        bundle_path: folder of the lung segmentation bundle (``configs/inference.json``, ``models/model.pt``).
        margin: fraction of the box size added on each side. margin_px: pixels added on each side.
        device: where the lung network runs. overrides: config ids set on the bundle (e.g. ``{"image_size": 128}``).
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, bundle_path: str, margin: float = 0.05, margin_px: int = 0, device: str = "cpu",
                 overrides: Mapping | None = None):
        self.bundle_path, self.margin, self.margin_px = bundle_path, float(margin), int(margin_px)
        self.device, self.overrides = device, dict(overrides or {})

    def find_box(self, img) -> list[float] | None:
        """Lung box (``xyxy``) in ``img``'s pixels, or ``None``."""
        from monai.transforms import Compose

        pre, net, post = load_lung_bundle(self.bundle_path, self.device, self.overrides)
        src = _fname(img)
        if src and os.path.exists(src):
            item = pre({"image": src})
        else:
            rest = Compose(list(pre.transforms)[1:])
            # a fresh MetaTensor: earlier operations on ``img`` must not be inverted by the bundle's Invertd
            x = MetaTensor(convert_to_tensor(img, track_meta=False)[:1].clone().float(),
                           meta=dict(getattr(img, "meta", None) or {}))
            item = rest({"image": x})
        with torch.no_grad():
            item["pred"] = net(item["image"][None].to(torch.device(self.device)))[0].cpu()
        res = post(item)
        box = lung_box(res["pred"])
        if box is None:
            return None
        sx = img.shape[1] / res["pred"].shape[1]
        sy = img.shape[2] / res["pred"].shape[2]
        return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]

    def __call__(self, img):
        from monai.transforms import SpatialCrop

        nx, ny = int(img.shape[1]), int(img.shape[2])
        box = self.find_box(img)
        if box is None:
            crop, out = [0, 0, nx, ny], img
            logger.info("no lung found in %s: whole image kept", _fname(img) or "image")
        else:
            w, h = box[2] - box[0], box[3] - box[1]
            mx, my = self.margin * w + self.margin_px, self.margin * h + self.margin_px
            crop = [max(0, int(np.floor(box[0] - mx))), max(0, int(np.floor(box[1] - my))),
                    min(nx, int(np.ceil(box[2] + mx))), min(ny, int(np.ceil(box[3] + my)))]
            out = SpatialCrop(roi_start=crop[:2], roi_end=crop[2:])(img)
        if isinstance(out, MetaTensor):
            out.meta["lung_found"] = box is not None
            out.meta["lung_box"] = [float("nan")] * 4 if box is None else [float(v) for v in box]
            out.meta["lung_crop_box"] = [float(v) for v in crop]
        return out


class LungCropd(MapTransform):
    """Dictionary twin of :class:`LungCrop`: the lungs are found on ``source_key`` (default the first key) and the
    same region is cropped from every key; ``lung_box``, ``lung_found`` and ``lung_crop_box`` are also set in the
    dict (and in each cropped image's meta).

    For batch scoring it also fills the documented result keys of :mod:`cadpipe.pipelines.inference.bundle_runner`
    (``result_columns``: ``lung_found``, ``lung_crop_fallback`` (True when the whole image was kept),
    ``lung_box`` and ``lung_crop_box`` as JSON ``[col_min, row_min, col_max, row_max]`` in the loaded input's pixels
    (``lung_box`` is ``""`` when no lung was found); ``result_notes``: one sentence for the report), which
    ``cadpipe score`` turns into ``results.csv`` columns and report lines. ``result_keys=False`` leaves them out."""

    backend = LungCrop.backend

    def __init__(self, keys: KeysCollection, bundle_path: str, margin: float = 0.05, margin_px: int = 0,
                 device: str = "cpu", overrides: Mapping | None = None, source_key: str | None = None,
                 result_keys: bool = True, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.cropper = LungCrop(bundle_path, margin, margin_px, device, overrides)
        self.source_key = source_key or self.keys[0]
        self.result_keys = bool(result_keys)

    def __call__(self, data):
        from monai.transforms import SpatialCrop

        d = dict(data)
        src = self.cropper(d[self.source_key])
        meta = src.meta if isinstance(src, MetaTensor) else {}
        crop = [int(v) for v in meta.get("lung_crop_box", [])]
        for k in self.key_iterator(d):
            if k == self.source_key:
                d[k] = src
            elif crop:
                d[k] = SpatialCrop(roi_start=crop[:2], roi_end=crop[2:])(d[k])
        for name in ("lung_box", "lung_found", "lung_crop_box"):
            d[name] = meta.get(name)
        if self.result_keys:
            found = bool(meta.get("lung_found"))
            box = [round(float(v), 1) for v in meta.get("lung_box", [])] if found else []
            cols = {"lung_found": found, "lung_crop_fallback": not found,
                    "lung_box": json.dumps(box) if found else "", "lung_crop_box": json.dumps(crop)}
            d["result_columns"] = {**dict(d.get("result_columns") or {}), **cols}
            note = (f"Lung crop: lungs found, box (col, row) {box[:2]} to {box[2:]} px; the classifier saw the "
                    f"region {crop[:2]} to {crop[2:]}." if found else
                    "Lung crop: no lung region found, the whole image was classified (fallback).")
            d["result_notes"] = list(d.get("result_notes") or []) + [note]
        return d
