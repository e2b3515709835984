"""A 2D segmentation bundle's postprocessing for batched scoring: :func:`plan_segmentation_postprocessing` and
:class:`BatchedSegmentationPostprocessing`.

With batched preprocessing (:mod:`cadpipe.pipelines.inference.batched_preprocess`) the preprocessed images are a
plain ``(B, 1, X, Y)`` batch: no MetaTensor carries the applied operations that the bundle's ``Invertd`` reads.
The postprocessing is therefore split: the activation runs batched on the device, then, per item, the inverse of
the preprocessing's ``Resized`` (back to that item's input size) by the same MONAI function ``Invertd`` ends up in
(``Resize.inverse_transform`` with the recorded original size, mode, ``align_corners`` and dtype; ``nearest``
when the ``Invertd`` says ``nearest_interp``), and the bundle's remaining transforms on ``{"pred": ...}``.

The planner reads the bundle's *instantiated* ``postprocessing`` Compose and accepts exactly this chain:

1. ``Activationsd(keys="pred", softmax=True)`` or ``sigmoid=True`` (no ``other``);
2. ``Invertd(keys="pred", transform=<the bundle's preprocessing>, orig_keys="image")`` without ``post_func``, the
   preprocessing's only invertible transform being one ``Resized`` (or none: the inversion is then the identity);
3. any transforms that do not depend on the preprocessing's applied operations: dictionary transforms acting on
   ``pred`` only (no second ``Invertd``, nothing reading the preprocessed ``image``, no transform of the whole
   item).

Anything else makes it return ``(None, reason)`` and scoring keeps the per-item path (logging the reason).

Each item's ``pred`` after the inversion is a MetaTensor like the per-item path's: the probabilities at the input's
``(X, Y)`` size, with the metadata scoring reads, derived from the decoded file
(:class:`~cadpipe.transforms.readers.io_raw.RawImage`): ``affine`` and ``original_affine`` (the reader's, which the
per-item inversion restores), ``spatial_shape``, ``filename_or_obj``, ``format``, ``spacing_known``,
``geometry_note``, ``space``. The reader's other metadata (DICOM tags) is not carried: a remaining transform that
reads it refuses or differs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cadpipe.pipelines.inference.batched_preprocess import flatten_compose
from cadpipe.transforms.readers.io_raw import RawImage

__all__ = ["BatchedSegmentationPostprocessing", "plan_segmentation_postprocessing"]


class BatchedSegmentationPostprocessing:
    """The activation for a batch (:meth:`activate`), then per item the inversion (:meth:`invert`) and the remaining
    transforms; :meth:`__call__` does all three.

    Args:
        activation: ``"softmax"`` or ``"sigmoid"``, over the channel axis.
        inverse: the preprocessing's ``Resize`` (whose ``inverse_transform`` maps back) and the recorded operation
            without its original size (``{"extra_info": {mode, align_corners, dtype, new_dim}}``), or None (no
            resize: nothing to invert).
        rest: the bundle's transforms after ``Invertd`` (a ``Compose``), run on ``{"pred": ...}``.
    """

    def __init__(self, activation: str, inverse: tuple[Any, dict] | None, rest):
        self.activation, self.inverse, self.rest = activation, inverse, rest

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, K, X, Y)`` logits → probabilities, on their device."""
        with torch.inference_mode():
            return torch.softmax(logits, dim=1) if self.activation == "softmax" else torch.sigmoid(logits)

    def invert(self, image: torch.Tensor, raw: RawImage):
        """One item ``(K, X, Y)`` at the network's size → a MetaTensor at the input's size with the input's
        geometry (see the module docstring), on the same device."""
        from monai.data import MetaTensor
        from monai.utils import TraceKeys

        rows, cols = raw.pixels.shape[-2:]
        size = (int(cols), int(rows))  # MONAI's (X, Y) of the loaded image: the size the Resized recorded
        with torch.inference_mode():
            if self.inverse is not None and tuple(image.shape[1:]) != size:
                resizer, op = self.inverse
                image = resizer.inverse_transform(image, {**op, TraceKeys.ORIG_SIZE: size})
            data = image.as_tensor() if isinstance(image, MetaTensor) else image
            return MetaTensor(data.float(), meta=_input_meta(raw, size))

    def __call__(self, logits: torch.Tensor, raws: list[RawImage]) -> list[dict]:
        """The postprocessed items for a batch's logits ``(B, K, X, Y)`` of the decoded images ``raws``."""
        probs = self.activate(logits)
        return [self.rest({"pred": self.invert(p, raw)}) for p, raw in zip(probs, raws)]


def _input_meta(raw: RawImage, size: tuple[int, int]) -> dict:
    """The metadata of the per-item path's inverted ``pred`` that scoring reads, from the decoded file."""
    from monai.utils import MetaKeys, SpaceKeys

    affine = torch.as_tensor(np.eye(4) if raw.affine is None else np.asarray(raw.affine, dtype=np.float64))
    return {MetaKeys.AFFINE: affine, MetaKeys.ORIGINAL_AFFINE: affine.clone(),
            MetaKeys.SPATIAL_SHAPE: torch.as_tensor(size), MetaKeys.SPACE: SpaceKeys.RAS,
            "filename_or_obj": raw.path, "format": raw.format, "spacing_known": raw.spacing_known,
            "geometry_note": raw.geometry_note}


def plan_segmentation_postprocessing(postprocessing, preprocessing) -> tuple[
        BatchedSegmentationPostprocessing | None, str | None]:
    """``(plan, None)`` when the bundle's ``postprocessing`` (an instantiated MONAI ``Compose``) is the chain of the
    module docstring, inverting ``preprocessing``; else ``(None, reason)``."""
    from monai.transforms import Activationsd, Compose, InvertibleTransform, Invertd, MapTransform, Resized
    from monai.utils import TraceKeys

    if not isinstance(postprocessing, Compose):
        return None, f"postprocessing is a {type(postprocessing).__name__}, not a Compose"
    steps = flatten_compose(postprocessing)
    if len(steps) < 2 or not isinstance(steps[0], Activationsd) or not isinstance(steps[1], Invertd):
        names = [type(t).__name__ for t in steps[:2]]
        return None, f"postprocessing starts with {names} (batched: Activationsd, then Invertd)"
    act, inv = steps[0], steps[1]
    if list(act.keys) != ["pred"] or act.other[0] is not None or bool(act.softmax[0]) == bool(act.sigmoid[0]):
        return None, "Activationsd is not one softmax or sigmoid on 'pred'"
    if act.converter.kwargs.get("dim", 0) != 0:
        return None, "Activationsd over another axis than the channels"
    activation = "softmax" if act.softmax[0] else "sigmoid"
    if list(inv.keys) != ["pred"] or list(inv.orig_keys) != ["image"]:
        return None, f"Invertd keys {list(inv.keys)} orig_keys {list(inv.orig_keys)} (batched: 'pred' from 'image')"
    if inv.transform is not preprocessing:
        return None, "Invertd inverts another transform than the bundle's preprocessing"
    if inv.post_func[0] is not None:
        return None, "Invertd with a post_func"
    invertible = [t for t in flatten_compose(preprocessing) if isinstance(t, InvertibleTransform)]
    inverse = None
    if invertible:
        if len(invertible) > 1 or not isinstance(invertible[0], Resized):
            return None, (f"the preprocessing's invertible transforms {[type(t).__name__ for t in invertible]} "
                          "(batched: one Resized)")
        resized = invertible[0]
        resizer, mode, align = resized.resizer, resized.mode[0], resized.align_corners[0]
        dtype = str(torch.float32 if resizer.dtype is None else resizer.dtype).replace("torch.", "")
        op = {TraceKeys.CLASS_NAME: "Resize", TraceKeys.EXTRA_INFO: {
            "mode": mode, "align_corners": TraceKeys.NONE if align is None else align, "dtype": dtype,
            "new_dim": 0}}
        if inv.nearest_interp[0]:
            from monai.transforms.utils import convert_applied_interp_mode

            op = convert_applied_interp_mode([op], mode="nearest", align_corners=None)[0]
        inverse = (resizer, op)
    rest = steps[2:]
    for t in rest:
        name = f"{type(t).__module__}.{type(t).__name__}"
        if isinstance(t, Invertd):
            return None, f"a second Invertd ({name}) after the first"
        if not isinstance(t, MapTransform):
            return None, f"{name} transforms the whole item (batched: dictionary transforms on 'pred')"
        if list(t.keys) != ["pred"]:
            return None, f"{name} acts on keys {list(t.keys)} (batched: 'pred' only)"
    return BatchedSegmentationPostprocessing(activation, inverse, Compose(rest)), None

