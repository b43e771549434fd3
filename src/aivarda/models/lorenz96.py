"""The Lorenz-96 model (Lorenz 1996), our own implementation for the benchmark and the tests.

``dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F`` with cyclic indices, ``N = 40``, ``F = 8``,
integrated with one classical Runge–Kutta (RK4) step of ``dt = 0.05`` per model step (as in
DAPPER's ``dapper/mods/Lorenz96``). States are ``[..., N]`` tensors (leading dimensions are batch
members). Satisfies :class:`aivarda.models.base.ForecastModel`.

The RK4 step is a ``torch.autograd.Function`` with the hand-written adjoint of the scheme,
computed in NumPy: the 4DVar benchmark back-propagates through thousands of steps of a 40-vector,
where a NumPy operation (~1 µs) is several times cheaper than a torch dispatch and autograd's
per-operation graph. The adjoint of the tendency ``f`` is

    (∂f/∂x)ᵀ v |_j = v_{j−1} x_{j−2} − v_{j+2} x_{j+1} + v_{j+1} (x_{j+2} − x_{j−1}) − v_j

and ``tests/test_lorenz96.py`` checks the step against finite differences (``gradcheck``) and
against the same scheme written with torch autograd.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _shifts(n: int) -> dict[int, np.ndarray]:
    """Index arrays: ``x[..., s[k]]`` is ``x_{j+k}`` (cyclic)."""
    j = np.arange(n)
    return {k: (j + k) % n for k in (-2, -1, 1, 2)}


def _tendency(x: np.ndarray, s: dict[int, np.ndarray], forcing: float) -> np.ndarray:
    return (x[..., s[1]] - x[..., s[-2]]) * x[..., s[-1]] - x + forcing


def _tendency_adjoint(x: np.ndarray, v: np.ndarray, s: dict[int, np.ndarray]) -> np.ndarray:
    """``(∂f/∂x)ᵀ v`` at ``x``."""
    return (
        v[..., s[-1]] * x[..., s[-2]]
        - v[..., s[2]] * x[..., s[1]]
        + v[..., s[1]] * (x[..., s[2]] - x[..., s[-1]])
        - v
    )


class _RK4Step(torch.autograd.Function):
    """One RK4 step of Lorenz-96 with its adjoint (NumPy inside, tensors outside)."""

    @staticmethod
    def forward(ctx, x: Tensor, model: Lorenz96) -> Tensor:  # type: ignore[override]
        xn = x.detach().cpu().numpy()
        dt, h, f, s = model.dt, 0.5 * model.dt, model.forcing, model._shift
        k1 = _tendency(xn, s, f)
        x2 = xn + h * k1
        k2 = _tendency(x2, s, f)
        x3 = xn + h * k2
        k3 = _tendency(x3, s, f)
        x4 = xn + dt * k3
        k4 = _tendency(x4, s, f)
        ctx.save_for_backward(*(torch.from_numpy(a) for a in (xn, x2, x3, x4)))
        ctx.model = model
        out = xn + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        x1, x2, x3, x4 = (t.numpy() for t in ctx.saved_tensors)
        dt, h, s = ctx.model.dt, 0.5 * ctx.model.dt, ctx.model._shift
        g = grad.detach().cpu().numpy()
        a4 = _tendency_adjoint(x4, (dt / 6.0) * g, s)  # adjoint of the stage state x4
        a3 = _tendency_adjoint(x3, (dt / 3.0) * g + dt * a4, s)
        a2 = _tendency_adjoint(x2, (dt / 3.0) * g + h * a3, s)
        a1 = _tendency_adjoint(x1, (dt / 6.0) * g + h * a2, s)
        out = g + a1 + a2 + a3 + a4
        return torch.from_numpy(out).to(device=grad.device, dtype=grad.dtype), None


class Lorenz96:
    """Lorenz-96 with forcing ``F`` and RK4 step ``dt``; ``x: [..., N] → [..., N]``."""

    def __init__(self, n: int = 40, forcing: float = 8.0, dt: float = 0.05):
        if n < 4:
            raise ValueError(f"Lorenz96: need at least 4 variables, got {n}")
        self.n = n
        self.forcing = float(forcing)
        self.dt = float(dt)
        self._shift = _shifts(n)

    def step(self, x: Tensor) -> Tensor:
        """One RK4 step of length ``dt``."""
        if x.shape[-1] != self.n:
            raise ValueError(f"Lorenz96.step: expected last dimension {self.n}, got {list(x.shape)}")
        return _RK4Step.apply(x, self)

    def forecast(self, x: Tensor, n: int) -> Tensor:
        """The state ``n`` steps (``n·dt``) later."""
        for _ in range(n):
            x = self.step(x)
        return x
