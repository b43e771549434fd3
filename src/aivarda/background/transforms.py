"""Control-variable transforms ``U: z ↦ δx``.

The variational cost is minimised over a control variable ``z`` with an identity background
covariance, ``J_b = ½‖z‖²``. The transform maps it to a state increment ``δx = U(z)``, so that for
a linear ``U`` the background-error covariance is ``B = U Uᵀ``.

Shapes: ``z`` is ``[..., *latent_shape]`` and ``δx`` is ``[..., *state_shape]`` (leading batch
dimensions pass through). A state is ``[N]`` for Lorenz-96 or ``[C, H, W]`` for an atmosphere.

Every transform has ``latent_shape``, ``state_shape`` and ``decode``. Linear transforms also have
``adjoint(δx) -> z`` (``Uᵀ``), which the dot-product tests check: ``⟨U z, δx⟩ = ⟨z, Uᵀ δx⟩``.
Nonlinear transforms (a VAE decoder) implement only ``decode``.

A transform updated every cycle (:class:`EnsembleTransform`) whose update leaves state the later
cycles depend on (e.g. fine-tuned weights) also implements :class:`StatefulTransform`; one that
reports numbers about its last update (e.g. its trainable parameters) implements
:class:`ReportingTransform`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class ControlTransform(Protocol):
    """``δx = U(z)``; ``B = U Uᵀ`` when ``U`` is linear."""

    latent_shape: tuple[int, ...]
    state_shape: tuple[int, ...]

    def decode(self, z: Tensor) -> Tensor:
        """``[..., *latent_shape] → [..., *state_shape]``; differentiable in ``z``."""
        ...


@runtime_checkable
class LinearControlTransform(ControlTransform, Protocol):
    """A linear ``U`` with its adjoint ``Uᵀ``."""

    def adjoint(self, dx: Tensor) -> Tensor:
        """``[..., *state_shape] → [..., *latent_shape]``."""
        ...


@runtime_checkable
class EnsembleTransform(ControlTransform, Protocol):
    """A transform updated every cycle from the ensemble (its config sets ``needs_ensemble``)."""

    def update(self, members: Tensor) -> None:
        """Take the members ``[K, *state_shape]`` (or their window trajectories) of this cycle."""
        ...


@runtime_checkable
class StatefulTransform(Protocol):
    """A transform with per-cycle state: the cycling runner saves ``state_dict()`` with every
    committed cycle (``RUN_DIR/b_state/``) and, on ``--resume``, calls ``load_state_dict`` with the
    state of the last committed cycle before the next update, so a resumed run equals an
    uninterrupted one. The state holds tensors and plain values (``torch.load(weights_only=True)``)."""

    def state_dict(self) -> dict[str, Any]:
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


@runtime_checkable
class ReportingTransform(Protocol):
    """A transform that reports numbers about its last ``update`` (``{name: value}``); the cycling
    runner records them as ``b_<name>`` columns of the cycle's metrics row."""

    def update_diagnostics(self) -> dict[str, float]:
        ...


def _batch_shape(x: Tensor, trailing: tuple[int, ...], what: str) -> tuple[int, ...]:
    n = len(trailing)
    if x.ndim < n or tuple(x.shape[x.ndim - n :]) != trailing:
        raise ValueError(f"{what}: expected trailing shape {list(trailing)}, got {list(x.shape)}")
    return tuple(x.shape[: x.ndim - n])


class IdentityTransform:
    """``U = I``: ``B = I`` in the units of the state (``δx = z``)."""

    def __init__(self, state_shape: tuple[int, ...]):
        self.state_shape = tuple(int(s) for s in state_shape)
        self.latent_shape = self.state_shape

    def decode(self, z: Tensor) -> Tensor:
        _batch_shape(z, self.latent_shape, "IdentityTransform.decode")
        return z

    def adjoint(self, dx: Tensor) -> Tensor:
        _batch_shape(dx, self.state_shape, "IdentityTransform.adjoint")
        return dx


class DiagonalTransform:
    """``U = diag(σ)``: uncorrelated background errors with standard deviation ``σ``.

    ``std`` is either one value per channel (shape ``[C]``, broadcast over the trailing spatial
    dimensions of a ``[C, H, W]`` state; for a ``[N]`` state it has ``N`` entries) or a full
    field of the state shape. ``B = diag(σ²)``.
    """

    def __init__(self, std: Tensor, state_shape: tuple[int, ...]):
        self.state_shape = tuple(int(s) for s in state_shape)
        self.latent_shape = self.state_shape
        std = torch.as_tensor(std)
        if std.ndim == 1 and std.shape[0] == self.state_shape[0]:
            std = std.reshape(std.shape[0], *([1] * (len(self.state_shape) - 1)))
        elif tuple(std.shape) != self.state_shape:
            raise ValueError(
                f"DiagonalTransform: std must have shape [{self.state_shape[0]}] (per channel) or "
                f"{list(self.state_shape)}, got {list(std.shape)}"
            )
        if not bool(torch.all(std >= 0)):
            raise ValueError("DiagonalTransform: std must be non-negative")
        self.std = std

    def decode(self, z: Tensor) -> Tensor:
        _batch_shape(z, self.latent_shape, "DiagonalTransform.decode")
        return z * self.std.to(z)

    def adjoint(self, dx: Tensor) -> Tensor:
        _batch_shape(dx, self.state_shape, "DiagonalTransform.adjoint")
        return dx * self.std.to(dx)


def symmetric_sqrt(cov: Tensor) -> Tensor:
    """``B^½ = V Λ^½ Vᵀ`` from the eigendecomposition ``B = V Λ Vᵀ`` (negative round-off
    eigenvalues clipped to 0)."""
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


class DenseSqrtTransform:
    """``U = B^½`` for a dense covariance ``B`` of size ``n × n`` with ``n = prod(state_shape)``.

    ``method="symmetric"`` uses the symmetric square root ``V Λ^½ Vᵀ`` (as DAPPER's
    ``CovMat(B).sym_sqrt``; works for semi-definite ``B``), ``"cholesky"`` the lower Cholesky
    factor ``L`` (``B`` must be positive definite). Either way ``U Uᵀ = B``. The latent is a
    vector ``[n]``; ``decode(z) = (U z).reshape(state_shape)``.
    """

    def __init__(
        self,
        covariance: Tensor,
        state_shape: tuple[int, ...] | None = None,
        method: Literal["symmetric", "cholesky"] = "symmetric",
    ):
        cov = torch.as_tensor(covariance)
        if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
            raise ValueError(f"DenseSqrtTransform: covariance must be square, got {list(cov.shape)}")
        n = cov.shape[0]
        self.state_shape = (n,) if state_shape is None else tuple(int(s) for s in state_shape)
        if math.prod(self.state_shape) != n:
            raise ValueError(f"DenseSqrtTransform: covariance of size {n} does not fit state shape {list(self.state_shape)}")
        self.latent_shape = (n,)
        cov = 0.5 * (cov + cov.T)
        if method == "symmetric":
            self.sqrt = symmetric_sqrt(cov)
        elif method == "cholesky":
            self.sqrt = torch.linalg.cholesky(cov)
        else:
            raise ValueError(f"DenseSqrtTransform: method must be 'symmetric' or 'cholesky', got {method!r}")
        self.method = method

    def decode(self, z: Tensor) -> Tensor:
        batch = _batch_shape(z, self.latent_shape, "DenseSqrtTransform.decode")
        return (z @ self.sqrt.to(z).T).reshape(*batch, *self.state_shape)

    def adjoint(self, dx: Tensor) -> Tensor:
        batch = _batch_shape(dx, self.state_shape, "DenseSqrtTransform.adjoint")
        return dx.reshape(*batch, -1) @ self.sqrt.to(dx)
