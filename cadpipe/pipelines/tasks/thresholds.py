"""Choosing operating thresholds on the validation split at training time and saving them with the model.

:class:`ThresholdSaver` is an ignite handler for the validation evaluator of a classification train config. It
gathers the validation probabilities and labels of each validation run; when that run's checkpoint became
``models/model.pt`` (the ``CheckpointSaver`` listed before it wrote a new file), it chooses one threshold per class
(:func:`choose_thresholds`) and writes ``models/thresholds.json`` with the weights' sha256, so the file always
describes the weights beside it. Inference reads it with :func:`cadpipe.pipelines.inference.thresholds.load_thresholds`.

Methods (per class, one-vs-rest on the class's probability):

- ``"youden"`` (default): the threshold maximising Youden's J = sensitivity + specificity - 1 (ties: the higher
  threshold, fewer false positives). Youden W.J., Index for rating diagnostic tests, Cancer 3(1), 1950;
- a sensitivity target (``target_sensitivity``, e.g. 0.9 as a training override): the highest threshold whose
  sensitivity on the validation split reaches it (:func:`~cadpipe.pipelines.tasks.classification.threshold_for_sensitivity`).

A class whose validation cases are all positive or all negative cannot have a threshold chosen: it keeps 0.5 and
its ``method`` says why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from cadpipe.pipelines.inference.bundle_runner import file_sha256
from cadpipe.pipelines.inference.thresholds import DEFAULT_THRESHOLD, THRESHOLDS_FILE, THRESHOLDS_FORMAT
from cadpipe.pipelines.outputs.files import atomic_write_text
from cadpipe.pipelines.tasks.classification import threshold_for_sensitivity

__all__ = ["youden_threshold", "choose_thresholds", "ThresholdSaver"]

logger = logging.getLogger(__name__)


def youden_threshold(labels, scores) -> float:
    """The score threshold (``score >= t`` positive) maximising sensitivity + specificity - 1.

    Raises:
        ValueError: ``labels`` hold only one class (no threshold can be chosen).
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("only one class present")
    cand = np.unique(s)[::-1]  # descending
    tp = np.array([(s[y] >= t).sum() for t in cand], dtype=np.float64)
    fp = np.array([(s[~y] >= t).sum() for t in cand], dtype=np.float64)
    j = np.round(tp / n_pos - fp / n_neg, 12)  # equal J in exact arithmetic must tie here too
    return float(cand[int(np.argmax(j))])  # argmax takes the first maximum: the highest threshold


def choose_thresholds(labels, probs, class_names: Sequence[str], method: str = "youden",
                      target_sensitivity: float | None = None) -> dict[str, dict]:
    """Per-class thresholds ``{name: {"threshold": t, "method": ...}}``.

    Args:
        labels: ``(N,)`` class indices (single-label) or ``(N, C)`` multi-hot (multi-label).
        probs: ``(N, C)`` probabilities.
        class_names: the C names.
        method: ``"youden"``; ignored when ``target_sensitivity`` is set.
        target_sensitivity: sensitivity target in (0, 1].
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 2 or p.shape[1] != len(class_names):
        raise ValueError(f"probabilities of shape {p.shape} do not match {len(class_names)} class names")
    onehot = y.reshape(len(p), -1).astype(bool) if y.ndim == 2 else np.eye(len(class_names), dtype=bool)[y.astype(int)]
    if method != "youden" and not target_sensitivity:
        raise ValueError(f"unknown threshold method {method!r} (youden, or give target_sensitivity)")
    out = {}
    for k, name in enumerate(class_names):
        pos = onehot[:, k]
        if pos.all() or not pos.any():
            out[name] = {"threshold": DEFAULT_THRESHOLD,
                         "method": "default 0.5: the validation split has no "
                                   + ("negative" if pos.all() else "positive") + " case"}
        elif target_sensitivity:
            out[name] = {"threshold": threshold_for_sensitivity(pos, p[:, k], float(target_sensitivity)),
                         "method": f"sensitivity {float(target_sensitivity):g} on the validation split"}
        else:
            out[name] = {"threshold": youden_threshold(pos, p[:, k]), "method": "youden"}
    return out


class ThresholdSaver:
    """Ignite handler: after a validation run whose checkpoint became ``<ckpt_dir>/model.pt``, writes
    ``<ckpt_dir>/thresholds.json`` chosen on that run's probabilities.

    Attach it to the validation evaluator **after** the ``CheckpointSaver`` that writes ``model.pt`` (list it later
    in ``validate#handlers``): it detects a new checkpoint by the file's sha256.

    Args:
        ckpt_dir: the bundle's ``models`` folder.
        class_names: names in class-index order.
        task: ``"classification"`` (labels are indices or one-hot) or ``"multilabel"`` (multi-hot labels).
        positive_class: binary classification: the class whose probability the threshold applies to (default: the
            second class).
        method, target_sensitivity: see :func:`choose_thresholds`.
        model_file: the checkpoint name in ``ckpt_dir``.
    """

    def __init__(self, ckpt_dir: str, class_names: Sequence[str], task: str = "classification",
                 positive_class: str | None = None, method: str = "youden", target_sensitivity: float | None = None,
                 model_file: str = "model.pt"):
        from cadpipe.pipelines.kinds import KINDS

        self.kind = KINDS.get(task)
        if self.kind is None or not self.kind.thresholds:
            raise ValueError(f"task must be one with operating thresholds "
                             f"({', '.join(k for k, v in KINDS.items() if v.thresholds)}), got {task!r}")
        self.ckpt_dir, self.class_names, self.task = ckpt_dir, list(class_names), task
        self.positive_class = positive_class if positive_class is not None or len(self.class_names) != 2 \
            else self.class_names[1]
        self.method, self.target_sensitivity, self.model_file = method, target_sensitivity, model_file
        self._saved_sha: str | None = None
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_save)

    def _reset(self, engine=None) -> None:
        self._probs, self._labels = [], []

    def _collect(self, engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            self._probs.append(torch.as_tensor(item["pred"]).detach().cpu().float().reshape(-1).numpy())
            lab = torch.as_tensor(item["label"]).detach().cpu().float().reshape(-1).numpy()
            self._labels.append(self.kind.target_labels(lab))

    def _maybe_save(self, engine=None) -> str | None:
        model = os.path.join(self.ckpt_dir, self.model_file)
        if not self._probs or not os.path.isfile(model):
            return None
        sha = file_sha256(model)
        if sha == self._saved_sha:  # this run did not produce a new checkpoint
            return None
        return self.save(np.stack(self._probs), np.stack(self._labels), sha,
                         epoch=getattr(getattr(engine, "state", None), "epoch", None))

    def save(self, probs, labels, model_sha256: str, epoch: int | None = None) -> str:
        """Choose the thresholds on ``probs``/``labels`` and write ``thresholds.json``; returns its path."""
        names = self.class_names
        chosen = choose_thresholds(labels, probs, names, self.method, self.target_sensitivity)
        chosen = self.kind.thresholds_to_save(chosen, names, self.positive_class)  # binary: the positive class's
        doc = {"format": THRESHOLDS_FORMAT, "task": self.task, "class_names": names,
               "positive_class": self.positive_class if len(names) == 2 else None, "model_sha256": model_sha256,
               "split": "validation", "n": int(len(probs)), "epoch": epoch, "classes": chosen}
        path = os.path.join(self.ckpt_dir, THRESHOLDS_FILE)
        atomic_write_text(path, json.dumps(doc, indent=1))
        self._saved_sha = model_sha256
        logger.info("operating thresholds saved to %s: %s", path, {k: round(v["threshold"], 4)
                                                                   for k, v in chosen.items()})
        return path
