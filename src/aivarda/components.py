"""Build, in one place, the typed parts both drivers (``aivarda assimilate``, ``aivarda run``) use.

:class:`DAExperimentConfig` is what the two commands' configs share (the truth, the observing
system, the method, its window model); :func:`build_components` turns it into built parts:

- the field source (the truth) and its :class:`~aivarda.geometry.Geometry`;
- the method (:data:`~aivarda.assimilation.methods.METHODS`) and, when the method declares it
  needs one, its window model (checked against the data's geometry);
- the normalisation statistics (computed on ``statistics_span``, by default the store's ``train``
  span, never on the period a run scores), the per-channel background-error std σ_b (std of
  differences of the truth ``error_hours`` apart) and the observation source of
  ``observations.source`` (the grid simulator, a station network, or files;
  :mod:`aivarda.observations.sources`);
- the background-error model (control transform), built once; a B whose config declares
  ``needs_ensemble`` is updated with the members every cycle through the method.

Drivers receive these parts and never branch on a method's or a B's name. Before they score
anything they call :func:`leakage_guard`: the run refuses (one line) to score a period that any
artefact it uses — forecast models, B files, statistics — was trained or fitted on
(:mod:`aivarda.provenance`), unless ``allow_in_sample`` (then every output is stamped).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor

from aivarda.assimilation.methods import (
    AssimilationConfig,
    AssimilationSection,
    Method,
    ThreeDVarConfig,
    assimilation_field,
    build_method,
)
from aivarda.background.registry import TransformContext, build_transform
from aivarda.background.transforms import ControlTransform
from aivarda.config import ExperimentConfig
from aivarda.data.sources import FieldSource, open_source
from aivarda.data.stats import load_or_compute_norm_stats
from aivarda.errors import ConfigError, DataError
from aivarda.geometry import Geometry
from aivarda.models.base import ForecastModel
from aivarda.models.checkpoint import load_forecast_model
from aivarda.models.config import ModelConfig
from aivarda.normstats import NormStats
from aivarda.observations.config import ObservationConfig
from aivarda.observations.sources import ObservationSource, build_observation_source


class DAExperimentConfig(ExperimentConfig):
    """What every assimilation experiment has: the span of the truth, the observing system, the
    ``assimilation`` section (its ``method`` selects the method's own config) and the window model
    of a method that needs one."""

    span: str | None = Field(default=None, description="span of the store the truth is read from (None: all)")
    observations: ObservationConfig = Field(default_factory=ObservationConfig)
    assimilation: AssimilationSection = Field(default_factory=ThreeDVarConfig)
    window_model: ModelConfig | None = Field(
        default=None, description="forecast model stepping through the window (methods that need one)"
    )
    statistics_span: str | None = Field(
        default="train", description="span of the store the normalisation statistics are computed on (null: all)"
    )
    allow_in_sample: bool = Field(
        default=False, description="score a period an artefact was trained/fitted on (stamped on every output)"
    )

    @field_validator("assimilation", mode="before")
    @classmethod
    def _method(cls, v: Any) -> AssimilationConfig:
        return assimilation_field(v)

    def window_model_config(self) -> ModelConfig | None:
        """The configured window model (a subclass may supply a default)."""
        return self.window_model

    def torch_device(self) -> str:
        """The device the models and the analysis run on (``cpu`` unless a subclass says otherwise)."""
        return "cpu"


@dataclass
class Components:
    """The built parts of an experiment (see the module docstring)."""

    source: FieldSource
    statistics_source: FieldSource
    geometry: Geometry
    method: Method
    window_model: ForecastModel | None
    stats: NormStats
    background_std: Tensor
    observations: ObservationSource  # observe(truth_window, analysis_time, window_offsets, cycle) → ObsSet
    transform: ControlTransform
    b_needs_ensemble: bool


def load_model(cfg: ModelConfig, geometry: Geometry, key: str, device: str) -> ForecastModel:
    """A forecast model on ``device``, checked against the data's geometry (``key`` names the
    config section in errors)."""
    model = load_forecast_model(cfg, device=device)
    geometry.check_same(model.geometry, key)
    return model


def build_components(
    cfg: DAExperimentConfig, *, error_hours: float, progress: bool = True, ensemble: bool = True
) -> Components:
    """Open the truth, build the method, its window model, statistics, simulator and B.

    ``ensemble``: whether the driver has ensemble members (the cycling runner's time-lagged store;
    a single analysis from a lagged truth has none). Cheap checks come first (the window model
    exists, the members a method or B needs) so that a bad config fails before any data is
    generated or read.
    """
    method = build_method(cfg.assimilation)
    b_type = cfg.assimilation.background_error.type
    b_needs_ensemble = bool(cfg.assimilation.background_error.needs_ensemble)  # may depend on the B's settings
    if not ensemble and (method.needs.ensemble or b_needs_ensemble):
        what = f"method {method.name}" if method.needs.ensemble else f"background_error type {b_type}"
        raise ConfigError(f"assimilation: {what} needs ensemble members, which this command does not have "
                          "(cycle it with aivarda run)")
    model_cfg = cfg.window_model_config() if method.needs.window_model else None
    if method.needs.window_model and model_cfg is None:
        raise ConfigError(f"window_model: method {method.name} needs a window model (window_model: {{checkpoint: ...}})")
    source = open_source(cfg.data)
    geometry = source.geometry
    device = cfg.torch_device()
    window_model = None if model_cfg is None else load_model(model_cfg, geometry, "window_model", device)
    stats_source = source
    if cfg.statistics_span is not None:
        try:
            stats_source = open_source(cfg.data, span=cfg.statistics_span)
        except DataError as exc:
            raise ConfigError(f"statistics_span: {exc} (set statistics_span: null to use the whole store)") from None
    stats = load_or_compute_norm_stats(stats_source, diff_hours=error_hours, progress=progress)
    background_std = stats.diff_std.to(device, torch.float32)
    observations = build_observation_source(cfg.observations, geometry.grid, geometry.layout, stats.std, cfg.seed)
    b_cfg = cfg.assimilation.background_error
    context = TransformContext(geometry.state_shape, torch.float32, geometry, background_std)
    transform = build_transform(b_cfg, context)
    return Components(source, stats_source, geometry, method, window_model, stats, background_std, observations,
                      transform, b_needs_ensemble)


def leakage_guard(cfg: DAExperimentConfig, parts: Components, evaluated: Any, models: list[ModelConfig]) -> dict[str, Any]:
    """Refuse to score ``evaluated`` (a :class:`~aivarda.provenance.TimeSpan` or times) when any
    artefact of the run — the forecast ``models``, the window model, the B's files, the
    normalisation statistics — was trained or fitted on it (:class:`~aivarda.errors.LeakageError`,
    one line) unless ``cfg.allow_in_sample``; prints the warnings and returns the record to stamp
    on the outputs."""
    from aivarda.artefacts import (
        guard_run,
        trained_on_of_background_error,
        trained_on_of_model,
        trained_on_of_norm_stats,
    )

    if parts.window_model is not None:
        models = [*models, cfg.window_model_config()]
    artefacts = [record for m in models for record in trained_on_of_model(m)]
    artefacts += trained_on_of_background_error(cfg.assimilation.background_error)
    artefacts += trained_on_of_norm_stats(parts.stats, parts.statistics_source, "normalisation statistics (σ_clim, σ_b)")
    record = guard_run(evaluated, parts.source, artefacts, allow_in_sample=cfg.allow_in_sample)
    for warning in record["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return record
