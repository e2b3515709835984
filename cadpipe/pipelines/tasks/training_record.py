"""Saving, with each new checkpoint, the preprocessing it was trained with (``models/preprocessing.json``).

:class:`PreprocessingSaver` is an ignite handler listed in a bundle's ``train.json`` right after the
``CheckpointSaver`` that writes ``models/model.pt``. At the end of each run of its engine it checks whether
``model.pt`` changed (sha256); when it did, it writes the preprocessing ids it was given, as training resolved
them, with that sha256 (format: :mod:`cadpipe.pipelines.inference.trained_preprocessing`, which reads it back).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

from cadpipe.pipelines.inference.trained_preprocessing import PREPROCESSING_FILE, PREPROCESSING_FORMAT
from cadpipe.pipelines.outputs.files import atomic_write_text, file_sha256

__all__ = ["PreprocessingSaver"]

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a config value (tuples and tensors/arrays to lists, numpy scalars to numbers)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


class PreprocessingSaver:
    """Write ``<ckpt_dir>/preprocessing.json`` whenever ``<ckpt_dir>/<model_file>`` is new (see module docstring).

    Args:
        ckpt_dir: the folder of the checkpoint (the bundle's ``models/``).
        params: ``{id: value}`` of the bundle's preprocessing ids, e.g. ``{"image_size": "@image_size"}``.
        model_file: the checkpoint's file name.
    """

    def __init__(self, ckpt_dir: str, params: Mapping[str, Any], model_file: str = "model.pt"):
        self.ckpt_dir, self.model_file = ckpt_dir, model_file
        self.params = {str(k): _plain(v) for k, v in dict(params).items()}
        json.dumps(self.params)  # fail at start, not after the first epoch, on a value JSON cannot hold
        self._saved_sha: str | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self.maybe_save)

    def maybe_save(self, engine=None) -> str | None:
        """Write the record when the checkpoint changed since the last write; its path, else None."""
        model = os.path.join(self.ckpt_dir, self.model_file)
        if not os.path.isfile(model):
            return None
        sha = file_sha256(model)
        if sha == self._saved_sha:
            return None
        path = os.path.join(self.ckpt_dir, PREPROCESSING_FILE)
        atomic_write_text(path, json.dumps({"format": PREPROCESSING_FORMAT, "model_sha256": sha,
                                            "params": self.params}, indent=1))
        self._saved_sha = sha
        logger.info("preprocessing used in training saved to %s: %s", path, self.params)
        return path
