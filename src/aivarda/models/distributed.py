"""Ensemble-member forecasts spread over the processes of a ``torch.distributed`` group.

Launched with ``torchrun --nproc_per_node N`` (:mod:`aivarda.parallel`), process 0 drives the run
with a :class:`MemberParallelModel`, and processes ``1 … N − 1`` hold the same forecast model on
their own device (``cuda:LOCAL_RANK``; the CPU with Gloo) and :func:`serve` it. A batched member
forecast ``forecast(x, n)`` with ``x`` of shape ``[K, *S]`` (``S`` the state shape; more leading
dimensions are flattened into ``K``) is split into ``N`` contiguous shards,

    shard r = members [o_r, o_r + k_r),   k_r = ⌊K/N⌋ + (1 if r < K mod N else 0),   o_r = Σ_{q<r} k_q,

(uneven ``K`` allowed; ``k_r = 0`` for ``r ≥ K``). Process 0 broadcasts a header (what, ``n``,
dtype, shape), sends each shard to its process, forecasts shard 0 itself meanwhile, and receives the
others in rank order: the gathered ``[K, *S]`` is, member for member, what ``model.forecast`` gives
on that member's shard (``tests/test_distributed_members.py`` checks it bit for bit against the
single-process batched forecast on the CPU, ``K = 5`` over two processes).

Forecasts of a single state (the deterministic forecasts, the 4DVar window), forecasts that
autograd must differentiate (``x.requires_grad`` with gradients on) and ``step`` stay on process 0:
only batched, gradient-free forecasts are shared. :func:`stop_serving` (called by process 0 in a
``finally``, so also when the run fails) ends the other processes' :func:`serve` loops.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import Tensor

from aivarda.models.base import ForecastModel
from aivarda.parallel import DistInfo

if TYPE_CHECKING:
    from aivarda.geometry import Geometry

STOP, FORECAST = 0, 1
"""Header operations: end the serve loop; forecast the shard ``n`` steps."""
MAX_DIMS = 8
"""Most dimensions of a shard (members + state) the header carries."""
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
"""The state dtypes a header can name (by position)."""
_HEADER = 4 + MAX_DIMS  # op, n, dtype, ndim, shape (zero-padded)


def shard_sizes(members: int, world_size: int) -> list[int]:
    """``k_r`` of each process ``r`` (module docstring): ``⌊K/N⌋``, one more for the first ``K mod N``."""
    base, extra = divmod(int(members), int(world_size))
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def _header(info: DistInfo, op: int, n: int = 0, dtype: torch.dtype = torch.float32,
            shape: tuple[int, ...] = ()) -> Tensor:
    if len(shape) > MAX_DIMS:
        raise ValueError(f"member forecast: a [K, *S] batch of at most {MAX_DIMS} dimensions, got {len(shape)}")
    if dtype not in DTYPES:
        raise ValueError(f"member forecast: states of dtype {dtype} cannot be shared (one of {DTYPES})")
    values = [op, n, DTYPES.index(dtype), len(shape), *shape] + [0] * (MAX_DIMS - len(shape))
    return torch.tensor(values, dtype=torch.int64, device=info.device)


class MemberParallelModel:
    """A :class:`~aivarda.models.base.ForecastModel` on process 0 whose batched member forecasts
    run on every process of the group (module docstring). ``state_ndim``: the dimensions of one
    state (default 3, ``[C, H, W]``, for a model with a geometry)."""

    def __init__(self, model: ForecastModel, info: DistInfo, state_ndim: int | None = None) -> None:
        if info.rank != 0:
            raise ValueError(f"MemberParallelModel drives the forecasts from process 0, not {info.rank}; "
                             "the other processes serve()")
        if state_ndim is None:
            if model.geometry is None:
                raise ValueError("MemberParallelModel: state_ndim is needed for a model without a geometry")
            state_ndim = 3
        self.model = model
        self.info = info
        self.state_ndim = int(state_ndim)
        self.dt: float = model.dt
        self.geometry: Geometry | None = model.geometry

    def step(self, x: Tensor) -> Tensor:
        """One step, on this process (the checkpointed 4DVar trajectory steps with gradients)."""
        return self.model.step(x)

    def forecast(self, x: Tensor, n: int) -> Tensor:
        """``n`` steps; ``[K, *S]`` batches without gradients are shared over the processes."""
        leading = x.shape[: x.dim() - self.state_ndim]
        members = math.prod(leading)
        if (self.info.world_size == 1 or x.dim() <= self.state_ndim or members < 2
                or (torch.is_grad_enabled() and x.requires_grad)):
            return self.model.forecast(x, n)
        state_shape = x.shape[x.dim() - self.state_ndim:]
        batch = x.reshape(members, *state_shape)
        return self._shared(batch, int(n)).reshape(*leading, *state_shape)

    def _shared(self, x: Tensor, n: int) -> Tensor:
        info = self.info
        sizes = shard_sizes(x.shape[0], info.world_size)
        dist.broadcast(_header(info, FORECAST, n, x.dtype, tuple(x.shape)), src=0)
        shards = x.split(sizes)
        others = [r for r in range(1, info.world_size) if sizes[r]]
        outgoing = {r: shards[r].to(info.device).contiguous() for r in others}
        sends = [dist.isend(outgoing[r], dst=r) for r in others]
        answers = {r: torch.empty_like(outgoing[r]) for r in others}
        try:
            own = self.model.forecast(shards[0], n)
        finally:  # the exchange completes even when this process's own shard fails
            for r in others:
                dist.recv(answers[r], src=r)
            for request in sends:
                request.wait()
        return torch.cat([own, *(answers[r].to(own.device, own.dtype) for r in others)])


def serve(model: ForecastModel, info: DistInfo) -> int:
    """On processes ``1 … N − 1``: forecast the shards process 0 sends until it sends stop;
    returns the number of shards forecast."""
    if info.rank == 0:
        raise ValueError("serve: process 0 drives the forecasts (MemberParallelModel)")
    header = torch.empty(_HEADER, dtype=torch.int64, device=info.device)
    served = 0
    while True:
        dist.broadcast(header, src=0)
        op, n, dtype, ndim, *dims = header.tolist()
        if op == STOP:
            return served
        if op != FORECAST:
            raise RuntimeError(f"serve: unknown operation {op} from process 0")
        shape = dims[:ndim]
        count = shard_sizes(shape[0], info.world_size)[info.rank]
        if not count:
            continue
        x = torch.empty((count, *shape[1:]), dtype=DTYPES[dtype], device=info.device)
        dist.recv(x, src=0)
        with torch.no_grad():
            y = model.forecast(x, n)
        if y.shape != x.shape:
            raise RuntimeError(f"serve: the model returned {tuple(y.shape)} for a shard of {tuple(x.shape)}")
        dist.send(y.to(x.dtype).contiguous(), dst=0)
        served += 1


def stop_serving(info: DistInfo) -> None:
    """On process 0: end the other processes' :func:`serve` loops (nothing without a group).
    Call it once, in a ``finally``, so that a failing run does not leave them waiting."""
    if info.world_size > 1 and info.rank == 0:
        dist.broadcast(_header(info, STOP), src=0)
