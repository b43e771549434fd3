"""A cycling run's background error against the level of two unrelated states of the world, cycle by
cycle: ratio = RMSE(background) / (√2 × RMSE(climatology)) at the same valid time, both from the
run's ``metrics.csv``. For the no-DA run (a month-long free run of the 6-hour model) this says
whether the free run saturates at that level or drifts past it.

    python benchmarks/free_run_month.py runs/month/exp_NoDA/runs/exp_NoDA__seed=0 \
        --channels z500,t850,u500,q500,t2m --json > docs/results/noda_month_saturation.json
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
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    path = args.run_dir / "metrics.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a run directory of `aivarda run`)")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out: dict[str, object] = {"run": str(args.run_dir), "cycles": len(rows),
                              "first_time": rows[0]["time"], "last_time": rows[-1]["time"], "channels": {}}
    for ch in args.channels.split(","):
        bg, clim = f"bg_wrmse_{ch}", f"clim_wrmse_{ch}"
        if bg not in rows[0] or clim not in rows[0]:
            raise SystemExit(f"{path}: no columns {bg}/{clim}")
        ratio = [float(r[bg]) / (math.sqrt(2) * float(r[clim])) for r in rows]
        first = next((i for i, x in enumerate(ratio) if x >= 0.9), None)
        after = ratio[first:] if first is not None else []
        out["channels"][ch] = {  # type: ignore[index]
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
                  f"never above 1.1: {s['never_above_110pct']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
