"""Helpers the bundle tests share: a bundle's config paths and a MONAI ``ConfigWorkflow`` over them."""

from __future__ import annotations

import os


def config_paths(bundle, *names: str) -> list[str]:
    """``<bundle>/configs/<name>`` for each name (e.g. ``"train.json", "evaluate.json"``)."""
    return [os.path.join(bundle, "configs", n) for n in names]


def bundle_workflow(bundle, names, wtype: str, **override):
    """A ``ConfigWorkflow`` of ``names`` layered in order, with the bundle's metadata and logging config."""
    from monai.bundle import ConfigWorkflow

    return ConfigWorkflow(config_file=config_paths(bundle, *names),
                          meta_file=os.path.join(bundle, "configs", "metadata.json"),
                          logging_file=os.path.join(bundle, "configs", "logging.conf"), workflow_type=wtype, **override)
