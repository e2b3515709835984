"""Which Ignite handlers each rank of a multi-GPU (``torch.distributed``) run attaches.

The model-zoo ``multi_gpu_train.json`` pattern: rank 0 attaches every handler; the other ranks only those that
change the training and must run on every rank (``ValidationHandler``: validation metrics are all-gathered;
``LrScheduleHandler``: one learning rate for all; ``EarlyStopHandler``: a rank that went on alone would hang the
next all-reduce), never one that writes output (logs, TensorBoard, MLflow, checkpoints). Choosing by handler type
rather than by position keeps that true whatever order ``train.json`` lists them in and whatever
``--tracking`` adds.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["handlers_for_rank"]


def _every_rank_types() -> tuple[type, ...]:
    from monai.handlers import EarlyStopHandler, LrScheduleHandler, ValidationHandler

    return ValidationHandler, LrScheduleHandler, EarlyStopHandler



def handlers_for_rank(handlers: Sequence | None, rank: int | None = None) -> list | None:
    """``handlers`` on rank 0 (or without ``torch.distributed``); on other ranks only the every-rank ones.

    ``rank`` defaults to ``torch.distributed.get_rank()`` when a process group is initialised, else 0.
    """
    if rank is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if handlers is None or rank == 0:
        return None if handlers is None else list(handlers)
    keep = _every_rank_types()
    return [h for h in handlers if isinstance(h, keep)]
