"""Which Ignite handlers each rank of a multi-GPU (``torch.distributed``) run attaches, and how the run ends.

The model-zoo ``multi_gpu_train.json`` pattern: rank 0 attaches every handler; the other ranks only those that
change the training and must run on every rank (``ValidationHandler``: validation metrics are all-gathered;
``LrScheduleHandler``: one learning rate for all; ``EarlyStopHandler``: a rank that went on alone would hang the
next all-reduce), never one that writes output (logs, TensorBoard, MLflow, checkpoints). Choosing by handler type
rather than by position keeps that true whatever order ``train.json`` lists them in and whatever
``--tracking`` adds.

The config parser builds every handler ``train.json`` lists before the choice is made, so on the other ranks a
TensorBoard handler has already opened a ``SummaryWriter`` (an events file and a writer thread). The handlers
dropped here are closed, so no rank but 0 keeps a writer thread running until the interpreter exits.

``leave_process_group`` is the ``finalize`` step: every rank waits for the others (a barrier) and then destroys
the process group, so no rank tears down its connections while another is still communicating or saving.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["handlers_for_rank", "leave_process_group"]


def _every_rank_types() -> tuple[type, ...]:
    from monai.handlers import EarlyStopHandler, LrScheduleHandler, ValidationHandler

    return ValidationHandler, LrScheduleHandler, EarlyStopHandler


def _close_writer(handler) -> None:
    """Close the ``SummaryWriter`` a dropped TensorBoard handler opened (its thread would outlive the run)."""
    from monai.handlers import TensorBoardHandler

    if isinstance(handler, TensorBoardHandler) and getattr(handler, "internal_writer", False):
        handler.close()


def handlers_for_rank(handlers: Sequence | None, rank: int | None = None) -> list | None:
    """``handlers`` on rank 0 (or without ``torch.distributed``); on other ranks only the every-rank ones.

    ``rank`` defaults to ``torch.distributed.get_rank()`` when a process group is initialised, else 0. The handlers
    left out are closed where they hold a writer (TensorBoard).
    """
    if rank is None:
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if handlers is None or rank == 0:
        return None if handlers is None else list(handlers)
    keep, kept = _every_rank_types(), []
    for h in handlers:
        if isinstance(h, keep):
            kept.append(h)
        else:
            _close_writer(h)
    return kept


def leave_process_group() -> bool:
    """End a distributed run: a barrier (every rank has finished training, validating and saving), then
    ``destroy_process_group``. Returns whether there was a process group to leave."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if dist.get_backend() == "nccl":  # NCCL's barrier runs on a device: the one initialize set for this rank
        import torch

        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
    dist.destroy_process_group()
    return True
