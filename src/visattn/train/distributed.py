"""Distributed data parallel under ``torchrun``: the process group, this process's place in it, and the reductions
the trainer needs. No launcher of our own: ``torchrun`` starts the processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` reads them.

One machine, two processes::

    torchrun --nproc-per-node 2 -m visattn arena --mixers softmax linear --task digits

Several machines: the same command on each, with torchrun's rendezvous naming one endpoint all of them reach
(``--nnodes 2 --rdzv-backend c10d --rdzv-endpoint HOST:29400 --rdzv-id RUN``); see docs/arena.md. The backend is
``gloo`` on CPU and ``nccl`` on CUDA; each process uses the GPU of its ``LOCAL_RANK``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine, the
    ``device`` it computes on and the process group's ``backend`` (None when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, writes files and draws progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        return int(text)
    except ValueError as err:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from err


def default_device(local_rank: int = 0) -> torch.device:
    """The GPU of ``local_rank`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(device: str | torch.device | None = None) -> DistContext:
    """Join the process group ``torchrun`` set up (``WORLD_SIZE`` > 1), or return a single-process context.

    ``device`` None picks :func:`default_device`; the backend is ``nccl`` for CUDA devices and ``gloo`` otherwise.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world_size} must satisfy 0 <= RANK < WORLD_SIZE")
    chosen = default_device(local_rank) if device is None else torch.device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
    if world_size == 1:
        return DistContext(device=chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    log.debug("rank %d of %d joined the %s process group on %s", rank, world_size, backend, chosen)
    return DistContext(rank, world_size, local_rank, chosen, backend)


def shutdown(context: DistContext) -> None:
    """Leave the process group (a no-op for a single process)."""
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (``tensor`` itself when not distributed)."""
    if context.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of ``tensor`` over all processes."""
    return all_reduce_sum(tensor, context) / context.world_size


def all_gather_objects(value: Any, context: DistContext) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` when not distributed)."""
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistContext) -> None:
    """Wait for every process (a no-op for a single process)."""
    if context.distributed:
        dist.barrier()
