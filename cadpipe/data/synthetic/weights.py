"""Seeded, *untrained* weights for a bundle: for tests and benchmarks that exercise plumbing or speed, never
accuracy. The weights are random (``torch.manual_seed``) and must never be presented as a trained model."""

from __future__ import annotations

import os
import shutil

__all__ = ["write_untrained_weights", "copy_bundle_untrained"]


def write_untrained_weights(bundle_root: str | os.PathLike, overrides: dict | None = None, seed: int = 0) -> str:
    """Write ``<bundle_root>/models/model.pt``: the seeded initial ``state_dict`` of the bundle's ``network_def``
    (built from ``configs/inference.json`` with ``overrides``). Returns the checkpoint path."""
    import torch
    from monai.bundle import ConfigParser

    root = os.fspath(bundle_root)
    parser = ConfigParser()
    parser.read_config(os.path.join(root, "configs", "inference.json"))
    parser["bundle_root"] = root
    for key, value in (overrides or {}).items():
        parser[key] = value
    torch.manual_seed(seed)
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    path = os.path.join(root, "models", "model.pt")
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def copy_bundle_untrained(src: str | os.PathLike, dest: str | os.PathLike, overrides: dict | None = None,
                          seed: int = 0) -> str:
    """Copy the bundle ``src`` to the new folder ``dest`` (without its models/eval outputs) and give the copy
    seeded untrained weights. Returns ``dest``."""
    dest = os.fspath(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("models", "eval", "__pycache__"))
    write_untrained_weights(dest, overrides, seed)
    return dest
