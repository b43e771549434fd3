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
(background, analysis, truth at the window start: the CF WeatherBench2 layout with a ``state``
dimension, :func:`aivarda.data.cf.write_states`),
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

from aivarda.assimilation.analysis import analyse_window
from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.components import DAExperimentConfig, build_components, leakage_guard
from aivarda.config import PositiveDuration, StrictModel, load_config
from aivarda.data.sources import FieldSource, open_source
from aivarda.errors import DataError
from aivarda.evaluation.diagnostics import (
    HEADLINE_CHANNELS,
    minimizer_summary,
    observation_space,
    state_scores,
)
from aivarda.geometry import Geometry
from aivarda.observations.obsset import ObsSet
from aivarda.timeaxis import hours, to_timedelta64


class BackgroundConfig(StrictModel):
    """How the background is made for a single analysis."""

    kind: Literal["lagged_truth"] = Field(
        default="lagged_truth", description="the truth `lag` before the window start (a persistence forecast)"
    )
    lag: PositiveDuration = Field(default=timedelta(hours=48), description="age of the lagged truth, e.g. '48h'")


class AnalyseConfig(DAExperimentConfig):
    """A single analysis: the shared experiment sections plus the analysis time and the background."""

    span: str | None = Field(default="eval", description="span of the store to take times from (None: all)")
    analysis_time: datetime | None = Field(default=None, description="window start; default: first possible")
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)


@dataclass
class SingleAnalysis:
    """Everything one analysis produced (tensors on the CPU, float32)."""

    geometry: Geometry
    truth: Tensor  # [C, H, W] at the window start
    background: Tensor  # [C, H, W]
    result: AnalysisResult
    observations: ObsSet  # all simulated observations, QC flags and withheld marks included
    metrics: dict[str, Any]


def _window_start(cfg: AnalyseConfig, span: FieldSource, full: FieldSource, offsets: np.ndarray, where: str) -> np.datetime64:
    """The analysis time: configured, or the first time of ``span`` whose background (``lag``
    earlier) and window times are all in the store."""
    if cfg.analysis_time is not None:
        return np.datetime64(cfg.analysis_time, "ns")
    lag = to_timedelta64(cfg.background.lag)
    ok = [t for t in span.times if np.isin(np.append(t + offsets, t - lag), full.times).all()]
    if not ok:
        raise DataError(
            f"{where}: no time in span {cfg.span!r} has a background {cfg.background.lag} earlier "
            f"and the {offsets.size} window times of the method"
        )
    return ok[0]


def run_single_analysis(cfg: AnalyseConfig, *, progress: bool = True) -> SingleAnalysis:
    """Run the whole single-cycle OSSE described in the module docstring."""
    torch.manual_seed(cfg.seed)
    t0 = wallclock.perf_counter()
    parts = build_components(cfg, error_hours=hours(cfg.background.lag), progress=progress, ensemble=False)
    full, method, geometry = parts.source, parts.method, parts.geometry
    span = full if cfg.span is None else open_source(cfg.data, span=cfg.span)
    start = _window_start(cfg, span, full, method.window_offsets(), str(getattr(span, "path", "source")))
    window = method.window(start, parts.window_model)
    provenance = leakage_guard(cfg, parts, window.times, [])
    truth_window = full.states(window.times)  # [T, C, H, W]
    x_b = full.state(window.start - to_timedelta64(cfg.background.lag))
    io_seconds = wallclock.perf_counter() - t0

    obs = parts.observations.observe(truth_window, window.start, window.offsets, cycle=0)
    wa = analyse_window(method, x_b, obs, geometry, cfg.observations, parts.transform, parts.background_std,
                        window, parts.window_model, progress)
    result = wa.result
    truth = truth_window[0]
    metrics: dict[str, Any] = {
        "method": method.name,
        "background_error": cfg.assimilation.background_error.type,
        "analysis_time": str(window.start)[:19],
        "window_times": window.n_times,
        "observations": wa.observations.counts(),
        **state_scores(geometry, truth, x_b, result.x_a.detach(), parts.stats.std),
        "observation_space": observation_space(
            wa.observations, geometry, {"O-B": wa.background_window, "O-A": wa.analysis_window},
            cfg.observations.operator,
        ),
        "minimizer": minimizer_summary(result),
        "wall_seconds": {"io": io_seconds, "minimisation": wa.minimise_seconds},
        "provenance": provenance,
    }
    return SingleAnalysis(geometry, truth, x_b, result, wa.observations, metrics)


def _check_output_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: output directory is not empty; choose another --out or remove it")


def write_outputs(run: SingleAnalysis, cfg: AnalyseConfig, out: Path) -> None:
    """Write metrics, states, observations, minimiser log and an increment map into ``out``."""
    from aivarda.data.cf import global_attrs, write_states
    from aivarda.evaluation.plots import plot_map, save_figure
    from aivarda.evaluation.provenance import git_state
    from aivarda.observations.io import save_obs

    out.mkdir(parents=True, exist_ok=True)
    grid, layout = run.geometry.grid, run.geometry.layout
    title = f"aivarda single analysis {cfg.name}: background, analysis and truth ({run.metrics['method']})"
    write_states(out / "states.nc", grid, layout,
                 {"background": run.background, "analysis": run.result.x_a, "truth": run.truth},
                 np.datetime64(run.metrics["analysis_time"], "ns"),
                 {**global_attrs(title, commit=git_state()[0], history=f"aivarda assimilate (experiment {cfg.name})"),
                  "analysis_time": run.metrics["analysis_time"], "method": run.metrics["method"]})
    save_obs(run.observations, out / "observations.nc", layout, analysis_time=run.metrics["analysis_time"])
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
    if getattr(args, "allow_in_sample", False):
        cfg.allow_in_sample = True
    out = Path(args.out) if args.out is not None else cfg.output_dir
    _check_output_dir(out)
    run = run_single_analysis(cfg, progress=not args.json)
    write_outputs(run, cfg, out)
    print(json.dumps(run.metrics, indent=2) if args.json else summary_table(run.metrics) + f"\noutputs: {out}")
    return 0
