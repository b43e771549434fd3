"""DAPPER's own LETKF on the Sakov-2008 Lorenz-96 setup: the cross-check of ``lorenz96.py --experiments letkf``.

Runs ``LETKF(N=7, rot=True, infl=1.04, loc_rad=4)`` of ``dapper/mods/Lorenz96/sakov2008.py`` with
the burn-in of 20 time units and 5000 scored analysis cycles (T = 20 + 5000 · 0.05), and prints
DAPPER's time-mean ``rmse.a``. DAPPER is not a dependency of aivarda: run this in its own
environment, e.g. ::

    python -m venv /tmp/dapper-venv && /tmp/dapper-venv/bin/pip install dapper==1.7.1
    OMP_NUM_THREADS=1 /tmp/dapper-venv/bin/python benchmarks/dapper_letkf.py --seed 3000
"""

from __future__ import annotations

import argparse
import time

import dapper as dpr
import dapper.da_methods as da
from dapper.mods.Lorenz96.sakov2008 import HMM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=3000)
    p.add_argument("--cycles", type=int, default=5000, help="scored analysis cycles after the burn-in")
    args = p.parse_args()
    HMM.tseq.T = HMM.tseq.BurnIn + args.cycles * HMM.tseq.dto
    dpr.set_seed(args.seed)
    xx, yy = HMM.simulate()
    xp = da.LETKF(N=7, rot=True, infl=1.04, loc_rad=4)
    t0 = time.perf_counter()
    xp.assimilate(HMM, xx, yy)
    xp.stats.average_in_time()
    rmse = xp.avrgs.err.rms.a.val
    print(f"DAPPER {dpr.__version__} LETKF seed={args.seed} Ko={HMM.tseq.Ko} rmse.a={rmse:.4f} wall_s={time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
