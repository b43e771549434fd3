"""Whole-process wall time of cycling experiments, and where each cycle's time went.

    python benchmarks/month_speed.py configs/exp_3DVar.yaml [configs/exp_4DVar.yaml ...]
                                     [--set KEY=VALUE ...] [--suffix S] [--out-root runs/speed] [--json]

Runs ``aivarda run CONFIG --out OUT_ROOT/NAME`` for each config, one after the other, as a user
would (a fresh process each: imports, set-up, every cycle, the final outputs), and prints per run
the whole-process wall seconds, the mean seconds per cycle of each stage (from the run's
``metrics.csv``), the cycle count and the mean normalised analysis and background RMSE. An existing
``OUT_ROOT/NAME`` is refused (the run would resume instead of timing a fresh one). ``--set``
overrides a dotted key of every config (e.g. ``end_time=2000-08-02T18:00`` to time the first 8
cycles, ``assimilation.background_error.finetune.mode=full``): the run reads a copy of the config
with the overrides, written next to the run as ``OUT_ROOT/NAME<S>.yaml``. The JSON records
the host, the CPU, the torch thread count, the load average before and after each run, the git
commit and the date.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_run(config: Path, out: Path) -> dict:
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "aivarda.cli", "run", str(config), "--out", str(out), "--json"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"aivarda run {config} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    stages = [k for k in rows[0] if k.startswith("wall_")]
    per_cycle = {k[5:]: float(np.mean([float(r[k]) for r in rows])) for k in stages}
    return {
        "config": str(config),
        "run": str(out),
        "cycles": len(rows),
        "process_wall_seconds": wall,
        "cycle_seconds_sum": float(sum(float(r["wall_total"]) for r in rows)),
        "seconds_per_cycle": per_cycle,
        "ana_nrmse_mean": float(np.mean([float(r["ana_nrmse"]) for r in rows])),
        "bg_nrmse_mean": float(np.mean([float(r["bg_nrmse"]) for r in rows])),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
    }


def with_overrides(config: Path, sets: list[str], path: Path) -> Path:
    """A copy of ``config`` with ``KEY=VALUE`` overrides (dotted keys, YAML values) at ``path``."""
    data = yaml.safe_load(config.read_text())
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        node = data
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SystemExit(f"--set {key}: {k} is not a mapping in {config}")
        node[leaf] = yaml.safe_load(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", type=Path)
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a dotted config key of every config (repeatable)")
    ap.add_argument("--suffix", default="", help="appended to each run's name under --out-root")
    ap.add_argument("--out-root", type=Path, default=Path("runs/speed"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    for config in args.configs:
        name = (yaml.safe_load(config.read_text()).get("name") or config.stem) + args.suffix
        if (args.out_root / name).exists():  # before the overrides' copy of the config is written beside it
            raise SystemExit(f"{args.out_root / name}: exists; remove it or choose another --out-root (a run there would resume)")
        if args.sets:
            config = with_overrides(config, args.sets, args.out_root / f"{name}.yaml")
        results.append(time_run(config, args.out_root / name))
        results[-1]["overrides"] = list(args.sets)
        if not args.json:
            r = results[-1]
            stages = "  ".join(f"{k} {v:.3f}" for k, v in r["seconds_per_cycle"].items())
            print(f"{config}: {r['cycles']} cycles, process {r['process_wall_seconds']:.1f} s "
                  f"(cycles {r['cycle_seconds_sum']:.1f} s); per cycle: {stages}; "
                  f"nrmse a {r['ana_nrmse_mean']:.4f} b {r['bg_nrmse_mean']:.4f}", flush=True)
    if args.json:
        print(json.dumps({
            "command": "python benchmarks/month_speed.py " + " ".join(map(str, args.configs))
            + "".join(f" --set {x}" for x in args.sets) + (f" --suffix {args.suffix}" if args.suffix else ""),
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": platform.node(),
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "commit": commit(),
            "runs": results,
        }, indent=2))


if __name__ == "__main__":
    main()
