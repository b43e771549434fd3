"""The processes of a run launched with ``torchrun``: one primitive for every command that uses them.

``torchrun --nproc_per_node N …`` starts ``N`` copies of a command with ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in their environment. :func:`setup_distributed` reads them and, when
``WORLD_SIZE > 1``, joins the process group: NCCL with one GPU per process (``cuda:LOCAL_RANK``)
when the command runs on CUDA, Gloo on the CPU otherwise. Without ``torchrun`` it is a single
process of rank 0 and no group is made. Users: ``aivarda train-model`` / ``learn-b`` (data-parallel
training) and ``aivarda run`` (ensemble members forecast on every process,
:mod:`aivarda.models.distributed`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from aivarda.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """This process: the number of processes, its global and node-local rank, its device."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device


def is_rank0() -> bool:
    """Whether this is the process that writes and prints (rank 0, or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def setup_distributed(device: str, timeout: timedelta | None = None) -> DistInfo:
    """Read the torchrun environment; initialise the process group when ``WORLD_SIZE > 1``.

    ``device``: ``cuda``, ``cpu`` or ``auto`` (CUDA when available), as in the commands' configs.
    ``timeout``: how long a collective waits for the other processes (torch's default when ``None``).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device: cuda requested but CUDA is not available")
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        kwargs = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world, **kwargs)
    return DistInfo(world, rank, local_rank, dev)


def end_distributed() -> None:
    """Leave the process group (if this process is in one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def rank0_first(info: DistInfo) -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks (cached work done once)."""
    if info.world_size > 1 and info.rank != 0:
        dist.barrier()
    yield
    if info.world_size > 1 and info.rank == 0:
        dist.barrier()
