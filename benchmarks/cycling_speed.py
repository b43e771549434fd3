"""Seconds per stage of cycling, and the projected time of a month (124 cycles of 6 h).

    python benchmarks/cycling_speed.py [--methods 3dvar,4dvar-mi,4dvar-linear] [--cycles 9] [--members 8]
                                       [--genbe FILE|none] [--device cpu] [--json]

Methods (each run on the same cycles, one after the other, in this process):

- ``3dvar``: as ``configs/exp_3DVar.yaml``;
- ``4dvar-mi``: multi-incremental 4DVar as ``configs/exp_4DVar.yaml`` (6-hour window of 1-hour
  steps, the shipped 1-hour transformer in the outer loops, its linear part in the inner loops);
- ``4dvar-linear``: the previous ``exp_4DVar``: the linear part alone in every iteration
  (``linear_prior_only``), no nonlinear model in the window;
- ``4dvar-full``: the transformer in every iteration (forward and adjoint; slow on CPUs).

World: ``--store`` (any WB2-layout store with 6-hourly states), else the default nature run (T42)
when it is cached under ``$AIVARDA_HOME``, else the tiny one (T21; spun up from rest when the
shipped spun-up state is missing). Model: the shipped
``fengwu_6h.pt`` when it exists and the world is not the tiny one (whose grid it does not
fit; the tiny world's run is also allowed in-sample), else an untrained FengWu-style network of
``--arch`` (JSON) with the store's statistics, saved to a temporary checkpoint. B: the GEN_BE statistics ``--genbe`` (default
``$AIVARDA_HOME/b/genbe_learn_b_genbe.pt``, the one ``configs/exp_3DVar.yaml`` uses, when it exists;
``none`` or a missing default: a diagonal B). Runs ``--cycles`` cycles of 3DVar as ``exp_3DVar``
(4 × 5 iterations, a 5-day forecast from every 4th analysis) with the seeds' observing system, from
the store's ``eval`` span on (the first days of ``exp_3DVar``'s month, out of sample; the
first cycle is a warm-up and not counted), and prints the mean seconds per cycle of each stage
(forecast, observations, minimisation, I/O), the one-off set-up (statistics, initial time-lagged
members) and ``124 × mean cycle``.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from aivarda.config import validate
from aivarda.cycling.config import DEFAULT_MODEL, CyclingConfig
from aivarda.cycling.runner import CyclingRunner
from aivarda.data.nature_run import (
    SPINUP_ASSET,
    NatureRunConfig,
    default_store_path,
    ensure_nature_run,
)
from aivarda.data.sources import Wb2ZarrSource
from aivarda.paths import aivarda_home

STAGES = ("forecast", "observations", "minimisation", "io", "total")
WINDOW_MODEL = str(DEFAULT_MODEL.parent / "fengwu_1h.pt")  # the shipped 1-hour model
_WINDOW = {"da_win": 6, "window_interval": "1h", "flow_error": 8.0}
METHODS: dict[str, tuple[dict, dict | None]] = {
    "3dvar": ({"method": "3dvar"}, None),
    "4dvar-mi": ({"method": "4dvar", **_WINDOW, "inner_model": "linear_prior"}, {"window_model": {"checkpoint": WINDOW_MODEL}}),
    "4dvar-linear": ({"method": "4dvar", **_WINDOW}, {"window_model": {"checkpoint": WINDOW_MODEL, "linear_prior_only": True}}),
    "4dvar-full": ({"method": "4dvar", **_WINDOW}, {"window_model": {"checkpoint": WINDOW_MODEL}}),
}
"""``--methods`` name → (the ``assimilation`` section without B and iterations, extra config keys)."""
DEFAULT_ARCH = {"name": "fengwu", "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 4, "window": [4, 8]}


def world(store: Path | None) -> tuple[Path, str]:
    """``store`` if given, else the default nature run if cached, else the tiny one."""
    if store is not None:
        return store, str(store)
    default = default_store_path(NatureRunConfig())
    if default.exists():
        return default, "default nature run (T42)"
    cfg = NatureRunConfig.tiny()
    if not SPINUP_ASSET.is_file():
        cfg = cfg.model_copy(update={"initial_state": "rest", "spin_up_days": 5})
    return ensure_nature_run(cfg, progress=True), "tiny nature run (T21)"


def eval_start(store: Path) -> np.datetime64 | None:
    """The first time of the store's ``eval`` span (out of the shipped models' and B's samples, as
    ``exp_3DVar``'s month), or None for a store without aivarda spans."""
    try:
        return Wb2ZarrSource(store, span="eval").times[0]
    except Exception:  # noqa: BLE001 — a store without aivarda spans: its first times
        return None


def untrained_checkpoint(store: Path, arch: dict, folder: Path, hours: float = 6.0) -> Path:
    """An untrained network of ``arch`` with the store's ``hours``-hour statistics, as a checkpoint file."""
    from aivarda.data.stats import load_or_compute_norm_stats
    from aivarda.models.checkpoint import (
        build_forecast_model,
        checkpoint_dict,
        save_checkpoint,
    )

    source = Wb2ZarrSource(store)
    stats = load_or_compute_norm_stats(source, diff_hours=hours, progress=False)
    model = build_forecast_model(arch, stats, source.grid, source.layout, hours)
    return save_checkpoint(folder / f"untrained_{hours:g}h.pt", checkpoint_dict(model, arch))


def experiment_config(
    store: Path,
    world_name: str,
    model: str,
    folder: Path,
    *,
    cycles: int,
    members: int,
    device: str,
    assimilation: dict,
    start_time: np.datetime64 | None = None,
    extra: dict | None = None,
) -> tuple[CyclingConfig, int]:
    """The cycling config of ``cycles`` cycles on ``store`` (and its ``gap``): ``members``
    time-lagged members, a 5-day forecast from every 4th analysis, the run under ``folder/run``.
    The first cycle is the seeds' 8 × 6 h after the first state where the world is long enough,
    or ``start_time``."""
    times = Wb2ZarrSource(store).times
    six_hourly = int(np.sum((times - times[0]) % np.timedelta64(6, "h") == np.timedelta64(0)))
    gap = min(8, six_hourly - cycles - members + 1)  # the seeds' 8 where the world is long enough
    if gap < 1:
        raise SystemExit(f"{world_name} has {six_hourly} 6-hourly states: too few for {cycles} cycles "
                         f"and {members} members")
    start = times[0] + np.timedelta64(6 * (gap + members - 1), "h") if start_time is None else start_time
    end = start + np.timedelta64(6 * (cycles - 1), "h")
    body = {
        "name": f"bench_{assimilation['method']}",
        "data": {"source": "zarr", "path": str(store)},
        "start_time": str(start)[:19],
        "end_time": str(end)[:19],
        "dynamic_member": members,
        "gap": gap,
        "device": device,
        "assimilation": assimilation,
        "model": {"checkpoint": model},
        "forecast": {"every": 4, "lead": "5d"},
        "output_dir": str(folder / "run"),
        **(extra or {}),
    }
    return validate(CyclingConfig, body, "benchmark"), gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=None, help="WB2-layout store (default: see above)")
    ap.add_argument("--cycles", type=int, default=9, help="cycles (the first is a warm-up; 9: 2 of the 8 timed "
                    "cycles make a 5-day forecast, as 1 in 4 of a month's)")
    ap.add_argument("--members", type=int, default=8, help="dynamic_member (forecast leads per cycle)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--arch", type=json.loads, default=DEFAULT_ARCH, help="architecture of the untrained model")
    ap.add_argument("--genbe", default=str(aivarda_home() / "b" / "genbe_learn_b_genbe.pt"),
                    help="GEN_BE statistics file, or 'none' for a diagonal B")
    ap.add_argument("--methods", default="3dvar", help="comma-separated: 3dvar, 4dvar-mi, 4dvar-linear, 4dvar-full")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    genbe = None if args.genbe == "none" or not Path(args.genbe).is_file() else Path(args.genbe)
    b = {"type": "genbe", "file": str(genbe)} if genbe else {"type": "diagonal"}

    store, world_name = world(args.store)
    shipped = DEFAULT_MODEL.is_file() and "tiny" not in world_name  # the shipped model is on the T42 grid
    results = []
    for method in args.methods.split(","):
        if method not in METHODS:
            raise SystemExit(f"--methods: unknown {method!r}; choose from {sorted(METHODS)}")
        if method != "3dvar" and not shipped:
            raise SystemExit(f"--methods {method}: needs the default nature run and the shipped 1-hour model")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            model = str(DEFAULT_MODEL) if shipped else str(untrained_checkpoint(store, args.arch, folder))
            assimilation, window_model = METHODS[method]
            cfg, gap = experiment_config(
                store, world_name, model, folder, cycles=args.cycles, members=args.members, device=args.device,
                start_time=eval_start(store) if shipped else None,
                assimilation={**assimilation, "background_error": b, "outer_loops": 4, "inner_iterations": 5},
                # the tiny world is too short for statistics outside the scored span; only speed is measured
                extra={"allow_in_sample": True} if "tiny" in world_name else window_model,
            )
            t0 = time.perf_counter()
            CyclingRunner(cfg, progress=not args.json).run()
            elapsed = time.perf_counter() - t0
            with (folder / "run" / "metrics.csv").open() as fh:
                rows = list(csv.DictReader(fh))
        timed = rows[1:] or rows
        mean = {s: float(np.mean([float(r[f"wall_{s}"]) for r in timed])) for s in STAGES}
        setup = elapsed - sum(float(r["wall_total"]) for r in rows)
        results.append({
            "method": method,
            "world": world_name,
            "model": "shipped fengwu_6h.pt" if shipped else f"untrained {args.arch}",
            "device": args.device,
            "background_error": str(genbe) if genbe else "diagonal",
            "cycles": len(rows),
            "members": args.members,
            "gap": gap,
            "seconds_per_cycle": mean,
            "analysis_nrmse": float(np.mean([float(r["ana_nrmse"]) for r in timed])),
            "setup_seconds": setup,
            "month_projection_hours": 124 * mean["total"] / 3600.0,
        })
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    first = results[0]
    print(f"{world_name}, model: {first['model']}, B: {first['background_error']}, device {args.device}, "
          f"{args.members} members; mean seconds per cycle over {first['cycles'] - 1} cycles (after a warm-up cycle)")
    print(f"{'method':<14}" + "".join(f"{s:>14}" for s in STAGES) + f"{'vs first':>10}{'nrmse_a':>10}{'month min':>11}")
    for r in results:
        m = r["seconds_per_cycle"]
        print(f"{r['method']:<14}" + "".join(f"{m[s]:14.3f}" for s in STAGES)
              + f"{m['total'] / first['seconds_per_cycle']['total']:10.2f}{r['analysis_nrmse']:10.4f}"
              + f"{r['month_projection_hours'] * 60:11.1f}")


if __name__ == "__main__":
    main()
