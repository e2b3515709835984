"""Multi-label (ChestX-ray14) pieces: positive weights for weighted BCE, the per-pathology AUC report handler and the
inference writer (15 probabilities per image + Grad-CAM overlays for each pathology above a probability)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cadpipe.pipelines.tasks.classification import roc_auc

__all__ = ["pos_weights", "MultiLabelReport", "MultiLabelCAMWriter", "stack_pred_label", "mean_auc_metric", "ChestDenseNet121"]


def pos_weights(datalist: Sequence[Mapping], key: str = "label", max_weight: float = 100.0) -> torch.Tensor:
    """Per-class positive weight ``n_negative / n_positive`` of the training labels (for ``BCEWithLogitsLoss``),
    clipped to ``[1/max_weight, max_weight]``; a class without positives gets ``max_weight``."""
    y = np.asarray([np.asarray(d[key], np.float64) for d in datalist])
    pos = y.sum(0)
    neg = len(y) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), max_weight)
    return torch.as_tensor(np.clip(w, 1.0 / max_weight, max_weight), dtype=torch.float32)


def _fname(x) -> str:
    return str((getattr(x, "meta", None) or {}).get("filename_or_obj", ""))


class MultiLabelReport:
    """Ignite handler for an evaluator whose decollated items hold ``pred`` (sigmoid probabilities) and ``label``
    (multi-hot): at completion writes ``<output_dir>/<metrics_name>`` (``auc`` per class, ``mean_auc`` over classes
    with both values present, ``n``; ``at_threshold``: per class the sensitivity and specificity at the operating
    threshold saved with the model (``thresholds``, a class without one at 0.5), and ``at_0.5`` the same at 0.5 for
    comparison) and ``<predictions_name>`` (path, one probability column per class, labels)."""

    def __init__(self, output_dir: str, class_names: Sequence[str], metrics_name: str = "metrics.json",
                 predictions_name: str = "predictions.csv", extra: Mapping | None = None,
                 thresholds: Mapping[str, float] | None = None):
        self.output_dir, self.class_names = output_dir, list(class_names)
        self.metrics_name, self.predictions_name, self.extra = metrics_name, predictions_name, dict(extra or {})
        self.thresholds = {str(k): float(v) for k, v in dict(thresholds or {}).items()}
        self.metrics: dict = {}

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self.rows = []

    def _collect(self, engine) -> None:
        for item in engine.state.output:
            p = torch.as_tensor(item["pred"]).detach().cpu().float().reshape(-1).numpy()
            y = torch.as_tensor(item["label"]).detach().cpu().float().reshape(-1).numpy()
            self.rows.append((_fname(item.get("image")), p, y))

    def _write(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        probs = np.array([r[1] for r in self.rows]).reshape(len(self.rows), -1)
        labels = np.array([r[2] for r in self.rows]).reshape(len(self.rows), -1)
        auc = {n: roc_auc(labels[:, i], probs[:, i]) for i, n in enumerate(self.class_names)}
        valid = [v for v in auc.values() if not math.isnan(v)]
        self.metrics = {"auc": {k: (None if math.isnan(v) else v) for k, v in auc.items()},
                        "mean_auc": float(np.mean(valid)) if valid else None, "n_classes_scored": len(valid),
                        "n": len(self.rows),
                        "thresholds_saved": bool(self.thresholds),
                        "at_threshold": self._calls(probs, labels, {n: self.thresholds.get(n, 0.5)
                                                                     for n in self.class_names}),
                        "at_0.5": self._calls(probs, labels, {n: 0.5 for n in self.class_names}), **self.extra}
        with open(os.path.join(self.output_dir, self.metrics_name), "w") as f:
            json.dump(self.metrics, f, indent=1)
        with open(os.path.join(self.output_dir, self.predictions_name), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path"] + [f"prob_{n}" for n in self.class_names] + [f"label_{n}" for n in self.class_names])
            for (path, p, y) in self.rows:
                w.writerow([path] + [f"{v:.6f}" for v in p] + [int(v) for v in y])


    def _calls(self, probs: np.ndarray, labels: np.ndarray, thresholds: Mapping[str, float]) -> dict:
        """Per class: ``threshold``, ``sensitivity`` and ``specificity`` (None where undefined) of ``prob >= t``."""
        out = {}
        for i, name in enumerate(self.class_names):
            t = thresholds[name]
            called, truth = probs[:, i] >= t, labels[:, i] > 0.5
            pos, neg = int(truth.sum()), int((~truth).sum())
            out[name] = {"threshold": t,
                         "sensitivity": float((called & truth).sum() / pos) if pos else None,
                         "specificity": float((~called & ~truth).sum() / neg) if neg else None}
        return out


class MultiLabelCAMWriter:
    """Writer (bundle ``writers``): appends one row per image to ``<output_dir>/predictions.csv`` (path, one
    probability per class, the pathologies at or above ``cam_threshold``, their heatmap PNGs) and writes a Grad-CAM
    overlay ``heatmaps/<stem>_<class>.png`` for each pathology whose probability is at least ``cam_threshold``
    (``skip_classes``, e.g. ``["No Finding"]``, never get a map)."""

    def __init__(self, network, target_layers: str, output_dir: str, class_names: Sequence[str],
                 cam_threshold: float = 0.5, skip_classes: Sequence[str] = ("No Finding",), alpha: float = 0.4,
                 csv_name: str = "predictions.csv"):
        self.network, self.target_layers, self.output_dir = network, target_layers, output_dir
        self.class_names, self.cam_threshold = list(class_names), float(cam_threshold)
        self.skip, self.alpha = set(skip_classes), alpha
        self.csv_path = os.path.join(output_dir, csv_name)
        self._started = False

    def __call__(self, data):
        from cadpipe.pipelines.inference.heatmaps import compute_cam, save_overlay_png

        d = dict(data)
        img = d["image"]
        probs = torch.as_tensor(d["pred"]).detach().cpu().float().reshape(-1).numpy()
        path = _fname(img)
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        found, pngs = [], []
        dev = next(self.network.parameters()).device
        for i, n in enumerate(self.class_names):
            if n in self.skip or probs[i] < self.cam_threshold:
                continue
            cam = compute_cam(self.network, torch.as_tensor(img).to(dev), self.target_layers, class_idx=i)
            png = os.path.join(self.output_dir, "heatmaps", f"{stem}_{n}.png")
            save_overlay_png(np.asarray(torch.as_tensor(img).cpu()), cam, png, alpha=self.alpha)
            found.append(n)
            pngs.append(png)
        os.makedirs(self.output_dir, exist_ok=True)
        with open(self.csv_path, "w" if not self._started else "a", newline="") as f:
            w = csv.writer(f)
            if not self._started:
                w.writerow(["path"] + [f"prob_{n}" for n in self.class_names] + ["findings", "heatmaps"])
                self._started = True
            w.writerow([path] + [f"{v:.6f}" for v in probs] + ["|".join(found), "|".join(pngs)])
        d["findings"], d["heatmap_pngs"] = found, pngs
        return d


def _mean_auc(y_preds: torch.Tensor, y_targets: torch.Tensor) -> float:
    p, y = y_preds.detach().cpu().numpy(), y_targets.detach().cpu().numpy()
    aucs = [roc_auc(y[:, i], p[:, i]) for i in range(p.shape[1])]
    valid = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(valid)) if valid else 0.5


def stack_pred_label(output) -> tuple[torch.Tensor, torch.Tensor]:
    """Ignite output transform: decollated items → ``(B, C)`` probabilities and ``(B, C)`` labels."""
    return (torch.stack([torch.as_tensor(o["pred"]).float().reshape(-1) for o in output]),
            torch.stack([torch.as_tensor(o["label"]).float().reshape(-1) for o in output]))


def mean_auc_metric():
    """Ignite metric: mean over classes of the ROC AUC (classes with only one label value left out; 0.5 if none)."""
    from ignite.metrics import EpochMetric

    return EpochMetric(_mean_auc, output_transform=stack_pred_label, check_compute_fn=False)


class ChestDenseNet121(torch.nn.Module):
    """MONAI ``DenseNet121`` with, optionally (``fc_hidden > 0``), a ``fc_hidden``-unit layer with ReLU and dropout
    ``fc_dropout`` before the output (the thesis used 1000 units, dropout 0.4). Same state-dict keys as
    ``DenseNet121`` for the backbone; Grad-CAM layer ``class_layers.relu``. Input ``(B, C, X, Y)``, output
    ``(B, out_channels)`` logits."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 15, fc_hidden: int = 0,
                 fc_dropout: float = 0.4, **kwargs):
        super().__init__()
        from monai.networks.nets import DenseNet121

        net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
        if fc_hidden:
            n = net.class_layers.out.in_features
            net.class_layers.out = torch.nn.Sequential(torch.nn.Linear(n, fc_hidden), torch.nn.ReLU(),
                                                       torch.nn.Dropout(fc_dropout), torch.nn.Linear(fc_hidden, out_channels))
        self.features, self.class_layers = net.features, net.class_layers

    def forward(self, x):
        return self.class_layers(self.features(x))
