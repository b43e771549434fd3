"""The Lorenz-96 model (Lorenz 1996), our own implementation for the benchmark and the tests.

``dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F`` with cyclic indices, ``N = 40``, ``F = 8``,
integrated with one classical Runge–Kutta (RK4) step of ``dt = 0.05`` per model step (as in
DAPPER's ``dapper/mods/Lorenz96``). States are ``[..., N]`` tensors (leading dimensions are batch
members). Satisfies :class:`aivarda.models.base.ForecastModel`.

``forecast(x, n)`` is one ``torch.autograd.Function`` for ``n`` RK4 steps with the hand-written
adjoint of the scheme, computed in NumPy: the 4DVar benchmark back-propagates through thousands of steps of a 40-vector,
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


def _tendency(x: np.ndarray, forcing: float) -> np.ndarray:
    xp = np.concatenate((x[..., -2:], x, x[..., :1]), axis=-1)  # xp[..., j + 2] = x_j
    return (xp[..., 3:] - xp[..., :-3]) * xp[..., 1:-2] - x + forcing


def _tendency_adjoint(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(∂f/∂x)ᵀ v`` at ``x``."""
    n = x.shape[-1]
    xp = np.concatenate((x[..., -2:], x, x[..., :2]), axis=-1)  # x_{j+k} = xp[..., 2+k : 2+k+n]
    vp = np.concatenate((v[..., -1:], v, v[..., :2]), axis=-1)  # v_{j+k} = vp[..., 1+k : 1+k+n]
    return (
        vp[..., 0:n] * xp[..., 0:n]
        - vp[..., 3 : 3 + n] * xp[..., 3 : 3 + n]
        + vp[..., 2 : 2 + n] * (xp[..., 4 : 4 + n] - xp[..., 1 : 1 + n])
        - v
    )


def _rk4_forward(xn: np.ndarray, forcing: float, dt: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RK4 steps from ``xn [..., N]``: the end state and the stage states ``[n, 4, ..., N]``."""
    h = 0.5 * dt
    stages = np.empty((n, 4, *xn.shape), dtype=xn.dtype)
    for i in range(n):
        k1 = _tendency(xn, forcing)
        x2 = xn + h * k1
        k2 = _tendency(x2, forcing)
        x3 = xn + h * k2
        k3 = _tendency(x3, forcing)
        x4 = xn + dt * k3
        k4 = _tendency(x4, forcing)
        stages[i] = (xn, x2, x3, x4)
        xn = xn + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return xn, stages


def _rk4_adjoint(stages: np.ndarray, g: np.ndarray, dt: float) -> np.ndarray:
    """The adjoint of :func:`_rk4_forward` applied to ``g [B..., ..., N]`` (leading batch dimensions
    of ``g`` broadcast against the stage states: one pass gives many vector–Jacobian products)."""
    h = 0.5 * dt
    for x1, x2, x3, x4 in stages[::-1]:
        a4 = _tendency_adjoint(x4, (dt / 6.0) * g)  # adjoint of the stage state x4
        a3 = _tendency_adjoint(x3, (dt / 3.0) * g + dt * a4)
        a2 = _tendency_adjoint(x2, (dt / 3.0) * g + h * a3)
        a1 = _tendency_adjoint(x1, (dt / 6.0) * g + h * a2)
        g = g + a1 + a2 + a3 + a4
    return g


class _RK4Adjoint(torch.autograd.Function):
    """``g ↦ (∂x_n/∂x_0)ᵀ g`` given the saved stages (NumPy inside); its ``vmap`` rule lets
    ``torch.func`` batch vector–Jacobian products (``jacrev``: a whole Jacobian in one pass)."""

    @staticmethod
    def forward(g: Tensor, stages: Tensor, dt: float) -> Tensor:  # type: ignore[override]
        out = _rk4_adjoint(stages.numpy(), g.detach().cpu().numpy(), dt)
        return torch.from_numpy(np.ascontiguousarray(out)).to(device=g.device, dtype=g.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        pass

    @staticmethod
    def vmap(info, in_dims, g: Tensor, stages: Tensor, dt: float):  # type: ignore[override]
        if in_dims[1] is not None:
            raise NotImplementedError("Lorenz96: vmap over the saved stages is not supported")
        g = g.movedim(in_dims[0], 0) if in_dims[0] is not None else g
        return _RK4Adjoint.apply(g, stages, dt), 0 if in_dims[0] is not None else None


class _RK4Steps(torch.autograd.Function):
    """``n`` RK4 steps of Lorenz-96 with their adjoint (NumPy inside, tensors outside)."""

    @staticmethod
    def forward(x: Tensor, forcing: float, dt: float, n: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out, stages = _rk4_forward(x.detach().cpu().numpy(), forcing, dt, n)
        return torch.from_numpy(out).to(device=x.device, dtype=x.dtype), torch.from_numpy(stages)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        _, stages = output
        ctx.mark_non_differentiable(stages)
        ctx.save_for_backward(stages)
        ctx.dt = inputs[2]

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_stages: Tensor | None) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (stages,) = ctx.saved_tensors
        return _RK4Adjoint.apply(grad, stages, ctx.dt), None, None, None


class Lorenz96:
    """Lorenz-96 with forcing ``F`` and RK4 step ``dt``; ``x: [..., N] → [..., N]``."""

    def __init__(self, n: int = 40, forcing: float = 8.0, dt: float = 0.05):
        if n < 4:
            raise ValueError(f"Lorenz96: need at least 4 variables, got {n}")
        self.n = n
        self.forcing = float(forcing)
        self.dt = float(dt)
        self.geometry = None  # a state of N points on a circle, not on the sphere

    def step(self, x: Tensor) -> Tensor:
        """One RK4 step of length ``dt``."""
        return self.forecast(x, 1)

    def forecast(self, x: Tensor, n: int) -> Tensor:
        """The state ``n`` steps (``n·dt``) later (one autograd node for all ``n`` steps)."""
        if x.shape[-1] != self.n:
            raise ValueError(f"Lorenz96.forecast: expected last dimension {self.n}, got {list(x.shape)}")
        if n == 0:
            return x
        return _RK4Steps.apply(x, self.forcing, self.dt, n)[0]
