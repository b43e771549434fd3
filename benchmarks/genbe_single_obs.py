"""Single-observation increments of the GEN_BE static B (the figure of docs/genbe.md).

One z500 observation with innovation ``d = y − x_b`` at (lat, lon): the 3DVar increment is the
column of ``B = U Uᵀ`` through the observation, ``δx = B e_i · d / (B_ii + λσ²)``, computed here as
``U(Uᵀ e_i)``. The figure shows the z500 increment (colours) with the balanced 500 hPa wind
increment (arrows), the t850 increment, and a latitude–pressure section of the z increment through
the observation (the vertical modes and their correlation).

    python benchmarks/genbe_single_obs.py --stats $AIVARDA_HOME/b/genbe_learn_b_genbe.pt --out docs/figures/genbe_single_obs.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from aivarda.background.genbe import GenBeStatistics, GenBeTransform


def single_obs_increment(U: GenBeTransform, channel: int, i: int, j: int, innovation: float, sigma: float, lam: float = 1.0) -> torch.Tensor:
    """``δx = U Uᵀ e_i · d / (B_ii + λσ²)`` ``[C, H, W]``."""
    e = torch.zeros(U.state_shape, dtype=torch.float64)
    e[channel, i, j] = 1.0
    column = U.decode(U.adjoint(e)).detach()
    return column * innovation / (float(column[channel, i, j]) + lam * sigma**2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stats", type=Path, required=True, help="GEN_BE statistics (aivarda learn-b genbe)")
    ap.add_argument("--out", type=Path, default=Path("docs/figures/genbe_single_obs.png"))
    ap.add_argument("--lat", type=float, default=45.0)
    ap.add_argument("--lon", type=float, default=180.0)
    ap.add_argument("--innovation", type=float, default=100.0, help="y − x_b of the z500 observation (m²/s²)")
    ap.add_argument("--sigma", type=float, default=10.0, help="observation error std (m²/s²)")
    args = ap.parse_args()

    stats = GenBeStatistics.load(args.stats)
    U = GenBeTransform(stats, dtype=torch.float64)
    grid, layout = stats.state_grid, stats.layout
    i, j = int(np.argmin(np.abs(grid.lat - args.lat))), int(np.argmin(np.abs(grid.lon - args.lon)))
    inc = single_obs_increment(U, layout.index("z500"), i, j, args.innovation, args.sigma).numpy()
    lon, lat = np.append(grid.lon, 360.0), grid.lat

    def cyclic(f: np.ndarray) -> np.ndarray:
        return np.concatenate([f, f[:, :1]], axis=1)

    panels = [(n, u) for n, u in (("z500", "m² s⁻²"), ("t850", "K")) if n in layout.names]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(9, 3.4 * (len(panels) + 1)), constrained_layout=True)
    for ax, (name, units) in zip(axes, panels):
        f = inc[layout.index(name)]
        vmax = float(np.abs(f).max()) or 1.0
        im = ax.pcolormesh(lon, lat, cyclic(f), cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="nearest")
        fig.colorbar(im, ax=ax, label=f"{name} increment ({units})", shrink=0.9)
        if name == "z500" and "u500" in layout.names:
            u, v = inc[layout.index("u500")], inc[layout.index("v500")]
            sl = (slice(None, None, max(1, grid.nlat // 32)), slice(None, None, max(1, grid.nlon // 64)))
            LON, LAT = np.meshgrid(grid.lon, grid.lat)
            q = ax.quiver(LON[sl], LAT[sl], u[sl], v[sl], scale_units="xy", angles="xy",
                          scale=float(np.hypot(u, v).max()) / 8 or 1.0, width=0.002)
            ax.quiverkey(q, 0.9, 1.03, float(np.hypot(u, v).max()), f"{np.hypot(u, v).max():.2g} m/s", labelpos="E")
        ax.plot(grid.lon[j], grid.lat[i], "k+", ms=12, mew=2)
        ax.set_xlim(grid.lon[j] - 60, grid.lon[j] + 60)
        ax.set_ylim(max(-90, grid.lat[i] - 40), min(90, grid.lat[i] + 40))
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        ax.set_title(f"{name} increment" + (" and 500 hPa wind increment" if name == "z500" else ""))
    ax = axes[-1]
    zs = layout.variable_slice("z")
    section = inc[zs, :, j]  # [P, H]
    vmax = float(np.abs(section).max()) or 1.0
    im = ax.pcolormesh(grid.lat, np.array(layout.levels), section, cmap="RdBu_r", vmin=-vmax, vmax=vmax, shading="nearest")
    fig.colorbar(im, ax=ax, label="z increment (m² s⁻²)", shrink=0.9)
    ax.plot(grid.lat[i], 500, "k+", ms=12, mew=2)
    ax.set_xlim(max(-90, grid.lat[i] - 40), min(90, grid.lat[i] + 40))
    ax.invert_yaxis()
    ax.set_xlabel("latitude (°N)")
    ax.set_ylabel("pressure (hPa)")
    ax.set_title(f"z increment along {grid.lon[j]:.0f}°E")
    fig.suptitle(f"GEN_BE: one z500 observation, y − x_b = {args.innovation:g} m²/s², σ_o = {args.sigma:g} m²/s²")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
