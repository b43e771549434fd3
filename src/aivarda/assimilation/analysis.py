"""One analysis of one window, whatever the method: QC, observation operator, minimisation.

:func:`analyse_window` is what every driver calls (``aivarda assimilate``, the cycling runner):
the method gives the background trajectory of its window, the observations are quality-controlled
against it (never against the truth), the operator is built for the active ones, and the method
analyses. The result carries the background and analysis trajectories ``[T, C, H, W]`` for O−B and
O−A.
"""

from __future__ import annotations

import time as wallclock
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from aivarda.assimilation.methods import AnalysisProblem, Method
from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.assimilation.window import Window
from aivarda.background.transforms import ControlTransform
from aivarda.geometry import Geometry
from aivarda.models.base import ForecastModel
from aivarda.observations.config import ObservationConfig
from aivarda.observations.obsset import ObsSet
from aivarda.observations.qc import quality_control
from aivarda.observations.registry import observation_operator


@dataclass
class WindowAnalysis:
    """One analysis of one window: the quality-controlled observations, the minimisation result,
    and the background and analysis trajectories ``[T, C, H, W]`` through the window."""

    observations: ObsSet
    result: AnalysisResult
    background_window: Tensor
    analysis_window: Tensor
    minimise_seconds: float


def analyse_window(
    method: Method,
    x_b: Tensor,
    obs: ObsSet,
    geometry: Geometry,
    observing: ObservationConfig,
    transform: ControlTransform,
    background_std: Tensor,
    window: Window,
    model: ForecastModel | None = None,
    progress: bool = False,
    members: Tensor | None = None,
) -> WindowAnalysis:
    """QC against the background window, then ``x_a = x_b + U z*`` by ``method``.

    ``x_b`` ``[C, H, W]`` is the background at the window start; ``obs`` the observations of the
    window's times; ``observing`` the observing system's QC and operator sections; ``background_std`` ``[C]`` the σ_b of the background check; ``model`` the
    window model of a method that needs one; ``members`` ``[K, C, H, W]`` the ensemble valid at the
    window start, for a method that needs it.
    """
    grid, layout = geometry.grid, geometry.layout
    bg_window = method.background_window(x_b, window, model)
    obs = quality_control(obs, grid, layout, observing.qc, background=bg_window, background_std=background_std.to(x_b.dtype))
    active = obs.active()
    operator = observation_operator(observing.operator, active, geometry, (window.n_times, *x_b.shape))
    problem = AnalysisProblem(x_b, bg_window, transform, operator, active, window, model, members, progress, geometry)
    t0 = wallclock.perf_counter()
    result = method.analyse(problem)
    if result.members is None and (members_a := method.analysis_members(problem, result)) is not None:
        result = replace(result, members=members_a)
    seconds = wallclock.perf_counter() - t0
    with torch.no_grad():
        an_window = method.analysis_window(problem, result)
    return WindowAnalysis(obs, result, bg_window, an_window, seconds)
