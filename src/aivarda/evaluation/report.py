"""``aivarda report RUN_DIR... [--json] [--out DIR] [--compare A:B ...]``: compare cycling experiments.

Scores follow WeatherBench2's conventions:

- a run's score per channel is the root of the time-mean MSE over its cycles,
  ``RMSE = sqrt((1/N) Σ_n MSE_n)`` with ``MSE_n = RMSE_n²`` of the latitude-weighted RMSE the runner
  records per cycle (not the mean of per-cycle RMSEs, which is smaller by Jensen's inequality);
- the all-channel normalised score ("all/σ") is ``(1/C) Σ_c RMSE_c / σ_c`` with σ_c the
  climatological std (``sigma_clim_<ch>`` columns of the metrics); a run without them (written
  before the baselines were recorded) falls back to the root-mean-square over cycles of its per-cycle
  ``*_nrmse`` column, and the JSON says which (``normalised_rmse_convention``);
- forecast scores per lead use one sample set: only forecasts that reached every lead (up to the
  longest any forecast of the run reached) with truth, so all leads average the same initial times
  (``forecast_samples``: how many were used of how many);
- baselines: when the metrics hold them (:func:`aivarda.evaluation.metrics.baseline_scores`), the
  climatological mean state and persistence of the truth one cycle earlier, scored the same way at
  the run's valid times (rows ``climatology`` and ``persistence``).

The table shows per run the background/analysis RMSE of z500, t850, u500, q500, t2m and all/σ, the
number of cycles and the wall time, the baseline rows, the mean seconds per cycle of each stage
(forecast, observations, update of B from the ensemble when a run has one, minimisation, I/O,
total; with the mean number of trainable parameters of a fine-tuned B, ``b_trainable_params``), the
z500 forecast RMSE by lead, and a
provenance footer (aivarda version, git commit, host, and per run the config hash and store
fingerprint, :mod:`aivarda.evaluation.provenance`). ``--compare A:B`` (repeatable; ``A``/``B`` a run
name, directory or 1-based position) adds the paired difference ``A − B`` of those scores over the
runs' common valid times with a moving-block bootstrap 95 % interval
(:mod:`aivarda.evaluation.bootstrap`, ``--block-length`` cycles, default 4) and "not significant"
where it contains 0. Runs of one configuration that differ only in ``seed`` (and ``name``,
``output_dir``) given together form one experiment: they are paired seed by seed with the other
side's runs (a side with a single run is paired with every seed of the other) and averaged over
seeds at each valid time before the time mean. The figures, written to ``--out`` (default:
``report/`` beside the first run directory), are the analysis and background RMSE time series of
z500 and t850 with one line per run, and a map of each run's last increment ``x_a − x_b`` of z500.
``--json`` prints the same numbers as JSON (``{"runs", "comparisons", "figures", "provenance"}``).
``--first-cycles N`` restricts every run to its first ``N`` cycles.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aivarda.channels import ChannelLayout
from aivarda.config import check_name
from aivarda.errors import ConfigError, DataError
from aivarda.evaluation.bootstrap import (
    DEFAULT_BLOCK_LENGTH,
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    paired_difference,
)
from aivarda.evaluation.metrics import time_mean_rmse
from aivarda.evaluation.provenance import canonical_json, code_provenance, footer, run_provenance
from aivarda.evaluation.station_stats import format_departures, summarise_departures
from aivarda.files import check_writable_dir, read_checked_json

HEADLINE_CHANNELS = ("z500", "t850", "u500", "q500", "t2m")
STAGES = ("forecast", "observations", "b_update", "minimisation", "io", "total")
"""Wall-time stages of a cycle (``wall_<stage>`` columns of ``metrics.csv``; ``b_update``: the
per-cycle update of B from the ensemble, e.g. fine-tuning a VAE decoder; ``minimisation``: the
analysis)."""
SERIES_CHANNELS = ("z500", "t850")
ALL = "all/σ"
"""Key of the all-channel normalised score."""
KINDS = {"background": "bg", "analysis": "ana"}
"""Score kinds and their column prefixes in ``metrics.csv``."""
BASELINES = {"climatology": "clim", "persistence": "pers"}
"""Baseline forecasts and their column prefixes in ``metrics.csv``."""
AGGREGATION = "sqrt(time-mean MSE) over cycles (WeatherBench2); MSE per cycle = (latitude-weighted RMSE)²"
WB2_NORMALISED = "mean over channels of sqrt(time-mean MSE)/sigma_clim"
FALLBACK_NORMALISED = "root-mean-square over cycles of the per-cycle channel mean of RMSE/sigma_clim (no sigma_clim columns)"
EXPERIMENT_FREE_KEYS = ("seed", "name", "output_dir")
"""Configuration keys in which the seeds of one experiment may differ."""


@dataclass
class RunData:
    """A finished (or partly finished) run: its directory, name, method, metrics rows and configuration."""

    path: Path
    name: str
    method: str
    rows: list[dict[str, str]]
    forecast_rows: list[dict[str, str]]
    config: dict[str, Any] = field(default_factory=dict)


def load_run(path: str | Path, first_cycles: int | None = None) -> RunData:
    """Read ``config.json``, ``metrics.csv`` (and ``forecast_scores.csv``) of a run directory;
    with ``first_cycles = N`` only cycles ``0 … N − 1``."""
    path = Path(path)
    metrics, config = path / "metrics.csv", path / "config.json"
    if not metrics.is_file() or not config.is_file():
        raise DataError(f"{path}: not a run directory of `aivarda run` (no metrics.csv/config.json)")
    cfg = read_checked_json(config, "the run's configuration", required=False)
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
    return RunData(path, name, method, rows, forecast_rows, cfg)


# ------------------------------------------------------------------------------ aggregation
def _float(text: str | None) -> float:
    return float(text) if text not in (None, "") else float("nan")


def _values(rows: list[dict[str, str]], column: str) -> np.ndarray:
    """The column's finite values (missing and NaN cells left out)."""
    v = np.array([_float(r.get(column)) for r in rows], dtype=np.float64)
    return v[np.isfinite(v)]


def _mean(rows: list[dict[str, str]], column: str) -> float | None:
    values = _values(rows, column)
    return float(values.mean()) if values.size else None


def _rms(rows: list[dict[str, str]], column: str) -> float | None:
    """``sqrt(mean(v²))`` over cycles: √(time-mean MSE) of a per-cycle RMSE column."""
    values = _values(rows, column)
    return float(time_mean_rmse(values)) if values.size else None


def channels_of(rows: list[dict[str, str]]) -> list[str]:
    """All channels a run scored (its ``bg_wrmse_<ch>`` columns), in the layout's order."""
    return [k.removeprefix("bg_wrmse_") for k in rows[0] if k.startswith("bg_wrmse_")] if rows else []


def sigma_clim(rows: list[dict[str, str]]) -> np.ndarray | None:
    """σ_clim per channel from the ``sigma_clim_<ch>`` columns (None when the run has none)."""
    channels = channels_of(rows)
    if not channels or any(f"sigma_clim_{ch}" not in rows[0] for ch in channels):
        return None
    sigma = np.array([_float(rows[0][f"sigma_clim_{ch}"]) for ch in channels])
    return sigma if np.all(np.isfinite(sigma) & (sigma > 0)) else None


def _normalised(rows: list[dict[str, str]], prefix: str, sigma: np.ndarray | None) -> float | None:
    """all/σ of the columns ``<prefix>_wrmse_<ch>``: WB2 form with σ, else the per-cycle fallback."""
    if sigma is None:
        return _rms(rows, f"{prefix}_nrmse")
    scores = [_rms(rows, f"{prefix}_wrmse_{ch}") for ch in channels_of(rows)]
    if any(s is None for s in scores):
        return None
    return float(np.mean(np.array(scores, dtype=np.float64) / sigma))


def _cycle_hours(run: RunData) -> float | None:
    """Hours between cycles (from the row times)."""
    if len(run.rows) < 2:
        return None
    t = np.array([r["time"] for r in run.rows[:2]], dtype="datetime64[s]")
    return float((t[1] - t[0]) / np.timedelta64(1, "h"))


def baseline_summary(run: RunData) -> dict[str, Any] | None:
    """Scores of the baselines at the run's valid times (None when the metrics have no baselines)."""
    if not run.rows or not any(k.startswith("clim_wrmse_") for k in run.rows[0]):
        return None
    sigma = sigma_clim(run.rows)
    out: dict[str, Any] = {}
    for name, prefix in BASELINES.items():
        out[name] = {
            "rmse": {ch: _rms(run.rows, f"{prefix}_wrmse_{ch}") for ch in HEADLINE_CHANNELS
                     if f"{prefix}_wrmse_{ch}" in run.rows[0]},
            "normalised_rmse": _normalised(run.rows, prefix, sigma),
        }
    out["persistence"]["lead_hours"] = _cycle_hours(run)
    return out


def forecast_summary(rows: list[dict[str, str]]) -> tuple[dict[str, dict[str, float | None]], dict[str, Any]]:
    """RMSE per headline channel and lead over one sample set (the forecasts that reached every
    lead), and ``{"forecasts", "used", "leads_hours"}``."""
    leads = sorted({float(r["lead_hours"]) for r in rows})
    by_cycle: dict[str, set[float]] = {}
    for r in rows:
        by_cycle.setdefault(r["cycle"], set()).add(float(r["lead_hours"]))
    complete = {c for c, got in by_cycle.items() if got == set(leads)}
    used = [r for r in rows if r["cycle"] in complete]
    rmse = {
        ch: {f"{lead:g}h": _rms([r for r in used if float(r["lead_hours"]) == lead], f"rmse_{ch}") for lead in leads}
        for ch in HEADLINE_CHANNELS
        if rows and f"rmse_{ch}" in rows[0]
    }
    return rmse, {"forecasts": len(by_cycle), "used": len(complete), "leads_hours": leads}


def run_summary(run: RunData) -> dict[str, Any]:
    """The numbers of one table row (machine-readable)."""
    sigma = sigma_clim(run.rows)
    rmse = {
        ch: {kind: _rms(run.rows, f"{prefix}_wrmse_{ch}") for kind, prefix in KINDS.items()}
        for ch in HEADLINE_CHANNELS
        if run.rows and f"ana_wrmse_{ch}" in run.rows[0]
    }
    out: dict[str, Any] = {
        "name": run.name,
        "method": run.method,
        "path": str(run.path),
        "seed": run.config.get("seed"),
        "cycles": len(run.rows),
        "first_time": run.rows[0]["time"] if run.rows else None,
        "last_time": run.rows[-1]["time"] if run.rows else None,
        "wall_seconds": float(sum(float(r["wall_total"]) for r in run.rows)),
        "seconds_per_cycle": {s: _mean(run.rows, f"wall_{s}") for s in STAGES},
        "b_trainable_params": _mean(run.rows, "b_trainable_params"),
        "aggregation": AGGREGATION,
        "rmse": rmse,
        "normalised_rmse": {kind: _normalised(run.rows, prefix, sigma) for kind, prefix in KINDS.items()},
        "normalised_rmse_convention": WB2_NORMALISED if sigma is not None else FALLBACK_NORMALISED,
        **run_provenance(run.path, run.config),
    }
    baselines = baseline_summary(run)
    if baselines is not None:
        out["baselines"] = baselines
    if run.forecast_rows:
        out["forecast_rmse"], out["forecast_samples"] = forecast_summary(run.forecast_rows)
    by_report = summarise_departures(run.rows)  # station reports: O−B / O−A by report type and variable
    if by_report:
        out["obs_by_report"] = by_report
    return out


# ------------------------------------------------------------------------------ table
def _cell(v: float | None) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.4g}"


def format_table(runs: list[RunData], summaries: list[dict[str, Any]] | None = None,
                 provenance: dict[str, Any] | None = None) -> str:
    """Background/analysis RMSE of the headline channels per run (√ of the time-mean MSE), the
    baselines, seconds per stage, z500 forecast RMSE by lead and the provenance footer."""
    summaries = summaries if summaries is not None else [run_summary(r) for r in runs]
    channels = [ch for ch in HEADLINE_CHANNELS if any(ch in s["rmse"] for s in summaries)]
    width = max([len(s["name"]) for s in summaries] + [12])
    head = f"{'run':<{width}} {'method':>7} {'cycles':>6} {'wall s':>8} " + " ".join(
        f"{ch + ' b/a':>19}" for ch in [*channels, ALL]
    )
    lines = [head]

    def pair(d: dict[str, float | None]) -> str:
        return f"{_cell(d.get('background')):>9}/{_cell(d.get('analysis')):<9}"

    for s in summaries:
        cells = [pair(s["rmse"].get(ch, {})) for ch in channels] + [pair(s["normalised_rmse"])]
        lines.append(f"{s['name']:<{width}} {s['method']:>7} {s['cycles']:>6} {s['wall_seconds']:>8.1f} " + " ".join(cells))
    shown: set[tuple[Any, ...]] = set()
    for s in summaries:  # the baselines once per set of valid times
        key = (s["first_time"], s["last_time"], s["cycles"])
        if "baselines" not in s or key in shown:
            continue
        shown.add(key)
        for name, b in s["baselines"].items():
            same = {"background": b["normalised_rmse"], "analysis": b["normalised_rmse"]}
            cells = [pair({"background": b["rmse"].get(ch), "analysis": b["rmse"].get(ch)}) for ch in channels]
            label = name if len(shown) == 1 else f"{name} ({s['name']})"
            lines.append(f"{label:<{width}} {'-':>7} {s['cycles']:>6} {'-':>8} " + " ".join([*cells, pair(same)]))
    lines.append("")
    # the update of B and its trainable parameters only when some run updates its B (EnVar, LoRA-EnVar)
    stages = [st for st in STAGES if st != "b_update" or any(s["seconds_per_cycle"].get(st) for s in summaries)]
    params = any(s.get("b_trainable_params") is not None for s in summaries)
    lines.append(f"{'seconds per cycle':<{width}} " + " ".join(f"{st:>12}" for st in stages)
                 + (f" {'B params':>12}" if params else ""))
    for s in summaries:
        cells = ["-" if s["seconds_per_cycle"].get(st) is None else f"{s['seconds_per_cycle'][st]:.3f}" for st in stages]
        if params:
            n = s.get("b_trainable_params")
            cells.append("-" if n is None else f"{n:.0f}")
        lines.append(f"{s['name']:<{width}} " + " ".join(f"{c:>12}" for c in cells))
    lines.extend(_forecast_lines(summaries, width))
    for s in summaries:
        lines.extend(format_departures(s["name"], s.get("obs_by_report", {})))
    lines.append("")
    provenance = provenance if provenance is not None else code_provenance()
    lines.append(footer(provenance, summaries))
    return "\n".join(lines)


def _forecast_lines(summaries: list[dict[str, Any]], width: int) -> list[str]:
    """z500 forecast RMSE at the whole-day leads (all leads if none), forecasts used of all."""
    with_fc = [s for s in summaries if "z500" in s.get("forecast_rmse", {})]
    if not with_fc:
        return []
    leads = sorted({float(k[:-1]) for s in with_fc for k in s["forecast_rmse"]["z500"]})
    days = [lead for lead in leads if lead % 24 == 0] or leads
    lines = ["", f"{'z500 forecast':<{width}} {'used':>9} " + " ".join(f"{f'{lead:g}h':>9}" for lead in days)]
    for s in with_fc:
        used = "{used}/{forecasts}".format(**s["forecast_samples"])
        cells = [_cell(s["forecast_rmse"]["z500"].get(f"{lead:g}h")) for lead in days]
        lines.append(f"{s['name']:<{width}} {used:>9} " + " ".join(f"{c:>9}" for c in cells))
    return lines


# ------------------------------------------------------------------------------ comparisons
def _without_nulls(value: Any) -> Any:
    """``value`` with every mapping entry whose value is null dropped (recursively)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _experiment_key(cfg: dict[str, Any]) -> str:
    """The configuration without the keys seeds may differ in; a null entry counts as absent, so a
    run written before an option with a null default existed is the same experiment."""
    return canonical_json(_without_nulls({k: v for k, v in cfg.items() if k not in EXPERIMENT_FREE_KEYS}))


def _resolve(label: str, runs: list[RunData]) -> list[RunData]:
    """The experiment ``label`` names: the runs of the matched run's configuration (any seed)."""
    matched = [r for r in runs if r.name == label]
    if not matched:
        matched = [r for r in runs if r.path.resolve() == Path(label).resolve()]
    if not matched and label.isdigit() and 1 <= int(label) <= len(runs):
        matched = [runs[int(label) - 1]]
    if not matched:
        raise ConfigError(f"--compare: {label!r} is not a run name, directory or position among the "
                          f"{len(runs)} runs ({', '.join(r.name for r in runs)})")
    keys = {_experiment_key(r.config) for r in matched}
    if len(keys) > 1:
        raise ConfigError(f"--compare: {label!r} names runs of different configurations; give a directory")
    group, seeds = list(matched), {str(r.config.get("seed")) for r in matched}
    for r in runs:  # the other seeds of the same configuration
        seed = str(r.config.get("seed"))
        if all(r is not x for x in group) and seed not in seeds and _experiment_key(r.config) in keys:
            group.append(r)
            seeds.add(seed)
    return sorted(group, key=_seed_order)


def _seed_order(run: RunData) -> tuple[int, Any]:
    seed = run.config.get("seed")
    return (0, seed) if isinstance(seed, int) else (1, str(seed))


def _pairs(a: list[RunData], b: list[RunData], warnings: list[str]) -> list[tuple[RunData, RunData]]:
    """Runs paired seed by seed (a side with one run pairs with every seed of the other)."""
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b]

    def by_seed(group: list[RunData]) -> dict[Any, RunData]:
        seeds = [r.config.get("seed") for r in group]
        if len(set(map(str, seeds))) != len(seeds):
            raise ConfigError(f"--compare: runs {', '.join(r.name for r in group)} repeat a seed ({seeds})")
        return dict(zip(seeds, group, strict=True))

    sa, sb = by_seed(a), by_seed(b)
    common = [s for s in sa if s in sb]
    if not common:
        raise ConfigError(f"--compare: no common seed between {sorted(map(str, sa))} and {sorted(map(str, sb))}")
    if len(common) < max(len(sa), len(sb)):
        warnings.append(f"seeds {sorted(map(str, set(sa) ^ set(sb)))} are on one side only and are left out")
    return [(sa[s], sb[s]) for s in common]


def _cycle_time(run: RunData) -> str:
    value = run.config.get("cycle_time")
    hours = _cycle_hours(run)
    return str(value) if value is not None else (f"{hours:g}h" if hours is not None else "?")


def _common_times(pairs: list[tuple[RunData, RunData]], warnings: list[str]) -> list[str]:
    runs = list({id(r): r for p in pairs for r in p}.values())
    cycle_times = {_cycle_time(r) for r in runs}
    if len(cycle_times) > 1:
        raise ConfigError(
            f"--compare: the runs have different cycle times ({', '.join(f'{r.name}: {_cycle_time(r)}' for r in runs)}); "
            f"paired differences need the same valid times"
        )
    times = set.intersection(*({row["time"] for row in r.rows} for r in runs))
    if not times:
        raise DataError(f"--compare: runs {', '.join(r.name for r in runs)} have no valid time in common")
    if any(len(r.rows) != len(times) for r in runs):
        warnings.append(f"using the {len(times)} valid times common to all runs "
                        f"({', '.join(f'{r.name}: {len(r.rows)}' for r in runs)} cycles)")
    return sorted(times)


def _per_cycle_mse(run: RunData, times: list[str], columns: list[str]) -> np.ndarray:
    """``[T, K]`` squares of the RMSE ``columns`` at ``times``: the per-cycle MSE."""
    by_time = {r["time"]: r for r in run.rows}
    return np.array([[_float(by_time[t].get(c)) for c in columns] for t in times], dtype=np.float64) ** 2


def _score_function(idx: list[int], sigma: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """``g``: time-mean per-cycle MSE ``[..., K]`` → the headline channels' RMSE and all/σ. With σ
    the K quantities are the channels' MSE and all/σ = mean_c sqrt(MSE_c)/σ_c; without, the last
    quantity is the squared per-cycle normalised RMSE and all/σ its root-mean-square."""
    def g(m: np.ndarray) -> np.ndarray:
        root = np.sqrt(m)
        if sigma is None:
            return root[..., [*idx, -1]]
        return np.concatenate([root[..., idx], (root / sigma).mean(axis=-1, keepdims=True)], axis=-1)

    return g


def compare_runs(runs: list[RunData], spec: str, block_length: int = DEFAULT_BLOCK_LENGTH,
                 resamples: int = DEFAULT_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                 seed: int = 0) -> dict[str, Any]:
    """Paired difference ``A − B`` (``spec = "A:B"``) of the background and analysis scores of the
    headline channels and all/σ with its moving-block bootstrap interval (module docstring)."""
    if spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"--compare: expected A:B (run names, directories or positions), got {spec!r}")
    label_a, label_b = spec.split(":")
    warnings: list[str] = []
    group_a, group_b = _resolve(label_a, runs), _resolve(label_b, runs)
    shared = [r.name for r in group_a if any(r is x for x in group_b)]
    if shared:
        raise ConfigError(f"--compare {spec}: A and B share the runs {shared}; give the runs of each side by directory")
    pairs = _pairs(group_a, group_b, warnings)
    times = _common_times(pairs, warnings)
    channels = channels_of(pairs[0][0].rows)
    for r in (r for p in pairs for r in p):
        if channels_of(r.rows) != channels:
            raise DataError(f"--compare {spec}: {r.name} scored other channels than {pairs[0][0].name}")
    headline = [ch for ch in HEADLINE_CHANNELS if ch in channels]
    sigmas = [sigma_clim(r.rows) for p in pairs for r in p]
    sigma = sigmas[0]
    if any(s is None or not np.allclose(s, sigma, rtol=1e-6) for s in sigmas):
        sigma = None
    g = _score_function([channels.index(ch) for ch in headline], sigma)
    scores: dict[str, dict[str, Any]] = {ch: {} for ch in [*headline, ALL]}
    for kind, prefix in KINDS.items():
        columns = [f"{prefix}_wrmse_{ch}" for ch in channels] + ([] if sigma is not None else [f"{prefix}_nrmse"])
        a = np.stack([_per_cycle_mse(x, times, columns) for x, _ in pairs])
        b = np.stack([_per_cycle_mse(y, times, columns) for _, y in pairs])
        d = paired_difference(a, b, g, block_length, resamples, confidence, seed)
        for j, ch in enumerate([*headline, ALL]):
            scores[ch][kind] = {"a": float(d.a[j]), "b": float(d.b[j]), "difference": float(d.difference[j]),
                                "interval": [float(d.low[j]), float(d.high[j])],
                                "significant": bool(d.significant[j])}
    return {
        "a": label_a, "b": label_b,
        "a_runs": sorted({x.name for x, _ in pairs}), "b_runs": sorted({y.name for _, y in pairs}),
        "seeds": [[x.config.get("seed"), y.config.get("seed")] for x, y in pairs],
        "cycles": len(times), "first_time": times[0], "last_time": times[-1],
        "block_length": d.block_length, "resamples": resamples, "confidence": confidence, "bootstrap_seed": seed,
        "normalised_rmse_convention": WB2_NORMALISED if sigma is not None else FALLBACK_NORMALISED,
        "scores": scores, "warnings": warnings,
    }


def format_comparison(c: dict[str, Any]) -> str:
    """The comparison as lines: ``difference [low, high]`` per channel, "not significant" where the
    interval contains 0."""
    seeds = ", ".join(f"{a}" if a == b else f"{a}/{b}" for a, b in c["seeds"])
    lines = [f"{c['a']} − {c['b']}: seed{'s' if len(c['seeds']) > 1 else ''} {seeds}; {c['cycles']} common cycles {c['first_time']} … {c['last_time']}; "
             f"{c['confidence']:.0%} moving-block bootstrap, blocks of {c['block_length']} cycles, {c['resamples']} resamples",
             f"{'channel':<8} " + " ".join(f"{kind + ' A − B [interval]':<52}" for kind in KINDS)]
    for ch, d in c["scores"].items():
        cells = []
        for kind in KINDS:
            e = d[kind]
            text = f"{e['difference']:.4g} [{e['interval'][0]:.4g}, {e['interval'][1]:.4g}]"
            cells.append(f"{text + ('' if e['significant'] else ' not significant'):<52}")
        lines.append(f"{ch:<8} " + " ".join(cells))
    return "\n".join(lines)


# ------------------------------------------------------------------------------ figures, CLI
def plot_report(runs: list[RunData], out: Path) -> list[Path]:
    """RMSE time series (z500, t850) and last-cycle increment maps (z500); returns the files."""
    import xarray as xr

    from matplotlib import colormaps

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
        n_runs = len(ax.lines) // 2
        colours = colormaps["tab10" if n_runs <= 10 else "tab20"]
        for i, (analysis, background) in enumerate(zip(ax.lines[0::2], ax.lines[1::2], strict=True)):
            colour = colours(i % colours.N)  # one colour per run; its background dashed
            analysis.set_color(colour)
            background.set_color(colour)
            background.set_linestyle("--")
        if n_runs > 2:  # a long legend goes beside the axes, not over the lines
            ax.figure.set_size_inches(8.0 + 0.04 * max(len(str(line.get_label())) for line in ax.lines), 4.0)
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
        else:
            ax.legend(fontsize="small")
        figures.append(save_figure(ax, out / f"rmse_{ch}.png"))
    for r in runs:
        last = r.path / "last_cycle.nc"
        if not last.is_file():
            continue
        with xr.open_dataset(last, engine="h5netcdf") as ds:
            if "channel" in ds.dims:  # written before the CF layout (aivarda.data.cf)
                if "z500" not in ds["channel"].values:
                    continue
                inc = (ds["analysis"] - ds["background"]).sel(channel="z500").values
            else:
                if "geopotential" not in ds or 500 not in ds["level"].values:
                    continue
                z500 = ds["geopotential"].sel(level=500).isel(time=0)
                inc = (z500.sel(state="analysis") - z500.sel(state="background")).values
            grid = Grid.from_dict(json.loads(ds.attrs["aivarda_grid"]))
            when = ds.attrs.get("time", "")
        vmax = float(np.abs(inc).max()) or 1.0
        ax = plot_map(inc, grid, title=f"{r.name}: increment z500 at {when}", units="m² s⁻²",
                      cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        figures.append(save_figure(ax, out / f"increment_{r.name}_z500.png"))
    figures.extend(_station_maps(runs, out))
    return figures


def _station_maps(runs: list[RunData], out: Path) -> list[Path]:
    """Per-station maps of the mean O−B (t850-like: t, and t2m) of runs with ``departures/``."""
    from aivarda.evaluation.station_stats import plot_station_departures

    figures: list[Path] = []
    for r in runs:
        if not (r.path / "departures").is_dir() or not (r.path / "last_cycle.nc").is_file():
            continue
        import xarray as xr

        with xr.open_dataset(r.path / "last_cycle.nc", engine="h5netcdf") as ds:
            if "channel" in ds.dims:  # written before the CF layout (aivarda.data.cf)
                names = [str(c) for c in ds["channel"].values]
            else:
                names = list(ChannelLayout.from_dict(json.loads(ds.attrs["aivarda_channels"])).names)
        for var in ("t", "t2m"):
            png = plot_station_departures(r.path, out / f"omb_stations_{r.name}_{var}.png", var, names)
            if png is not None:
                figures.append(png)
    return figures


def build_report(runs: list[RunData], figures: list[Path], comparisons: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The JSON report: ``{"runs", "comparisons", "figures", "provenance"}``."""
    return {"runs": [run_summary(r) for r in runs], "comparisons": comparisons or [],
            "figures": [str(f) for f in figures], "provenance": code_provenance()}


def main(args: argparse.Namespace) -> int:
    """``aivarda report RUN_DIR... [--json] [--out DIR] [--first-cycles N] [--compare A:B ...]``."""
    if args.first_cycles is not None and args.first_cycles < 1:
        raise ConfigError(f"--first-cycles: expected a positive number of cycles, got {args.first_cycles}")
    block_length = getattr(args, "block_length", DEFAULT_BLOCK_LENGTH)
    if block_length < 1:
        raise ConfigError(f"--block-length: expected a positive number of cycles, got {block_length}")
    runs = [load_run(p, args.first_cycles) for p in args.run_dirs]
    out = Path(args.out) if args.out is not None else Path(args.run_dirs[0]).resolve().parent / "report"
    check_writable_dir(out, "--out (the figure folder)")  # before the comparisons and figures
    comparisons = [compare_runs(runs, spec, block_length) for spec in (getattr(args, "compare", None) or [])]
    for c in comparisons:
        for w in c["warnings"]:
            print(f"aivarda report: warning: --compare {c['a']}:{c['b']}: {w}", file=sys.stderr)
    figures = plot_report(runs, out)
    report = build_report(runs, figures, comparisons)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(runs, report["runs"], report["provenance"]))
        for c in comparisons:
            print()
            print(format_comparison(c))
        print(f"figures: {out}")
    return 0
