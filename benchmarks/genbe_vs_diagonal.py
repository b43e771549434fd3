"""GEN_BE vs diagonal B: one 3DVar analysis per analysis time with each B, same observations.

For every ``--times`` entry the two assimilate configs are copied with ``analysis_time`` set and run
as ``aivarda assimilate COPY --out RUN_ROOT/<label>/<time> --json`` (same seed ⇒ same observations,
same background); the GEN_BE statistics are fitted first with ``aivarda learn-b genbe`` if their file
is missing. Prints markdown tables quoted from the ``metrics.json`` files (analyses already run are
reused; pass ``--force`` to redo them).

    python benchmarks/genbe_vs_diagonal.py [--times 2000-08-02T00 2000-08-10T00 2000-08-20T00]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from aivarda.assimilate import AnalyseConfig
from aivarda.background.genbe.config import LearnBConfig
from aivarda.background.genbe.transform import resolve_file
from aivarda.config import load_config
from aivarda.grid import Grid

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = ("z500", "t850", "u500", "q500", "t2m")
AIVARDA = [str(Path(sys.executable).with_name("aivarda"))]


def run_logged(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` (OMP_NUM_THREADS=1 unless set), output to ``log``; wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def ensure_genbe(learn_config: Path, genbe_config: Path, run_root: Path) -> None:
    """Fit the GEN_BE statistics the GEN_BE assimilate config reads, if the file is missing."""
    cfg = load_config(genbe_config, AnalyseConfig)
    path = resolve_file(cfg.assimilation.background_error.file)
    if path.is_file():
        return
    learn = load_config(learn_config, LearnBConfig)
    if learn.output is None or learn.output.resolve() != path.resolve():
        raise SystemExit(f"{genbe_config}: background_error.file {path} is not the output of {learn_config}")
    seconds = run_logged([*AIVARDA, "learn-b", "genbe", str(learn_config), "--json"], run_root / "learn_b.log")
    print(f"GEN_BE statistics fitted in {seconds:.1f} s: {path}")


def run_analysis(
    config: Path, analysis_time: str, out: Path, force: bool, iterations: tuple[int, int] | None = None
) -> dict[str, Any]:
    """``aivarda assimilate`` on a copy of ``config`` with ``analysis_time`` (and, if given, the
    ``(outer_loops, inner_iterations)`` budget); the metrics plus the command's wall time
    (``wall_seconds.total``)."""
    metrics_file = out / "metrics.json"
    if metrics_file.is_file() and not force:
        return json.loads(metrics_file.read_text())
    if out.exists():
        shutil.rmtree(out)
    raw = yaml.safe_load(config.read_text())
    raw["analysis_time"] = datetime.fromisoformat(analysis_time).isoformat()
    if iterations is not None:
        raw["assimilation"]["outer_loops"], raw["assimilation"]["inner_iterations"] = iterations
    copy = out.parent / f"{out.name}.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(yaml.safe_dump(raw, sort_keys=False))
    seconds = run_logged([*AIVARDA, "assimilate", str(copy), "--out", str(out), "--json"], out.parent / f"{out.name}.log")
    metrics = json.loads(metrics_file.read_text())
    metrics["wall_seconds"]["total"] = seconds
    metrics_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def _g(x: float) -> str:
    return f"{x:.4g}"


def _withheld(m: dict[str, Any]) -> tuple[float, float, float, float, int]:
    """RMS of O−B and O−A, raw (mixed units) and divided by σ_o, and the count, withheld obs."""
    w = m["observation_space"]["withheld"]
    b, a = w["O-B"], w["O-A"]
    return b["rms"], a["rms"], b["normalised_rms"], a["normalised_rms"], b["count"]


def tables(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown: RMSE per channel and time (and the mean over times), then O−A/O−B and cost."""
    times = list(results)
    cols = [*CHANNELS, "normalised (all 69)"]
    lines = [
        "| analysis time | field | " + " | ".join(cols) + " |",
        "|---|---|" + "---:|" * len(cols),
    ]

    def row(label: str, field: str, values: list[float]) -> str:
        return f"| {label} | {field} | " + " | ".join(_g(v) for v in values) + " |"

    def values(m: dict[str, Any], which: str) -> list[float]:
        key, norm = ("bg_wrmse", "background") if which == "b" else ("ana_wrmse", "analysis")
        return [m[key][c] for c in CHANNELS] + [m["normalised_wrmse"][norm]]

    sums: dict[str, list[float]] = {k: [0.0] * len(cols) for k in ("b", "diag", "genbe")}
    for t in times:
        d, g = results[t]["diagonal"], results[t]["genbe"]
        for key, vals in (("b", values(d, "b")), ("diag", values(d, "a")), ("genbe", values(g, "a"))):
            sums[key] = [s + v for s, v in zip(sums[key], vals, strict=True)]
        if values(d, "b") != values(g, "b"):
            raise SystemExit(f"{t}: the two runs have different backgrounds")
        lines += [
            row(t, "RMSE(background)", values(d, "b")),
            row(t, "RMSE(analysis), diagonal B", values(d, "a")),
            row(t, "RMSE(analysis), GEN_BE", values(g, "a")),
        ]
    n = len(times)
    lines += [
        row(f"**mean of {n}**", "RMSE(background)", [s / n for s in sums["b"]]),
        row(f"**mean of {n}**", "RMSE(analysis), diagonal B", [s / n for s in sums["diag"]]),
        row(f"**mean of {n}**", "RMSE(analysis), GEN_BE", [s / n for s in sums["genbe"]]),
    ]
    lines += [
        "",
        (
            "| analysis time | B | assimilated obs | withheld obs | withheld O−B RMS | withheld O−A RMS | O−A/O−B | "
            "withheld (O−B)/σ_o RMS | withheld (O−A)/σ_o RMS | iterations | converged | minimisation (s) | "
            "whole command (s) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for t in times:
        for label in ("diagonal", "genbe"):
            m = results[t][label]
            ob, oa, nob, noa, count = _withheld(m)
            mini, wall = m["minimizer"], m["wall_seconds"]
            total = _g(wall["total"]) if "total" in wall else "–"
            lines.append(
                f"| {t} | {'diagonal' if label == 'diagonal' else 'GEN_BE'} | {m['observations'].get('active', '?')} | "
                f"{count} | {_g(ob)} | {_g(oa)} | {oa / ob:.4f} | {_g(nob)} | {_g(noa)} | {mini['iterations']} | "
                f"{mini['converged']} | "
                f"{_g(wall['minimisation'])} | {total} |"
            )
    return "\n".join(lines)


def increment_figure(
    diagonal_run: Path, genbe_run: Path, grid: Grid, path: Path, channel: str = "z500", units: str = ""
) -> None:
    """Three maps of ``channel`` at one analysis time, one colour scale: the background error to be
    corrected (truth − background), and the GEN_BE and diagonal-B increments (analysis − background)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import xarray as xr

    from aivarda.evaluation.plots import plot_map

    with xr.open_dataset(diagonal_run / "states.nc", engine="h5netcdf") as d, xr.open_dataset(
        genbe_run / "states.nc", engine="h5netcdf"
    ) as g:
        fields = [
            ("truth − background", (d.truth - d.background).sel(channel=channel).values),
            ("analysis − background, GEN_BE", (g.analysis - g.background).sel(channel=channel).values),
            ("analysis − background, diagonal B", (d.analysis - d.background).sel(channel=channel).values),
        ]
        when = d.attrs["analysis_time"]
    vmax = max(float(abs(f).max()) for _, f in fields)
    fig, axes = plt.subplots(3, 1, figsize=(8.0, 11.5), constrained_layout=True)
    for ax, (title, f) in zip(axes, fields, strict=True):
        plot_map(f, grid, title=f"{channel} {title} at {when}", units=units, ax=ax, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--times", nargs="+", default=["2000-08-02T00", "2000-08-10T00", "2000-08-20T00"])
    ap.add_argument("--diagonal", type=Path, default=ROOT / "configs/assimilate_3dvar.yaml")
    ap.add_argument("--genbe", type=Path, default=ROOT / "docs/results/assimilate_3dvar_genbe_lagged.yaml")
    ap.add_argument("--learn-b", type=Path, default=ROOT / "docs/results/learn_b_genbe_lagged.yaml")
    ap.add_argument("--run-root", type=Path, default=ROOT / "runs/results")
    ap.add_argument("--force", action="store_true", help="rerun analyses whose metrics.json exists")
    ap.add_argument(
        "--iterations", type=int, nargs=2, metavar=("OUTER", "INNER"), default=None,
        help="override both configs' outer_loops and inner_iterations (runs go to RUN_ROOT/iter_OUTERxINNER)",
    )
    ap.add_argument("--figure", type=Path, default=None, help="write the z500 increment maps of the first time here")
    args = ap.parse_args()

    args.run_root.mkdir(parents=True, exist_ok=True)
    ensure_genbe(args.learn_b, args.genbe, args.run_root)
    iterations = tuple(args.iterations) if args.iterations is not None else None
    run_root = args.run_root if iterations is None else args.run_root / f"iter_{iterations[0]}x{iterations[1]}"
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for t in args.times:
        stamp = t.replace(":", "")
        results[t] = {
            label: run_analysis(config, t, run_root / label / stamp, args.force, iterations)
            for label, config in (("diagonal", args.diagonal), ("genbe", args.genbe))
        }
    print(tables(results))
    if args.figure is not None:
        from aivarda.data.sources import open_source

        source = open_source(load_config(args.diagonal, AnalyseConfig).data)
        stamp = args.times[0].replace(":", "")
        units = source.layout.channel("z500").units
        increment_figure(run_root / "diagonal" / stamp, run_root / "genbe" / stamp, source.grid, args.figure, "z500", units)


if __name__ == "__main__":
    main()
