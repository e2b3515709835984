"""Breast histology pipeline pieces used by ``bundles/breast_histology_classification``.

- datalists for the BACH / BreaKHis layouts (seeded patient-level splits) and recursive image search;
- image-level aggregation of patch probabilities (``average``, ``vote``, ``exist``, ``exist3``) and
  patient-level aggregation; accuracy / macro F1 / macro AUC / confusion matrix at patch, image, patient level;
- an inferer for stacks of patches, a pure postprocessing transform, an ignite metric that writes
  ``metrics.json`` + ``per_image.csv``;
- whole-image class activation maps for every class at full resolution (MONAI ``CAM`` hooks, raw class scores,
  not scaled by class probability) and the inference writer (``predictions.csv``, per-class PNG overlays, arrays).

Class order is severity order (BACH: Normal < Benign < InSitu < Invasive; BreaKHis: benign < malignant), which
the ``exist`` aggregations rely on.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from monai.inferers import Inferer
from monai.transforms import MapTransform

from cadpipe.data.bach import BACH_CLASSES, bach_datalist
from cadpipe.data.breakhis import BINARY_CLASSES, SUBTYPE_CLASSES, breakhis_datalist, split_by_patient
from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.tasks.classification import roc_auc
from cadpipe.transforms.histology import IMAGE_SUFFIXES, GridTissuePatches

__all__ = [
    "AGGREGATIONS", "class_names", "datalist", "find_images", "aggregate", "aggregate_patients",
    "classification_metrics", "evaluate_records", "PatchStackInferer", "TissuePatchInferer", "AggregatePatchesd", "HistologyMetric",
    "class_activation_maps", "HistologyInferenceWriter", "save_overlay",
]

AGGREGATIONS = ("average", "vote", "exist", "exist3")


# ----------------------------------------------------------------------------------------------- datalists
def class_names(layout: str, subtypes: bool = False) -> list[str]:
    """Class names of a dataset layout: ``bach`` (4), ``breakhis`` (2, or 8 subtypes)."""
    if layout == "bach":
        return list(BACH_CLASSES)
    if layout == "breakhis":
        return list(SUBTYPE_CLASSES if subtypes else BINARY_CLASSES)
    raise ValueError(f"dataset_layout must be 'bach' or 'breakhis', got {layout!r}")


def datalist(dataset_dir: str, layout: str, split: str | None = None, magnification=None, seed: int = 0,
             fractions: Sequence[float] = (0.7, 0.15, 0.15), subtypes: bool = False, region_labels: bool = True,
             annotations_dir: str | None = None, region_class_map: dict | None = None) -> list[dict]:
    """Datalist of one split (``training``/``validation``/``test``, ``None`` = all) for ``layout``.

    Splits are by patient (BreaKHis; BACH has one image per group) with :func:`split_by_patient` and ``seed``.
    Each item also carries ``"path"`` (the image file) for reporting and ``"annotation"``: the image's Aperio
    ImageScope XML (``<stem>.xml`` beside the image, or in ``annotations_dir`` when given;
    :func:`cadpipe.transforms.readers.io_imagescope.find_annotation`), ``""`` when it has none or ``region_labels`` is false.
    Every XML of the returned items is validated here, before training starts (well-formed, vertices inside the image, region
    classes known after ``region_class_map``): a bad one raises :class:`CadpipeInputError` naming it.
    """
    from cadpipe.transforms.readers.io_imagescope import check_annotation, find_annotation

    if annotations_dir and not os.path.isdir(annotations_dir):
        raise CadpipeInputError(os.fspath(annotations_dir), "annotations_dir does not exist")
    if layout == "bach":
        items = bach_datalist(dataset_dir)
    elif layout == "breakhis":
        items = breakhis_datalist(dataset_dir, magnification, subtypes)
    else:
        raise ValueError(f"dataset_layout must be 'bach' or 'breakhis', got {layout!r}")
    for it in items:
        it["path"] = it["image"]
        it["annotation"] = find_annotation(it["image"], annotations_dir) if region_labels else ""
    if split is not None:
        items = split_by_patient(items, fractions, seed)[split]
    names = class_names(layout, subtypes)
    for it in items:
        if it["annotation"]:
            check_annotation(it["annotation"], it["image"], names, region_class_map)
    return items


def find_images(dataset_dir: str) -> list[dict]:
    """Every microscopy image (tif/png/jpg/bmp) under ``dataset_dir``, searched recursively, sorted;
    items ``{"image": path, "path": path}``. A single file is accepted too."""
    dataset_dir = os.fspath(dataset_dir)
    if os.path.isfile(dataset_dir):
        return [{"image": dataset_dir, "path": dataset_dir}]
    if not os.path.isdir(dataset_dir):
        raise CadpipeInputError(dataset_dir, "dataset_dir does not exist")
    found = []
    for dirpath, _, files in os.walk(dataset_dir):
        found += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise CadpipeInputError(dataset_dir, f"no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return [{"image": p, "path": p} for p in sorted(found)]


# ----------------------------------------------------------------------------------------------- aggregation
def aggregate(patch_probs, method: str = "average") -> tuple[np.ndarray, int]:
    """Image-level scores ``(C,)`` and predicted class from patch probabilities ``(N, C)``.

    - ``average``: scores = mean probability; prediction = argmax.
    - ``vote``: scores = fraction of patches whose argmax is each class; prediction = the most voted class,
      ties broken by the higher mean probability.
    - ``exist`` / ``exist3`` (k = 1 / 3): prediction = the most severe class ``c`` such that at least
      ``min(k, N)`` patches are predicted ``>= c`` (binary: malignant if any / at least three patches are);
      scores = per-class k-th largest patch probability (for AUC; not normalised).
    """
    p = np.asarray(patch_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"patch_probs must be (N>0, C), got {p.shape}")
    n, c = p.shape
    arg = p.argmax(1)
    if method == "average":
        s = p.mean(0)
        return s, int(s.argmax())
    if method == "vote":
        votes = np.bincount(arg, minlength=c) / n
        top = np.flatnonzero(votes == votes.max())
        mean = p.mean(0)
        return votes, int(top[np.argmax(mean[top])])
    if method in ("exist", "exist3"):
        k = min(1 if method == "exist" else 3, n)
        pred = max(cls for cls in range(c) if (arg >= cls).sum() >= k)
        s = np.sort(p, axis=0)[::-1][k - 1]
        return s, int(pred)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")


def aggregate_patients(records: Sequence[dict]) -> list[dict]:
    """Patient-level records from image records ``{"patient", "label", "scores", "pred"}``.

    Patient scores = mean of image scores; prediction = majority of image predictions (ties: higher mean score);
    label = majority image label; ``image_accuracy`` = fraction of the patient's images predicted correctly
    (its mean over patients is BreaKHis' "patient recognition rate").
    """
    groups = defaultdict(list)
    for r in records:
        groups[r["patient"]].append(r)
    out = []
    for pid in sorted(groups):
        rs = groups[pid]
        scores = np.mean([r["scores"] for r in rs], 0)
        votes = Counter(int(r["pred"]) for r in rs)
        best = max(votes.values())
        pred = max((c for c, v in votes.items() if v == best), key=lambda c: scores[c])
        label = Counter(int(r["label"]) for r in rs).most_common(1)[0][0]
        acc = float(np.mean([int(r["pred"]) == int(r["label"]) for r in rs]))
        out.append({"patient": pid, "label": label, "pred": int(pred), "scores": scores, "n_images": len(rs),
                    "image_accuracy": acc})
    return out


# ----------------------------------------------------------------------------------------------- metrics
def classification_metrics(labels, preds, scores, names: Sequence[str]) -> dict:
    """Accuracy, macro F1 (over classes present in labels or predictions), macro one-vs-rest AUC (classes with
    both positives and negatives; ``None`` if none), confusion matrix (rows true, columns predicted) and per-class
    precision/recall/F1/AUC/support."""
    y = np.asarray(labels, dtype=np.int64)
    yhat = np.asarray(preds, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64).reshape(len(y), len(names))
    c = len(names)
    cm = np.zeros((c, c), dtype=np.int64)
    for a, b in zip(y, yhat):
        cm[a, b] += 1
    per_class, f1s, aucs = {}, [], []
    for k, name in enumerate(names):
        tp = cm[k, k]
        prec = tp / cm[:, k].sum() if cm[:, k].sum() else 0.0
        rec = tp / cm[k].sum() if cm[k].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        pos, neg = s[y == k, k], s[y != k, k]
        auc = roc_auc(y == k, s[:, k]) if len(pos) and len(neg) else None
        if cm[k].sum() or cm[:, k].sum():
            f1s.append(f1)
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {"precision": float(prec), "recall": float(rec), "f1": float(f1), "auc": auc,
                           "support": int(cm[k].sum())}
    return {"n": int(len(y)), "accuracy": float((y == yhat).mean()) if len(y) else None,
            "f1_macro": float(np.mean(f1s)) if f1s else None, "auc_macro": float(np.mean(aucs)) if aucs else None,
            "confusion_matrix": cm.tolist(), "per_class": per_class}


def evaluate_records(items: Sequence[dict], names: Sequence[str], methods: Sequence[str] = AGGREGATIONS) -> dict:
    """Metrics at patch, image (every aggregation method side by side) and patient level.

    ``items``: ``[{"path", "patient", "label", "patch_probs" (N, C)}]``. Returns ``{"patch": {...},
    "image": {method: {...}}, "patient": {method: {...}}, "per_image": [rows]}``.
    """
    out = {"class_names": list(names), "n_images": len(items), "patch": {}, "image": {}, "patient": {}}
    pl, pp, ps = [], [], []
    for it in items:
        p = np.asarray(it["patch_probs"])
        pl += [int(it["label"])] * len(p)
        pp += list(p.argmax(1))
        ps += list(p)
    out["patch"] = classification_metrics(pl, pp, np.asarray(ps).reshape(-1, len(names)), names)
    rows = [{"path": it["path"], "patient": it["patient"], "label": names[int(it["label"])],
             "n_patches": len(it["patch_probs"])} for it in items]
    for m in methods:
        recs = []
        for it, row in zip(items, rows):
            s, pred = aggregate(it["patch_probs"], m)
            recs.append({"patient": it["patient"], "label": int(it["label"]), "scores": s, "pred": pred})
            row[f"{m}_pred"] = names[pred]
            row.update({f"{m}_{n}": float(v) for n, v in zip(names, s)})
        out["image"][m] = classification_metrics([r["label"] for r in recs], [r["pred"] for r in recs],
                                                 [r["scores"] for r in recs], names)
        pats = aggregate_patients(recs)
        pm = classification_metrics([r["label"] for r in pats], [r["pred"] for r in pats],
                                    [r["scores"] for r in pats], names)
        pm["patient_recognition_rate"] = float(np.mean([r["image_accuracy"] for r in pats])) if pats else None
        out["patient"][m] = pm
    out["per_image"] = rows
    return out


# ----------------------------------------------------------------------------------------------- engine pieces
class PatchStackInferer(Inferer):
    """Runs the network over a stack of patches ``(B, N, 3, P, P)`` (B = 1 in practice) in chunks of
    ``sw_batch_size``; returns logits ``(B, N, C)``."""

    def __init__(self, sw_batch_size: int = 32):
        super().__init__()
        self.sw_batch_size = int(sw_batch_size)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        b, n = inputs.shape[:2]
        flat = inputs.reshape(b * n, *inputs.shape[2:])
        outs = [network(flat[i:i + self.sw_batch_size], *args, **kwargs) for i in range(0, b * n, self.sw_batch_size)]
        out = torch.cat(outs, 0)
        return out.reshape(b, n, *out.shape[1:])


class TissuePatchInferer(Inferer):
    """Whole-image inferer: tissue patches of each image ``(B, 3, X, Y)`` (grid, ``patch_size``/``stride``/
    ``min_tissue``), network over the patches in chunks, patch softmax aggregated with ``aggregation``; returns
    ``log`` of the aggregated scores ``(B, C)``, so a softmax in postprocessing gives back the aggregated
    probabilities (re-normalised for ``exist``/``exist3`` scores)."""

    def __init__(self, patch_size: int = 256, stride: int | None = None, min_tissue: float = 0.5,
                 aggregation: str = "average", sw_batch_size: int = 16):
        super().__init__()
        self.patches = GridTissuePatches(patch_size, stride, min_tissue)
        self.aggregation = aggregation
        self.sw_batch_size = int(sw_batch_size)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        out = []
        for img in inputs:
            patches, _, _ = self.patches(img)
            patches = patches.to(inputs.device)
            logits = torch.cat([network(patches[i:i + self.sw_batch_size], *args, **kwargs)
                                for i in range(0, len(patches), self.sw_batch_size)])
            scores, _ = aggregate(torch.softmax(logits.float(), -1).detach().cpu().numpy(), self.aggregation)
            out.append(torch.log(torch.as_tensor(scores, dtype=torch.float32).clamp_min(1e-7)))
        return torch.stack(out).to(inputs.device)


class AggregatePatchesd(MapTransform):
    """Pure postprocessing for one decollated item whose ``pred`` is patch logits ``(N, C)``: writes
    ``patch_probs`` (softmax, ``(N, C)``), ``pred`` (image-level scores of ``method``, ``(C,)``), ``pred_label``
    and copies ``path``/``patient`` to ``case_path``/``case_patient`` (so they reach the engine output)."""

    def __init__(self, keys="pred", method: str = "average"):
        super().__init__(keys)
        if method not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {method!r}")
        self.method = method

    def __call__(self, data):
        d = dict(data)
        key = self.first_key(d)
        probs = torch.softmax(torch.as_tensor(d[key]).float(), dim=-1)
        scores, pred = aggregate(probs.detach().cpu().numpy(), self.method)
        d["patch_probs"] = probs
        d[key] = torch.as_tensor(scores, dtype=torch.float32)
        d["pred_label"] = pred
        d["case_path"] = str(d.get("path", ""))
        d["case_patient"] = str(d.get("patient", d.get("path", "")))
        return d


class HistologyMetric(Metric):
    """Ignite metric over an evaluator whose postprocessing is :class:`AggregatePatchesd`.

    Collects every image's patch probabilities, label, patient and path; ``compute`` returns the image-level
    accuracy of ``method`` (the key metric for best-checkpoint selection) and, when ``output_dir`` is set, writes
    ``metrics.json`` (patch / image x all aggregations / patient levels) and ``per_image.csv``.
    """

    def __init__(self, class_names: Sequence[str], method: str = "average", output_dir: str | None = None,
                 output_transform=lambda x: x, device="cpu"):
        self.class_names = list(class_names)
        self.method = method
        self.output_dir = output_dir
        self._items: list[dict] = []
        super().__init__(output_transform=output_transform, device=device)

    def reset(self):
        self._items = []

    def update(self, output):
        for o in output if isinstance(output, (list, tuple)) else [output]:
            self._items.append({"path": o.get("case_path", ""), "patient": o.get("case_patient", ""),
                                "label": int(torch.as_tensor(o["label"]).reshape(-1)[0]),
                                "patch_probs": torch.as_tensor(o["patch_probs"]).detach().cpu().numpy()})

    def compute(self):
        if not self._items:
            raise RuntimeError("HistologyMetric needs at least one image before compute()")
        res = evaluate_records(self._items, self.class_names)
        res["inference_aggregation"] = self.method
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            rows = res.pop("per_image")
            with open(os.path.join(self.output_dir, "metrics.json"), "w", encoding="utf-8") as f:
                json.dump(res, f, indent=2)
            with open(os.path.join(self.output_dir, "per_image.csv"), "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        return res["image"][self.method]["accuracy"]


# ----------------------------------------------------------------------------------------------- CAM
def class_activation_maps(network, image: torch.Tensor, target_layer: str = "class_layers.relu",
                          fc_layer: str = "class_layers.out", centered: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class CAM of one image ``(3, X, Y)`` at full resolution, from a single forward pass.

    CAM as MONAI's ``CAM`` computes it, from ``target_layer`` (DenseNet121: the features after the last ReLU) and the
    linear head ``fc_layer``: ``map_c = W_c . f + b_c``, bilinearly upsampled to ``(X, Y)``. Maps are raw class
    scores (the logit the class would get from that location), **not** scaled by the class probability or
    normalised per class, so they are comparable across classes. ``centered=True`` subtracts, at each location,
    the mean over classes (``map_c - mean_k map_k``): softmax ignores a per-location constant, so only this part
    says which class a location supports (binary: half the malignant-vs-benign logit difference). Returns
    ``(maps (C, X, Y), logits (C,))`` (logits of the whole-image forward). The hook that reads the features is
    removed afterwards and ignores other threads' forwards (MONAI's ``CAM`` leaves one hook per call behind).
    """
    import torch.nn.functional as F

    from cadpipe.pipelines.inference.heatmaps import hook_output_on_this_thread, layer_of

    layer, fc = layer_of(network, target_layer, "CAM layer"), layer_of(network, fc_layer, "CAM layer")
    store = {}
    x = torch.as_tensor(image)[None].float()
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            with hook_output_on_this_thread(layer, lambda output: store.update(features=output)):
                logits = network(x)
            a = store["features"][0]  # (F, h, w)
            maps = torch.einsum("cf,fhw->chw", fc.weight, a) + fc.bias[:, None, None]
            if centered:
                maps = maps - maps.mean(0, keepdim=True)
            maps = F.interpolate(maps[None], size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)[0]
    finally:
        network.train(was_training)
    return maps, logits[0]


_JET = np.array([[0, 0, 0.5], [0, 0, 1], [0, 0.5, 1], [0, 1, 1], [0.5, 1, 0.5], [1, 1, 0], [1, 0.5, 0], [1, 0, 0],
                 [0.5, 0, 0]])


def save_overlay(rgb, heat, path: str, alpha: float = 0.4) -> str:
    """Blend a heat map ``(X, Y)`` in [0, 1] (jet colours) over an RGB image ``(3, X, Y)`` in [0, 1]; writes PNG
    (transposed back to rows x columns)."""
    from PIL import Image

    h = np.clip(np.asarray(heat, dtype=np.float64), 0, 1) * (len(_JET) - 1)
    lo = np.floor(h).astype(int)
    hi = np.minimum(lo + 1, len(_JET) - 1)
    t = (h - lo)[..., None]
    colour = _JET[lo] * (1 - t) + _JET[hi] * t  # (X, Y, 3)
    img = np.asarray(torch.as_tensor(rgb).detach().cpu(), dtype=np.float64).transpose(1, 2, 0).clip(0, 1)
    out = (1 - alpha) * img + alpha * colour
    Image.fromarray((out.transpose(1, 0, 2) * 255).round().astype(np.uint8)).save(path)
    return path


class HistologyInferenceWriter:
    """``writers`` transform for inference. Per image it reports both estimates: the patch-aggregated
    probabilities (tissue patches, ``aggregation``) and the whole-image forward (one pass over the full image,
    the same pass that gives the CAMs); ``pred`` (from the bundle's inferer) is whichever ``inference_mode``
    names, the other is computed here. Writes per-class CAM PNG overlays (shared colour scale across classes) and
    ``<stem>_cam.npy`` ``(C, X, Y)`` float16 (:func:`class_activation_maps`, centred), and one row of
    ``output_dir/predictions.csv``: ``path, prob_<class>... (= pred), predicted_class, patch_prob_<class>...,
    patch_predicted_class, whole_prob_<class>..., whole_predicted_class, n_patches, aggregation, inference_mode``.
    The CSV is rewritten by each new writer instance."""

    def __init__(self, network, output_dir: str, class_names: Sequence[str], patch_size: int = 256,
                 stride: int | None = None, min_tissue: float = 0.5, aggregation: str = "average",
                 inference_mode: str = "patches", cam_layers: str = "class_layers.relu",
                 fc_layer: str = "class_layers.out", save_cam: bool = True, sw_batch_size: int = 16):
        if inference_mode not in ("patches", "whole"):
            raise ValueError(f"inference_mode must be 'patches' or 'whole', got {inference_mode!r}")
        self.network = network
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.patches = GridTissuePatches(patch_size, stride, min_tissue)
        self.aggregation, self.inference_mode = aggregation, inference_mode
        self.cam_layers, self.fc_layer, self.save_cam = cam_layers, fc_layer, save_cam
        self.sw_batch_size = sw_batch_size
        self._started = False

    def __call__(self, data):
        d = dict(data)
        img = torch.as_tensor(d["image"]).float()
        path = str(d.get("path") or getattr(d["image"], "meta", {}).get("filename_or_obj", "image"))
        dev = next(self.network.parameters()).device
        pred = torch.as_tensor(d["pred"]).detach().cpu().float().reshape(-1).numpy()
        patches, _, _ = self.patches(img.cpu())
        if self.inference_mode == "patches":
            pscores = pred
        else:
            self.network.eval()
            with torch.no_grad():
                logits = torch.cat([self.network(patches[i:i + self.sw_batch_size].to(dev))
                                    for i in range(0, len(patches), self.sw_batch_size)])
            pscores, _ = aggregate(torch.softmax(logits.float(), -1).cpu().numpy(), self.aggregation)
        maps, logits = class_activation_maps(self.network, img.to(dev), self.cam_layers, self.fc_layer)
        whole = pred if self.inference_mode == "whole" else torch.softmax(logits.float(), -1).cpu().numpy()
        os.makedirs(self.output_dir, exist_ok=True)
        stem = os.path.splitext(os.path.basename(path))[0]
        if self.save_cam:
            maps = maps.cpu()
            np.save(os.path.join(self.output_dir, f"{stem}_cam.npy"), maps.numpy().astype(np.float16))
            lo, hi = float(maps.min()), float(maps.max())
            norm = (maps - lo) / (hi - lo) if hi > lo else torch.zeros_like(maps)
            for k, name in enumerate(self.class_names):
                save_overlay(img.cpu(), norm[k].numpy(), os.path.join(self.output_dir, f"{stem}_cam_{name}.png"))
        row = {"path": path}
        row.update({f"prob_{n}": float(v) for n, v in zip(self.class_names, pred)})
        row["predicted_class"] = self.class_names[int(np.argmax(pred))]
        row.update({f"patch_prob_{n}": float(v) for n, v in zip(self.class_names, pscores)})
        row["patch_predicted_class"] = self.class_names[int(np.argmax(pscores))]
        row.update({f"whole_prob_{n}": float(v) for n, v in zip(self.class_names, whole)})
        row["whole_predicted_class"] = self.class_names[int(np.argmax(whole))]
        row["n_patches"] = int(len(patches))
        row["aggregation"] = self.aggregation
        row["inference_mode"] = self.inference_mode
        csv_path = os.path.join(self.output_dir, "predictions.csv")
        with open(csv_path, "a" if self._started else "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if not self._started:
                w.writeheader()
            w.writerow(row)
        self._started = True
        return d
