"""Markdown tables for docs/benchmarks.md from the JSON that ``benchmarks/lorenz96.py --json`` writes.

Usage::

    python benchmarks/lorenz96_tables.py docs/results/lorenz96_speed.json docs/results/lorenz96_envar.json
    python benchmarks/lorenz96_tables.py --tuning docs/results/lorenz96_tuning.json
    python benchmarks/lorenz96_tables.py --runs docs/results/lorenz96_tuning_n_lag/*.json   # one row per run
"""

from __future__ import annotations

import argparse
import json


def result_table(rows: list[dict]) -> list[str]:
    lines = ["| experiment | settings | scored cycles | rmse.a (aivarda) | published (DAPPER) | pass | iterations | wall s |",
             "|---|---|---:|---:|---:|:---:|---:|---:|"]
    for r in rows:
        it = "-" if r["mean_iterations"] is None else f"{r['mean_iterations']:.1f}"
        lines.append(f"| {r['experiment']} | {r['settings']} | {r['scored_cycles']} | **{r['rmse_a']:.4f}** | {r['published']:.2f} | "
                     f"{'yes' if r['pass'] else 'no'} | {it} | {r['wall_s']:.1f} |")
    return lines


def dapper_table(rows: list[dict]) -> list[str]:
    lines = ["| experiment | DAPPER method | rmse.a aivarda | rmse.a DAPPER | wall s aivarda | wall s DAPPER | aivarda / DAPPER |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "dapper" in r:
            d = r["dapper"]
            lines.append(f"| {r['experiment']} | `{d['dapper_method']}` | {r['rmse_a']:.4f} | {d['rmse_a']:.4f} | "
                         f"{r['wall_s']:.1f} | {d['wall_s']:.1f} | {r['wall_s'] / d['wall_s']:.2f} |")
    return lines


def paired_table(rows: list[dict]) -> list[str]:
    """DAPPER's method on aivarda's truth and observations (``--dapper-same-truth``): the paired difference."""
    lines = ["| experiment | DAPPER method (same truth and observations) | rmse.a aivarda | rmse.a DAPPER | aivarda − DAPPER [95 % interval] |",
             "|---|---|---:|---:|---|"]
    for r in rows:
        d = r.get("dapper", {})
        if "paired_difference" in d:
            pd = d["paired_difference"]
            lo, hi = pd["interval_95"]
            verdict = "" if lo <= 0 <= hi else (" aivarda better" if hi < 0 else " DAPPER better")
            lines.append(f"| {r['experiment']} | `{d['dapper_method']}` | {r['rmse_a']:.4f} | {d['rmse_a_same_cycles']:.4f} | "
                         f"{pd['aivarda_minus_dapper']:+.4f} [{lo:+.4f}, {hi:+.4f}]{verdict or ' not significant'} |")
    return lines


def runs_table(paths: list[str]) -> list[str]:
    """One row per ``lorenz96.py --json`` output: its command's seed and ``--set``, and rmse.a."""
    lines = ["| experiment | settings | seed | scored cycles | rmse.a | command |", "|---|---|---:|---:|---:|---|"]
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        argv = data["meta"]["command"].split()
        seed = argv[argv.index("--seed") + 1] if "--seed" in argv else "3000"
        for r in data["results"]:
            lines.append(f"| {r['experiment']} | {r['settings']} | {seed} | {r['scored_cycles']} | {r['rmse_a']:.4f} | "
                         f"`{data['meta']['command']}` |")
    return lines


def tuning_table(rows: list[dict]) -> list[str]:
    lines = ["| experiment | `--set` | seed | scored cycles | minimiser | rmse.a |", "|---|---|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['experiment']} | `{r['set']}` | {r['seed']} | {r['scored_cycles']} | `{r['minimizer']}` | {r['rmse_a']:.4f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="*", help="JSON files of lorenz96.py --json")
    p.add_argument("--tuning", help="the tuning JSON (docs/results/lorenz96_tuning.json)")
    p.add_argument("--runs", nargs="+", default=[], help="lorenz96.py --json outputs: one row per run")
    args = p.parse_args()
    for path in args.files:
        with open(path) as f:
            data = json.load(f)
        meta = data["meta"]
        print(f"<!-- {path}: {meta['command']} | {meta.get('date_utc', '')} | {meta.get('cpu', '')} | "
              f"threads {meta.get('threads', '')} | load {meta.get('load_average_at_end', '')} -->")
        print("\n".join(result_table(data["results"])))
        if any("dapper" in r for r in data["results"]):
            print()
            print("\n".join(dapper_table(data["results"])))
        if any("paired_difference" in r.get("dapper", {}) for r in data["results"]):
            print()
            print("\n".join(paired_table(data["results"])))
        print()
    if args.runs:
        print("\n".join(runs_table(args.runs)))
    if args.tuning:
        with open(args.tuning) as f:
            print("\n".join(tuning_table(json.load(f)["results"])))


if __name__ == "__main__":
    main()
