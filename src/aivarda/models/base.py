"""The forecast-model contract (DESIGN §3).

A forecast model maps a state to the state ``dt`` later. States are ``float32`` tensors in
physical units with the state shape ``S`` (``[C, H, W]`` for an atmosphere, ``[N]`` for
Lorenz-96), optionally with leading batch dimensions (ensemble members). ``step`` must be
differentiable with torch autograd: 4DVar back-propagates through it (the adjoint model).
Each model owns its own normalisation.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class ForecastModel(Protocol):
    """``x_{k+1} = M(x_k)``; ``dt`` is the step length (hours for atmospheric models,
    model time units for Lorenz-96)."""

    dt: float

    def step(self, x: Tensor) -> Tensor:
        """One step: ``[..., *S] → [..., *S]``."""
        ...

    def forecast(self, x: Tensor, n: int) -> Tensor:
        """``n`` steps: ``[..., *S] → [..., *S]`` (the state after ``n·dt``)."""
        ...
