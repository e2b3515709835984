"""The preprocessing a model was trained with (``models/preprocessing.json``), so inference uses the same.

Training writes, beside each new ``models/model.pt``, the values of the bundle's preprocessing ids it used (image
size, CLAHE on/off, lung crop, patch size, spacing, input channels...; which ids is the bundle's choice, listed in
its ``train.json`` handler :class:`~cadpipe.pipelines.tasks.training_record.PreprocessingSaver`) together with the
weights' sha256. A bundle's ``inference.json`` (and ``evaluate.json``) then reads each such id through
:func:`trained`, so ``monai.bundle run`` inference and evaluation, ``cadpipe score``, the portal and MONAI Label all
prepare images the way the weights saw them in training. An explicit override that differs from what training used
(``--image_size 96`` on ``monai.bundle run``, ``--override image_size=96`` on ``cadpipe score``) is honoured, with a
warning naming both values (:func:`warn_conflicts`).

File format (JSON)::

    {"format": "cadpipe-preprocessing/1", "model_sha256": "<sha256 of model.pt>",
     "params": {"image_size": 128, "use_clahe": true}}

A model without the file, or with one written for other weights, uses the config's defaults.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from cadpipe.errors import CadpipeInputError
from cadpipe.pipelines.outputs.files import file_sha256

__all__ = ["PREPROCESSING_FILE", "PREPROCESSING_FORMAT", "load_trained_preprocessing", "trained", "conflicts",
           "warn_conflicts"]

logger = logging.getLogger(__name__)

PREPROCESSING_FILE = "preprocessing.json"
PREPROCESSING_FORMAT = "cadpipe-preprocessing/1"
_cache: dict[tuple, dict] = {}


def _record_path(model_file: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(model_file)), PREPROCESSING_FILE)


def load_trained_preprocessing(model_file: str) -> dict[str, Any]:
    """``{id: value}`` saved by training for the weights ``model_file``; ``{}`` when there is no record, no weights,
    or the record belongs to other weights (its sha256 differs).

    Raises:
        CadpipeInputError: the record exists but is not valid JSON in the format above (names the file and why).
    """
    path = _record_path(model_file)
    try:
        st_model, st_rec = os.stat(model_file), os.stat(path)
    except OSError:
        return {}
    key = (os.path.abspath(path), st_rec.st_size, st_rec.st_mtime_ns, st_model.st_size, st_model.st_mtime_ns)
    if key in _cache:
        return dict(_cache[key])
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as err:
        raise CadpipeInputError(path, f"not a readable preprocessing record: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != PREPROCESSING_FORMAT or not isinstance(doc.get("params"),
                                                                                                   dict):
        raise CadpipeInputError(path, f"not a preprocessing record (expected \"format\": "
                                      f"\"{PREPROCESSING_FORMAT}\" and \"params\")")
    params = doc["params"] if doc.get("model_sha256") == file_sha256(model_file) else {}
    _cache[key] = dict(params)
    return dict(params)


def trained(model_file: str, name: str, default: Any) -> Any:
    """The value of preprocessing id ``name`` training used for ``model_file``, else ``default`` (what a bundle
    config's id reads: ``"image_size": "$...trained(@ckpt_path, 'image_size', 224)"``)."""
    return load_trained_preprocessing(model_file).get(name, default)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (bool, str)) or isinstance(b, (bool, str)):
        from cadpipe.flags import as_bool

        try:  # "false" on a command line means False
            return as_bool(a) == as_bool(b)
        except (TypeError, ValueError):
            return str(a) == str(b)
    return a == b


def conflicts(model_file: str, values: dict[str, Any]) -> list[str]:
    """One line per id in ``values`` whose value differs from what training used for ``model_file``."""
    saved = load_trained_preprocessing(model_file)
    return [f"{name} {value!r} differs from the {saved[name]!r} this model was trained with (models/"
            f"{PREPROCESSING_FILE}); using {value!r} as asked" for name, value in values.items()
            if name in saved and not _same(value, saved[name])]


def warn_conflicts(model_file: str, values: dict[str, Any]) -> list[str]:
    """Log :func:`conflicts` as warnings and return them (a bundle's ``initialize`` list calls this)."""
    lines = conflicts(model_file, values)
    for line in lines:
        logger.warning("%s", line)
    return lines
