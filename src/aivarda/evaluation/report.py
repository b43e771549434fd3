"""``aivarda report RUN_DIR... [--json] [--out DIR]``: compare cycling experiments.

For every run directory (written by ``aivarda run``) the table shows the mean over cycles of the
latitude-weighted RMSE of the background and of the analysis for the headline channels
(z500, t850, u500, q500, t2m), the mean normalised RMSE (channel mean of RMSE/σ_clim), the number of
cycles and the total wall time; below it, the mean seconds per cycle of each stage (forecast,
observations, minimisation, I/O), so the slowest is visible. The figures, written to ``--out`` (default: ``report/`` beside the
first run directory), are the analysis and background RMSE time series of z500 and t850 with one
line per run, and a map of each run's last increment ``x_a − x_b`` of z500. ``--json`` prints the
same numbers as JSON (``{"runs": [...], "figures": [...]}``). ``--first-cycles N`` restricts every
run to its first ``N`` cycles.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aivarda.errors import ConfigError, DataError
from aivarda.files import check_writable_dir
from aivarda.paths import check_name

HEADLINE_CHANNELS = ("z500", "t850", "u500", "q500", "t2m")
STAGES = ("forecast", "observations", "minimisation", "io", "total")
"""Wall-time stages of a cycle (``wall_<stage>`` columns of ``metrics.csv``)."""
SERIES_CHANNELS = ("z500", "t850")


@dataclass
class RunData:
    """A finished (or partly finished) run: its directory, name, method and metrics rows."""

    path: Path
    name: str
    method: str
    rows: list[dict[str, str]]
    forecast_rows: list[dict[str, str]]


def load_run(path: str | Path, first_cycles: int | None = None) -> RunData:
    """Read ``config.json``, ``metrics.csv`` (and ``forecast_scores.csv``) of a run directory;
    with ``first_cycles = N`` only cycles ``0 … N − 1``."""
    path = Path(path)
    metrics, config = path / "metrics.csv", path / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise DataError(f"{path}: not a run directory of `aivarda run` (no metrics.csv/config.json)")
    cfg = json.loads(config.read_text())
    with metrics.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    forecast_rows: list[dict[str, str]] = []
    if (path / "forecast_scores.csv").is_file():
        with (path / "forecast_scores.csv").open(newline="") as fh:
            forecast_rows = list(csv.DictReader(fh))
    if first_cycles is not None:
        rows = [r for r in rows if int(r["cycle"]) < first_cycles]
        forecast_rows = [r for r in forecast_rows if int(r["cycle"]) < first_cycles]
    method = cfg.get("assimilation", {}).get("method", rows[0]["method"] if rows else "?")
    name = str(cfg.get("name") or path.name)
    try:
        check_name(name)  # the name becomes part of figure file names
    except ValueError as exc:
        raise DataError(f"{config}: name: {exc}") from None
    return RunData(path, name, method, rows, forecast_rows)


def _mean(rows: list[dict[str, str]], column: str) -> float | None:
    values = [float(r[column]) for r in rows if column in r and r[column] not in ("", "nan")]
    return float(np.mean(values)) if values else None


def run_summary(run: RunData) -> dict[str, Any]:
    """The numbers of one table row (machine-readable)."""
    rmse = {
        ch: {"background": _mean(run.rows, f"bg_wrmse_{ch}"), "analysis": _mean(run.rows, f"ana_wrmse_{ch}")}
        for ch in HEADLINE_CHANNELS
        if run.rows and f"ana_wrmse_{ch}" in run.rows[0]
    }
    out: dict[str, Any] = {
        "name": run.name,
        "method": run.method,
        "path": str(run.path),
        "cycles": len(run.rows),
        "first_time": run.rows[0]["time"] if run.rows else None,
        "last_time": run.rows[-1]["time"] if run.rows else None,
        "wall_seconds": float(sum(float(r["wall_total"]) for r in run.rows)),
        "seconds_per_cycle": {s: _mean(run.rows, f"wall_{s}") for s in STAGES},
        "mean_rmse": rmse,
        "mean_normalised_rmse": {"background": _mean(run.rows, "bg_nrmse"), "analysis": _mean(run.rows, "ana_nrmse")},
    }
    if run.forecast_rows:
        leads = sorted({float(r["lead_hours"]) for r in run.forecast_rows})
        out["forecast_rmse"] = {
            ch: {f"{lead:g}h": _mean([r for r in run.forecast_rows if float(r["lead_hours"]) == lead], f"rmse_{ch}")
                 for lead in leads}
            for ch in HEADLINE_CHANNELS
            if f"rmse_{ch}" in run.forecast_rows[0]
        }
    return out


def format_table(runs: list[RunData]) -> str:
    """Mean background/analysis RMSE of the headline channels per run, cycles and wall time."""
    summaries = [run_summary(r) for r in runs]
    channels = [ch for ch in HEADLINE_CHANNELS if any(ch in s["mean_rmse"] for s in summaries)]
    width = max([len(s["name"]) for s in summaries] + [10])
    head = f"{'run':<{width}} {'method':>7} {'cycles':>6} {'wall s':>8} " + " ".join(
        f"{ch + ' b/a':>19}" for ch in [*channels, "all/σ"]
    )
    lines = [head]

    def pair(d: dict[str, float | None]) -> str:
        b, a = d.get("background"), d.get("analysis")
        return f"{'-' if b is None else f'{b:.4g}':>9}/{'-' if a is None else f'{a:.4g}':<9}"

    for s in summaries:
        cells = [pair(s["mean_rmse"].get(ch, {})) for ch in channels] + [pair(s["mean_normalised_rmse"])]
        lines.append(f"{s['name']:<{width}} {s['method']:>7} {s['cycles']:>6} {s['wall_seconds']:>8.1f} " + " ".join(cells))
    lines.append("")
    lines.append(f"{'seconds per cycle':<{width}} " + " ".join(f"{st:>12}" for st in STAGES))
    for s in summaries:
        cells = ["-" if s["seconds_per_cycle"][st] is None else f"{s['seconds_per_cycle'][st]:.3f}" for st in STAGES]
        lines.append(f"{s['name']:<{width}} " + " ".join(f"{c:>12}" for c in cells))
    return "\n".join(lines)


def plot_report(runs: list[RunData], out: Path) -> list[Path]:
    """RMSE time series (z500, t850) and last-cycle increment maps (z500); returns the files."""
    import xarray as xr

    from aivarda.evaluation.plots import plot_map, plot_time_series, save_figure
    from aivarda.grid import Grid

    figures: list[Path] = []
    for ch in SERIES_CHANNELS:
        with_rows = [r for r in runs if r.rows and f"ana_wrmse_{ch}" in r.rows[0]]
        if not with_rows:
            continue
        times = np.array([row["time"] for row in with_rows[0].rows], dtype="datetime64[s]")
        series: dict[str, np.ndarray] = {}
        for r in with_rows:
            if len(r.rows) != len(times):
                continue
            series[f"{r.name} analysis"] = np.array([float(row[f"ana_wrmse_{ch}"]) for row in r.rows])
            series[f"{r.name} background"] = np.array([float(row[f"bg_wrmse_{ch}"]) for row in r.rows])
        ax = plot_time_series(times, series, ylabel=f"RMSE {ch}", title=f"{ch}: RMSE against the truth")
        for analysis, background in zip(ax.lines[0::2], ax.lines[1::2], strict=True):  # same colour, dashed
            background.set_color(analysis.get_color())
            background.set_linestyle("--")
        ax.legend(fontsize="small")
        figures.append(save_figure(ax, out / f"rmse_{ch}.png"))
    for r in runs:
        last = r.path / "last_cycle.nc"
        if not last.is_file():
            continue
        with xr.open_dataset(last, engine="h5netcdf") as ds:
            if "z500" not in ds["channel"].values:
                continue
            inc = (ds["analysis"] - ds["background"]).sel(channel="z500").values
            grid = Grid.from_dict(json.loads(ds.attrs["aivarda_grid"]))
            when = ds.attrs.get("time", "")
        vmax = float(np.abs(inc).max()) or 1.0
        ax = plot_map(inc, grid, title=f"{r.name}: increment z500 at {when}", units="m² s⁻²",
                      cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        figures.append(save_figure(ax, out / f"increment_{r.name}_z500.png"))
    return figures


def main(args: argparse.Namespace) -> int:
    """``aivarda report RUN_DIR... [--json] [--out DIR]``."""
    if args.first_cycles is not None and args.first_cycles < 1:
        raise ConfigError(f"--first-cycles: expected a positive number of cycles, got {args.first_cycles}")
    runs = [load_run(p, args.first_cycles) for p in args.run_dirs]
    out = Path(args.out) if args.out is not None else Path(args.run_dirs[0]).resolve().parent / "report"
    check_writable_dir(out, "--out (the figure folder)")
    figures = plot_report(runs, out)
    if args.json:
        print(json.dumps({"runs": [run_summary(r) for r in runs], "figures": [str(f) for f in figures]}, indent=2))
    else:
        print(format_table(runs))
        print(f"figures: {out}")
    return 0
