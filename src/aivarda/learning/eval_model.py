"""``aivarda eval-model [CONFIG] [--json]``: forecast skill of a trained model against the nature run.

From initial times ``t_0`` of the ``eval`` span (every ``init_every`` hours, with every lead still
inside the span) the model forecasts ``x̂(t_0 + τ)`` for the leads ``τ`` (multiples of its
``dt``). Scores per channel and lead, following WeatherBench2 (:mod:`aivarda.evaluation.metrics`):

    RMSE(τ) = sqrt( mean_{t_0} ⟨(x̂ − x)²⟩ ),      ACC(τ) = mean_{t_0} ⟨x̂' x'⟩ / sqrt(⟨x̂'²⟩⟨x'²⟩)

with ``⟨·⟩`` the area-weighted spatial mean and anomalies ``'`` from the climatology ``c`` (the
time mean of ``clim_span`` at every grid point). Baselines: persistence ``x̂ = x(t_0)`` and
climatology ``x̂ = c`` (whose ACC is undefined and reported as ``null``).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from aivarda.config import load_config, resolve_config_paths
from aivarda.data.sources import Wb2ZarrSource, data_time_range, format_time
from aivarda.data.stats import climatology
from aivarda.errors import ConfigError, DataError
from aivarda.evaluation.metrics import acc, mse
from aivarda.learning.train_model import store_path
from aivarda.models.checkpoint import load_forecast_model
from aivarda.models.config import EvalConfig

BASELINES = ("model", "persistence", "climatology")


def initial_times(times: np.ndarray, leads: list[float], every_hours: float, max_inits: int | None) -> np.ndarray:
    """Times ``t_0`` of ``times`` spaced ``every_hours`` from the first, with ``t_0 + τ`` in ``times``
    for every lead ``τ``."""
    times = np.asarray(times, dtype="datetime64[ns]")
    every = np.timedelta64(int(round(every_hours * 3600)), "s").astype("timedelta64[ns]")
    ok = (times - times[0]) % every == np.timedelta64(0, "ns")
    for lead in leads:
        ok &= np.isin(times + np.timedelta64(int(round(lead * 3600)), "s"), times)
    out = times[ok]
    return out[:max_inits] if max_inits else out


def _device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Scores of the model and the baselines (see the module docstring)."""
    device = _device(cfg.device)
    model = load_forecast_model(cfg.checkpoint, device=str(device))
    if model.layout is None or model.grid is None:
        raise DataError(f"{cfg.checkpoint}: the checkpoint has no grid/layout")
    path = store_path(cfg.data)
    source = Wb2ZarrSource(path, model.layout, span=cfg.span, time_range=data_time_range(cfg.data))
    if source.grid != model.grid:
        raise DataError(f"{path}: grid {source.grid.describe()} differs from the model's {model.grid.describe()}")
    channels = model.layout.indices(cfg.channels)
    steps = []
    for lead in cfg.leads:
        n = lead / model.dt
        if n < 1 or abs(n - round(n)) > 1e-9:
            raise ConfigError(f"leads: {lead:g} h is not a positive multiple of the model step ({model.dt:g} h)")
        steps.append(int(round(n)))
    order = np.argsort(steps)
    inits = initial_times(source.times, cfg.leads, cfg.init_every, cfg.max_inits)
    if inits.size == 0:
        raise DataError(
            f"{path}: span {cfg.span!r} ({source.times.size} times) has no initial time with all leads "
            f"{[f'{x:g}' for x in cfg.leads]} h inside it"
        )
    # the climatology is its own span's time mean: data.start/end select the evaluated times only
    clim_source = Wb2ZarrSource(path, model.layout, span=cfg.clim_span)
    clim = climatology(clim_source, max_samples=cfg.clim_samples, progress=progress)[channels]

    # per lead: squared-error means and ACCs per initial time, [N, C'] per baseline
    sq: dict[str, list[list[torch.Tensor]]] = {b: [[] for _ in steps] for b in BASELINES}
    cor: dict[str, list[list[torch.Tensor]]] = {b: [[] for _ in steps] for b in BASELINES}
    grid = model.grid
    batches = range(0, inits.size, cfg.batch_size)
    for start in tqdm(batches, desc="eval-model", unit="batch", disable=not progress):
        t0 = inits[start : start + cfg.batch_size]
        x = source.states(t0).to(device)
        x0 = x[:, channels].cpu()
        done = 0
        with torch.no_grad():
            for i in order:
                x = model.forecast(x, steps[i] - done)
                done = steps[i]
                lead = np.timedelta64(int(round(cfg.leads[i] * 3600)), "s")
                truth = source.states(t0 + lead)[:, channels]
                forecasts = {"model": x[:, channels].float().cpu(), "persistence": x0, "climatology": clim.expand_as(truth)}
                for b, f in forecasts.items():
                    sq[b][i].append(mse(f, truth, grid))
                    cor[b][i].append(acc(f, truth, clim, grid))

    rows = []
    for i, lead in enumerate(cfg.leads):
        for b in BASELINES:
            rmse = torch.cat(sq[b][i]).mean(0).sqrt()
            corr = torch.cat(cor[b][i]).mean(0)
            for c, name in enumerate(cfg.channels):
                a = float(corr[c])
                rows.append({
                    "lead_hours": lead,
                    "channel": name,
                    "forecast": b,
                    "rmse": float(rmse[c]),
                    "acc": None if math.isnan(a) else a,
                })
    return {
        "checkpoint": str(cfg.checkpoint),
        "store": str(path),
        "span": cfg.span,
        "climatology_span": cfg.clim_span,
        "dt_hours": model.dt,
        "n_inits": int(inits.size),
        "first_init": format_time(inits[0]),
        "last_init": format_time(inits[-1]),
        "results": rows,
    }


def default_eval_config() -> EvalConfig:
    """``aivarda eval-model`` without a config: the shipped 6-hour model on the nature run."""
    cfg = EvalConfig()
    resolve_config_paths(cfg, Path.cwd())
    return cfg


def main(args: argparse.Namespace) -> int:
    """CLI handler of ``aivarda eval-model``."""
    cfg = load_config(args.config, EvalConfig) if args.config is not None else default_eval_config()
    if args.checkpoint is not None:
        cfg.checkpoint = Path(args.checkpoint).resolve()
    if args.store is not None:
        cfg.data.source, cfg.data.path = "zarr", Path(args.store).resolve()
    if args.max_inits is not None:
        cfg.max_inits = args.max_inits
    report = evaluate(cfg, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    from aivarda.tables import format_table

    print(f"{report['checkpoint']} on {report['store']} span {report['span']!r}: {report['n_inits']} initial times "
          f"{report['first_init']} … {report['last_init']}, step {report['dt_hours']:g} h")
    table = []
    for r in report["results"]:
        row = next((t for t in table if t["lead"] == r["lead_hours"] and t["channel"] == r["channel"]), None)
        if row is None:
            row = {"lead": r["lead_hours"], "channel": r["channel"]}
            table.append(row)
        row[f"rmse_{r['forecast']}"] = r["rmse"]
        if r["forecast"] != "climatology":
            row[f"acc_{r['forecast']}"] = r["acc"]
    headers = ["channel", "lead", "rmse_model", "rmse_persistence", "rmse_climatology", "acc_model", "acc_persistence"]
    print(format_table(sorted(table, key=lambda t: (t["channel"], t["lead"])), headers))
    return 0
