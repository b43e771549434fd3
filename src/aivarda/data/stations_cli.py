"""``aivarda data stations NETWORK.yaml --format ioda|bufr --out DIR --start T --end T``: the
reports of a station network (:mod:`aivarda.observations.stations`) drawn from the truth, one
observation file per report time (``{time:%Y%m%d%H}.nc4`` or ``.bufr``), for cycling with
``observations: {source: files, path: DIR/{time:%Y%m%d%H}.nc4}`` (docs/stations.md).

Times ``start, start + interval, … ≤ end`` at which some station reports get a file; the network's
sites go to ``stations.csv`` and what was written (files, report and observation counts, the
network config) to ``manifest.json``. An existing file is an error unless ``--force``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from aivarda.config import load_config, parse_duration
from aivarda.errors import ConfigError, DataError
from aivarda.files import atomic_write_json
from aivarda.observations.stations import StationNetworkConfig, generate_network, reporting, simulate_station_table
from aivarda.timeaxis import to_timedelta64

SUFFIX = {"ioda": ".nc4", "bufr": ".bufr"}


def report_times(start: str, end: str, interval: str) -> np.ndarray:
    """``start, start + interval, … ≤ end`` (datetime64[s])."""
    try:
        t0, t1 = np.datetime64(start, "s"), np.datetime64(end, "s")
        step = to_timedelta64(parse_duration(interval)).astype("timedelta64[s]")
    except ValueError as exc:
        raise ConfigError(f"--start/--end/--interval: {exc}") from None
    if t1 < t0 or step <= np.timedelta64(0, "s"):
        raise ConfigError(f"--end ({end}) must not be before --start ({start}) and --interval must be positive")
    return np.arange(t0, t1 + np.timedelta64(1, "s"), step)


def write_station_files(cfg: StationNetworkConfig, out: Path, fmt: str, times: np.ndarray, *,
                        force: bool = False, source: Any = None) -> dict[str, Any]:
    """Write the files (see the module docstring) from ``source`` (default: ``cfg.data``); returns the
    manifest."""
    from aivarda.data.sources import open_source
    from aivarda.observations.bufr import write_bufr
    from aivarda.observations.ioda import write_ioda

    if fmt not in SUFFIX:
        raise ConfigError(f"--format: expected one of {sorted(SUFFIX)}, got {fmt!r}")
    times = np.asarray([t for t in times if reporting(cfg, t)], dtype="datetime64[s]")
    paths = [out / f"{t.item():%Y%m%d%H}{SUFFIX[fmt]}" for t in times]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise DataError(f"{existing[0]}: exists ({len(existing)} of the {len(paths)} files); use --force to replace them")
    source = source if source is not None else open_source(cfg.data)
    missing = [t for t in times.astype("datetime64[ns]") if t not in source.times]
    if missing:
        raise DataError(f"{getattr(source, 'path', 'data')}: {len(missing)} report times are not in the truth, "
                        f"first {np.datetime_as_string(missing[0], 'm')}")
    grid, layout = source.geometry.grid, source.geometry.layout
    network = generate_network(cfg)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for t, path in zip(times, paths, strict=True):
        table = simulate_station_table(cfg, network, source.state(t.astype("datetime64[ns]")), t, grid, layout)
        if fmt == "ioda":
            write_ioda(table, path, analysis_time=t, window_offsets=[np.timedelta64(0, "s")], overwrite=force)
        else:
            write_bufr(table, path, overwrite=force)
        files.append({"file": path.name, "time": str(t), "observations": len(table),
                      "reports": len({(s, bool(np.isfinite(p))) for s, p in zip(table.station.tolist(), table.pressure.tolist(), strict=True)})})
    network.write_csv(out / "stations.csv")
    manifest = {"format": fmt, "network": cfg.model_dump(mode="json"), "stations": len(network),
                "land_density_ratio": network.density_ratio(), "files": files}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, StationNetworkConfig)
    times = report_times(args.start, args.end, args.interval)
    manifest = write_station_files(cfg, Path(args.out), args.format, times, force=args.force)
    n_obs = sum(f["observations"] for f in manifest["files"])
    print(f"{len(manifest['files'])} {args.format} files, {n_obs} observations, {manifest['stations']} stations "
          f"(land density ×{manifest['land_density_ratio']:.1f}) in {args.out}")
    return 0
