"""Generic helpers for classification bundles: metrics, thresholds, class weights, writers, weight loading.

Shared by the chest X-ray pneumonia bundle, the histology bundle and the 14-pathology bundle, so nothing here is
specific to one dataset. Binary metrics take the probability of the positive class; multi-class helpers take a
probability matrix ``(N, C)``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from cadpipe.errors import CadpipeInputError

__all__ = [
    "class_weights",
    "roc_auc",
    "binary_metrics",
    "multiclass_metrics",
    "threshold_for_sensitivity",
    "write_predictions_csv",
    "write_metrics_json",
    "load_pretrained",
    "torchvision_densenet_to_monai",
    "labels_of",
    "argmax_output_transform",
    "ClassificationReport",
]

logger = logging.getLogger(__name__)


def labels_of(datalist: Sequence[Mapping], key: str = "label") -> np.ndarray:
    """Integer labels of a MONAI datalist (list of dicts) as a 1-D array."""
    return np.asarray([int(np.asarray(d[key]).reshape(-1)[0]) for d in datalist], dtype=np.int64)


def class_weights(labels, num_classes: int | None = None, as_tensor: bool = True):
    """Inverse-frequency class weights ``N / (C * n_c)`` (sklearn's "balanced"), for ``CrossEntropyLoss(weight=...)``.

    Args:
        labels: integer labels, or a datalist of dicts with a ``"label"`` key.
        num_classes: number of classes C (default ``max(label) + 1``). A class absent from ``labels`` gets weight 1.
        as_tensor: return a float32 ``torch.Tensor`` (default) instead of a numpy array.
    """
    if len(labels) and isinstance(labels[0], Mapping):
        labels = labels_of(labels)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise ValueError("class_weights: no training labels")
    c = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    counts = np.bincount(labels, minlength=c).astype(np.float64)
    w = np.ones(c, dtype=np.float64)
    present = counts > 0
    w[present] = labels.size / (present.sum() * counts[present])
    w = w.astype(np.float32)
    return torch.as_tensor(w) if as_tensor else w


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction). NaN when only one class is present."""
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def binary_metrics(labels, prob_positive, threshold: float = 0.5) -> dict:
    """ROC AUC, accuracy, sensitivity, specificity, precision, F1 and confusion matrix of a binary classifier.

    Args:
        labels: 0/1 ground truth (1 = positive class), shape (N,).
        prob_positive: probability of the positive class, shape (N,).
        threshold: predicted positive when ``prob >= threshold``.

    Returns:
        dict with ``n``, ``threshold``, ``auc``, ``accuracy``, ``sensitivity``, ``specificity``, ``precision``,
        ``f1``, ``tp``, ``fp``, ``tn``, ``fn`` and ``confusion_matrix`` as ``[[tn, fp], [fn, tp]]`` (rows = truth).
        Undefined ratios (e.g. no positives) are NaN, written as ``null`` by :func:`write_metrics_json`.
    """
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(prob_positive, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} differ in length")
    pred = (p >= threshold).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = _safe_div(tp, tp + fn)
    prec = _safe_div(tp, tp + fp)
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    return {
        "n": int(y.size),
        "threshold": float(threshold),
        "auc": roc_auc(y, p),
        "accuracy": _safe_div(tp + tn, y.size),
        "sensitivity": sens,
        "specificity": _safe_div(tn, tn + fp),
        "precision": prec,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def multiclass_metrics(labels, probs, class_names: Sequence[str] | None = None) -> dict:
    """Accuracy, per-class one-vs-rest AUC/sensitivity/precision/F1, macro averages and the confusion matrix.

    ``probs`` has shape (N, C); the prediction is the arg-max.
    """
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    c = p.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    pred = p.argmax(1)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    per_class = {}
    for k in range(c):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        per_class[names[k]] = {
            "auc": roc_auc(y == k, p[:, k]),
            "sensitivity": _safe_div(tp, tp + fn),
            "precision": _safe_div(tp, tp + fp),
            "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
            "support": int(cm[k].sum()),
        }

    def macro(key):
        vals = [v[key] for v in per_class.values() if not np.isnan(v[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "n": int(y.size),
        "accuracy": _safe_div(np.trace(cm), y.size),
        "macro_auc": macro("auc"),
        "macro_f1": macro("f1"),
        "macro_sensitivity": macro("sensitivity"),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": names,
    }


def threshold_for_sensitivity(labels, prob_positive, target_sensitivity: float) -> float:
    """The highest threshold whose sensitivity (with ``prob >= threshold`` positive) is at least the target.

    The highest such threshold keeps specificity as high as possible while meeting the sensitivity target.
    With no positive example the threshold 0.5 is returned and a warning logged.
    """
    if not 0.0 < float(target_sensitivity) <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    y = np.asarray(labels).reshape(-1).astype(bool)
    p = np.asarray(prob_positive, dtype=np.float64).reshape(-1)
    pos = np.sort(p[y])[::-1]  # positive scores, descending
    if pos.size == 0:
        logger.warning("threshold_for_sensitivity: no positive examples, keeping threshold 0.5")
        return 0.5
    # the k-th highest positive score as threshold catches k positives; need k >= ceil(target * n_pos)
    k = int(np.ceil(float(target_sensitivity) * pos.size - 1e-9))
    k = min(max(k, 1), pos.size)
    return float(pos[k - 1])


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    return obj


def write_metrics_json(metrics: Mapping, path: str | os.PathLike) -> str:
    """Write a metrics dict as indented JSON (NaN → null), creating the folder. Returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(dict(metrics)), f, indent=2, sort_keys=False)
    return path


def write_predictions_csv(rows: Sequence[Mapping], path: str | os.PathLike, columns: Sequence[str] | None = None) -> str:
    """Write per-image prediction rows (dicts) to CSV; columns default to the first row's keys."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in cols})
    return path


def _fmt(v):
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        v = v.reshape(-1)[0] if v.size == 1 else v.tolist()
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6f}"
    if isinstance(v, np.integer):
        return int(v)
    return v


# --------------------------------------------------------------------------- weights
_TV_DENSE = re.compile(r"^(.*denselayer\d+)\.((?:norm|relu|conv)[12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def torchvision_densenet_to_monai(state_dict: Mapping[str, torch.Tensor], in_channels: int = 1) -> dict:
    """Rename a torchvision DenseNet state dict to MONAI ``DenseNet`` key names.

    ``features.denseblockB.denselayerL.norm1.weight`` → ``features.denseblockB.denselayerL.layers.norm1.weight``;
    the first convolution ``features.conv0.weight`` (64, 3, k, k) is averaged over RGB (and repeated when
    ``in_channels`` > 1); the ImageNet ``classifier.*`` is dropped (the bundle's head stays freshly initialised).
    """
    out = {}
    for key, val in state_dict.items():
        if key.startswith("classifier."):
            continue
        m = _TV_DENSE.match(key)
        if m:
            key = f"{m.group(1)}.layers.{m.group(2)}.{m.group(3)}"
        if key == "features.conv0.weight" and val.ndim == 4 and val.shape[1] != in_channels:
            val = val.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
        out[key] = val
    return out


def _is_torchvision_keys(keys) -> bool:
    return any(k.startswith("classifier.") for k in keys) or any(_TV_DENSE.match(k) for k in keys)


def load_pretrained(network: torch.nn.Module, path: str | os.PathLike | None, strict_backbone: bool = True):
    """Initialise ``network`` from a local file; returns the network (so configs can chain it). No download.

    ``path`` empty/None → the network is returned unchanged. Otherwise the file may be:
    - a checkpoint of the same bundle (plain ``state_dict`` as written by ``CheckpointSaver``, or a dict with a
      ``"model"``/``"state_dict"`` entry): loaded as is (strict);
    - torchvision's ImageNet DenseNet state dict (``densenet121-a639ec97.pth``): keys renamed to MONAI's, the first
      convolution averaged over RGB, the classifier dropped; every backbone tensor must match by name and shape
      (``strict_backbone``) so a wrong architecture fails loudly instead of silently keeping random weights.

    Raises:
        CadpipeInputError: the file is missing, not a torch file, or its tensors do not fit the network.
    """
    if path is None or str(path).strip() == "":
        return network
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CadpipeInputError(path, "pretrained weights file not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CadpipeInputError(path, f"not a readable torch weights file ({type(e).__name__}: {e})") from e
    if isinstance(sd, Mapping):
        for wrapper in ("model", "state_dict", "network"):
            if wrapper in sd and isinstance(sd[wrapper], Mapping):
                sd = sd[wrapper]
                break
    if not isinstance(sd, Mapping) or not sd:
        raise CadpipeInputError(path, "no state dict found in the file")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}  # DataParallel/DDP prefix
    model_sd = network.state_dict()
    if _is_torchvision_keys(sd.keys()):
        first = model_sd.get("features.conv0.weight")
        sd = torchvision_densenet_to_monai(sd, in_channels=first.shape[1] if first is not None else 1)
        missing = [k for k in model_sd if k not in sd and not k.startswith("class_layers.")]
        wrong = [k for k, v in sd.items() if k in model_sd and model_sd[k].shape != v.shape]
        if strict_backbone and (missing or wrong):
            raise CadpipeInputError(
                path,
                f"torchvision weights do not fit the network: {len(missing)} missing (e.g. {missing[:3]}), "
                f"{len(wrong)} with another shape (e.g. {wrong[:3]})",
            )
        model_sd.update({k: v for k, v in sd.items() if k in model_sd and model_sd[k].shape == v.shape})
        network.load_state_dict(model_sd)
        logger.info("loaded torchvision ImageNet backbone from %s (classifier re-initialised)", path)
        return network
    try:
        network.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CadpipeInputError(path, f"checkpoint does not fit the network: {str(e).splitlines()[0]}") from e
    logger.info("loaded checkpoint %s", path)
    return network


# --------------------------------------------------------------------------- ignite handler
class ClassificationReport:
    """Ignite handler: gathers per-image probabilities during evaluation and writes metrics.json + predictions.csv.

    Attach to a MONAI ``SupervisedEvaluator`` (``handlers`` list in a bundle config). After each evaluation run it
    reads ``engine.state.output`` items (decollated dicts with ``pred`` = probability vector, ``label``, and
    ``image`` meta ``filename_or_obj``), computes :func:`binary_metrics` (``positive_index`` given) or
    :func:`multiclass_metrics`, and writes ``output_dir/metrics.json`` and ``output_dir/predictions.csv``.

    Args:
        output_dir: folder for the two files (created).
        class_names: names in class-index order.
        positive_index: index of the positive class for binary metrics; None → multi-class metrics.
        threshold: decision threshold on the positive probability (binary).
        target_sensitivity: when set (binary), the threshold is chosen on *this* data for that sensitivity unless
            ``threshold_from`` gives a threshold picked elsewhere (e.g. the validation split).
        threshold_from: a callable or a float threshold overriding ``threshold`` at write time.
        threshold_source: where ``threshold`` comes from, in words (e.g. the operating threshold saved with the
            model); metrics.json's ``threshold_source``. When the threshold used is not 0.5, ``at_0.5`` holds the
            same metrics at 0.5 for comparison.
        extra: dict merged into metrics.json (e.g. the split name).
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        positive_index: int | None = 1,
        threshold: float = 0.5,
        target_sensitivity: float | None = None,
        threshold_from=None,
        extra: Mapping | None = None,
        metrics_name: str = "metrics.json",
        predictions_name: str = "predictions.csv",
        threshold_source: str = "config",
    ):
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.positive_index = positive_index
        self.threshold = float(threshold)
        self.target_sensitivity = target_sensitivity
        self.threshold_from = threshold_from
        self.threshold_source = threshold_source
        self.extra = dict(extra or {})
        self.metrics_name = metrics_name
        self.predictions_name = predictions_name
        self.reset()
        self.metrics: dict = {}

    def reset(self, engine=None):
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.probs: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def collect(self, engine) -> None:
        out = engine.state.output
        items = out if isinstance(out, list) else [out]
        for it in items:
            pred = it["pred"]
            prob = pred.detach().cpu().float().numpy().reshape(-1) if isinstance(pred, torch.Tensor) else np.ravel(pred)
            label = np.asarray(_to_numpy(it.get("label"))).reshape(-1)
            label = int(label.argmax()) if label.size > 1 else int(label[0])  # one-hot or index
            path = _filename_of(it)
            self.paths.append(path)
            self.labels.append(label)
            self.probs.append(prob)

    def write(self, engine=None) -> dict:
        if not self.probs:
            logger.warning("ClassificationReport: nothing was evaluated, no metrics written")
            return {}
        probs = np.stack(self.probs)
        labels = np.asarray(self.labels)
        if self.positive_index is not None:
            ppos = probs[:, self.positive_index]
            thr = self.threshold
            source = self.threshold_source
            if self.threshold_from is not None:
                thr = float(self.threshold_from() if callable(self.threshold_from) else self.threshold_from)
                source = "validation"
            elif self.target_sensitivity:
                thr = threshold_for_sensitivity(labels == self.positive_index, ppos, self.target_sensitivity)
                source = f"this split, target sensitivity {self.target_sensitivity}"
            m = binary_metrics(labels == self.positive_index, ppos, thr)
            m["threshold_source"] = source
            if thr != 0.5:  # the same metrics at 0.5, for comparison with the operating threshold
                at_half = binary_metrics(labels == self.positive_index, ppos, 0.5)
                m["at_0.5"] = {k: at_half[k] for k in ("threshold", "accuracy", "sensitivity", "specificity",
                                                        "precision", "f1", "confusion_matrix")}
            m["class_names"] = self.class_names
            m["positive_class"] = self.class_names[self.positive_index]
            pred_names = [self.class_names[self.positive_index] if q >= thr else self.class_names[1 - self.positive_index]
                          for q in ppos] if len(self.class_names) == 2 else [self.class_names[int(i)] for i in probs.argmax(1)]
            pos_name = self.class_names[self.positive_index].lower()
            rows = [
                {"path": pth, "label": self.class_names[lab], f"prob_{pos_name}": q, "predicted": pn}
                for pth, lab, q, pn in zip(self.paths, labels, ppos, pred_names)
            ]
            cols = ["path", "label", f"prob_{pos_name}", "predicted"]
        else:
            m = multiclass_metrics(labels, probs, self.class_names)
            rows = []
            for pth, lab, pr in zip(self.paths, labels, probs):
                r = {"path": pth, "label": self.class_names[lab], "predicted": self.class_names[int(pr.argmax())]}
                r.update({f"prob_{n.lower()}": float(v) for n, v in zip(self.class_names, pr)})
                rows.append(r)
            cols = ["path", "label", "predicted"] + [f"prob_{n.lower()}" for n in self.class_names]
        m.update(self.extra)
        self.metrics = m
        write_metrics_json(m, os.path.join(self.output_dir, self.metrics_name))
        write_predictions_csv(rows, os.path.join(self.output_dir, self.predictions_name), cols)
        logger.info("metrics: %s", {k: m[k] for k in m if k not in ("per_class", "confusion_matrix")})
        return m


def _to_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _filename_of(item: Mapping) -> str:
    img = item.get("image")
    meta = getattr(img, "meta", None) or item.get("image_meta_dict") or {}
    name = meta.get("filename_or_obj", "") if isinstance(meta, Mapping) else ""
    if isinstance(name, (list, tuple)):
        name = name[0] if name else ""
    return str(name) if name else str(item.get("path", ""))


def argmax_output_transform(output) -> tuple[torch.Tensor, torch.Tensor]:
    """Ignite ``output_transform`` for accuracy: decollated items with ``pred`` (probabilities or one-hot) and
    ``label`` (one-hot or index) → ``(predicted index (B,), true index (B,))``."""
    items = output if isinstance(output, list) else [output]
    pred = torch.stack([torch.as_tensor(o["pred"]).reshape(-1).argmax() for o in items])
    lab = []
    for o in items:
        t = torch.as_tensor(o["label"]).reshape(-1)
        lab.append(t.argmax() if t.numel() > 1 else t[0].long())
    return pred, torch.stack(lab)
