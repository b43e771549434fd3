"""A cycling run's background error against the level of two unrelated states of the world, cycle by
cycle: ratio = RMSE(background) / (√2 × RMSE(climatology)) at the same valid time, both from the
run's ``metrics.csv``. For the no-DA run (a month-long free run of the 6-hour model) this says
whether the free run saturates at that level or drifts past it.

    python benchmarks/free_run_month.py runs/month/exp_NoDA/runs/exp_NoDA__seed=0 \
        --channels z500,t850,u500,q500,t2m --unrelated-lag 31d --json > docs/results/noda_month_saturation.json

A single free run's error, cycle by cycle, fluctuates about that level (the climatology's error at
one time and the model's anomaly at that time are single samples), so ``--unrelated-lag`` adds the
same ratio for a forecast that *is* an unrelated state of the world: the truth ``LAG`` earlier (from
the run's store). The free run saturates as it should when its ratios look like that reference's,
not when they stay under a fixed line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--channels", default="z500,t850,u500,q500,t2m")
    p.add_argument("--unrelated-lag", default=None,
                   help="also score the truth this long before each valid time (e.g. 31d) as an unrelated state")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    path = args.run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a run directory of `aivarda run`)")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    reference = _unrelated(args.run_dir, rows, args.channels.split(","), args.unrelated_lag) if args.unrelated_lag else None
    out: dict[str, object] = {"run": str(args.run_dir), "cycles": len(rows), "unrelated_lag": args.unrelated_lag,
                              "first_time": rows[0]["time"], "last_time": rows[-1]["time"], "channels": {}}
    for ch in args.channels.split(","):
        bg, clim = f"bg_wrmse_{ch}", f"clim_wrmse_{ch}"
        if bg not in rows[0] or clim not in rows[0]:
            raise SystemExit(f"{path}: no columns {bg}/{clim}")
        clims = [float(r[clim]) for r in rows]
        ratio = [float(r[bg]) / (math.sqrt(2) * c) for r, c in zip(rows, clims, strict=True)]
        first = next((i for i, x in enumerate(ratio) if x >= 0.9), None)
        after = ratio[first:] if first is not None else []
        half = len(rows) // 2
        entry = {
            "ratio_per_cycle": [round(x, 4) for x in ratio],
            "second_half_ratio": _aggregate_ratio([float(r[bg]) for r in rows[half:]], clims[half:]),
            "fraction_above_110pct": sum(x > 1.1 for x in ratio) / len(ratio),
        }
        if reference is not None:
            ref = [d / (math.sqrt(2) * c) for d, c in zip(reference[ch], clims, strict=True)]
            entry["unrelated_ratio_per_cycle"] = [round(x, 4) for x in ref]
            entry["unrelated_max_ratio"] = max(ref)
            entry["unrelated_second_half_ratio"] = _aggregate_ratio(reference[ch][half:], clims[half:])
            entry["unrelated_fraction_above_110pct"] = sum(x > 1.1 for x in ref) / len(ref)
        out["channels"][ch] = entry | {  # type: ignore[index]
            "first_cycle_at_90pct": first, "first_time_at_90pct": None if first is None else rows[first]["time"],
            "max_ratio": max(ratio), "max_ratio_time": rows[ratio.index(max(ratio))]["time"],
            "min_ratio_after_90pct": min(after) if after else None, "last_ratio": ratio[-1],
            "never_above_110pct": max(ratio) <= 1.1,
            "last_rmse": float(rows[-1][bg]), "last_sqrt2_climatology": math.sqrt(2) * float(rows[-1][clim]),
        }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{args.run_dir}: {out['cycles']} cycles {out['first_time']} … {out['last_time']}")
        for ch, s in out["channels"].items():  # type: ignore[union-attr]
            print(f"  {ch:6s} ≥ 0.9 from {s['first_time_at_90pct']}; largest ratio {s['max_ratio']:.3f} at "
                  f"{s['max_ratio_time']}; last {s['last_ratio']:.3f} ({s['last_rmse']:.4g} vs {s['last_sqrt2_climatology']:.4g}); "
                  f"never above 1.1: {s['never_above_110pct']}; second half {s['second_half_ratio']:.3f}, "
                  f"{100 * s['fraction_above_110pct']:.0f} % of cycles above 1.1")
            if "unrelated_max_ratio" in s:
                print(f"         unrelated state (truth {args.unrelated_lag} earlier): largest {s['unrelated_max_ratio']:.3f}; "
                      f"second half {s['unrelated_second_half_ratio']:.3f}, "
                      f"{100 * s['unrelated_fraction_above_110pct']:.0f} % of cycles above 1.1")
    return 0


def _aggregate_ratio(rmse: list[float], clim_rmse: list[float]) -> float:
    """√(Σ RMSE² / Σ 2·RMSE_clim²): the ratio of the time-mean MSE to two unrelated states' over the cycles."""
    return math.sqrt(sum(x * x for x in rmse) / sum(2 * c * c for c in clim_rmse))


def _unrelated(run_dir: Path, rows: list[dict[str, str]], channels: list[str], lag: str) -> dict[str, list[float]]:
    """Latitude-weighted RMSE per cycle between the truth at each valid time and ``lag`` earlier."""
    import numpy as np
    import torch

    from aivarda.config import DataConfig, parse_duration
    from aivarda.data.sources import open_source
    from aivarda.evaluation.metrics import rmse

    config = json.loads((run_dir / "config.json").read_text())
    source = open_source(DataConfig.model_validate(config["data"]))
    names = list(source.geometry.layout.names)
    idx = [names.index(c) for c in channels]
    delta = np.timedelta64(int(parse_duration(lag).total_seconds()), "s")
    times = np.array([np.datetime64(r["time"], "ns") for r in rows])
    out: dict[str, list[float]] = {c: [] for c in channels}
    with torch.no_grad():
        for t in times:
            x, y = source.states([t, t - delta])[:, idx].double()
            for c, v in zip(channels, rmse(y, x, source.grid).tolist(), strict=True):
                out[c].append(v)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
