"""Cost of the ensemble B transform ``U_e`` and the realised length of its localisation.

Default: 69 channels (FengWu's layout) on the T42 Gaussian grid 64×128, K = 8 random members,
localisation 1500 km Gaussian × 0.5 ln p (surface at the lowest level). Prints the minimum over
``--repeat`` calls of the wall and CPU seconds of ``U α``, ``Uᵀ δx`` and ``U α`` + its reverse pass
(what the minimiser does per evaluation). ``--lengths`` prints instead the realised horizontal length
(:func:`~aivarda.background.localisation.realised_length_scale`) over the target for a few grids,
shapes and length scales.

    OMP_NUM_THREADS=1 python benchmarks/ensemble_transform_cost.py [--grid gaussian 64 128] [--members 8]
    OMP_NUM_THREADS=1 python benchmarks/ensemble_transform_cost.py --lengths
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from aivarda.background.ensemble import EnsembleTransform
from aivarda.background.localisation import SHAPES, SphereLocalisation, realised_length_scale
from aivarda.channels import ChannelLayout
from aivarda.grid import Grid


def _best(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    wall, cpu = [], []
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def lengths() -> None:
    grids = [Grid.gaussian(32, 64), Grid.gaussian(64, 128), Grid.equiangular(121, 240)]
    targets = (500.0, 1000.0, 2000.0)
    print("grid | shape | " + " | ".join(f"{t:.0f} km" for t in targets))
    for grid in grids:
        for shape in SHAPES:
            ratios = [realised_length_scale(SphereLocalisation(grid, 1, t, shape)) / t for t in targets]  # type: ignore[arg-type]
            print(f"{grid.describe()} | {shape} | " + " | ".join(f"{r:.3f}" for r in ratios))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", nargs=3, default=("gaussian", "64", "128"), metavar=("KIND", "NLAT", "NLON"))
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--length-km", type=float, default=1500.0)
    ap.add_argument("--vertical-lnp", type=float, default=0.5)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--lengths", action="store_true", help="print realised/target length scales instead")
    args = ap.parse_args()
    if args.lengths:
        lengths()
        return
    grid = Grid.from_dict({"kind": args.grid[0], "nlat": int(args.grid[1]), "nlon": int(args.grid[2])})
    dtype = getattr(torch, args.dtype)
    layout = ChannelLayout.fengwu69()
    loc = SphereLocalisation(grid, layout, args.length_km, "gaussian", args.vertical_lnp, "lowest")
    gen = torch.Generator().manual_seed(0)
    U = EnsembleTransform(loc, torch.randn(args.members, len(layout), *grid.shape, generator=gen, dtype=dtype))
    z = torch.randn(U.latent_shape, generator=gen, dtype=dtype)
    dx = torch.randn(U.state_shape, generator=gen, dtype=dtype)
    zg = z.clone().requires_grad_()

    def decode_and_reverse() -> None:
        (U.decode(zg) * dx).sum().backward()

    with torch.no_grad():
        decode = _best(lambda: U.decode(z), args.repeat)
        adjoint = _best(lambda: U.adjoint(dx), args.repeat)
    both = _best(decode_and_reverse, args.repeat)
    print(
        f"{len(layout)} channels on {grid.describe()}, K = {args.members}, {args.dtype}, latent {list(U.latent_shape)} "
        f"({z.numel():,} values), torch threads {torch.get_num_threads()}; best of {args.repeat} (wall / CPU ms): "
        f"U α {decode[0] * 1e3:.1f} / {decode[1] * 1e3:.1f}, Uᵀ δx {adjoint[0] * 1e3:.1f} / {adjoint[1] * 1e3:.1f}, "
        f"U α + reverse {both[0] * 1e3:.1f} / {both[1] * 1e3:.1f}"
    )


if __name__ == "__main__":
    main()
