"""``aivarda data describe STORE``: what a WeatherBench2-layout store holds.

Channels (names, units), grid (kind, shape), time axis (range, count, intervals, spans), the store's
fingerprints (:mod:`aivarda.data.fingerprint`: the trajectory with its origin, and the content) and
per-channel statistics (area-weighted mean/std, min/max and the std of 6-hour differences)
estimated on a few evenly spread times so that big stores stay quick to describe.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import numpy as np

from aivarda.data.fingerprint import store_identity
from aivarda.data.sources import Wb2ZarrSource, format_time, store_layout
from aivarda.data.stats import summarise
from aivarda.tables import format_table

DESCRIBE_SAMPLES = 24
"""Sample times used for the statistics of ``describe``."""


def _finite(v: float) -> float | None:
    return None if math.isnan(v) else v


def describe_store(path: Any, max_samples: int = DESCRIBE_SAMPLES, progress: bool = False) -> dict[str, Any]:
    """Everything ``describe`` prints, as a JSON-serialisable dict."""
    source = Wb2ZarrSource(path, layout=store_layout(path))
    times = source.times
    intervals = sorted({float(h) for h in np.diff(times) / np.timedelta64(1, "h")}) if times.size > 1 else []
    summary = summarise(source, diff_hours=6, max_samples=max_samples, progress=progress, require_pairs=False)
    st = summary.stats
    identity = store_identity(source)
    channels = []
    for k, ch in enumerate(source.layout.channels):
        channels.append(
            {
                "channel": ch.name,
                "variable": ch.variable.wb2_name,
                "units": ch.units,
                "mean": float(st.mean[k]),
                "std": float(st.std[k]),
                "min": float(summary.minimum[k]),
                "max": float(summary.maximum[k]),
                "diff6h_std": _finite(float(st.diff_std[k])),
            }
        )
    return {
        "store": str(source.path),
        "source": source.attrs.get("source"),
        "grid": {**source.grid.to_dict(), "lat_range": [float(source.grid.lat[0]), float(source.grid.lat[-1])]},
        "layout": source.layout.to_dict(),
        "n_channels": len(source.layout),
        "time": {
            "start": format_time(times[0]),
            "end": format_time(times[-1]),
            "n_times": int(times.size),
            "intervals_hours": intervals,
        },
        "spans": source.spans,
        "fingerprint": {
            "trajectory": identity.fingerprint,
            "origin": None if identity.origin is None else format_time(identity.origin),
            "content": identity.content,
        },
        "statistics_samples": st.n_samples,
        "channels": channels,
    }


def main(args: argparse.Namespace) -> int:
    """``aivarda data describe STORE [--json]``."""
    info = describe_store(args.store, progress=not args.json)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    grid, time = info["grid"], info["time"]
    print(f"store     {info['store']}" + (f"  ({info['source']})" if info["source"] else ""))
    north, south = grid["lat_range"]
    poles = "" if grid.get("poles", True) else " without poles"
    print(f"grid      {grid['kind']} {grid['nlat']}×{grid['nlon']}{poles} (lat {north:.3f} … {south:.3f})")
    levels = info["layout"]["levels"]
    print(
        f"channels  {info['n_channels']}: surface {info['layout']['surface']}, upper-air {info['layout']['upper_air']}"
        + (f" on {len(levels)} levels {levels} hPa" if levels else "")
    )
    every = ", ".join(f"{h:g}" for h in time["intervals_hours"]) or "-"
    print(f"time      {time['start']} … {time['end']}, {time['n_times']} times, every {every} h")
    for name, span in info["spans"].items():
        print(f"  span {name}: {span['start']} … {span['end']} every {span['interval_hours']} h")
    fp = info["fingerprint"]
    origin = f" (origin {fp['origin']})" if fp["origin"] else ""
    print(f"identity  trajectory {fp['trajectory']}{origin}, content {fp['content']}")
    print(f"statistics over {info['statistics_samples']} sample times (area-weighted):")
    print(format_table(info["channels"], ["channel", "units", "mean", "std", "min", "max", "diff6h_std"]))
    return 0
