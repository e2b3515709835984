"""Checks ``cadpipe score`` runs before discovery and before it creates the output folder: the bundle's files and
trained weights, the device, the options, the input or manifest, that the output folder does not hold another
bundle's results (:mod:`~cadpipe.pipelines.scoring.output_owner`), and the optional extras the run needs.

Each failure raises :class:`~cadpipe.errors.CadpipeInputError` (the path and the reason) or
:class:`~cadpipe.extras.MissingExtraError`; both are usage errors (exit status 2), and nothing has been written.
"""

from __future__ import annotations

import os

import torch

from cadpipe.errors import CadpipeInputError
from cadpipe.extras import require
from cadpipe.pipelines.inference.bundle_runner import REQUIRED_CONFIGS
from cadpipe.pipelines.scoring.output_owner import check_output_owner

WEIGHTS = os.path.join("models", "model.pt")


def check_bundle(bundle: str) -> None:
    """The bundle folder has its configs and trained weights."""
    if not os.path.isdir(bundle):
        raise CadpipeInputError(bundle, "bundle folder does not exist")
    for rel in REQUIRED_CONFIGS:
        if not os.path.isfile(os.path.join(bundle, rel)):
            raise CadpipeInputError(os.path.join(bundle, rel), "bundle config file is missing")
    weights = os.path.join(bundle, WEIGHTS)
    if not os.path.isfile(weights):
        name = os.path.basename(os.path.abspath(bundle))
        raise CadpipeInputError(weights, "no trained weights: the bundles in bundles/ ship without them; train this "
                                         "one (its docs/README.md) or score with the briefly trained copy "
                                         f"`make demo` leaves in demo_out/bundles/{name}")


def check_device(device: str | None) -> None:
    """``device`` names a torch device that exists here (None: the default, always fine)."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise CadpipeInputError(None, f"--device {device!r} is not a device name (cpu, cuda, cuda:1): {err}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CadpipeInputError(None, f"--device {device!r}: no CUDA device is available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise CadpipeInputError(None, f"--device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise CadpipeInputError(None, f"--device {device!r}: only cpu and cuda devices are supported")


def check_options(cfg) -> None:
    """Numeric options in range (the command line checks them too; this covers callers of ``score()``)."""
    bad = [f"{name} {value}" for name, value, low in (
        ("--batch-size", cfg.batch_size, 1), ("--workers", cfg.workers, 0), ("--limit", cfg.limit, 1),
        ("--threads", cfg.threads, 1), ("--streams", cfg.streams, 1), ("--ray-actors", cfg.ray_actors, 1))
        if value is not None and value < low]
    if bad:
        raise CadpipeInputError(None, f"out of range: {', '.join(bad)} (--workers >= 0, the others >= 1)")


def check_source(cfg) -> None:
    """The input folder/file or the manifest exists (one of the two is given)."""
    if bool(cfg.input) == bool(cfg.manifest):
        raise CadpipeInputError(None, "give one of --input or --manifest")
    if cfg.manifest:
        if not os.path.isfile(cfg.manifest):
            raise CadpipeInputError(cfg.manifest, "manifest file does not exist")
    elif not os.path.exists(cfg.input):
        raise CadpipeInputError(cfg.input, "input does not exist")
    if os.path.isfile(cfg.output):
        raise CadpipeInputError(cfg.output, "output exists and is a file, not a folder")


def preflight(cfg) -> None:
    """Everything :func:`~cadpipe.pipelines.scoring.score.score` can check before it starts (module docstring)."""
    check_options(cfg)
    check_source(cfg)
    check_bundle(cfg.bundle)
    check_output_owner(cfg.output, cfg.bundle, cfg.force)
    if cfg.ray is not None:
        require("ray", "cadpipe score --ray")
    else:
        check_device(cfg.device)
