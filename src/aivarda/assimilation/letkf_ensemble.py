"""An LETKF ensemble cycled beside a variational analysis (``assimilation.ensemble_letkf``).

An ensemble-variational method (``3denvar``, ``4denvar``, or ``4dvar`` with a B built from the
ensemble, e.g. LoRA-4DEnVar) takes its members from the runner's time-lagged forecasts by default.
With ``ensemble_letkf: {...}`` (an :class:`~aivarda.assimilation.letkf.LETKFConfig`) it cycles an
ensemble of its own instead, the EnVar–EnKF coupling of operational hybrid systems:

1. the members ``x_f,k`` ``[K, C, H, W]`` are the one-cycle forecasts of the previous cycle's
   analysis members, and the background is their mean, ``x_b = mean_k x_f,k``;
2. the B is updated from the members (its declared per-cycle need) and the variational analysis
   ``x_a = x_b + U z*`` is the method's, unchanged;
3. the members are analysed by the LETKF with the same observations
   (:func:`~aivarda.assimilation.letkf.letkf_grid_analysis`, the window's operator on each member's
   window trajectory, as ``method: letkf``) and **recentred** on the variational analysis::

       x_a,k = x_a + (x^letkf_a,k − mean_j x^letkf_a,j)

   so the ensemble carries the LETKF's analysis spread around the variational analysis, and the
   next cycle's background is (up to the model's nonlinearity) the forecast of ``x_a``.

The method declares ``Needs(ensemble=True, ensemble_source="own")`` when the option is set; the
runner then forecasts :attr:`AnalysisResult.members` one cycle (as for ``method: letkf``). Before
the first analysis the members are the runner's time-lagged initial members (``gap``,
``dynamic_member = K``). A method whose B does not use the ensemble refuses the option (one
ConfigError line): the members would be cycled and never used.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import torch
from pydantic import Field
from torch import Tensor

from aivarda.assimilation.letkf import LETKFConfig, letkf_grid_analysis
from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.assimilation.problem import AnalysisProblem, Needs
from aivarda.background.registry import TransformConfig
from aivarda.config import StrictModel
from aivarda.errors import ConfigError
from aivarda.models.base import trajectory


class LETKFEnsembleOption(StrictModel):
    """The ``ensemble_letkf`` field of a method config that can cycle an LETKF ensemble."""

    ensemble_letkf: LETKFConfig | None = Field(
        default=None,
        description="cycle the members with an LETKF recentred on the variational analysis "
        "(null: the runner's time-lagged forecasts)",
    )


def member_equivalents(problem: AnalysisProblem, members: Tensor, where: str) -> Tensor:
    """``Y_f [K, N]``: the operator on each member's window trajectory ``[T, *S]``."""
    window = problem.window
    with torch.no_grad():
        if window.n_times > 1:
            if problem.model is None:
                raise ConfigError(f"{where}: da_win > 1 needs a window model")
            traj = trajectory(problem.model, members, window.steps).movedim(0, 1)  # [K, T, *S]
        else:
            traj = members[:, None]
        return torch.stack([problem.operator(traj[k]).reshape(-1) for k in range(members.shape[0])])


def letkf_members(problem: AnalysisProblem, config: LETKFConfig, where: str) -> Tensor:
    """The LETKF analysis members ``[K, *S]`` of the problem's members and observations."""
    X_f = problem.members
    if X_f is None:
        raise ConfigError(f"{where}: needs the ensemble members (run it with `aivarda run`)")
    if problem.geometry is None:
        raise ConfigError(f"{where}: needs the grid of the state (AnalysisProblem.geometry)")
    X_f = X_f.to(problem.background)
    if int(problem.observations.value.numel()) == 0:
        return X_f.clone()
    Y_f = member_equivalents(problem, X_f, where)
    return letkf_grid_analysis(X_f, Y_f, problem.observations, problem.geometry.grid, config)  # type: ignore[arg-type]


class LETKFEnsembleMethodConfig(Protocol):
    """What :class:`LETKFEnsemble` reads of its method's config."""

    method: str
    background_error: TransformConfig
    ensemble_letkf: LETKFConfig | None


class LETKFEnsemble:
    """Mixin of a variational method that can cycle an LETKF ensemble beside its analysis
    (module docstring). Put it before the method's base class; its config has
    :class:`LETKFEnsembleOption`'s field."""

    config: LETKFEnsembleMethodConfig
    needs: Needs

    def __init__(self, config: LETKFEnsembleMethodConfig) -> None:
        super().__init__(config)  # type: ignore[call-arg]
        if config.ensemble_letkf is None:
            return
        b = config.background_error
        if not b.needs_ensemble:
            raise ConfigError(
                f"assimilation.ensemble_letkf: method {config.method} with background_error type {b.type!r} does not use "
                "the members; use a B built from the ensemble (type ensemble, hybrid, or vae with a finetune mode)"
            )
        self.needs = replace(self.needs, ensemble=True, ensemble_source="own")

    def analysis_members(self, problem: AnalysisProblem, result: AnalysisResult) -> Tensor | None:
        """The LETKF members recentred on ``result.x_a`` (``None`` without ``ensemble_letkf``)."""
        letkf = self.config.ensemble_letkf
        if letkf is None:
            return None
        X_a = letkf_members(problem, letkf, "assimilation.ensemble_letkf")
        return X_a - X_a.mean(0) + result.x_a.detach().to(X_a)
