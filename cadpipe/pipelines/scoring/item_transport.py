"""Cheap transport of preprocessed items from DataLoader worker processes to the scoring process.

A ``MetaTensor`` sent as is through a DataLoader's result queue costs both sides: its storage and every tensor in
its ``meta`` (``affine``...) travel as separate shared-memory segments, each passed as a file descriptor, and the
``MetaTensor`` is rebuilt through ``__torch_function__``. For a 2D chest X-ray scored at 128 px that was about
1 ms of the scoring process's CPU per study and more in the worker (``benchmarks/score.py`` docstring), on a
machine whose cores the network's forward needs.

:func:`pack_item` turns every ``MetaTensor`` value of an item into a plain record: the data as a numpy array
(pickled through the queue's pipe; arrays above ``SHARED_MEMORY_BYTES`` stay tensors and use shared memory, which
is cheaper for large volumes), the tensors of its top-level ``meta`` as numpy arrays (their keys remembered), and
its ``applied_operations``, ``is_batch`` and ``spatial_ndim`` unchanged. :func:`unpack_item` rebuilds the same
``MetaTensor``: same values, dtype, metadata (tensors again where they were tensors) and applied operations, so the
bundle's postprocessing and ``Invertd`` see what they would see without workers. Other values pass unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["pack_item", "unpack_item", "SHARED_MEMORY_BYTES"]

SHARED_MEMORY_BYTES = 8 << 20  # larger arrays go through shared memory (one segment) rather than the pipe

_TAG = "__cadpipe_metatensor__"


def pack_item(item: dict) -> dict:
    """``item`` with every ``MetaTensor`` value replaced by a record :func:`unpack_item` turns back into it."""
    from monai.data import MetaTensor

    return {k: _pack(v) if isinstance(v, MetaTensor) else v for k, v in item.items()}


def unpack_item(item: dict) -> dict:
    """The inverse of :func:`pack_item` (items that were not packed come back unchanged)."""
    return {k: _unpack(v) if isinstance(v, dict) and _TAG in v else v for k, v in item.items()}


def _pack(x) -> dict[str, Any]:
    data = x.as_tensor().detach()
    if data.device.type == "cpu" and data.nbytes <= SHARED_MEMORY_BYTES:
        data = data.numpy()
    meta, tensor_keys = {}, []
    for key, value in x.meta.items():
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            meta[key] = value.detach().numpy()
            tensor_keys.append(key)
        else:
            meta[key] = value
    return {_TAG: 1, "data": data, "meta": meta, "tensor_keys": tensor_keys,
            "applied_operations": list(x.applied_operations), "is_batch": bool(x.is_batch),
            "spatial_ndim": getattr(x, "spatial_ndim", None)}


def _unpack(record: dict):
    from monai.data import MetaTensor

    data = record["data"]
    data = torch.from_numpy(data) if isinstance(data, np.ndarray) else data
    meta = dict(record["meta"])
    for key in record["tensor_keys"]:
        meta[key] = torch.from_numpy(meta[key])
    kwargs = {"spatial_ndim": record["spatial_ndim"]} if record.get("spatial_ndim") is not None else {}
    out = MetaTensor(data, meta=meta, applied_operations=record["applied_operations"], **kwargs)
    out.is_batch = record["is_batch"]
    return out
