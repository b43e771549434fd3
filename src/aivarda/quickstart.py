"""``aivarda quickstart``: the embedded default world end to end, in minutes on a laptop CPU.

Stages (each cached under ``$AIVARDA_HOME`` after the first run):

1. a short Held–Suarez nature run at T42: the default world (the trajectory the shipped models
   were trained on) continued from its shipped restart state of 2000-07-16T00
   (``aivarda data restart``), two weeks 6-hourly (2000-07-18 … 07-31, for statistics) then two
   days hourly (2000-08-01 … 08-02, to assimilate in) — 18 simulated days;
2. GEN_BE statistics fitted from 48-h lagged-truth differences of its two weeks (the model-free
   stand-in for NMC samples, cached);
   then the leakage guard (:func:`quickstart_guard`): the two scored days lie in the default
   world's ``eval`` month, outside what the shipped models (``fengwu_6h_rollout``: January–June,
   ``fengwu_1h``: July) and the GEN_BE statistics (July 18–31) learned from;
3. with the shipped trained models (``aivarda/assets/fengwu_6h_rollout.pt`` and ``fengwu_1h.pt``):
   cycling experiments over the two hourly days (8 cycles of 6 h) with the seeds' observing system
   (5 % of the grid columns, all 69 channels, σ_o = 0.01 σ_clim with temperatures × 0.25, noise
   added, 15 % withheld) and the GEN_BE B for ``none`` (free run), ``3dvar`` and ``4dvar`` (a
   3-hour window of the 1-hour model), each starting from a 48-h forecast of the truth, then the
   ``aivarda report`` table and figures;
   without them (and with ``--tiny``): one analysis per experiment of
   :data:`SINGLE_ANALYSES` (no DA, 3DVar with a diagonal B, 3DVar with GEN_BE) at the first
   evaluation time from the same observations, the background being the truth 48 h earlier (a
   persistence forecast);
4. everything is written to a new time-stamped directory under ``--out`` (earlier results are
   never touched).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

import numpy as np

from aivarda.assimilate import (
    AnalyseConfig,
    run_single_analysis,
    summary_table,
    write_outputs,
)
from aivarda.config import validate
from aivarda.cycling.config import CyclingConfig, default_models_available
from aivarda.data.nature_run import RESTART_TIME, NatureRunConfig, SpanConfig, ensure_nature_run

SINGLE_ANALYSES: dict[str, tuple[str, str]] = {
    "none": ("none", "diagonal"),
    "3dvar_diagonal": ("3dvar", "diagonal"),
    "3dvar_genbe": ("3dvar", "genbe"),
}
"""Experiment name → (method, background-error type) of the single-analysis quickstart."""
CYCLING_METHODS: dict[str, dict[str, object]] = {
    "none": {"method": "none"},
    "3dvar": {"method": "3dvar"},
    "4dvar": {"method": "4dvar", "da_win": 3, "inner_model": "linear_prior"},
}
"""Experiment name → the method part of its ``assimilation`` section (4DVar: a 3-hour window,
multi-incremental: the full 1-hour model in the outer loops, its linear part in the inner loops)."""


def quickstart_nature_run(tiny: bool = False) -> NatureRunConfig:
    """Two weeks of 6-hourly states (statistics, lagged backgrounds) then two days hourly (analyses).

    The default world from its shipped restart of 2000-07-16T00: ``train`` 2000-07-18T00 …
    07-31T18 6-hourly, ``eval`` 2000-08-01T00 … 08-02T23 hourly, the same states as the default
    store's at those times (the same fingerprint and origin), out of the shipped models' sample.
    ``tiny``: :meth:`NatureRunConfig.tiny` (another world than the shipped models'; its ``train``
    and ``eval`` spans are disjoint).
    """
    if tiny:
        return NatureRunConfig.tiny()
    return NatureRunConfig(
        initial_state="restart",
        start=RESTART_TIME,
        spans={
            "train": SpanConfig(start=datetime(2000, 7, 18), end=datetime(2000, 7, 31, 18), interval_hours=6),
            "eval": SpanConfig(start=datetime(2000, 8, 1), end=datetime(2000, 8, 2, 23), interval_hours=1),
        },
    )


def quickstart_guard(store: Path, genbe: Path, cycling: bool) -> dict:
    """The leakage guard of the quickstart: its scored span (the store's ``eval`` span) must not
    overlap what the GEN_BE statistics ``genbe`` were fitted on, nor (``cycling``) what the shipped
    forecast models were trained on; raises :class:`~aivarda.errors.LeakageError` otherwise.
    Returns the provenance record (:func:`aivarda.artefacts.guard_run`) written with the outputs."""
    from aivarda.artefacts import guard_run, trained_on_of_genbe, trained_on_of_model
    from aivarda.cycling import config as cycling_defaults
    from aivarda.data.sources import Wb2ZarrSource, store_layout
    from aivarda.provenance import TimeSpan

    records = trained_on_of_genbe(genbe)
    if cycling:
        models = (cycling_defaults.DEFAULT_MODEL, cycling_defaults.DEFAULT_WINDOW_MODEL)
        records = [r for m in models for r in trained_on_of_model(m)] + records
    scored = TimeSpan.of(Wb2ZarrSource(store, store_layout(store), span="eval").times, "eval")
    return guard_run(scored, store, records)


def _lag(tiny: bool) -> str:
    return "24h" if tiny else "48h"


def genbe_statistics(store: Path, tiny: bool = False, progress: bool = True) -> Path:
    """GEN_BE statistics of ``store`` fitted from lagged-truth differences over its ``train`` span
    (the background's lag apart), cached under ``$AIVARDA_HOME/b``."""
    from aivarda.background.genbe.config import LearnBConfig
    from aivarda.learning.learn_b import fit_from_config, load_or_make_samples
    from aivarda.paths import cache_dir

    path = cache_dir("b") / f"genbe_quickstart_{store.stem}.pt"
    if path.is_file():
        return path
    cfg = validate(
        LearnBConfig,
        {
            "name": "quickstart",
            "data": {"source": "zarr", "path": str(store)},
            "nmc": {"kind": "lagged_truth", "span": "train", "lag": _lag(tiny)},
        },
        "quickstart",
    )
    fit_from_config(cfg, load_or_make_samples(cfg, None, progress), progress).save(path)
    return path


def analysis_config(
    store: Path, method: str, tiny: bool = False, background_error: dict | None = None
) -> AnalyseConfig:
    """The quickstart's single-analysis experiment for ``method`` on ``store`` (diagonal B unless
    ``background_error`` says otherwise)."""
    return validate(
        AnalyseConfig,
        {
            "name": f"quickstart_{method}",
            "data": {"source": "zarr", "path": str(store)},
            "span": "eval",
            "background": {"lag": _lag(tiny)},
            "observations": {"mode": "random", "fraction": 0.05, "withhold": 0.15},
            "assimilation": {
                "method": method,
                "background_error": background_error or {"type": "diagonal"},
                "outer_loops": 2,
                "inner_iterations": 10,
            },
        },
        "quickstart",
    )


def cycling_config(
    store: Path, method: str, out: Path, genbe: Path, start: np.datetime64, tiny: bool = False
) -> CyclingConfig:
    """The quickstart's cycling experiment for ``method``: 6-hourly cycles from ``start`` (the
    first time of the store's hourly ``eval`` span; 8 cycles, 4 with ``tiny``), the shipped models,
    the GEN_BE static B ``genbe``, first background a 48-h forecast of the truth (``gap: 8``)."""
    from aivarda.timeaxis import format_time

    end = start + np.timedelta64(18 if tiny else 42, "h")
    assimilation: dict = {
        **CYCLING_METHODS[method],
        "background_error": {"type": "genbe", "file": str(genbe)},
        "outer_loops": 2,
        "inner_iterations": 5,
    }
    return validate(
        CyclingConfig,
        {
            "name": method,
            "data": {"source": "zarr", "path": str(store)},
            "start_time": format_time(start),
            "end_time": format_time(end),
            "dynamic_member": 1,
            "gap": 8,
            "assimilation": assimilation,
            "outputs": {"analyses_zarr": False},
            "output_dir": str(out / method),
        },
        "quickstart",
    )


def cycling_quickstart(store: Path, genbe: Path, out: Path, quiet: bool, tiny: bool = False) -> int:
    """No-DA, 3DVar and 4DVar cycling with the shipped models and the GEN_BE B ``genbe``, then the
    report (stages 3 … of the quickstart)."""
    from aivarda.cycling.runner import run_experiment
    from aivarda.data.sources import Wb2ZarrSource, store_layout
    from aivarda.evaluation.report import (
        format_table,
        load_run,
        plot_report,
        run_summary,
    )

    stages = 2 + len(CYCLING_METHODS)
    start = Wb2ZarrSource(store, store_layout(store), span="eval").times[0]
    for i, method in enumerate(CYCLING_METHODS):
        print(f"[{3 + i}/{stages}] {method} cycling …", flush=True)
        cfg = cycling_config(store, method, out, genbe, start, tiny)
        run_experiment(cfg, cfg.output_dir, progress=not quiet)
    runs = [load_run(out / m) for m in CYCLING_METHODS]
    figures = plot_report(runs, out / "report")
    summary = {"runs": [run_summary(r) for r in runs], "figures": [str(f) for f in figures]}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2) if quiet else format_table(runs))
    print(f"outputs: {out}")
    return 0


def new_run_dir(parent: Path) -> Path:
    """Create and return a new time-stamped directory under ``parent`` (``-2``, ``-3`` … appended
    when one of that second exists), so earlier results are never written into."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        path = parent / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: no free run directory for {stamp}")


def main(args: argparse.Namespace) -> int:
    tiny = bool(getattr(args, "tiny", False))
    quiet = bool(getattr(args, "json", False))
    out = new_run_dir(Path(args.out))
    cycling = default_models_available() and not tiny
    stages = 2 + (len(CYCLING_METHODS) if cycling else len(SINGLE_ANALYSES))
    print(f"[1/{stages}] nature run ({'tiny' if tiny else 'T42, 18 days from the 2000-07-16 restart'}) …", flush=True)
    store = ensure_nature_run(quickstart_nature_run(tiny), progress=not quiet)
    print(f"[2/{stages}] GEN_BE statistics from {_lag(tiny)} lagged-truth differences …", flush=True)
    genbe = genbe_statistics(store, tiny, progress=not quiet)
    provenance = quickstart_guard(store, genbe, cycling)
    for warning in provenance["warnings"]:
        print(f"warning: {warning}", flush=True)
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
    if cycling:
        return cycling_quickstart(store, genbe, out, quiet)
    report: dict[str, dict] = {}
    for i, (name, (method, b_type)) in enumerate(SINGLE_ANALYSES.items()):
        print(f"[{3 + i}/{stages}] {name} analysis …", flush=True)
        b = {"type": "genbe", "file": str(genbe)} if b_type == "genbe" else {"type": b_type}
        cfg = analysis_config(store, method, tiny, b)
        run = run_single_analysis(cfg, progress=not quiet)
        write_outputs(run, cfg, out / name)
        report[name] = run.metrics
        if not quiet:
            print(summary_table(run.metrics))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if quiet:
        print(json.dumps(report, indent=2))
    print(f"outputs: {out}")
    return 0
