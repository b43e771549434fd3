"""One variational analysis on a field source with simulated observations (``aivarda assimilate``).

The observing-system simulation experiment of a single cycle:

1. truth window ``x_t(t_a + k·Δ)``, ``k = 0 … T−1`` (``T = da_win``, ``Δ = window_interval``) from the
   field source;
2. background ``x_b`` at the window start: the truth ``lag`` earlier (a persistence forecast of that
   lag; the cycling runner replaces it by a model forecast from the previous analysis);
3. observations ``y = H(x_t) + ε``, ``ε ~ N(0, R)``, from :class:`ObservationSimulator`, then quality
   control against the background (never against the truth);
4. background error: the configured control transform; a diagonal B takes by default the
   per-channel std of ``lag``-hour differences of the truth, the error of this background;
5. ``x_a = x_b + U z*`` with ``z* = argmin J(z)`` (:mod:`aivarda.assimilation.methods`);
6. scores against the truth (latitude-weighted RMSE and bias per channel) and in observation
   space (O−B, O−A, for assimilated and withheld observations).

Outputs in the output directory: ``metrics.json`` (everything the table shows), ``states.nc``
(background, analysis, truth at the window start, ``[channel, latitude, longitude]``),
``observations.nc`` (IODA-like groups), ``minimizer.csv`` (J, J_b, J_o, ‖∇J‖ per iteration) and
``increment_<channel>.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time as wallclock
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from aivarda.assimilation.methods import AnalysisProblem, AssimilationConfig, analyse
from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.background.registry import TransformContext, build_transform
from aivarda.channels import ChannelLayout
from aivarda.config import Duration, ExperimentConfig, StrictModel, load_config
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid
from aivarda.models.config import ModelConfig
from aivarda.observations.config import ObservationConfig, QCConfig
from aivarda.observations.obsset import ObsSet
from aivarda.observations.operators import build_operator
from aivarda.observations.qc import quality_control

HEADLINE_CHANNELS = ("z500", "t850", "u500", "q500", "t2m")


class BackgroundConfig(StrictModel):
    """How the background is made for a single analysis."""

    kind: Literal["lagged_truth"] = Field(
        default="lagged_truth", description="the truth `lag` before the window start (a persistence forecast)"
    )
    lag: Duration = Field(default=timedelta(hours=48), description="age of the lagged truth, e.g. '48h'")


class AnalyseConfig(ExperimentConfig):
    """A single analysis: ``ExperimentConfig`` plus the analysis time, background, observations,
    the method, and (4DVar) the forecast model."""

    span: str | None = Field(default="eval", description="span of the store to take times from (None: all)")
    analysis_time: datetime | None = Field(default=None, description="window start; default: first possible")
    window_interval: Duration = Field(default=timedelta(hours=1), description="spacing of 4DVar window times")
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    observations: ObservationConfig = Field(default_factory=ObservationConfig)
    assimilation: AssimilationConfig = Field(default_factory=AssimilationConfig)
    model: ModelConfig | None = Field(default=None, description="forecast model inside the 4DVar window")

    def resolve_paths(self, base: Path) -> None:
        super().resolve_paths(base)
        self.observations.resolve_paths(base)
        if self.model is not None:
            self.model.resolve_paths(base)


@dataclass
class SingleAnalysis:
    """Everything one analysis produced (tensors on the CPU, float32)."""

    grid: Grid
    layout: ChannelLayout
    truth: Tensor  # [C, H, W] at the window start
    background: Tensor  # [C, H, W]
    result: AnalysisResult
    observations: ObsSet  # all simulated observations, QC flags and withheld marks included
    metrics: dict[str, Any]


def _hours(td: timedelta) -> float:
    return td.total_seconds() / 3600.0


def _window_times(cfg: AnalyseConfig, candidates: np.ndarray, all_times: np.ndarray, where: str) -> np.ndarray:
    """``[T]`` datetime64 window times; the default start is the first of ``candidates`` whose
    background (``lag`` earlier) and window times are all in ``all_times``."""
    interval = np.timedelta64(int(cfg.window_interval.total_seconds()), "s")
    lag = np.timedelta64(int(cfg.background.lag.total_seconds()), "s")
    T = cfg.assimilation.da_win
    offsets = np.arange(T) * interval
    if cfg.analysis_time is not None:
        start = np.datetime64(cfg.analysis_time, "ns")
    else:
        ok = [t for t in candidates if np.isin(np.append(t + offsets, t - lag), all_times).all()]
        if not ok:
            raise DataError(
                f"{where}: no time in span {cfg.span!r} has a background {cfg.background.lag} earlier "
                f"and {T} window times {cfg.window_interval} apart"
            )
        start = ok[0]
    return (start + offsets).astype("datetime64[ns]")


def _obs_space_stats(obs: ObsSet, hx: Tensor) -> dict[str, float]:
    """Count, mean and RMS of ``y − H(x)`` and RMS of ``(y − H(x))/σ`` over ``obs``."""
    if len(obs) == 0:
        return {"count": 0}
    d = (obs.value - hx).double()
    return {
        "count": len(obs),
        "mean": float(d.mean()),
        "rms": float(d.pow(2).mean().sqrt()),
        "normalised_rms": float((d / obs.error_std.double()).pow(2).mean().sqrt()),
    }


def observation_space(obs: ObsSet, grid: Any, layout: Any, windows: dict[str, Tensor]) -> dict[str, Any]:
    """``{"assimilated"|"withheld": {name: stats of y − H(window)}}`` for each window ``[T, C, H, W]``
    in ``windows`` (e.g. ``{"O-B": x_b window, "O-A": x_a window}``); withheld = verification only."""
    out: dict[str, Any] = {}
    for subset_name, subset in (("assimilated", obs.active()), ("withheld", obs.verification())):
        if len(subset) == 0:
            out[subset_name] = {"count": 0}
            continue
        first = next(iter(windows.values()))
        H = build_operator(subset, grid, layout, tuple(first.shape))
        out[subset_name] = {name: _obs_space_stats(subset, H(w).detach()) for name, w in windows.items()}
    return out


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
    a_cfg: AssimilationConfig,
    x_b: Tensor,
    obs: ObsSet,
    grid: Grid,
    layout: ChannelLayout,
    qc: QCConfig,
    transform: Any,
    background_std: Tensor,
    model: Any = None,
    progress: bool = False,
) -> WindowAnalysis:
    """QC against the background window, then ``x_a = x_b + U z*`` by the configured method.

    ``x_b`` ``[C, H, W]`` is the background at the window start; ``obs`` the simulated observations
    of the ``da_win`` window times; ``background_std`` ``[C]`` the σ_b of the background check;
    ``model`` steps the state between window times (4DVar, ``a_cfg.steps_per_time`` steps apart).
    """
    T = a_cfg.da_win
    with torch.no_grad():
        bg_window = x_b[None] if model is None else torch.stack(trajectory(model, x_b, T, a_cfg.steps_per_time))
    obs = quality_control(obs, grid, layout, qc, background=bg_window, background_std=background_std.to(x_b.dtype))
    active = obs.active()
    operator = build_operator(active, grid, layout, (T, *x_b.shape))
    problem = AnalysisProblem(a_cfg, x_b, transform, operator, active, model=model, progress=progress)
    t0 = wallclock.perf_counter()
    result = analyse(problem)
    seconds = wallclock.perf_counter() - t0
    with torch.no_grad():
        x_a = result.x_a.detach()
        an_window = x_a[None] if model is None else torch.stack(trajectory(model, x_a, T, a_cfg.steps_per_time))
    return WindowAnalysis(obs, result, bg_window, an_window, seconds)


def state_scores(grid: Grid, layout: ChannelLayout, truth: Tensor, x_b: Tensor, x_a: Tensor, clim_std: Tensor) -> dict[str, Any]:
    """Latitude-weighted RMSE and bias per channel of background and analysis against the truth,
    and the channel mean of RMSE/σ_clim (``normalised_wrmse``)."""
    from aivarda.evaluation.metrics import bias, rmse

    names = layout.names
    rmse_b, rmse_a = rmse(x_b, truth, grid), rmse(x_a, truth, grid)
    clim = clim_std.to(rmse_b)
    return {
        "bg_wrmse": dict(zip(names, rmse_b.tolist(), strict=True)),
        "ana_wrmse": dict(zip(names, rmse_a.tolist(), strict=True)),
        "bg_bias": dict(zip(names, bias(x_b, truth, grid).tolist(), strict=True)),
        "ana_bias": dict(zip(names, bias(x_a, truth, grid).tolist(), strict=True)),
        "normalised_wrmse": {"background": float((rmse_b / clim).mean()), "analysis": float((rmse_a / clim).mean())},
    }


def minimizer_summary(result: AnalysisResult) -> dict[str, Any]:
    """Iterations, convergence, fallback, J at the first and last iterate."""
    return {
        "iterations": len(result.diagnostics),
        "converged": result.converged,
        "fallback": result.fallback,
        "J_initial": result.diagnostics[0]["J"] if result.diagnostics else None,
        "J_final": result.diagnostics[-1]["J"] if result.diagnostics else None,
    }


def run_single_analysis(cfg: AnalyseConfig, *, progress: bool = True) -> SingleAnalysis:
    """Run the whole single-cycle OSSE described in the module docstring."""
    from aivarda.data.sources import open_source
    from aivarda.data.stats import load_or_compute_norm_stats
    from aivarda.observations.simulator import ObservationSimulator

    torch.manual_seed(cfg.seed)
    source = open_source(cfg.data, span=cfg.span)
    full = source if cfg.span is None else open_source(cfg.data)
    grid, layout = source.grid, source.layout
    a_cfg = cfg.assimilation
    model = None
    if a_cfg.da_win > 1:
        if cfg.model is None:
            raise ConfigError(f"model: method {a_cfg.method} with da_win {a_cfg.da_win} needs a forecast model section")
        from aivarda.models.checkpoint import load_forecast_model

        model = load_forecast_model(cfg.model)
        a_cfg = a_cfg.model_copy(update={"steps_per_time": steps_between(cfg.window_interval, model.dt, "window_interval")})

    t0 = wallclock.perf_counter()
    times = _window_times(cfg, source.times, full.times, str(getattr(source, "path", "source")))
    truth_window = full.states(times)  # [T, C, H, W]
    lag = np.timedelta64(int(cfg.background.lag.total_seconds()), "s")
    x_b = full.state(times[0] - lag)
    stats = load_or_compute_norm_stats(full, diff_hours=_hours(cfg.background.lag), progress=progress)
    io_seconds = wallclock.perf_counter() - t0

    offsets = [float((t - times[0]) / np.timedelta64(1, "h")) for t in times]
    simulator = ObservationSimulator(cfg.observations, grid, layout, stats.std, seed=cfg.seed)
    obs = simulator.simulate(truth_window, offsets, cycle=0)
    context = TransformContext(tuple(x_b.shape), x_b.dtype, {"std": stats.diff_std})
    transform = build_transform(a_cfg.background_error, context)
    wa = analyse_window(
        a_cfg, x_b, obs, grid, layout, cfg.observations.qc, transform, stats.diff_std, model=model, progress=progress
    )
    result = wa.result
    truth = truth_window[0]
    metrics: dict[str, Any] = {
        "method": a_cfg.method,
        "background_error": a_cfg.background_error.type,
        "analysis_time": str(times[0])[:19],
        "window_times": len(times),
        "observations": wa.observations.counts(),
        **state_scores(grid, layout, truth, x_b, result.x_a.detach(), stats.std),
        "observation_space": observation_space(
            wa.observations, grid, layout, {"O-B": wa.background_window, "O-A": wa.analysis_window}
        ),
        "minimizer": minimizer_summary(result),
        "wall_seconds": {"io": io_seconds, "minimisation": wa.minimise_seconds},
    }
    return SingleAnalysis(grid, layout, truth, x_b, result, wa.observations, metrics)


def steps_between(interval: timedelta, dt_hours: float, what: str) -> int:
    """The whole number of model steps of ``dt_hours`` in ``interval`` (a ConfigError otherwise)."""
    steps = _hours(interval) / float(dt_hours)
    if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
        raise ConfigError(f"{what}: {interval} is not a whole number of model steps of {dt_hours:g} h")
    return int(round(steps))


def trajectory(model: Any, x0: Tensor, n_times: int, steps_per_time: int) -> list[Tensor]:
    """``[x(0), x(Δ), …]``: ``n_times`` states, ``steps_per_time`` model steps apart."""
    states = [x0]
    for _ in range(n_times - 1):
        states.append(model.forecast(states[-1], steps_per_time))
    return states


def _check_output_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output directory is not empty; choose another --out or remove it")


def write_outputs(run: SingleAnalysis, cfg: AnalyseConfig, out: Path) -> None:
    """Write metrics, states, observations, minimiser log and an increment map into ``out``."""
    import xarray as xr

    from aivarda.evaluation.plots import plot_map, save_figure
    from aivarda.observations.io import save_obs

    out.mkdir(parents=True, exist_ok=True)
    grid, layout = run.grid, run.layout
    coords = {"channel": list(layout.names), "latitude": grid.lat, "longitude": grid.lon}
    dims = ("channel", "latitude", "longitude")
    ds = xr.Dataset(
        {
            "background": (dims, run.background.numpy()),
            "analysis": (dims, run.result.x_a.detach().float().numpy()),
            "truth": (dims, run.truth.numpy()),
        },
        coords=coords,
        attrs={"analysis_time": run.metrics["analysis_time"], "method": run.metrics["method"]},
    )
    ds.to_netcdf(out / "states.nc", engine="h5netcdf")
    save_obs(run.observations, out / "observations.nc", layout)
    with open(out / "minimizer.csv", "w", newline="") as fh:
        rows = run.result.diagnostics
        if rows:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (out / "metrics.json").write_text(json.dumps(run.metrics, indent=2))
    (out / "config.yaml").write_text(cfg.model_dump_json(indent=2))
    channel = "z500" if "z500" in layout.names else layout.names[0]
    c = layout.index(channel)
    increment = run.result.increment[c].detach().float().numpy()
    vmax = float(np.abs(increment).max()) or 1.0
    ax = plot_map(
        increment,
        grid,
        title=f"{run.metrics['method']} ({run.metrics['background_error']} B) increment {channel} at {run.metrics['analysis_time']}",
        units=layout.channel(channel).units,
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
    )
    save_figure(ax, out / f"increment_{channel}.png")


def summary_table(metrics: dict[str, Any]) -> str:
    """A short table: background vs analysis RMSE of the headline channels."""
    lines = [
        f"{metrics['method']} analysis at {metrics['analysis_time']} "
        f"({metrics['observations'].get('active', '?')} assimilated observations)",
        f"{'channel':>10} {'RMSE(b)':>12} {'RMSE(a)':>12} {'ratio':>7}",
    ]
    for name in HEADLINE_CHANNELS:
        if name in metrics["bg_wrmse"]:
            b, a = metrics["bg_wrmse"][name], metrics["ana_wrmse"][name]
            lines.append(f"{name:>10} {b:12.4g} {a:12.4g} {a / b if b else float('nan'):7.3f}")
    n = metrics["normalised_wrmse"]
    lines.append(
        f"{'all/σ_clim':>10} {n['background']:12.4g} {n['analysis']:12.4g} {n['analysis'] / n['background']:7.3f}"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``aivarda assimilate CONFIG [--out DIR] [--json]``."""
    cfg = load_config(args.config, AnalyseConfig)
    out = Path(args.out) if args.out is not None else cfg.output_dir
    _check_output_dir(out)
    run = run_single_analysis(cfg, progress=not args.json)
    write_outputs(run, cfg, out)
    print(json.dumps(run.metrics, indent=2) if args.json else summary_table(run.metrics) + f"\noutputs: {out}")
    return 0
