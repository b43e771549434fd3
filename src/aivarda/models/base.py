"""The forecast-model contract, and the one trajectory function every caller uses.

A forecast model maps a state to the state ``dt`` later. States are ``float32`` tensors in
physical units with the state shape ``S`` (``[C, H, W]`` for an atmosphere, ``[N]`` for
Lorenz-96), optionally with leading batch dimensions (ensemble members). ``step`` must be
differentiable with torch autograd: 4DVar back-propagates through it (the adjoint model).
Each model owns its own normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as _checkpoint

if TYPE_CHECKING:
    from aivarda.geometry import Geometry


@runtime_checkable
class ForecastModel(Protocol):
    """``x_{k+1} = M(x_k)``; ``dt`` is the step length (hours for atmospheric models,
    model time units for Lorenz-96); ``geometry`` the grid and channels of its states (``None``
    for a state that is not on a sphere, e.g. Lorenz-96)."""

    dt: float
    geometry: Geometry | None

    def step(self, x: Tensor) -> Tensor:
        """One step: ``[..., *S] → [..., *S]``."""
        ...

    def forecast(self, x: Tensor, n: int) -> Tensor:
        """``n`` steps: ``[..., *S] → [..., *S]`` (the state after ``n·dt``)."""
        ...


@runtime_checkable
class HasLinearPart(Protocol):
    """A forecast model that carries a cheap, linear(-affine) approximation of itself, e.g. the
    fitted linear prior under a neural network (the inner-loop model of a multi-incremental
    4DVar, :mod:`aivarda.assimilation.incremental`)."""

    def linear_part(self) -> ForecastModel:
        """The approximation as a model of its own (sharing weights; the original is unchanged)."""
        ...


def iterate_trajectory(
    model: ForecastModel, x0: Tensor, steps: Sequence[int], *, checkpoint: bool = False
) -> Iterator[Tensor]:
    """The states after ``steps[0]``, ``steps[0] + steps[1]``, … model steps from ``x0``, one at a
    time (a long forecast holds one state). With ``checkpoint`` (and gradients on) every model step
    is its own ``torch.utils.checkpoint`` segment: autograd keeps only the states, and the backward
    pass re-runs one step at a time."""
    x = x0
    for n in steps:
        if checkpoint and torch.is_grad_enabled() and x.requires_grad:
            for _ in range(int(n)):
                x = _checkpoint(model.step, x, use_reentrant=False)
        else:
            x = model.forecast(x, int(n))
        yield x


def trajectory(model: ForecastModel, x0: Tensor, steps: Sequence[int], *, checkpoint: bool = False) -> Tensor:
    """``[x0, M^{s_1}(x0), M^{s_1+s_2}(x0), …]`` as ``[len(steps) + 1, *x0.shape]`` (see
    :func:`iterate_trajectory`; ``x0`` may carry batch dimensions)."""
    return torch.stack([x0, *iterate_trajectory(model, x0, steps, checkpoint=checkpoint)])
