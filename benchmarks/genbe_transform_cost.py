"""Cost of the GEN_BE transform at the seeds' layout: 69 channels, control 128×256 equiangular,
state 721×1440 (increments upsampled). Statistics are fitted from a few synthetic random samples
(only the shapes matter here). Prints the seconds per ``U z`` and per ``Uᵀ δx`` (and the size of z).

    OMP_NUM_THREADS=1 python benchmarks/genbe_transform_cost.py [--state 721 1440] [--control 128 256]
"""

from __future__ import annotations

import argparse
import time

import torch

from aivarda.background.genbe import GenBeTransform, SphereOps, fit_genbe
from aivarda.channels import ChannelLayout
from aivarda.grid import Grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", type=int, nargs=2, default=(721, 1440))
    ap.add_argument("--control", type=int, nargs=2, default=(128, 256))
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    layout = ChannelLayout.fengwu69()
    control = Grid.equiangular(*args.control)
    ops = SphereOps(control)
    gen = torch.Generator().manual_seed(0)
    amp = ops.gaussian_amplitudes(torch.tensor(8e5))
    x = ops.dofs_to_field(torch.randn(args.samples, len(layout), ops.n_dofs, dtype=torch.float64, generator=gen) * amp).float()
    t0 = time.perf_counter()
    stats = fit_genbe(x, layout, control, state_grid=Grid.equiangular(*args.state))
    fit_s = time.perf_counter() - t0
    U = GenBeTransform(stats)
    z = torch.randn(U.latent_shape)
    with torch.no_grad():
        U.decode(z)
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            dx = U.decode(z)
        decode_s = (time.perf_counter() - t0) / args.repeat
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        U.adjoint(dx)
    adjoint_s = (time.perf_counter() - t0) / args.repeat
    print(
        f"control {control.describe()} (L = {ops.lmax}), state {stats.state_grid.describe()}, 69 channels: "
        f"z {list(U.latent_shape)} = {z.numel():,} values; fit ({args.samples} samples) {fit_s:.2f} s, "
        f"U z {decode_s:.2f} s, Uᵀ δx {adjoint_s:.2f} s (torch threads: {torch.get_num_threads()})"
    )


if __name__ == "__main__":
    main()
