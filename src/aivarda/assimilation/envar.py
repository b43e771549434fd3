"""Ensemble-variational methods: ``3denvar`` and ``4denvar`` (and their hybrids).

Both minimise the same variational cost as 3DVar (:mod:`aivarda.assimilation.cost`),

.. math::

    J(z) = ½‖z‖² + ½ \\sum_t ‖H_t(x^b_t + δx_t) − y_t‖²_{R_t^{-1}},   δx = U z,

with a background-error model that is updated from the ensemble every cycle (its config declares
``needs_ensemble``: ``background_error: {type: ensemble}`` or ``{type: hybrid}``, see
``docs/envar.md``). What differs is the window:

- ``3denvar``: one window time; ``U`` is built on the members ``[K, *S]`` valid at the analysis
  time, ``B = P_e ∘ L`` (hybrid: ``β_s B_s + β_e P_e ∘ L``). It is :class:`ThreeDVar` with the
  check that the B needs the ensemble.
- ``4denvar``: ``da_win`` window times ``window_interval`` apart. Each member is forecast through
  the window by the window model (no gradients, all members as one batch), ``x_{k,t} =
  M_{0→t}(x_k)``, and ``U`` is built on these trajectories ``[K, T, *S]``: the same control ``α``
  acts at every window time on the members' own trajectories,

  .. math::

      δx_t = \\sum_k X'_{k,t} ∘ (L^½ α_k)    (hybrid: + √β_s U_s z_s, the same at every t),

  so the increment evolves with the ensemble and the cost holds no tangent-linear or adjoint
  model. The observations of time ``t`` are compared with ``x^b_t + δx_t``, ``x^b_t`` the window
  model's trajectory of the background; the analysis is ``x_a = x_b + δx_0`` and its window
  trajectory ``x^b_t + δx_t``.

With a linear window model, no localisation and ``β_e = 1`` the 4DEnVar analysis is the Kalman
analysis with the ensemble covariance and the 4D observation operator ``[H_t M_{0→t}]_t``
(``tests/test_envar.py``).

Hybrid-4DVar is ``method: 4dvar`` with a hybrid B (the members at the window start, the increment
propagated by the window model inside the cost).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor

from aivarda.assimilation.cost import VariationalCost
from aivarda.assimilation.methods import (
    METHODS,
    AnalysisProblem,
    AssimilationConfig,
    Method,
    Needs,
    ThreeDVar,
    WindowConfig,
    _WindowMethod,
)
from aivarda.assimilation.letkf_ensemble import LETKFEnsemble, LETKFEnsembleOption
from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.assimilation.window import Window
from aivarda.background.registry import TransformConfig
from aivarda.background.transforms import ControlTransform, EnsembleTransform
from aivarda.errors import ConfigError
from aivarda.models.base import ForecastModel, trajectory


def _require_ensemble_b(method: str, b: TransformConfig) -> TransformConfig:
    """The B of an EnVar method must be built from the ensemble (its config declares
    ``needs_ensemble``); raises ``ValueError`` (in a config: a ConfigError naming the key)."""
    if not getattr(b, "needs_ensemble", False):
        raise ValueError(
            f"method {method} needs an ensemble B ({{type: ensemble}} or {{type: hybrid}}), got type {b.type!r}"
        )
    return b


class ThreeDEnVarConfig(AssimilationConfig, LETKFEnsembleOption):
    method: Literal["3denvar"] = "3denvar"  # type: ignore[assignment]

    @field_validator("background_error", mode="after")
    @classmethod
    def _ensemble_b(cls, b: TransformConfig) -> TransformConfig:
        return _require_ensemble_b("3denvar", b)


class FourDEnVarConfig(WindowConfig, LETKFEnsembleOption):
    method: Literal["4denvar"] = "4denvar"  # type: ignore[assignment]
    ensemble_outer_loops: int = Field(
        default=0, ge=0,
        description="Gauss–Newton re-linearisations: the members' trajectories rerun around the latest analysis",
    )

    @field_validator("background_error", mode="after")
    @classmethod
    def _ensemble_b(cls, b: TransformConfig) -> TransformConfig:
        return _require_ensemble_b("4denvar", b)


def _check_ensemble_b(method: Method) -> None:
    """The same check when the method is built (a config object that skipped validation)."""
    try:
        _require_ensemble_b(method.name, method.config.background_error)
    except ValueError as exc:
        raise ConfigError(f"assimilation.background_error: {exc}") from None


@METHODS.register("3denvar", ThreeDEnVarConfig)
class ThreeDEnVar(LETKFEnsemble, ThreeDVar):
    """3DEnVar: 3DVar with ``B`` (or its ensemble part) from the members valid at the analysis
    time (module docstring)."""

    needs: ClassVar[Needs] = Needs(ensemble=True)

    def __init__(self, config: AssimilationConfig) -> None:
        super().__init__(config)
        _check_ensemble_b(self)


class WindowIncrement:
    """A 4D ensemble transform seen by :class:`VariationalCost` as a transform of the window-start
    state ``[*S]``: ``decode`` gives the whole increment trajectory ``[T, *S]`` (the cost takes
    ``δx_0`` for ``x_a`` and the propagation adds ``δx_t`` to the background trajectory). With
    ``origin = z_i`` it decodes ``U(z − z_i)`` (an outer loop linearised about ``x_b + U z_i``)."""

    def __init__(self, transform: ControlTransform, state_shape: tuple[int, ...], origin: Tensor | None = None) -> None:
        self.transform = transform
        self.state_shape = tuple(state_shape)
        self.origin = origin

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.transform.latent_shape)

    def decode(self, z: Tensor) -> Tensor:
        return self.transform.decode(z if self.origin is None else z - self.origin.to(z))


@METHODS.register("4denvar", FourDEnVarConfig)
class FourDEnVar(LETKFEnsemble, _WindowMethod):
    """4DEnVar: the members' window trajectories carry the increment through the window (module
    docstring)."""

    needs: ClassVar[Needs] = Needs(window_model=True, ensemble=True)
    config: FourDEnVarConfig

    def __init__(self, config: AssimilationConfig) -> None:
        super().__init__(config)
        _check_ensemble_b(self)

    def update_background_error(self, transform: EnsembleTransform, members: Tensor, window: Window,
                                model: ForecastModel | None) -> None:
        """``U`` on the members' window trajectories ``x_{k,t} = M_{0→t}(x_k)``: ``[K, T, *S]``."""
        if model is None or not window.steps:
            raise ConfigError(f"assimilation.method {self.name}: needs a window model and a window of da_win ≥ 2 times")
        with torch.no_grad():
            traj = trajectory(model, members, window.steps)  # [T, K, *S]
        transform.update(traj.movedim(0, 1))

    def _check_window(self, problem: AnalysisProblem) -> None:
        shape = tuple(problem.transform.state_shape)
        expected = tuple(problem.background_window.shape)
        if shape != expected:
            raise ConfigError(
                f"assimilation.method {self.name}: the background error must be updated with the members' "
                f"window trajectories {list(expected)} before the analysis, its state shape is {list(shape)}"
            )

    def cost(self, problem: AnalysisProblem, origin: Tensor | None = None) -> VariationalCost:
        self._check_window(problem)
        return VariationalCost(
            problem.background,
            WindowIncrement(problem.transform, tuple(problem.background.shape), origin),
            problem.operator,
            problem.observations,
            propagation=self.propagation(problem),
            bg_lamb=self.config.bg_lamb,
            flow_error=self.flow_error,
        )

    def analyse(self, problem: AnalysisProblem) -> AnalysisResult:
        """One minimisation, then ``ensemble_outer_loops`` Gauss–Newton re-linearisations: with
        ``x_i = x_b + δx_0(z_i)`` the members are re-centred on ``x_i`` (their deviations kept),
        rerun through the window, and ``J(z) = ½‖z‖² + ½‖H(M(x_i) + U_i(z − z_i)) − y‖²`` is
        minimised from ``z_i`` (the ensemble-space Gauss–Newton of the iterative ensemble Kalman
        smoother, with the finite ensemble as the linearisation)."""
        minimizer = self.config.minimizer(problem.progress)
        result = minimizer.minimize(self.cost(problem))
        for _ in range(self.config.ensemble_outer_loops):
            if result.fallback or problem.members is None or problem.model is None:
                break
            x_i = result.x_a.detach()
            members = problem.members - problem.members.mean(0) + x_i
            self.update_background_error(problem.transform, members, problem.window, problem.model)  # type: ignore[arg-type]
            window = self.background_window(x_i, problem.window, problem.model)
            step = replace(problem, background=x_i, background_window=window)
            inner = minimizer.minimize(self.cost(step, origin=result.z), z0=result.z)
            if inner.fallback:
                break
            diagnostics = result.diagnostics + inner.diagnostics
            result = AnalysisResult(inner.x_a, inner.z, inner.x_a - problem.background, diagnostics, inner.converged, False)
        return result

    def analysis_window(self, problem: AnalysisProblem, result: AnalysisResult) -> Tensor:
        """``x^b_t + δx_t`` with ``δx = U z*`` (the 4D increment; ``x_a`` at ``t = 0``); after
        ensemble outer loops the window model's trajectory of ``x_a``."""
        if result.fallback:
            return problem.background_window.clone()
        if self.config.ensemble_outer_loops and problem.model is not None:
            with torch.no_grad():
                return trajectory(problem.model, result.x_a.detach(), problem.window.steps)
        with torch.no_grad():
            dx = problem.transform.decode(result.z.to(problem.background.dtype))
        return problem.background_window + dx.to(problem.background_window.dtype)
