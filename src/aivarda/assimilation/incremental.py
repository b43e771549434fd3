"""Multi-incremental strong-constraint 4DVar: outer loops with the full model, inner loops with a
cheaper one (as operational centres run 4DVar).

Outer loop ``k`` (``k = 0 … K−1``) linearises about the current first guess at the window start
``x^k = x_b + U z^k`` (``z^0 = 0``):

1. the **full nonlinear window model** ``M`` (e.g. the 1-hour transformer) runs once, without
   gradients: ``x^k_t = M_{0→t}(x^k)``; the innovations of the inner loop are ``y_t − H_t(x^k_t)``;
2. the **inner loop** minimises, with L-BFGS from ``z^k``,

   .. math::

       J^k(z) = ½‖z‖² + \\frac{1}{λ}·½ \\sum_t ‖H_t(x^k_t + M̃_{0→t}(x_b + U z) − M̃_{0→t}(x^k)) − y_t‖²_{R_t^{-1}}

   where ``M̃`` is the **inner model** — cheap, e.g. the window model's fitted linear part
   (``inner_model: linear_prior``): for an affine ``M̃`` the bracket is exactly its tangent-linear
   propagation ``M̃'(U z − U z^k)`` of the increment relative to the outer guess (the "perturbation
   model" of incremental 4DVar); for a nonlinear ``M̃`` it is the finite-amplitude difference.
   ``J^k(z^k)`` equals the full nonlinear ``J(z^k)`` exactly, so each inner loop starts from the
   true cost of its first guess; the gradient comes from autograd through ``M̃``.
3. ``z^{k+1}`` is the inner minimum; the next outer loop re-runs ``M`` from ``x_b + U z^{k+1}``.

Each outer loop costs one nonlinear window forecast (no adjoint); each inner iteration one
forward and adjoint of ``M̃``. The window start needs no model: ``x_a = x_b + U z^K``; the
analysis trajectory (O−A) is ``M`` from ``x_a``. The background trajectory that QC and O−B
already computed is the first outer trajectory (``x^0 = x_b``), so it is not recomputed.

An inner loop that fails (non-finite or rising ``J^k``, see
:class:`~aivarda.assimilation.minimizer.Minimizer`) ends the outer loops and keeps the last good
``z``; only a failure of the first one falls back to the background.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor

from aivarda.assimilation.cost import Observations, VariationalCost
from aivarda.assimilation.minimizer import AnalysisResult, Minimizer
from aivarda.background.transforms import ControlTransform
from aivarda.models.base import ForecastModel, trajectory
from aivarda.observations.operators import ObservationOperator


class IncrementalPropagation:
    """``x_t = x^k_t + M̃_{0→t}(x_b + δx) − M̃_{0→t}(x^k)``: the outer (full-model) trajectory
    ``[T, *S]`` of the guess ``x^k`` plus the inner model's propagation of the increment relative
    to it (module docstring)."""

    def __init__(self, outer_trajectory: Tensor, inner_model: ForecastModel, steps: Sequence[int], *,
                 checkpoint: bool = True) -> None:
        if outer_trajectory.shape[0] != len(steps) + 1:
            raise ValueError(f"IncrementalPropagation: {outer_trajectory.shape[0]} window states for {len(steps)} step counts")
        self.outer = outer_trajectory.detach()
        self.model = inner_model
        self.steps = tuple(int(s) for s in steps)
        self.checkpoint = checkpoint
        self.n_times = len(self.steps) + 1
        with torch.no_grad():
            self.reference = trajectory(inner_model, self.outer[0], self.steps)  # M̃_{0→t}(x^k)

    def __call__(self, background: Tensor, increment: Tensor) -> Tensor:
        inner = trajectory(self.model, background + increment, self.steps, checkpoint=self.checkpoint)
        return self.outer + (inner - self.reference)

    def analysis_window(self, analysis: Tensor, background: Tensor) -> Tensor:
        """The linearised trajectory of ``x_a`` (the inner loop's view; the 4DVar method reports
        the full model's trajectory from ``x_a`` instead)."""
        with torch.no_grad():
            return self(background, analysis - background)


def multi_incremental(
    background: Tensor,
    background_window: Tensor,
    transform: ControlTransform,
    operator: ObservationOperator,
    observations: Observations,
    model: ForecastModel,
    inner_model: ForecastModel,
    steps: Sequence[int],
    minimizer: Minimizer,
    *,
    bg_lamb: float = 1.0,
    flow_error: float = 0.0,
    checkpoint: bool = True,
) -> AnalysisResult:
    """Minimise ``J`` with ``minimizer.outer_loops`` outer loops of the full ``model`` and
    ``minimizer.inner_iterations`` L-BFGS iterations each with ``inner_model`` (module
    docstring). ``background_window`` is ``M_{0→t}(x_b)`` ``[T, *S]``, the first outer trajectory."""
    inner = copy.copy(minimizer)  # the same algorithm and tolerances, one linearisation per call
    inner.outer_loops = 1
    z = torch.zeros(tuple(transform.latent_shape), dtype=background.dtype, device=background.device)
    outer_traj = background_window.detach()
    diagnostics: list[dict[str, float]] = []
    result: AnalysisResult | None = None
    converged = False
    for k in range(minimizer.outer_loops):
        if k > 0:
            with torch.no_grad():
                outer_traj = trajectory(model, background + transform.decode(z), steps)
        propagation = IncrementalPropagation(outer_traj, inner_model, steps, checkpoint=checkpoint)
        cost = VariationalCost(background, transform, operator, observations, propagation=propagation,
                               bg_lamb=bg_lamb, flow_error=flow_error)
        step = inner.minimize(cost, z0=z)
        offset = int(diagnostics[-1]["iteration"]) if diagnostics else 0
        for row in step.diagnostics:
            if diagnostics and row["iteration"] == 0:
                continue  # the inner loop's start: the previous loop's end, re-linearised
            diagnostics.append({**row, "outer": k, "iteration": offset + row["iteration"]})
        if step.fallback:
            if result is None:
                return AnalysisResult(step.x_a, step.z, step.increment, diagnostics, False, True)
            break  # keep the last good outer loop
        result, z, converged = step, step.z, step.converged
        if converged and k > 0:
            break
    assert result is not None
    return AnalysisResult(result.x_a, result.z, result.increment, diagnostics, converged, False)
