"""Operating thresholds saved with a model (``models/thresholds.json``) and the calls they give.

Training chooses one threshold per class on the validation split (:mod:`cadpipe.pipelines.tasks.thresholds`) and
writes them beside ``models/model.pt``; scoring, the portal and MONAI Label read them here, so the ``predicted``
column, the "positive"/"negative" wording of the report and MONAI Label's result JSON agree.

File format (JSON)::

    {"format": "cadpipe-thresholds/1", "task": "classification" | "multilabel",
     "class_names": [...], "positive_class": "PNEUMONIA" | null, "model_sha256": "<sha256 of model.pt>",
     "split": "validation", "n": 120, "epoch": 3,
     "classes": {"PNEUMONIA": {"threshold": 0.42, "method": "youden"}, ...}}

Decisions (:func:`decide`):

- binary classification (two classes): the positive class (``positive_class``, else the second class) is predicted
  when its probability is at or above its threshold;
- multi-class (e.g. BACH, 4 classes): the predicted class is the arg-max of the probabilities (a probability
  vector has one winner; per-class thresholds would leave some images with none or several); each class's
  one-vs-rest threshold only says whether its probability is "above threshold" in the report;
- multi-label (ChestX-ray14): every class at or above its threshold is a finding; ``No Finding`` is predicted only
  when no pathology is, and never beside one.

A model without ``thresholds.json`` (trained before thresholds were saved), or with one saved for other weights,
keeps the old behaviour (arg-max, 0.5 for multi-label) and :attr:`OperatingThresholds.note` says so.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.files import file_sha256

__all__ = ["THRESHOLDS_FILE", "THRESHOLDS_FORMAT", "DEFAULT_THRESHOLD", "NO_FINDING", "OperatingThresholds",
           "load_thresholds", "decide", "result_calls", "saved_threshold", "saved_thresholds", "threshold_description"]

THRESHOLDS_FILE = "thresholds.json"
THRESHOLDS_FORMAT = "cadpipe-thresholds/1"
DEFAULT_THRESHOLD = 0.5
NO_FINDING = "No Finding"


@dataclass(frozen=True)
class OperatingThresholds:
    """Per-class thresholds of one model; ``saved`` is False when the defaults (0.5) are in use."""

    thresholds: dict[str, float] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    positive_class: str | None = None
    saved: bool = False
    note: str = ""
    path: str = ""

    def threshold(self, name: str) -> float:
        return float(self.thresholds.get(name, DEFAULT_THRESHOLD))

    def describe(self, name: str) -> str:
        """How ``name``'s threshold was chosen, in words."""
        if not self.saved:
            return "default 0.5 (no operating threshold saved with this model)"
        method = self.methods.get(name, "")
        return {"youden": "Youden point on the validation split"}.get(method, method or "saved with the model")


def _fallback(note: str, path: str = "") -> OperatingThresholds:
    return OperatingThresholds(saved=False, note=note, path=path)


def load_thresholds(model_file: str, model_sha256: str | None = None) -> OperatingThresholds:
    """The thresholds saved beside ``model_file`` (``<models>/thresholds.json``).

    Missing file → defaults with a note; a file saved for other weights (``model_sha256`` differs) → defaults with
    a note (the thresholds of an older checkpoint must not decide for a newer one).

    Raises:
        CadpipeInputError: the file exists but is not valid JSON in the format above (names the file and why).
    """
    path = os.path.join(os.path.dirname(os.path.abspath(model_file)), THRESHOLDS_FILE)
    if not os.path.isfile(path):
        return _fallback("no operating threshold saved with this model: 0.5 used")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        raise CadpipeInputError(path, f"not a readable thresholds file: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != THRESHOLDS_FORMAT:
        raise CadpipeInputError(path, f"not a thresholds file (expected \"format\": \"{THRESHOLDS_FORMAT}\")")
    classes = doc.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise CadpipeInputError(path, "no \"classes\" with thresholds")
    thresholds, methods = {}, {}
    for name, entry in classes.items():
        value = entry.get("threshold") if isinstance(entry, dict) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0 \
                or math.isnan(float(value)):
            raise CadpipeInputError(path, f"class {name!r}: threshold must be a number in [0, 1], got {value!r}")
        thresholds[str(name)] = float(value)
        methods[str(name)] = str(entry.get("method", ""))
    saved_for = doc.get("model_sha256")
    if model_sha256 and saved_for and saved_for != model_sha256:
        return _fallback("the saved operating thresholds belong to other weights (thresholds.json does not match "
                         "model.pt): 0.5 used", path)
    return OperatingThresholds(thresholds, methods, doc.get("positive_class"), True, "", path)


def saved_threshold(model_file: str, class_name: str, default: float = DEFAULT_THRESHOLD) -> float:
    """The operating threshold of ``class_name`` saved for the weights ``model_file`` (checked by sha256), else
    ``default``: what a bundle config's ``threshold`` id reads (``monai.bundle run`` inference)."""
    if not os.path.isfile(model_file):
        return float(default)
    ops = load_thresholds(model_file, file_sha256(model_file))
    return ops.threshold(class_name) if ops.saved and class_name in ops.thresholds else float(default)


def saved_thresholds(model_file: str) -> dict[str, float]:
    """Every class's operating threshold saved for the weights ``model_file`` (checked by sha256); ``{}`` when none
    are (evaluation then reports at 0.5 only)."""
    if not os.path.isfile(model_file):
        return {}
    ops = load_thresholds(model_file, file_sha256(model_file))
    return dict(ops.thresholds) if ops.saved else {}


def threshold_description(model_file: str, class_name: str) -> str:
    """Where :func:`saved_threshold` takes ``class_name``'s threshold from, in words (evaluation's metrics say it)."""
    if not os.path.isfile(model_file):
        return "default 0.5 (no weights)"
    ops = load_thresholds(model_file, file_sha256(model_file))
    if ops.saved and class_name in ops.thresholds:
        return f"saved with the model ({THRESHOLDS_FILE}: {ops.describe(class_name)})"
    return ops.note or "default 0.5"


def decide(task: str, names: list[str], probs, ops: OperatingThresholds) -> dict:
    """Calls for one image: ``{"predicted": str, "above": [names at or above their threshold]}``, as the bundle's
    task kind makes them (:meth:`cadpipe.pipelines.kinds.classification.Classification.decide`).

    ``predicted``: binary → the positive class or the other one; multi-class → arg-max; multi-label → the
    findings joined by ``;`` (``No Finding`` only when nothing else is above threshold; empty when neither).
    """
    from cadpipe.pipelines.kinds import kind_of

    return kind_of(task).decide(names, probs, ops)


def result_calls(task: str, names: list[str], probs, ops: OperatingThresholds) -> dict:
    """The calls as a JSON-ready dict (MONAI Label's result): ``predicted``, one entry per class with its
    ``score``, ``threshold`` and ``call`` (``"positive"`` when the class is predicted / a finding), and ``note``
    (why 0.5 is used, when it is)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    d = decide(task, names, p, ops)
    positive = set(d["predicted"].split(";")) if d["predicted"] else set()
    return {"predicted": d["predicted"], "thresholds_saved": ops.saved, "note": ops.note,
            "classes": [{"label": n, "score": float(v), "threshold": ops.threshold(n),
                         "call": "positive" if n in positive else "negative"} for n, v in zip(names, p)]}
