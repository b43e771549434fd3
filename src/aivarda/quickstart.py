"""``aivarda quickstart``: the embedded default world end to end, in minutes on a laptop CPU.

Stages (each cached under ``$AIVARDA_HOME`` after the first run):

1. a short Held–Suarez nature run at T42 from the shipped spun-up state (two weeks 6-hourly for
   statistics, two days hourly to assimilate in);
2. its normalisation statistics;
3. one analysis per method at the first evaluation time, from the same simulated observations
   (5 % of the grid columns, all 69 channels, σ_o = 0.01 σ_clim with temperatures × 0.25, noise
   added, 15 % withheld): ``none`` (the background) and ``3dvar`` with a diagonal B;
4. a table of background and analysis RMSE against the truth, written with every output to a new
   time-stamped directory under ``--out`` (earlier results are never touched).

The background is the truth 48 h earlier (a persistence forecast), until the cycling issue adds
forecasts from previous analyses with the trained forecast models.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from aivarda.assimilation.analyse import AnalyseConfig, run_single_analysis, summary_table, write_outputs
from aivarda.config import validate
from aivarda.data.nature_run import NatureRunConfig, SpanConfig, ensure_nature_run

QUICKSTART_METHODS = ("none", "3dvar")


def quickstart_nature_run(tiny: bool = False) -> NatureRunConfig:
    """Two weeks of 6-hourly states (statistics, lagged backgrounds) then two days hourly (analyses)."""
    if tiny:
        return NatureRunConfig.tiny()
    return NatureRunConfig(
        spans={
            "train": SpanConfig(start=datetime(2000, 1, 1), end=datetime(2000, 1, 14, 18), interval_hours=6),
            "eval": SpanConfig(start=datetime(2000, 1, 15), end=datetime(2000, 1, 16, 23), interval_hours=1),
        }
    )


def analysis_config(store: Path, method: str, tiny: bool = False) -> AnalyseConfig:
    """The quickstart's single-analysis experiment for ``method`` on ``store``."""
    return validate(
        AnalyseConfig,
        {
            "name": f"quickstart_{method}",
            "data": {"source": "zarr", "path": str(store)},
            "span": "eval",
            "background": {"lag": "24h" if tiny else "48h"},
            "observations": {"mode": "random", "fraction": 0.05, "withhold": 0.15},
            "assimilation": {
                "method": method,
                "background_error": {"type": "diagonal"},
                "outer_loops": 2,
                "inner_iterations": 10,
            },
        },
        "quickstart",
    )


def main(args: argparse.Namespace) -> int:
    tiny = bool(getattr(args, "tiny", False))
    quiet = bool(getattr(args, "json", False))
    out = Path(args.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    print(f"[1/3] nature run ({'tiny' if tiny else 'T42, 16 days'}) …", flush=True)
    store = ensure_nature_run(quickstart_nature_run(tiny), progress=not quiet)
    report: dict[str, dict] = {}
    for i, method in enumerate(QUICKSTART_METHODS):
        print(f"[{2 + i}/3] {method} analysis …", flush=True)
        cfg = analysis_config(store, method, tiny)
        run = run_single_analysis(cfg, progress=not quiet)
        write_outputs(run, cfg, out / method)
        report[method] = run.metrics
        if not quiet:
            print(summary_table(run.metrics))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if quiet:
        print(json.dumps(report, indent=2))
    print(f"outputs: {out}")
    return 0
