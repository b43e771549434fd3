"""The configuration of a cycling experiment (``aivarda run CONFIG``).

Example (the embedded world; see ``configs/exp_3DVar.yaml``)::

    name: exp_3DVar
    seed: 0
    data: {source: nature_run}
    start_time: 2000-08-01T00:00
    end_time: 2000-08-31T18:00        # inclusive: 124 cycles of 6 h
    cycle_time: 6h                    # analysis interval and step of the cycling model
    dynamic_member: 8                 # time-lagged members: forecasts of 1…8 cycles valid now
    gap: 8                            # first background: a gap-cycle forecast from the truth
    observations: {mode: random, fraction: 0.05, withhold: 0.15}
    assimilation: {method: 3dvar, background_error: {type: diagonal}}   # 4D methods: da_win, window_interval
    model: null                       # the 6-hour model; null: the shipped fengwu_6h_rollout.pt
    window_model: null                # the 1-hour window model (methods that need one); null: the shipped fengwu_1h.pt
    forecast: {every: 4, lead: 5d}    # a 5-day forecast from every 4th analysis
    outputs: {analyses_zarr: true}
    output_dir: runs/exp_3DVar

Cycle ``n`` analyses at ``t_n = start_time + n·cycle_time`` over the method's window (e.g.
``t_n + k·window_interval``, ``k = 0 … da_win − 1`` for the 4D methods).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from aivarda.components import DAExperimentConfig
from aivarda.config import Duration, StrictModel
from aivarda.errors import ConfigError
from aivarda.models.config import ModelConfig
from aivarda.observations.config import ObservationConfig
from aivarda.paths import ASSETS
from aivarda.timeaxis import to_timedelta64

DEFAULT_MODEL = ASSETS / "fengwu_6h_rollout.pt"
"""The shipped 6-hour forecast model (cycling, forecasts, ensemble): the one-step model ``fengwu_6h.pt``
fine-tuned on 24-hour rollouts (``configs/models/fengwu_6h_rollout.yaml``)."""
DEFAULT_WINDOW_MODEL = ASSETS / "fengwu_1h.pt"
"""The shipped 1-hour forecast model (inside the window of the 4D methods)."""


def default_models_available() -> bool:
    """Whether both shipped trained models exist."""
    return DEFAULT_MODEL.is_file() and DEFAULT_WINDOW_MODEL.is_file()


def seed_observations() -> ObservationConfig:
    """The seeds' observing system: 5 % of the grid columns at random each cycle, all channels,
    σ_o = 0.01 σ_clim (temperatures × 0.25), noise added, 15 % of the columns withheld."""
    return ObservationConfig(mode="random", fraction=0.05, withhold=0.15)


class ForecastModeConfig(StrictModel):
    """Forecasts from the analysis scored against the truth (RMSE per lead)."""

    every: int = Field(default=0, ge=0, description="forecast from every N-th cycle's analysis (0: never)")
    lead: Duration = Field(default=timedelta(days=5), description="longest lead, e.g. '5d'")


class OutputsConfig(StrictModel):
    """What a run writes besides metrics (``metrics.csv``/``.nc``) and the last cycle's states."""

    analyses_zarr: bool = Field(default=True, description="every analysis into analyses.zarr (WB2 layout)")
    backgrounds_zarr: bool = Field(default=False, description="every background into backgrounds.zarr")
    observations: bool = Field(default=False, description="each cycle's ObsSet into observations/cycle_NNNNN.nc")
    forecast_fields: bool = Field(
        default=False,
        description="every scored forecast (forecast.every) as fields into forecasts.zarr, in the WeatherBench2 "
                    "forecast layout (time = initialisation time, prediction_timedelta = 0 … forecast.lead)",
    )
    departures: bool = Field(
        default=False, description="each cycle's per-observation O−B/O−A of station reports into departures/cycle_NNNNN.npz"
    )


class CyclingConfig(DAExperimentConfig):
    """A cycling experiment: :class:`~aivarda.components.DAExperimentConfig` plus the time-lagged
    ensemble, the cycling model, the forecasts and the outputs."""

    dynamic_member: int = Field(default=8, ge=1, description="time-lagged members (forecast leads 1…N cycles), kept when the "
                                "method or its B uses an ensemble; otherwise only the background (lead 1) is forecast")
    gap: int = Field(default=8, ge=1, description="first background: forecast of the truth `gap` cycles earlier")
    observations: ObservationConfig = Field(default_factory=seed_observations)
    model: ModelConfig | None = Field(default=None, description="the cycling model (dt = cycle_time); null: shipped")
    forecast: ForecastModeConfig = Field(default_factory=ForecastModeConfig)
    outputs: OutputsConfig = Field(default_factory=OutputsConfig)
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available")

    @model_validator(mode="after")
    def _times(self) -> CyclingConfig:
        if self.start_time is None or self.end_time is None:
            raise ValueError("start_time and end_time are required (ISO times, e.g. 2000-08-01T00:00)")
        if self.end_time < self.start_time:
            raise ValueError("end_time must not be before start_time")
        if self.cycle_time <= timedelta(0):
            raise ValueError("cycle_time must be positive")
        if (self.end_time - self.start_time) % self.cycle_time:
            raise ValueError("end_time - start_time must be a whole number of cycle_time")
        if self.outputs.forecast_fields and self.forecast.every == 0:
            raise ValueError("outputs.forecast_fields: no forecasts are made; set forecast.every ≥ 1 (and forecast.lead)")
        return self

    def torch_device(self) -> str:
        """The device the models and the analysis run on."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device: cuda requested but no CUDA GPU is available; use device: auto or cpu")
        return self.device

    def cycle_times(self) -> np.ndarray:
        """``[N]`` datetime64[ns] analysis times ``start_time, start_time + cycle_time, …, end_time``."""
        start = np.datetime64(self.start_time, "ns")
        step = to_timedelta64(self.cycle_time)
        n = (self.end_time - self.start_time) // self.cycle_time + 1  # type: ignore[operator]
        return (start + np.arange(n) * step).astype("datetime64[ns]")

    def forecast_model_config(self) -> ModelConfig:
        """The configured (or shipped default) cycling model."""
        return self.model if self.model is not None else _shipped(DEFAULT_MODEL, "model")

    def window_model_config(self) -> ModelConfig:
        """The configured (or shipped default) window model."""
        return self.window_model if self.window_model is not None else _shipped(DEFAULT_WINDOW_MODEL, "window_model")


def _shipped(path: Path, key: str) -> ModelConfig:
    if not path.is_file():
        raise ConfigError(
            f"{key}: not given and the shipped default weights {path} do not exist yet; "
            f"train one (aivarda train-model) and set {key}: {{checkpoint: PATH}}"
        )
    return ModelConfig(checkpoint=path)
