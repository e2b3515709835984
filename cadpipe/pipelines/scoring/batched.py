"""Scoring with batched preprocessing: DataLoader workers only decode, the rest runs per batch on the model's device.

Used by :func:`cadpipe.pipelines.scoring.score.process_units` when the bundle's preprocessing has a batched plan
(:meth:`BundleRunner.batched_preprocessing`):

- :class:`RawUnitDataset`: one :class:`~cadpipe.transforms.readers.io_raw.RawImage` per unit (the file decoded, as stored);
  failures come back as values, as in the per-item dataset;
- :func:`collate_raw` (in the worker): the pixels of a chunk's same-shape images stacked into one tensor, so a chunk
  crosses to the scoring process as one shared-memory segment instead of one pickled array per image;
- :func:`forward_raw`: plan → device batch ``(B, 1, X, Y)``, the forward in the runner's precision and layout, the
  bundle's activation batched on the device (:meth:`BundleRunner.batched_postprocessing`; else the bundle's
  postprocessing item by item), Grad-CAM maps for the batch when asked; one copy of the probabilities (and, when an
  overlay will be drawn, of the small preprocessed images) back to the host. Segmentation bundles: the activation
  batched, then per item the inverse resize to the input's size and the bundle's remaining steps
  (:mod:`cadpipe.pipelines.inference.batched_segmentation`).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from cadpipe.transforms.readers.io_raw import RawImage

__all__ = ["RawUnitDataset", "collate_raw", "iter_raw", "forward_raw"]


class RawUnitDataset(torch.utils.data.Dataset):
    """``(index, RawImage | None, error | None, seconds)`` per unit, decoded by ``decode(path)``."""

    def __init__(self, units: list, decode: Callable[[str], RawImage], reason: Callable):
        self.units, self.decode, self.reason = units, decode, reason

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, i: int):
        t0 = time.perf_counter()
        if getattr(self.units[i], "error", ""):  # refused by discovery (a link leaving the input...): not loaded
            from cadpipe.errors import CadpipeInputError

            return i, None, str(CadpipeInputError(self.units[i].image, self.units[i].error)), 0.0
        try:
            return i, self.decode(self.units[i].image), None, time.perf_counter() - t0
        except Exception as err:  # noqa: BLE001 - becomes an error row
            return i, None, self.reason(self.units[i], err), time.perf_counter() - t0


def collate_raw(chunk: list) -> list:
    """Worker side: ``(index, RawImage, error, seconds)`` records with the pixels of same-shape, same-dtype images
    stacked into one tensor (one shared-memory segment per group); :func:`iter_raw` undoes it."""
    groups: dict[tuple, list[int]] = {}
    for j, (_, raw, _, _) in enumerate(chunk):
        if raw is not None:
            groups.setdefault((raw.pixels.dtype.str, raw.pixels.shape), []).append(j)
    stacks = []
    for members in groups.values():
        stack = torch.from_numpy(np.stack([chunk[j][1].pixels for j in members]))
        for k, j in enumerate(members):
            chunk[j][1].pixels = None  # travels in the stack
        stacks.append((members, stack))
    return [chunk, stacks]


def iter_raw(loader, collated: bool):
    """``(index, RawImage, error, seconds)`` per unit from a loader (of :func:`collate_raw` chunks when
    ``collated``); pixels become views of the chunk's stacks (no copy)."""
    for chunk in loader:
        if not collated:
            yield from chunk
            continue
        records, stacks = chunk
        for members, stack in stacks:
            for k, j in enumerate(members):
                records[j][1].pixels = stack[k]
        yield from records


def forward_raw(runner, plan, raws: list[RawImage], need_images: bool, heatmaps: bool) -> list[tuple[dict, dict]]:
    """``[(pre_item, out)]`` for decoded images ``raws`` of one batch: ``pre_item`` holds the preprocessed image on
    the host (``(1, X, Y)``, only with ``need_images``) and the Grad-CAM map (``_heatmap``, with ``heatmaps``);
    ``out`` the postprocessed ``pred``. Segmentation: see :func:`_segment`. Raises on any failure (the caller
    retries image by image)."""
    x = plan(raws, runner.device)
    logits = runner.forward_batch(x)
    if runner.kind.batched_output == "label_map":  # segmentation (cadpipe.pipelines.kinds)
        seg = runner.batched_segmentation_postprocessing()
        if seg is None:  # the plan came from elsewhere (_start_loading decides as the runner does)
            raise RuntimeError("batched scoring of a segmentation bundle without a batched postprocessing")
        return _segment(seg, x, logits, raws)
    post = runner.batched_postprocessing()
    if post is not None:
        with torch.inference_mode():
            preds = post(logits).float().cpu().numpy()  # one copy to the host; rows are numpy views
        outs = [{"pred": p} for p in preds]
    else:
        preds = logits.cpu()
        outs = [runner.postprocessing({"pred": p}) for p in preds]
    maps = None
    if heatmaps:
        try:  # one batched Grad-CAM pass; on failure _finish_unit computes each map from the host image
            maps = runner._cam(x, runner.cam_class())
        except Exception:  # noqa: BLE001
            maps, need_images = None, True
    images = x.cpu() if need_images else [None] * len(raws)
    pres = []
    for j in range(len(raws)):
        pre = {"image": images[j]}
        if maps is not None:
            pre["_heatmap"] = maps[j]
        pres.append(pre)
    return list(zip(pres, outs))


def _segment(seg, x: torch.Tensor, logits: torch.Tensor, raws: list[RawImage]) -> list[tuple[dict, dict]]:
    """Segmentation: the activation batched on the device, then per item the inversion to the input's size and the
    bundle's remaining steps
    (:class:`~cadpipe.pipelines.inference.batched_segmentation.BatchedSegmentationPostprocessing`).
    ``pre_item``: for the overlay (always drawn for segmentation), the preprocessed image mapped back to the input's
    size by the same inversion (``_display``, ``(1, X0, Y0)`` on the host), as the per-item path's overlay shows it."""
    outs = seg(logits, raws)
    pres = [{"_display": seg.invert(x[j], raw).as_tensor().cpu()} for j, raw in enumerate(raws)]
    return list(zip(pres, outs))
