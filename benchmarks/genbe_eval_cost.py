"""One cost-and-gradient evaluation through GEN_BE — ``U z`` and its reverse pass, what the
minimiser pays ~30 times per 3DVar cycle — with the fused spectral transforms against the
torch-harmonics chain they replace, in the same process.

    python benchmarks/genbe_eval_cost.py [--genbe FILE] [--repeat 30] [--threads 2] [--json]

``--genbe``: fitted GEN_BE statistics (default ``$AIVARDA_HOME/b/genbe_learn_b_genbe.pt``, the B of
``configs/exp_3DVar.yaml``; when missing, statistics are fitted on synthetic fields on the T42
Gaussian grid, which only changes the numbers, not the shapes). The reference ("torch-harmonics
chain") is the same transform with ``SphereOps.dofs_to_field`` as ``synthesis(dofs_to_spectrum(z))``
and ``streamfunction_to_wind`` as the scalar analysis of ψ and χ followed by the vector synthesis
(torch-harmonics' modules), as before the fusion. Prints milliseconds per ``U z`` (no gradient)
and per evaluation (``U z``, a scalar product, the reverse pass to ``z``), and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from aivarda.background.genbe import GenBeTransform, SphereOps, fit_genbe
from aivarda.background.genbe.fit import GenBeStatistics
from aivarda.channels import ChannelLayout
from aivarda.grid import Grid
from aivarda.paths import aivarda_home


class TorchHarmonicsChain(SphereOps):
    """:class:`SphereOps` with the two fused operators replaced by the transforms they fuse."""

    def dofs_to_field(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesis(self.dofs_to_spectrum(z))

    def streamfunction_to_wind(self, psi: torch.Tensor, chi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        st = torch.stack([self.analysis(chi), -self.analysis(psi)], dim=-3) / self.radius
        self._on(st)
        w = self._ivsht(st)
        return w[..., 1, :, :], -w[..., 0, :, :]


def statistics_for(path: Path) -> tuple[GenBeStatistics, str]:
    if path.is_file():
        return GenBeStatistics.load(path), str(path)
    grid = Grid.gaussian(64, 128)
    ops = SphereOps(grid)
    gen = torch.Generator().manual_seed(0)
    amp = ops.gaussian_amplitudes(torch.tensor(8e5))
    x = ops.dofs_to_field(torch.randn(8, 69, ops.n_dofs, dtype=torch.float64, generator=gen) * amp).float()
    return fit_genbe(x, ChannelLayout.fengwu69(), grid), "synthetic statistics (T42 Gaussian)"


def time_transform(U: GenBeTransform, repeat: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(U.latent_shape, generator=gen)
    w = torch.randn(U.state_shape, generator=gen)

    def evaluate() -> None:
        zz = z.clone().requires_grad_(True)
        j = 0.5 * (zz * zz).sum() + (U.decode(zz) * w).sum()
        torch.autograd.grad(j, zz)

    def timed(f) -> float:  # noqa: ANN001
        for _ in range(3):
            f()
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            f()
            samples.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(samples)

    with torch.no_grad():
        decode_ms = timed(lambda: U.decode(z))
    return {"decode_ms": decode_ms, "evaluation_ms": timed(evaluate)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--genbe", type=Path, default=aivarda_home() / "b" / "genbe_learn_b_genbe.pt")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    stats, where = statistics_for(args.genbe)
    fused = GenBeTransform(stats)
    reference = GenBeTransform(stats)
    reference.ops = TorchHarmonicsChain(stats.control_grid, stats.radius, stats.lmax)
    with torch.no_grad():  # the same operator: the largest difference, relative to the largest value
        z = torch.randn(fused.latent_shape, generator=torch.Generator().manual_seed(2))
        a, b = fused.decode(z), reference.decode(z)
        rel = float((a - b).abs().max() / b.abs().max())
    rows = {"torch-harmonics chain": time_transform(reference, args.repeat), "fused": time_transform(fused, args.repeat)}
    result = {
        "statistics": where,
        "control_grid": stats.control_grid.describe(),
        "latent_shape": list(fused.latent_shape),
        "state_shape": list(fused.state_shape),
        "torch_threads": torch.get_num_threads(),
        "max_relative_difference": rel,
        "rows": rows,
        "evaluation_speed_up": rows["torch-harmonics chain"]["evaluation_ms"] / rows["fused"]["evaluation_ms"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"GEN_BE {where}: control {result['control_grid']}, z {result['latent_shape']}, state {result['state_shape']}, "
          f"{result['torch_threads']} torch threads; max |fused − chain| / max |U z| = {rel:.1e}")
    print(f"{'transforms':<24}{'U z (ms)':>12}{'evaluation (ms)':>18}")
    for name, r in rows.items():
        print(f"{name:<24}{r['decode_ms']:12.2f}{r['evaluation_ms']:18.2f}")
    print(f"{'ratio chain / fused':<24}{rows['torch-harmonics chain']['decode_ms'] / rows['fused']['decode_ms']:12.2f}"
          f"{result['evaluation_speed_up']:18.2f}")


if __name__ == "__main__":
    main()
