"""Where a cycle's time goes: cProfile (and optionally torch.profiler) over a small cycling run.

    OMP_NUM_THREADS=1 python benchmarks/profile_cycle.py [--method 3dvar|4dvar] [--cycles 2] [--top 15] [--torch]

World and forecast model as ``benchmarks/cycling_speed.py`` (the tiny T21 nature run unless a larger
one is cached or ``--store`` is given; an untrained FengWu-style network of ``--arch``, 6-hourly for the
cycle, 1-hourly for the 4DVar window), diagonal B, ``--members`` time-lagged members. The whole run
(set-up included) is profiled; printed are the per-cycle stage walls from ``metrics.csv``, the self
time summed per module (``aivarda.*`` by module, everything else by top-level package), the top
``--top`` aivarda functions by cumulative time, the top ``--top`` functions of any package by self
time and, with ``--torch``, torch.profiler's operator table sorted by self CPU time.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import json
import pstats
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from cycling_speed import experiment_config, untrained_checkpoint, world

from aivarda.cycling.runner import CyclingRunner

SMALL_ARCH = {"name": "fengwu", "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2, "window": [4, 8]}


def module_of(filename: str) -> str:
    """``aivarda.x.y`` for a file of the package, else the top-level package (``torch``, ``numpy``…)."""
    path = Path(filename)
    parts = path.with_suffix("").parts
    if "aivarda" in parts:
        return ".".join(parts[len(parts) - 1 - parts[::-1].index("aivarda"):])
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    stdlib = [i for i, part in enumerate(parts[:-1]) if part.startswith("python3")]
    if stdlib:  # the standard library: its top-level module or package (json, inspect, …)
        return parts[stdlib[-1] + 1]
    return "<builtin>" if filename.startswith(("~", "<")) else path.stem


def label(key: tuple[str, int, str]) -> str:
    """The module of a profiled function; C functions by what they belong to (torch, imports, other)."""
    mod = module_of(key[0])
    if mod != "<builtin>":
        return mod
    if "torch" in key[2]:
        return "torch (C++)"
    return "<builtin: imports>" if any(s in key[2] for s in ("marshal", "builtins.exec", "_imp.")) else mod


def summarise(stats: pstats.Stats, top: int) -> str:
    """Self time per module, top aivarda functions by cumulative time, top functions by self time."""
    raw = stats.stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    per_module: dict[str, float] = defaultdict(float)
    for key, (_, _, tt, _, _) in raw.items():
        per_module[label(key)] += tt
    total = sum(per_module.values())
    out = [f"self time by module (total {total:.2f} s):"]
    for mod, tt in sorted(per_module.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {tt:8.3f} s {100 * tt / total:5.1f} %  {mod}")

    def rows(key: int, only_aivarda: bool) -> list[str]:
        items = [(k, v) for k, v in raw.items() if not only_aivarda or module_of(k[0]).startswith("aivarda")]
        items.sort(key=lambda kv: -kv[1][key])
        return [f"  {v[3]:8.3f} {v[2]:8.3f} {v[1]:8d}  {label(k)}:{k[2]} (line {k[1]})" for k, v in items[:top]]

    header = f"  {'cum s':>8} {'self s':>8} {'calls':>8}  function"
    out += ["", f"top {top} aivarda functions by cumulative time:", header, *rows(3, True)]
    out += ["", f"top {top} functions (any package) by self time:", header, *rows(2, False)]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="3dvar", choices=("3dvar", "4dvar"))
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--members", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--torch", action="store_true", help="also torch.profiler's operator table (self CPU time)")
    ap.add_argument("--store", type=Path, default=None)
    ap.add_argument("--arch", type=json.loads, default=SMALL_ARCH, help="architecture of the untrained models")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    store, world_name = world(args.store)
    assimilation: dict = {"method": args.method, "background_error": {"type": "diagonal"},
                          "outer_loops": 2, "inner_iterations": 5}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = str(untrained_checkpoint(store, args.arch, folder, 6.0))
        extra: dict = {"allow_in_sample": True}  # untrained models: scores are not the point
        start = None
        if args.method == "4dvar":
            assimilation.update({"da_win": 6, "window_interval": "1h"})
            extra["window_model"] = {"checkpoint": str(untrained_checkpoint(store, args.arch, folder, 1.0))}
            from aivarda.data.sources import Wb2ZarrSource

            times = Wb2ZarrSource(store).times
            hourly = np.flatnonzero(np.diff(times) == np.timedelta64(1, "h"))
            if not hourly.size:
                raise SystemExit(f"{world_name} has no hourly states for a 4DVar window")
            start = times[hourly[0]]
        cfg, _ = experiment_config(store, world_name, model, folder, cycles=args.cycles, members=args.members,
                                   device="cpu", assimilation=assimilation, start_time=start, extra=extra)
        runner = CyclingRunner(cfg, progress=False)
        profiler = cProfile.Profile()
        tprof = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                 if args.torch else nullcontext())
        t0 = time.perf_counter()
        with tprof:
            profiler.enable()
            runner.run()
            profiler.disable()
        elapsed = time.perf_counter() - t0
        with (folder / "run" / "metrics.csv").open() as fh:
            metrics = list(csv.DictReader(fh))
    print(f"{world_name}, {args.method}, untrained {args.arch}, diagonal B, {args.members} members, "
          f"{len(metrics)} cycles, {torch.get_num_threads()} torch thread(s)")
    print(f"run (set-up included) {elapsed:.2f} s; per cycle (metrics.csv, seconds):")
    stages = ("forecast", "observations", "minimisation", "io", "total")
    print("  cycle " + " ".join(f"{s:>13}" for s in stages))
    for i, r in enumerate(metrics):
        print(f"  {i:5d} " + " ".join(f"{float(r[f'wall_{s}']):13.3f}" for s in stages))
    print()
    print(summarise(pstats.Stats(profiler, stream=io.StringIO()), args.top))
    if args.torch:
        print()
        print(f"torch.profiler: top {args.top} operators by self CPU time")
        print(tprof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
