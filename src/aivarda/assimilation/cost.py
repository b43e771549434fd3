"""The variational cost function shared by every variational method.

.. math::

    J(z) = ½‖z‖² + \\frac{1}{λ}·½ \\sum_{t=0}^{T-1} ‖H_t(P_t(x_b, U z)) − y_t‖²_{R_t^{-1}}

- ``z``: control variable ``[*latent_shape]``; ``U``: a :class:`ControlTransform`
  (``B = U Uᵀ`` when linear); ``x_b``: background at the window start ``[*S]``.
- ``P``: the window :class:`~aivarda.assimilation.window.Propagation` of the method, giving the
  trajectory ``[T, *S]`` the observations see: ``x_b + U z`` alone (3DVar, ``T = 1``), the forecast
  model stepped through the window from ``x_b + U z`` (strong-constraint 4DVar:
  ``M_{0→t}(x_b + U z)``, each step a checkpointed segment so autograd keeps only the window
  states), or a fixed background trajectory plus the increment (3DVar-FGAT; 4D ensemble
  increments ``U_t z``).
- The window trajectory ``x_window [T, *S]`` goes through one observation operator
  ``H: [T, *S] → [N]`` (any differentiable callable; the ``ObservationOperator`` protocol);
  observation ``j`` has value ``y_j``, error std ``σ_j`` and window time ``t_j`` (the ObsSet
  fields ``value``, ``error_std``, ``time_index``).
- ``R_t`` is diagonal with the observation-error variance inflated by a flow (model) error whose
  std grows linearly with the window time, in units of the observation's own error std (so one
  number serves every variable): ``σ²_{j,t} = σ_j² · (1 + (flow_error · t_j)²)`` (0 by default,
  and ``R_0`` is always the pure observation error).
- ``λ = bg_lamb`` weights the observation term by ``1/λ``.

The code never looks at the state shape: a ``[40]`` Lorenz-96 state and a ``[69, H, W]``
atmosphere go through the same lines. All tensors take the dtype of ``background``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from aivarda.assimilation.window import BackgroundTrajectory, Propagation
from aivarda.background.transforms import ControlTransform
from aivarda.observations.operators import ObservationOperator


class Observations(Protocol):
    """What the cost reads from an :class:`~aivarda.observations.obsset.ObsSet`: pass
    ``obs.active()`` (QC good, not withheld) and an operator built for that subset."""

    value: Tensor  # y [N]
    error_std: Tensor  # σ [N]
    time_index: Tensor  # t [N], integer window time in [0, T)


@dataclass(frozen=True)
class CostTerms:
    """``J = J_b + J_o`` (scalar tensors, differentiable in ``z``)."""

    total: Tensor
    background: Tensor
    observation: Tensor


class VariationalCost:
    """``J(z)`` for one assimilation window; call it with ``z`` to get :class:`CostTerms`."""

    def __init__(
        self,
        background: Tensor,
        transform: ControlTransform,
        operator: ObservationOperator,
        observations: Observations,
        *,
        propagation: Propagation | None = None,
        bg_lamb: float = 1.0,
        flow_error: float = 0.0,
    ):
        if propagation is None:
            propagation = BackgroundTrajectory(background[None])
        window_length = propagation.n_times
        if bg_lamb <= 0:
            raise ValueError(f"VariationalCost: bg_lamb must be > 0, got {bg_lamb}")
        if tuple(transform.state_shape) != tuple(background.shape):
            raise ValueError(
                f"VariationalCost: transform state shape {list(transform.state_shape)} != background shape {list(background.shape)}"
            )
        dtype, device = background.dtype, background.device
        y = torch.as_tensor(observations.value).to(device=device, dtype=dtype).reshape(-1)
        std = torch.as_tensor(observations.error_std).to(device=device, dtype=dtype).reshape(-1)
        t = torch.as_tensor(observations.time_index).to(device=device).reshape(-1).long()
        if not (y.shape == std.shape == t.shape):
            raise ValueError(
                f"VariationalCost: value, error_std and time_index must have one entry per observation, "
                f"got {list(y.shape)}, {list(std.shape)}, {list(t.shape)}"
            )
        if y.numel() and (int(t.min()) < 0 or int(t.max()) >= window_length):
            raise ValueError(f"VariationalCost: time_index must lie in [0, {window_length}), got [{int(t.min())}, {int(t.max())}]")
        if not bool(torch.all(std > 0)):
            raise ValueError("VariationalCost: observation error_std must be > 0")
        self.background = background.detach()
        self.transform = transform
        self.operator = operator
        self.propagation = propagation
        self.window_length = window_length
        self.bg_lamb = float(bg_lamb)
        self.flow_error = float(flow_error)
        self.y = y
        self.time_index = t
        self.inverse_variance = 1.0 / (std**2 * (1.0 + (self.flow_error * t.to(dtype)) ** 2))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.transform.latent_shape)

    def state(self, z: Tensor) -> Tensor:
        """``x_0 = x_b + U(z)`` (``[*S]``; the window start of a 4D increment)."""
        dx = self.transform.decode(z)
        if dx.ndim > self.background.ndim:  # a 4D increment [T, *S]
            dx = dx[0]
        return self.background + dx

    def window(self, z: Tensor) -> Tensor:
        """The window trajectory ``P(x_b, U z)`` as ``[T, *S]``."""
        return self.propagation(self.background, self.transform.decode(z))

    def innovation_terms(self, x_window: Tensor) -> Tensor:
        """``H(x_window) − y`` (``[N]``)."""
        y_model = self.operator(x_window).reshape(-1)
        if y_model.shape != self.y.shape:
            raise ValueError(
                f"VariationalCost: the observation operator returned {y_model.numel()} values for {self.y.numel()} observations"
            )
        return y_model - self.y

    def residuals(self, z: Tensor) -> Tensor:
        """The normalised innovations ``r = (H(P(x_b, U z)) − y) / (σ √λ)`` (``[N]``): ``J = ½‖z‖² + ½‖r‖²``
        (what a Gauss–Newton minimiser linearises)."""
        return self.innovation_terms(self.window(z)) * (self.inverse_variance / self.bg_lamb).sqrt()

    def __call__(self, z: Tensor) -> CostTerms:
        j_b = 0.5 * (z * z).sum()
        d = self.innovation_terms(self.window(z))
        j_o = (0.5 / self.bg_lamb) * (d * d * self.inverse_variance).sum()
        return CostTerms(total=j_b + j_o, background=j_b, observation=j_o)
