"""Assimilation methods selectable by name from YAML, all configurations of one engine.

``none`` (free run: the analysis is the background), ``3dvar`` (``da_win = 1``), ``4dvar``
(``da_win > 1``, strong constraint through the forecast model). The background-error transform
is chosen independently (``background_error: {type: identity|diagonal|dense|...}``), so e.g.
VAE-3DVar is ``method: 3dvar`` with ``background_error: {type: vae}``.

A new method is one function decorated with :func:`register_method`; it receives an
:class:`AnalysisProblem` and returns an :class:`AnalysisResult`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator
from torch import Tensor

from aivarda.assimilation.cost import Observations, VariationalCost
from aivarda.assimilation.minimizer import AnalysisResult, Minimizer
from aivarda.background.registry import (
    IdentityConfig,
    TransformConfig,
    parse_transform_config,
)
from aivarda.background.transforms import ControlTransform
from aivarda.config import StrictModel
from aivarda.models.base import ForecastModel
from aivarda.observations.operators import ObservationOperator


class AssimilationConfig(StrictModel):
    """The ``assimilation`` section of an experiment."""

    method: str = Field(default="3dvar", description="registered method: none, 3dvar, 4dvar, ...")
    da_win: int = Field(default=1, ge=1, description="window times T (1: 3D, > 1: 4D)")
    steps_per_time: int = Field(default=1, ge=1, description="model steps between consecutive window times")
    bg_lamb: float = Field(default=1.0, gt=0, description="λ: the observation term is weighted by 1/λ")
    flow_error: float = Field(
        default=0.0, ge=0, description="model-error std per window time in units of σ_o: σ_t² = σ_o²·(1 + (flow_error·t)²)"
    )
    outer_loops: int = Field(default=4, ge=1)
    inner_iterations: int = Field(default=5, ge=1)
    history_size: int = Field(default=10, ge=1)
    tolerance: float = Field(default=1e-5, ge=0, description="stop when ‖∇J‖ ≤ tolerance·‖∇J(0)‖")
    j_tolerance: float = Field(default=1e-12, ge=0, description="stop when |ΔJ| ≤ j_tolerance·|J|")
    checkpointing: bool = Field(default=True, description="gradient checkpointing per model step (4DVar)")
    background_error: SerializeAsAny[TransformConfig] = Field(default_factory=IdentityConfig)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in _METHODS:
            raise ValueError(f"unknown method {v!r}; expected one of {method_names()}")
        return v

    @field_validator("background_error", mode="before")
    @classmethod
    def _transform(cls, v: Any) -> TransformConfig:
        return parse_transform_config(v)

    @model_validator(mode="after")
    def _window(self) -> AssimilationConfig:
        if self.method == "3dvar" and self.da_win != 1:
            raise ValueError(f"method 3dvar needs da_win: 1, got {self.da_win} (use 4dvar)")
        if self.method == "4dvar" and self.da_win < 2:
            raise ValueError("method 4dvar needs da_win >= 2")
        return self

    def minimizer(self, progress: bool = False) -> Minimizer:
        return Minimizer(
            outer_loops=self.outer_loops,
            inner_iterations=self.inner_iterations,
            history_size=self.history_size,
            tolerance=self.tolerance,
            j_tolerance=self.j_tolerance,
            progress=progress,
        )


@dataclass
class AnalysisProblem:
    """Everything one analysis needs: background at the window start ``[*S]``, the control
    transform, the observation operator and the (active) observations it was built for, and the
    forecast model (4DVar); ``progress`` shows a tqdm bar over the iterations."""

    config: AssimilationConfig
    background: Tensor
    transform: ControlTransform
    operator: ObservationOperator
    observations: Observations
    model: ForecastModel | None = None
    progress: bool = False

    def cost(self) -> VariationalCost:
        cfg = self.config
        return VariationalCost(
            self.background,
            self.transform,
            self.operator,
            self.observations,
            model=self.model,
            window_length=cfg.da_win,
            steps_per_time=cfg.steps_per_time,
            bg_lamb=cfg.bg_lamb,
            flow_error=cfg.flow_error,
            checkpointing=cfg.checkpointing,
        )


Method = Callable[[AnalysisProblem], AnalysisResult]
_METHODS: dict[str, Method] = {}


def register_method(name: str) -> Callable[[Method], Method]:
    """Decorator: register an analysis method under ``name`` (the YAML ``method:`` value)."""

    def deco(fn: Method) -> Method:
        if name in _METHODS:
            raise ValueError(f"assimilation method {name!r} is already registered")
        _METHODS[name] = fn
        return fn

    return deco


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise KeyError(f"unknown assimilation method {name!r}; expected one of {method_names()}")
    return _METHODS[name]


def analyse(problem: AnalysisProblem) -> AnalysisResult:
    """Run the method named in ``problem.config.method``."""
    return get_method(problem.config.method)(problem)


@register_method("none")
def no_assimilation(problem: AnalysisProblem) -> AnalysisResult:
    """Free run: ``x_a = x_b``."""
    x_b = problem.background
    z = torch.zeros(tuple(problem.transform.latent_shape), dtype=x_b.dtype, device=x_b.device)
    return AnalysisResult(x_b.clone(), z, torch.zeros_like(x_b), [], True, False)


def _variational(problem: AnalysisProblem) -> AnalysisResult:
    return problem.config.minimizer(problem.progress).minimize(problem.cost())


@register_method("3dvar")
def three_d_var(problem: AnalysisProblem) -> AnalysisResult:
    """3DVar: ``T = 1``, no model in the cost."""
    return _variational(problem)


@register_method("4dvar")
def four_d_var(problem: AnalysisProblem) -> AnalysisResult:
    """Strong-constraint 4DVar over ``da_win`` window times; needs ``problem.model``."""
    if problem.model is None:
        raise ValueError("4dvar needs a forecast model")
    return _variational(problem)
