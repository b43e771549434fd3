"""The LETKF as a cycling method (``method: letkf``): an ensemble of analyses, cycled by the runner.

Each cycle the method receives the forecast members ``x_f,k`` ``[K, C, H, W]`` valid at the analysis
time and returns the analysis members ``x_a,k`` (:attr:`AnalysisResult.members`) and their mean as
the analysis ``x_a``. It declares ``Needs(ensemble=True, ensemble_source="own")``: the runner
forecasts the analysis members one cycle to be the next cycle's members and uses their mean as the
background (before the first analysis the members are the runner's time-lagged initial members,
``gap`` and ``dynamic_member = K``).

The analysis is :func:`aivarda.assimilation.letkf.letkf_grid_analysis` (``docs/letkf.md``): one
local domain per grid column, R-localisation with the Gaspari–Cohn taper of the great-circle
distance (``letkf.length_scale_km``), prior inflation ``ρ``, RTPS/RTPP, posterior inflation and the
random rotation from the ``letkf:`` section. The members' model equivalents are

    Y_f,k = H(x_{k,0}, …, x_{k,T−1})      (N values per member),

the window's observation operator applied to each member's window trajectory
``x_{k,t} = M_{0→t}(x_f,k)`` (the window model, ``da_win > 1``: the 4D-LETKF of Hunt et al. 2007
§2.3, updating the members at the window start) or to the members themselves (``da_win = 1``).

The variational settings of :class:`AssimilationConfig` (``background_error``, ``outer_loops``, …)
are not used by this method.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from aivarda.assimilation.letkf import LETKFConfig
from aivarda.assimilation.letkf_ensemble import letkf_members
from aivarda.assimilation.methods import (
    METHODS,
    AnalysisProblem,
    AssimilationConfig,
    Method,
    Needs,
)
from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.config import Duration
from aivarda.models.base import trajectory
from aivarda.timeaxis import to_timedelta64


class LETKFMethodConfig(AssimilationConfig):
    """``assimilation:`` of ``method: letkf``."""

    method: Literal["letkf"] = "letkf"  # type: ignore[assignment]
    letkf: LETKFConfig = Field(default_factory=LETKFConfig, description="localisation, inflation, RTPS/RTPP")
    da_win: int = Field(default=1, ge=1, description="window times T (> 1: the 4D-LETKF, needs a window model)")
    window_interval: Duration = Field(default=timedelta(hours=1), description="spacing of the window times")


@METHODS.register("letkf", LETKFMethodConfig)
class LETKFMethod(Method):
    """LETKF analysis of the forecast members (module docstring)."""

    config: LETKFMethodConfig

    def __init__(self, config: LETKFMethodConfig) -> None:
        super().__init__(config)
        self.needs = Needs(window_model=config.da_win > 1, ensemble=True, ensemble_source="own")

    def window_offsets(self) -> np.ndarray:
        return np.arange(self.config.da_win) * to_timedelta64(self.config.window_interval)

    def analyse(self, problem: AnalysisProblem) -> AnalysisResult:
        X_a = letkf_members(problem, self.config.letkf, "assimilation.method letkf")
        x_a = X_a.mean(0)
        z = torch.zeros(0, dtype=x_a.dtype, device=x_a.device)
        return AnalysisResult(x_a, z, x_a - problem.background, [], True, False, members=X_a)

    def analysis_window(self, problem: AnalysisProblem, result: AnalysisResult) -> Tensor:
        """The window model's trajectory of the analysis mean (``x_a`` alone for ``da_win = 1``)."""
        if problem.window.n_times > 1 and problem.model is not None:
            with torch.no_grad():
                return trajectory(problem.model, result.x_a, problem.window.steps)
        return result.x_a[None]
