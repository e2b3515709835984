"""Segmentation pipeline pieces used by ``bundles/brain_mri_tumor_segmentation``.

- datalists for the two layouts (``lgg``: kaggle_3m TIFF slices, ``nifti``: MSD volumes), patient/case-level splits;
- small transforms (label mapping, channel matching, crop size / trailing-dim handling for 2D training on volumes);
- ``SegInferer``: whole 2D slices with ``SlidingWindowInferer``, 3D volumes slice by slice with ``SliceInferer``
  (2D network) or 3D sliding window (``spatial_dims=3``);
- metrics: Dice per volume, mean Dice over slices with tumour, HD95, predicted / true volume in mL;
  per-case CSV + ``metrics.json`` writers (``SegmentationMetricsWriter`` ignite handler);
- ``SaveMontaged``: PNG montage of the input slices with the predicted contour (red) and, when given, the truth (green).
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch

from cadpipe.errors import CadpipeInputError

__all__ = [
    "train_datalist",
    "inference_datalist",
    "MapLabeld",
    "MatchChannelsd",
    "SqueezeTrailingd",
    "crop_size",
    "make_loss",
    "SegInferer",
    "volume_metrics",
    "write_metrics",
    "SegmentationMetricsWriter",
    "SaveMaskd",
    "SaveMontaged",
    "montage",
]


# ----------------------------------------------------------------------------------------------------------- data
def _layout(dataset_dir: str, layout: str) -> str:
    if layout in ("lgg", "nifti"):
        return layout
    if layout != "auto":
        raise CadpipeInputError(dataset_dir, f"unknown dataset_layout {layout!r} (use 'lgg', 'nifti' or 'auto')")
    from cadpipe.data.lgg import is_lgg_layout

    return "lgg" if is_lgg_layout(dataset_dir) else "nifti"


def train_datalist(
    dataset_dir: str, layout: str = "lgg", split: str = "train", val_fraction: float = 0.2,
    test_fraction: float = 0.0, seed: int = 0,
) -> list[dict]:
    """Labelled datalist of one seeded split ("train", "val", "test" or "all").

    LGG: one item per slice, patient-level split. NIfTI (MSD): one item per volume, case-level split
    (``test`` = ``val`` for MSD, which keeps its own unlabelled ``imagesTs``).
    """
    layout = _layout(dataset_dir, layout)
    if layout == "lgg":
        from cadpipe.data.lgg import lgg_datalist

        return lgg_datalist(dataset_dir, split, val_fraction, test_fraction, seed)
    from cadpipe.data.msd import msd_datalist, split_cases

    items = msd_datalist(dataset_dir)
    if split == "all":
        return items
    return split_cases(items, val_fraction, seed)["val" if split == "test" else split]


def inference_datalist(dataset_dir: str, layout: str = "auto") -> list[dict]:
    """Every case to segment: LGG slices (``{"image", "patient", "slice"}``) or NIfTI volumes (``{"image", "case"}``)."""
    layout = _layout(dataset_dir, layout)
    if layout == "lgg":
        from cadpipe.data.lgg import lgg_datalist

        return lgg_datalist(dataset_dir, None, with_label=False)
    from cadpipe.data.msd import msd_inference_list

    return msd_inference_list(dataset_dir)


# ----------------------------------------------------------------------------------------------------- transforms
def _filename(x) -> str:
    meta = getattr(x, "meta", {}) or {}
    return str(meta.get("filename_or_obj", ""))


class MapLabeld:
    """Map label values to training classes, in place, for keys present in the item.

    ``mapping=None`` (default): any non-zero label (MSD tumour sub-labels 1/2/3, LGG masks 255) → 1.
    A dict ``{source_value: target_class}`` maps listed values and sets all others to 0.
    A multi-channel mask (an RGB mask TIFF) is reduced to one channel by its maximum first.
    Shapes: ``(C, *spatial)`` → ``(1, *spatial)``.
    """

    def __init__(self, keys: str | Sequence[str], mapping: Mapping | None = None, allow_missing_keys: bool = True):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.mapping = None if mapping is None else {float(k): int(v) for k, v in dict(mapping).items()}
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, data):
        d = dict(data)
        for k in self.keys:
            if k not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(k)
            lab = d[k]
            if lab.shape[0] > 1:
                lab = lab.max(dim=0, keepdim=True).values if isinstance(lab, torch.Tensor) else lab.max(0, keepdims=True)
            if self.mapping is None:
                out = lab > 0
            else:
                out = lab * 0
                for src, dst in self.mapping.items():
                    out = out + (lab == src) * dst
            d[k] = out.to(torch.float32) if isinstance(out, torch.Tensor) else out.astype(np.float32)
        return d


class MatchChannelsd:
    """Give ``key`` exactly ``channels`` channels: a one-channel image is repeated (a single FLAIR volume or a grey
    PNG fed to the 3-channel LGG model), a matching one is kept, anything else raises ``CadpipeInputError``.
    Shapes: ``(1 or channels, *spatial)`` → ``(channels, *spatial)``."""

    def __init__(self, keys: str | Sequence[str], channels: int):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.channels = int(channels)

    def __call__(self, data):
        d = dict(data)
        for k in self.keys:
            img = d[k]
            c = img.shape[0]
            if c == self.channels:
                continue
            if c == 1:
                d[k] = img.repeat(self.channels, *([1] * (img.ndim - 1)))
                continue
            raise CadpipeInputError(_filename(img), f"image has {c} channels but the network expects {self.channels}")
        return d


class SqueezeTrailingd:
    """Drop a trailing spatial axis of size 1 (the (X, Y, 1) patches cropped from volumes for a 2D network).
    Items that are already ``spatial_dims``-D pass through. Shapes: ``(C, X, Y, 1)`` → ``(C, X, Y)``."""

    def __init__(self, keys: str | Sequence[str], spatial_dims: int = 2):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data):
        d = dict(data)
        for k in self.keys:
            if k in d and d[k].ndim == self.spatial_dims + 2 and d[k].shape[-1] == 1:
                d[k] = d[k][..., 0]
        return d


def crop_size(roi_size: Sequence[int], layout: str, spatial_dims: int = 2) -> list[int]:
    """Training crop size: ``roi_size`` for 2D slices or a 3D network, ``roi_size + [1]`` (2D patches) from volumes."""
    roi = list(roi_size)[:spatial_dims]
    return roi + [1] if layout == "nifti" and spatial_dims == 2 else roi


class _OneHotBCE(torch.nn.Module):
    """Binary cross-entropy with logits on one-hot targets (``(B, C, ...)`` logits, ``(B, 1, ...)`` class indices)."""

    def __init__(self):
        super().__init__()
        self.bce = torch.nn.BCEWithLogitsLoss()

    def forward(self, logits, target):
        from monai.networks.utils import one_hot

        return self.bce(logits, one_hot(target.long(), num_classes=logits.shape[1]).to(logits.dtype))


def make_loss(name: str = "dicece") -> torch.nn.Module:
    """Loss by name: ``"dicece"`` (DiceCE, default), ``"dice"`` (Dice alone), ``"bce"`` (binary cross-entropy)."""
    from monai.losses import DiceCELoss, DiceLoss

    name = name.lower()
    if name == "dicece":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    if name == "dice":
        return DiceLoss(to_onehot_y=True, softmax=True)
    if name == "bce":
        return _OneHotBCE()
    raise ValueError(f"unknown loss {name!r}: use 'dicece', 'dice' or 'bce'")


# ---------------------------------------------------------------------------------------------------- inference
class SegInferer:
    """One inferer for slices and volumes.

    - input ``(B, C, X, Y)`` with a 2D network: ``SlidingWindowInferer`` over the whole slice;
    - input ``(B, C, X, Y, Z)`` with a 2D network: MONAI ``SliceInferer`` (slices along ``slice_axis``, 2 = Z);
    - input ``(B, C, X, Y, Z)`` with ``spatial_dims=3``: 3D ``SlidingWindowInferer``.

    ``sw_device`` is where patches run, ``device`` where the output is stitched (``"cpu"`` for large volumes).
    """

    def __init__(
        self, roi_size: Sequence[int], spatial_dims: int = 2, sw_batch_size: int = 4, overlap: float = 0.25,
        mode: str = "gaussian", sw_device=None, device=None, slice_axis: int = 2,
    ):
        from monai.inferers import SliceInferer, SlidingWindowInferer

        self.spatial_dims = spatial_dims
        roi = list(roi_size)[:spatial_dims]
        kw = dict(sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, sw_device=sw_device, device=device)
        self.window = SlidingWindowInferer(roi_size=roi, **kw)
        self.slices = SliceInferer(spatial_dim=slice_axis, roi_size=roi, **kw) if spatial_dims == 2 else None

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        n = inputs.ndim - 2
        if n == self.spatial_dims:
            return self.window(inputs, network, *args, **kwargs)
        if n == 3 and self.slices is not None:
            return self.slices(inputs, network, *args, **kwargs)
        raise CadpipeInputError(_filename(inputs), f"a {n}D image cannot be segmented by a {self.spatial_dims}D network")


# ------------------------------------------------------------------------------------------------------ metrics
def _spacing(affine, n: int) -> np.ndarray:
    a = np.asarray(affine if affine is not None else np.eye(n + 1), dtype=float)
    sp = np.sqrt((a[:-1, :-1] ** 2).sum(axis=0))
    return np.concatenate([sp, np.ones(max(0, n - len(sp)))])[:n]


def _dice(p: np.ndarray, t: np.ndarray) -> float:
    s = p.sum() + t.sum()
    return float("nan") if s == 0 else float(2.0 * np.logical_and(p, t).sum() / s)


def volume_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict:
    """Metrics of one case. ``pred``, ``truth``: binary arrays of the same spatial shape (2D slice or 3D volume,
    slices along the last axis); ``spacing``: voxel size in mm per axis.

    Returns ``dice`` (whole case; 1.0 when both are empty), ``dice_tumor_slices`` (mean over slices whose truth
    has tumour; volumes only), ``hd95_mm`` (nan when either is empty), ``pred_ml``, ``true_ml``.
    """
    from monai.metrics import compute_hausdorff_distance

    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != truth shape {t.shape}")
    spacing = np.asarray(spacing, dtype=float)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    dice = _dice(p, t)
    out = {"dice": 1.0 if np.isnan(dice) else dice}
    if p.ndim == 3:
        per = [_dice(p[..., k], t[..., k]) for k in range(t.shape[-1]) if t[..., k].any()]
        out["dice_tumor_slices"] = float(np.mean(per)) if per else float("nan")
    if p.any() and t.any():
        hd = compute_hausdorff_distance(
            torch.as_tensor(p[None, None]), torch.as_tensor(t[None, None]), include_background=True,
            percentile=95, spacing=spacing.tolist(),
        )
        out["hd95_mm"] = float(hd.item())
    else:
        out["hd95_mm"] = float("nan")
    out["pred_ml"] = float(p.sum()) * voxel_ml
    out["true_ml"] = float(t.sum()) * voxel_ml
    return out


def _nanmean(values) -> float | None:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def write_metrics(rows: list[dict], output_dir: str, extra: dict | None = None) -> dict:
    """Write ``output_dir/per_case_metrics.csv`` (one row per case) and ``output_dir/metrics.json`` (means over
    cases, NaNs skipped, plus ``extra``). Returns the summary dict."""
    os.makedirs(output_dir, exist_ok=True)
    keys = ["case", "n_slices", "dice", "dice_tumor_slices", "hd95_mm", "pred_ml", "true_ml"]
    with open(os.path.join(output_dir, "per_case_metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    summary = {"n_cases": len(rows)}
    for k in ("dice", "dice_tumor_slices", "hd95_mm", "pred_ml", "true_ml"):
        summary[f"mean_{k}"] = _nanmean(r.get(k) for r in rows)
    if rows:
        summary["mean_abs_volume_error_ml"] = _nanmean(abs(r["pred_ml"] - r["true_ml"]) for r in rows)
    summary.update(extra or {})
    with open(os.path.join(output_dir, "metrics.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _as_binary(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.shape[0] > 1:  # one-hot or probabilities → class map
        a = a.argmax(0)
    else:
        a = a[0]
    return a > 0


class SegmentationMetricsWriter:
    """Ignite handler for an evaluator whose decollated outputs hold ``pred`` and ``label`` (one-hot, probability
    or class maps, channel-first). Collects each case; at the end computes :func:`volume_metrics` and writes
    :func:`write_metrics`. LGG slices (items with ``patient`` and ``slice``) are stacked per patient in numeric slice
    order and scored as one volume; NIfTI volumes are scored as they are.

    Args:
        output_dir: where ``metrics.json`` and ``per_case_metrics.csv`` go.
        slice_thickness_mm: through-plane spacing for stacked 2D slices (LGG TIFFs carry no spacing; 1 mm assumed).
    """

    def __init__(self, output_dir: str, slice_thickness_mm: float = 1.0):
        self.output_dir = output_dir
        self.slice_thickness_mm = float(slice_thickness_mm)
        self.summary: dict | None = None
        self._reset()

    def _reset(self):
        self._slices = defaultdict(list)
        self._volumes = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self._reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _collect(self, engine) -> None:
        out, batch = engine.state.output, engine.state.batch
        outs, batches = (out, batch) if isinstance(out, list) else ([out], [batch])
        for item, b in zip(outs, batches):
            item = {**b, **item}  # the evaluator keeps extra keys (patient, slice, case) in the batch
            pred, label = _as_binary(item["pred"]), _as_binary(item["label"])
            affine = getattr(item["label"], "affine", None)
            affine = None if affine is None else np.asarray(affine)
            name = os.path.basename(_filename(item["image"])) or f"case_{len(self._volumes)}"
            if "patient" in item and "slice" in item and pred.ndim == 2:
                self._slices[str(item["patient"])].append((int(item["slice"]), pred, label, affine))
            else:
                self._volumes.append((item.get("case", name), pred, label, _spacing(affine, pred.ndim)))

    def rows(self) -> list[dict]:
        rows = []
        for patient, items in sorted(self._slices.items()):
            items.sort(key=lambda t: t[0])
            p = np.stack([t[1] for t in items], -1)
            t = np.stack([t[2] for t in items], -1)
            sp = np.append(_spacing(items[0][3], 2), self.slice_thickness_mm)
            rows.append({"case": patient, "n_slices": len(items), **volume_metrics(p, t, sp)})
        for name, p, t, sp in self._volumes:
            rows.append({"case": str(name), "n_slices": p.shape[-1] if p.ndim == 3 else 1, **volume_metrics(p, t, sp)})
        return rows

    def _write(self, engine) -> None:
        self.summary = write_metrics(self.rows(), self.output_dir)


# ------------------------------------------------------------------------------------------------------- montage
def montage(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None, max_slices: int = 16) -> np.ndarray:
    """RGB uint8 montage. ``image``: ``(X, Y)`` or ``(X, Y, Z)`` (MONAI axes, X = columns); ``pred``/``truth`` the
    same spatial shape. Volumes show up to ``max_slices`` slices, those with predicted/true tumour first in
    slice order, in a grid. Predicted contour red, true contour green."""
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, dtype=float)
    if img.ndim == 2:
        img, pred = img[..., None], np.asarray(pred)[..., None]
        truth = None if truth is None else np.asarray(truth)[..., None]
    pred = np.asarray(pred) > 0
    z = img.shape[-1]
    hot = [k for k in range(z) if pred[..., k].any() or (truth is not None and np.asarray(truth)[..., k].any())]
    ks = hot if hot else list(range(z))
    if len(ks) > max_slices:
        ks = [ks[i] for i in np.linspace(0, len(ks) - 1, max_slices).round().astype(int)]
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    tiles = []
    for k in ks:
        g = np.clip((img[..., k] - lo) / max(hi - lo, 1e-6), 0, 1).T  # rows = Y
        rgb = np.stack([g, g, g], -1)
        if truth is not None:
            rgb[find_boundaries(np.asarray(truth)[..., k].T > 0, mode="inner")] = (0, 1, 0)
        rgb[find_boundaries(pred[..., k].T, mode="inner")] = (1, 0, 0)
        tiles.append(rgb)
    ncol = int(np.ceil(np.sqrt(len(tiles))))
    nrow = int(np.ceil(len(tiles) / ncol))
    h, w = tiles[0].shape[:2]
    grid = np.zeros((nrow * h, ncol * w, 3))
    for i, t in enumerate(tiles):
        grid[(i // ncol) * h : (i // ncol + 1) * h, (i % ncol) * w : (i % ncol + 1) * w] = t
    return (grid * 255).astype(np.uint8)


def _stem(path: str) -> str:
    name = os.path.basename(path)
    for suf in (".nii.gz", ".nii", ".tiff", ".tif", ".png", ".jpg", ".jpeg", ".dcm"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return os.path.splitext(name)[0]


class SaveMaskd:
    """Writer: ``<output_dir>/<input stem>_<postfix>.nii.gz`` from ``key`` in the input's original geometry (the
    item's ``affine`` after ``Invertd``; 2D slices get that affine extended to 4x4). A label map ``(1, *spatial)`` is
    written as uint8; a probability map ``(C, *spatial)`` writes channel ``channel`` (the tumour) as float32.
    Returns the item unchanged; the written path is stored in ``item["<key>_path"]``."""

    def __init__(self, keys: str = "pred", output_dir: str = "./outputs", postfix: str = "seg", channel: int = 1,
                 image_key: str = "image"):
        self.key, self.output_dir, self.postfix, self.channel, self.image_key = keys, output_dir, postfix, channel, image_key

    def __call__(self, data):
        import nibabel as nib
        from monai.data.utils import to_affine_nd

        x = data[self.key]
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if arr.shape[0] == 1:
            arr = arr[0].astype(np.uint8)
        else:
            arr = arr[min(self.channel, arr.shape[0] - 1)].astype(np.float32)
        affine = getattr(x, "affine", None)
        affine = np.eye(arr.ndim + 1) if affine is None else np.asarray(affine, dtype=float)
        affine = to_affine_nd(3, affine)
        path = _filename(data.get(self.image_key)) or _filename(x)
        os.makedirs(self.output_dir, exist_ok=True)
        out = os.path.join(self.output_dir, f"{_stem(path)}_{self.postfix}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), out)
        d = dict(data)
        d[f"{self.key}_path"] = out
        return d


class SaveMontaged:
    """Writer: ``<output_dir>/<input stem>_montage.png`` showing the input (re-read from ``filename_or_obj``,
    channel ``channel``) with the contour of ``pred`` (a label map in the input's original geometry)."""

    def __init__(self, keys: str = "pred", output_dir: str = "./outputs", image_key: str = "image",
                 channel: int = 0, max_slices: int = 16):
        self.key, self.output_dir, self.image_key = keys, output_dir, image_key
        self.channel, self.max_slices = channel, max_slices

    def __call__(self, data):
        from monai.transforms import EnsureChannelFirst
        from PIL import Image

        from cadpipe.transforms.readers.io_any import load_image

        path = _filename(data[self.image_key]) or _filename(data[self.key])
        img = EnsureChannelFirst()(load_image(image_only=True)(path))
        pred = data[self.key]
        pred = (pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred))[0]
        ch = min(self.channel, img.shape[0] - 1)
        os.makedirs(self.output_dir, exist_ok=True)
        png = montage(np.asarray(img[ch]), pred, max_slices=self.max_slices)
        Image.fromarray(png).save(os.path.join(self.output_dir, f"{_stem(path)}_montage.png"))
        return data
