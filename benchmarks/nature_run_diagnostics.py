"""Evidence that the embedded nature run is a realistic, chaotic "truth" (docs/nature_run.md).

Measures, on the default store (generated first if missing, timed):
  1. store size on disk, number of times, generation time;
  2. time-mean zonal-mean u (lat × pressure) of the ``train`` span, its jet maxima → figure;
  3. a z500 map → figure;
  4. a twin experiment: two integrations from the same state, one with seeded N(0, ε²) noise on T,
     area-weighted RMSE(z500) every 6 h, exponential fit → doubling time → figure.

Usage::

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/nature_run_diagnostics.py [--store PATH]
        [--twin-days 16] [--twin-noise 0.1] [--twin-warmup 0] [--only all|store|twin] [--img docs/img]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _store_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def zonal_mean_u(ds, span: dict) -> tuple:
    """Time-mean zonal-mean u over the span's 6-hourly times: ``[level, lat]`` and the jet maxima."""
    u = ds.u_component_of_wind.sel(time=slice(span["start"], span["end"]))
    u = u.isel(time=slice(None, None, max(1, 6 // int(span["interval_hours"]))))
    ubar = u.mean(("time", "longitude")).load()
    jets = []
    for hemi, mask in (("NH", ubar.latitude > 0), ("SH", ubar.latitude < 0)):
        sub = ubar.where(mask, drop=True)
        k, j = np.unravel_index(int(np.nanargmax(sub.values)), sub.shape)
        jets.append({"hemisphere": hemi, "u_max": float(sub.values[k, j]), "level_hpa": int(sub.level[k]),
                     "lat": float(sub.latitude[j])})
    return ubar, jets, int(u.time.size)


def twin_experiment(days: float, noise_k: float, warmup_days: float = 0.0, seed: int = 123) -> dict:
    """RMSE(z500) between a control run and a run perturbed by ``noise_k`` K of seeded T noise."""
    import jax

    from aivarda.channels import ChannelLayout
    from aivarda.data.nature_run import (
        NatureRunConfig,
        _noise,
        build_model,
        initial_state,
    )

    cfg = NatureRunConfig()
    model = build_model(cfg)
    state = initial_state(model)
    steps_per_6h = round(6 * 3600 / model.dt_seconds)
    state = model.advance(state, round(4 * warmup_days) * steps_per_6h)
    cfg_noise = model.cfg.model_copy(update={"perturbation_kelvin": noise_k})
    model.cfg = cfg_noise
    twin = state.replace(temperature_variation=state.temperature_variation + _noise(model, seed))
    layout_index = ChannelLayout.fengwu69().index("z500")
    weights = cfg.grid().weights[:, None]
    hours, rmse = [0.0], []

    def z500(s) -> np.ndarray:
        return np.asarray(model.diagnose(s))[layout_index]

    rmse.append(float(np.sqrt(np.mean(weights * (z500(state) - z500(twin)) ** 2))))
    for i in range(int(days * 4)):
        state, twin = model.advance(state, steps_per_6h), model.advance(twin, steps_per_6h)
        rmse.append(float(np.sqrt(np.mean(weights * (z500(state) - z500(twin)) ** 2))))
        hours.append(6.0 * (i + 1))
    jax.clear_caches()
    hours_a, rmse_a = np.asarray(hours), np.asarray(rmse)
    saturation = float(rmse_a[-int(len(rmse_a) / 5):].mean())
    # exponential phase: after the initial adjustment, before 30 % of saturation
    start = max(int(np.argmin(rmse_a[: len(rmse_a) // 2])), 4)
    above = np.flatnonzero(rmse_a[start:] >= 0.3 * saturation)
    stop = start + (int(above[0]) if above.size else len(rmse_a) - start)
    window = list(range(start, max(stop, start + 3)))
    slope, intercept = np.polyfit(hours_a[window] / 24.0, np.log(rmse_a[window]), 1)
    return {
        "hours": hours, "rmse": rmse, "noise_k": noise_k, "saturation": saturation,
        "fit_days": [float(hours_a[window[0]] / 24), float(hours_a[window[-1]] / 24)],
        "growth_per_day": float(slope), "intercept": float(intercept),
        "doubling_days": float(np.log(2) / slope),
    }


def store_diagnostics(store: Path, img: Path, generate: bool) -> dict:
    """Size, zonal-mean u, z500 map of a store. A store still being written (the temporary sibling of
    a running generation) is measured on the times written so far (finite msl)."""
    import matplotlib
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import xarray as xr

    from aivarda.data.nature_run import NatureRunConfig, generate_nature_run

    results: dict = {}
    if not store.exists() and generate:
        t0 = time.perf_counter()
        generate_nature_run(NatureRunConfig(), store)
        results["generation_s"] = time.perf_counter() - t0
    full = xr.open_zarr(store)
    spans = json.loads(full.attrs["aivarda_spans"])
    written = np.isfinite(full.mean_sea_level_pressure.isel(latitude=0, longitude=0).values)
    ds = full.isel(time=np.flatnonzero(written))
    size = _store_size(store)
    results.update(store=str(store), size_gb=size / 1e9, times=int(full.time.size), times_written=int(written.sum()),
                   raw_gb=full.nbytes / 1e9, size_gb_full=size / 1e9 * full.time.size / max(int(written.sum()), 1),
                   last_time_written=str(ds.time.values[-1])[:16], spans=spans)

    # zonal-mean u
    ubar, jets, n_times = zonal_mean_u(ds, spans["train"])
    results["jets"], results["zonal_mean_times"] = jets, n_times
    fig, ax = plt.subplots(figsize=(7, 4))
    cs = ax.contourf(ubar.latitude, ubar.level, ubar.values, levels=np.arange(-12, 40, 3), cmap="RdBu_r", extend="both")
    ax.contour(ubar.latitude, ubar.level, ubar.values, levels=[0], colors="k", linewidths=0.8)
    ax.set_yscale("log")
    ax.set_ylim(1000, 50)
    ticks = [1000, 850, 700, 500, 300, 200, 100, 50]
    ax.set_yticks(ticks, labels=[str(t) for t in ticks])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("latitude (°N)")
    ax.set_ylabel("pressure (hPa)")
    ax.set_title(f"time-mean zonal-mean u (m/s), span 'train' ({n_times} 6-hourly times)")
    for jet in jets:
        ax.annotate(f"{jet['u_max']:.1f}", (jet["lat"], jet["level_hpa"]), ha="center", fontsize=8)
    fig.colorbar(cs, ax=ax)
    fig.tight_layout()
    fig.savefig(img / "zonal_mean_u.png", dpi=110)
    plt.close(fig)

    # z500 map
    t_map = ds.time.values[len(ds.time) // 2]
    z500 = ds.geopotential.sel(level=500, time=t_map).load()
    fig, ax = plt.subplots(figsize=(8, 4))
    cs = ax.contourf(z500.longitude, z500.latitude, z500.values / 9.80665, levels=20, cmap="viridis")
    ax.contour(z500.longitude, z500.latitude, z500.values / 9.80665, levels=20, colors="k", linewidths=0.4)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.set_title(f"z500 / g (m) at {str(t_map)[:16]}")
    fig.colorbar(cs, ax=ax)
    fig.tight_layout()
    fig.savefig(img / "z500.png", dpi=110)
    plt.close(fig)
    train = {"time": slice(spans["train"]["start"], spans["train"]["end"])}
    results["z500_temporal_std_max_m"] = float(ds.geopotential.sel(level=500, **train).std("time").max()) / 9.80665
    msl = ds.mean_sea_level_pressure.sel(**train)
    results["msl_range_hpa"] = [float(msl.min()) / 100, float(msl.max()) / 100]
    return results


def twin_figure(tw: dict, img: Path) -> None:
    import matplotlib.pyplot as plt

    d = np.asarray(tw["hours"]) / 24
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(d, np.asarray(tw["rmse"]) / 9.80665, label="RMSE(z500) / g")
    fit_d = np.linspace(*tw["fit_days"], 20)
    ax.semilogy(fit_d, np.exp(tw["intercept"] + tw["growth_per_day"] * fit_d) / 9.80665, "r--",
                label=f"fit: doubling time {tw['doubling_days']:.2f} d")
    ax.set_xlabel("days")
    ax.set_ylabel("m")
    ax.set_title(f"T42 twin run, {tw['noise_k']} K noise on T")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "twin_rmse_z500.png", dpi=110)
    plt.close(fig)


def print_table(results: dict) -> None:
    print("| quantity | value |\n|---|---|")
    if "generation_s" in results:
        print(f"| generation time | {results['generation_s'] / 60:.1f} min |")
    if "store" in results:
        r = results
        print(f"| store | {r['store']} |")
        print(f"| times written / total | {r['times_written']} / {r['times']} (last {r['last_time_written']}) |")
        print(f"| size on disk | {r['size_gb']:.2f} GB; full store ≈ {r['size_gb_full']:.2f} GB (uncompressed {r['raw_gb']:.2f} GB) |")
        for jet in r["jets"]:
            print(f"| jet max {jet['hemisphere']} ({r['zonal_mean_times']} times) | {jet['u_max']:.1f} m/s at "
                  f"{jet['lat']:.1f}°, {jet['level_hpa']} hPa |")
        print(f"| z500 temporal std max | {r['z500_temporal_std_max_m']:.0f} m |")
        print(f"| msl range | {r['msl_range_hpa'][0]:.0f}–{r['msl_range_hpa'][1]:.0f} hPa |")
    if "twin" in results:
        tw = results["twin"]
        print(f"| twin: noise | {tw['noise_k']} K on T |")
        print(f"| twin: doubling time | {tw['doubling_days']:.2f} days (fit over days {tw['fit_days'][0]:.1f}–{tw['fit_days'][1]:.1f}) |")
        print(f"| twin: RMSE(z500) at day {tw['hours'][-1] / 24:g} | {tw['rmse'][-1] / 9.80665:.0f} m |")
        print(f"| twin: wall time | {tw['seconds']:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=None, help="default: the default nature run (generated if missing)")
    parser.add_argument("--img", type=Path, default=Path("docs/img"))
    parser.add_argument("--twin-days", type=float, default=16.0)
    parser.add_argument("--twin-noise", type=float, default=0.1, help="K")
    parser.add_argument("--twin-warmup", type=float, default=0.0, help="days run from the shipped state first")
    parser.add_argument("--only", choices=("all", "store", "twin"), default="all")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    from aivarda.data.nature_run import NatureRunConfig, default_store_path

    args.img.mkdir(parents=True, exist_ok=True)
    out_json = args.img / "nature_run_diagnostics.json"
    results: dict = json.loads(out_json.read_text()) if out_json.exists() else {}
    if args.only in ("all", "store"):
        store = args.store or default_store_path(NatureRunConfig())
        results.update(store_diagnostics(store, args.img, generate=args.store is None))
    if args.only in ("all", "twin"):
        t0 = time.perf_counter()
        tw = twin_experiment(args.twin_days, args.twin_noise, args.twin_warmup)
        tw["seconds"] = time.perf_counter() - t0
        results["twin"] = tw
        twin_figure(tw, args.img)
    out_json.write_text(json.dumps(results, indent=1))
    print_table(results)


if __name__ == "__main__":
    main()
