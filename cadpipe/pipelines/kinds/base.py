"""The interface of a task kind, and the per-unit record its methods fill.

A kind (classification, multi-label, segmentation, detection) owns everything that differs between kinds of task:
how a postprocessed item becomes the unit's ``results.csv`` columns and calls, the unit's files (overlay, heat
maps, mask, boxes), its report section (findings and captions), what its DICOM SR says, whether the batched
scoring path applies, what MONAI Label serves it as. The bundle declares its kind once, ``metadata.json``
``cadpipe.task``; :mod:`cadpipe.pipelines.kinds.registry` maps that name to the kind.

Kinds work on the objects they are given (the :class:`~cadpipe.pipelines.inference.bundle_runner.BundleRunner`,
the unit, the items): they sit below inference in the layers and import only ``outputs`` and ``transforms``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TaskKind", "UnitOutputs", "display_image", "original_image", "on_input_grid", "mammogram_mirrored",
           "explained_class"]


@dataclass
class UnitOutputs:
    """One scored unit's outputs while they are written: what a kind's :meth:`TaskKind.write_unit` reads and adds to.

    ``row``: the unit's ``results.csv`` columns (the kind may add some); ``outputs``: its files, relative to
    ``out_dir`` (``overlays`` in caption order); ``findings`` / ``captions``: its report section; ``extra``: journal
    keys the report reads (``_task``, ``_thresholds``); ``info``: the bundle's ``name``, ``version``,
    ``model_sha256`` and the run's ``plain_images`` / ``dicom_results``."""

    runner: Any
    unit: Any
    pre_item: dict
    out: dict
    row: dict
    folder: str
    prefix: str
    out_dir: str
    info: dict
    outputs: dict = field(default_factory=lambda: {"overlays": []})
    findings: list = field(default_factory=list)
    captions: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def path(self, suffix: str) -> str:
        """``<folder>/<prefix>_<suffix>``: where the unit's file ``suffix`` goes."""
        return os.path.join(self.folder, f"{self.prefix}_{suffix}")

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.out_dir)

    def add_overlay(self, path: str, caption: str) -> None:
        """Record an overlay picture written at ``path`` and what it shows."""
        self.outputs["overlays"].append(self.rel(path))
        self.captions.append(caption)

    def warn(self, note: str) -> None:
        """Add ``note`` to the row's ``warnings`` column (``; ``-separated, each note once)."""
        current = str(self.row.get("warnings") or "")
        if note not in current.split("; "):
            self.row["warnings"] = f"{current}; {note}" if current else note


class TaskKind:
    """What one kind of task does differently. Subclasses set the attributes and implement the methods.

    Attributes:
        name: the ``cadpipe.task`` value of a bundle's ``metadata.json``.
        monailabel_type: the MONAI Label inference type that serves it (the bundle folder's name must say it).
        heatmaps: whether scoring draws Grad-CAM heat maps (with the bundle's ``cam_layers``).
        batched_output: what the batched scoring path gives per item: ``"probabilities"`` (activation batched on
            the device), ``"label_map"`` (activation batched, then inverted to the input's grid per item) or None
            (no batched path: the bundle's chain runs per item).
        thresholds: whether training chooses per-class operating thresholds.
    """

    name = ""
    monailabel_type = "segmentation"
    heatmaps = False
    batched_output: str | None = None
    thresholds = False

    # -- inference ------------------------------------------------------------------------------------------
    def build_detector(self, parser):
        """The bundle's detector (an object with its own forward, anchors and NMS), or None: the network alone."""
        return None

    def columns(self, runner, out: dict) -> dict:
        """The ``results.csv`` columns of one postprocessed item (``out["pred"]`` as the bundle contract says)."""
        raise NotImplementedError

    def batched_unsupported(self, spatial_dims: int) -> str | None:
        """Why a bundle of this kind has no batched scoring path (None: its chains decide)."""
        if self.batched_output is None:
            return f"task {self.name!r} has no batched preprocessing"
        return None

    def cam_classes(self, runner, probs) -> list[int]:
        """Classes that get a heat map of their own beside the unit's one (none by default)."""
        return []

    # -- outputs --------------------------------------------------------------------------------------------
    def write_unit(self, u: UnitOutputs) -> None:
        """Write the unit's files atomically into ``u.folder`` and fill its findings, captions and extra keys."""
        raise NotImplementedError

    def sr_content(self, row: dict, outputs: dict, out_dir: str, bundle: dict) -> dict:
        """What the unit's DICOM SR reports: keyword arguments of
        :func:`cadpipe.pipelines.outputs.dicom_sr.build_measurement_report` (none: the SR names the algorithm only)."""
        return {}


def display_image(runner, pre_item: dict, like: np.ndarray | None) -> np.ndarray:
    """The preprocessed image mapped back to the input geometry (for overlays), channel axis dropped."""
    import torch

    if pre_item.get("_display") is not None:  # batched scoring: already mapped back (scoring/batched.py)
        arr = np.asarray(torch.as_tensor(pre_item["_display"]).detach().cpu().float())
    else:
        img = pre_item["image"]
        try:
            inv = runner.preprocessing.inverse({"image": img.clone() if hasattr(img, "clone") else img})["image"]
            arr = np.asarray(torch.as_tensor(inv).detach().cpu().float())
        except Exception:  # noqa: BLE001 - not invertible: show the preprocessed image
            arr = np.asarray(torch.as_tensor(img).detach().cpu().float())
    # drop the channel axis: one more axis than the mask (a volume scored slice-wise by a 2D bundle has
    # spatial_dims 2 but a 3D mask), or than the bundle's spatial dims when there is no mask
    arr = arr.mean(0) if arr.ndim == (like.ndim if like is not None else runner.spatial_dims) + 1 else arr
    if like is not None and arr.shape != like.shape:
        arr = torch.nn.functional.interpolate(torch.as_tensor(arr)[None, None], size=like.shape,
                                              mode="bilinear" if like.ndim == 2 else "trilinear")[0, 0].numpy()
    return arr


def original_image(runner, unit, pre_item: dict, colour: bool = False) -> np.ndarray | None:
    """The input image as loaded (its own pixel grid and aspect ratio, before any resizing: what the report
    shows): grey with the channel axis dropped, or ``(3, X, Y)`` for a colour 2D image when ``colour`` (a
    histology photo stays in colour); None when it cannot be loaded again."""
    try:
        from cadpipe.transforms import LoadStudyImage

        arr = np.asarray(LoadStudyImage(mode="keep" if colour else "gray")(unit.image))
        if colour and arr.ndim == 3 and arr.shape[0] == 3:
            return arr
        if colour:
            arr = np.asarray(LoadStudyImage(mode="gray")(unit.image))
        return arr[0] if arr.ndim == getattr(runner, "spatial_dims", 2) + 1 or arr.shape[0] == 1 else arr
    except Exception:  # noqa: BLE001 - the overlay then uses the preprocessed image
        return None


def on_input_grid(runner, pre_item: dict, heat: np.ndarray, original: np.ndarray | None) -> np.ndarray:
    """A heat map computed on the model's input, mapped onto the original image's grid: through the inverse of
    the bundle's preprocessing where it is invertible (crops, flips, resizes), else resized to the original."""
    if original is None:
        return heat
    img = pre_item.get("image")
    try:
        from monai.data import MetaTensor

        if isinstance(img, MetaTensor) and img.applied_operations:
            import copy

            import torch

            mt = MetaTensor(torch.as_tensor(np.asarray(heat, dtype=np.float32))[None], meta=copy.deepcopy(img.meta),
                            applied_operations=copy.deepcopy(img.applied_operations))
            inv = np.asarray(torch.as_tensor(runner.preprocessing.inverse({"image": mt})["image"]).float())
            spatial = original.shape[-inv.ndim + 1:] if inv.ndim > 1 else original.shape
            inv = inv[0] if inv.ndim == len(spatial) + 1 else inv
            if inv.shape == tuple(spatial):
                return inv
    except Exception:  # noqa: BLE001 - not invertible: resized below
        pass
    return heat


def mammogram_mirrored(image: np.ndarray | None, patient: dict) -> bool:
    """Whether to show a mammogram mirrored so that, hung as read (right breast on the screen's left, left breast on
    its right, back to back), its chest wall is at the middle: a right breast's chest wall on the picture's right
    edge, a left breast's on its left edge. The chest wall is the brighter side (more tissue) of the image.
    False for anything that is not a 2D mammogram with a known laterality."""
    info = patient or {}
    side = str(info.get("ImageLaterality", "") or info.get("Laterality", "") or "").strip().upper()[:1]
    if image is None or np.ndim(image) != 2 or side not in ("L", "R") or str(info.get("Modality", "")).upper() not in (
            "MG", ""):
        return False
    cols = np.asarray(image, dtype=np.float32).mean(axis=1)  # (X, Y): one mean per column
    third = max(1, cols.size // 3)
    wall_on_left = cols[:third].mean() > cols[-third:].mean()
    return wall_on_left if side == "R" else not wall_on_left


def explained_class(names: list[str], probs, predicted: str) -> int:
    """The class a single heat map explains when the bundle names no positive class: the most probable class
    among those ``predicted`` reports (``;``-joined for multi-label), else the most probable class."""
    shown = [n for n in str(predicted).split(";") if n in names]
    if shown:
        return names.index(max(shown, key=lambda n: probs[names.index(n)]))
    return int(np.argmax(probs))
