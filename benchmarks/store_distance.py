"""How unrelated two nature-run stores are: the latitude-weighted RMSE between their states at the
same valid times, beside the level of two unrelated states of the world (√2 × the climatology's
RMSE, the climatology being the time mean of store A over the same times).

Used to show that the tuning world (``configs/tuning/nature_run_tune.yaml``, another seed of the
default world's initial noise) has decorrelated from the default store over the times it shares
with it, so that knobs tuned on it are not tuned on the default store's trajectory:

    python benchmarks/store_distance.py ~/.cache/aivarda/nature_run/held_suarez_t42_l13_7a63620e.zarr \
        ~/.cache/aivarda/nature_run/tune.zarr --span-b tune --every 1 \
        --json > docs/results/tune_world_distance.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from aivarda.config import DataConfig
from aivarda.data.sources import open_source
from aivarda.evaluation.metrics import mse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store_a", type=Path)
    p.add_argument("store_b", type=Path)
    p.add_argument("--span-a", default=None, help="span of store A (default: all of it)")
    p.add_argument("--span-b", default=None, help="span of store B (default: all of it)")
    p.add_argument("--channels", default="z500,t850,u500,q500,t2m")
    p.add_argument("--every", type=int, default=4, help="use every N-th common time (default 4)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    a = open_source(DataConfig(source="zarr", path=args.store_a), span=args.span_a)
    b = open_source(DataConfig(source="zarr", path=args.store_b), span=args.span_b)
    a.geometry.check_same(b.geometry, "store_b")
    times = np.intersect1d(a.times, b.times)[:: args.every]
    if times.size < 2:
        raise SystemExit(f"the stores share {times.size} valid time(s); nothing to compare")
    names = list(a.geometry.layout.names)
    chans = [c.strip() for c in args.channels.split(",")]
    missing = [c for c in chans if c not in names]
    if missing:
        raise SystemExit(f"--channels: {missing} not in the stores' channels")
    idx = [names.index(c) for c in chans]
    grid = a.geometry.grid
    xa, xb = a.states(times)[:, idx].double(), b.states(times)[:, idx].double()
    clim = xa.mean(0, keepdim=True)
    dist = mse(xb, xa, grid).mean(0).sqrt()           # √(time-mean MSE) between the two worlds
    clim_rmse = mse(xa, clim.expand_as(xa), grid).mean(0).sqrt()
    rows = [{"channel": c, "rmse_between": float(d), "rmse_climatology": float(s),
             "sqrt2_climatology": math.sqrt(2) * float(s), "ratio": float(d) / (math.sqrt(2) * float(s))}
            for c, d, s in zip(chans, dist, clim_rmse, strict=True)]
    out = {"store_a": str(args.store_a), "store_b": str(args.store_b), "span_a": args.span_a, "span_b": args.span_b,
           "first_time": str(times[0])[:16], "last_time": str(times[-1])[:16], "n_times": int(times.size), "rows": rows}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['n_times']} common times {out['first_time']} … {out['last_time']}")
        print(f"{'channel':8s} {'RMSE A−B':>12s} {'√2·clim':>12s} {'ratio':>6s}")
        for r in rows:
            print(f"{r['channel']:8s} {r['rmse_between']:12.4g} {r['sqrt2_climatology']:12.4g} {r['ratio']:6.3f}")
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    raise SystemExit(main())
