"""Training data pipelines that keep an accelerator busy: decoded data cached, random augmentations on the device.

On a CPU the bundles load, decode and augment each item in DataLoader worker processes (their shipped defaults).
On a GPU that loader sets the pace: the network waits for the workers. With ``device_pipeline`` (a train.json id,
true when ``device`` is CUDA) the train configs switch to MONAI's GPU pattern:

1. ``CacheDataset`` with ``cache_rate`` 1: every item is loaded and decoded once (the deterministic transforms);
2. :func:`to_device_steps`: ``ToDeviced`` at the end of the deterministic transforms, so the cache lives on the
   device and the random augmentations (crops, flips, rotations, intensity) run there as torch ops;
3. :func:`train_loader`: MONAI's ``ThreadDataLoader`` (no worker processes: CUDA tensors cannot cross them, and
   augmenting on the device leaves the loader little CPU work), else a plain ``DataLoader``;

and AMP (``amp``). :func:`default_workers` scales caching threads / loader workers with the CPUs present. The
same functions run with ``device_pipeline`` true on a CPU (``ToDeviced`` to the CPU), which is how the tests check
the GPU pipeline's logic without a GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

__all__ = ["to_device_steps", "train_loader", "default_workers", "on_cuda"]


def to_device_steps(device: torch.device | str, keys: Sequence[str], device_pipeline: bool) -> list:
    """``[ToDeviced(keys, device)]`` with ``device_pipeline`` (append to the deterministic transforms), else ``[]``."""
    if not device_pipeline:
        return []
    from monai.transforms import ToDeviced

    return [ToDeviced(keys=list(keys), device=torch.device(device))]


def train_loader(dataset, batch_size: int, shuffle: bool = True, num_workers: int = 0, device_pipeline: bool = False,
                 **kwargs):
    """The training loader: ``ThreadDataLoader`` (augmentation on the calling side, no worker processes) with
    ``device_pipeline``, else ``torch.utils.data.DataLoader`` with ``num_workers`` processes. ``kwargs`` (e.g.
    ``sampler`` for distributed training) go to the loader."""
    if device_pipeline:
        from monai.data import ThreadDataLoader

        return ThreadDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, **kwargs)
    from monai.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **kwargs)


def on_cuda(device: torch.device | str) -> bool:
    """True when ``device`` (a ``torch.device`` or a string such as ``"cuda:0"``, as MONAI Label passes it) is CUDA."""
    return torch.device(device).type == "cuda"


def default_workers(device: torch.device | str, cpu_default: int) -> int:
    """Worker processes / caching threads: ``cpu_default`` (the bundle's CPU setting) when training on the CPU; on
    an accelerator one per CPU, at most 16 (caching decodes in parallel; the CPUs are not needed by the forward)."""
    if torch.device(device).type == "cpu":
        return int(cpu_default)
    return max(1, min(16, os.cpu_count() or 1))
