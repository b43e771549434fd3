"""What a method needs from the driver (:class:`Needs`) and what one analysis is given
(:class:`AnalysisProblem`); :mod:`aivarda.assimilation.methods` re-exports both."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from aivarda.assimilation.cost import Observations
from aivarda.assimilation.window import Window
from aivarda.background.transforms import ControlTransform
from aivarda.geometry import Geometry
from aivarda.models.base import ForecastModel
from aivarda.observations.operators import ObservationOperator


@dataclass(frozen=True)
class Needs:
    """What a method asks the driver for: a ``window_model`` (a forecast model stepping through
    the window) and the ``ensemble`` members valid at the analysis time.

    ``ensemble_source``: ``"lagged"`` — the members are the time-lagged forecasts of the single
    analysis (1…K cycles old); ``"own"`` — the method analyses an ensemble
    (:attr:`AnalysisResult.members` ``[K, *S]``, e.g. an LETKF): the driver forecasts those
    members one cycle as the next cycle's members and uses their mean as the background."""

    window_model: bool = False
    ensemble: bool = False
    ensemble_source: Literal["lagged", "own"] = "lagged"


@dataclass
class AnalysisProblem:
    """One analysis: background at the window start ``[*S]`` and its window trajectory
    ``[T, *S]``, the control transform, the observation operator and the (active) observations it
    was built for, the window, the window model and the ensemble members ``[K, *S]`` valid at the
    window start (each for the methods that declare they need it), and the data's geometry (grid
and channel layout, e.g. for an observation-space localisation)."""

    background: Tensor
    background_window: Tensor
    transform: ControlTransform
    operator: ObservationOperator
    observations: Observations
    window: Window
    model: ForecastModel | None = None
    members: Tensor | None = None
    progress: bool = False
    geometry: Geometry | None = None
