"""Observation-space statistics of station reports: O−B and O−A by report type and variable, per
station departures and their maps.

Per cycle (:func:`departure_columns`): for the assimilated and the withheld (verification)
observations, per report kind (``radiosonde``: NCEP report types 120/220, ``surface``: 181/281,
``other``: any other non-zero type) and per variable (``t``, ``u``, … ``t2m``, ``msl``), the count,
mean and RMS of ``d = y − H(x)`` for ``x`` the background (``omb_…``) and the analysis (``oma_…``)
window: columns ``omb_assimilated_radiosonde_t_rms`` etc. of ``metrics.csv``. Observations without
a report type are left out (the grid simulator's).

Over a run (:func:`summarise_departures`): ``count = Σ_n N_n``, ``mean = Σ N_n m_n / Σ N_n``,
``rms = sqrt(Σ N_n r_n² / Σ N_n)`` (the RMS of every departure of the run).

Per observation (:func:`departure_record`, written by the runner with ``outputs.departures`` to
``departures/cycle_NNNNN.npz``): station id code, report type, variable channel, level, position,
O−B, O−A, QC flag, withheld. :func:`plot_station_departures` maps one cycle or the mean over
cycles of O−B per station for one variable (matplotlib), continents of the station network drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aivarda.channels import ChannelLayout
from aivarda.geometry import Geometry
from aivarda.observations.obsset import ObsSet, QCFlag
from aivarda.observations.registry import OperatorConfig, observation_operator
from aivarda.observations.stations import REPORT_KIND

LABELS = {"O-B": "omb", "O-A": "oma"}
SUBSETS = ("assimilated", "withheld")
STATS = ("count", "mean", "rms")


def report_kind(report_type: Tensor | np.ndarray) -> np.ndarray:
    """``radiosonde`` / ``surface`` / ``other`` per observation (``""`` for report type 0)."""
    rt = np.asarray(report_type.cpu() if isinstance(report_type, Tensor) else report_type).astype(np.int64)
    return np.asarray(["" if r == 0 else REPORT_KIND.get(r, "other") for r in rt.tolist()], dtype=object)


def _departures(obs: ObsSet, geometry: Geometry, windows: dict[str, Tensor], operator: OperatorConfig) -> dict[str, np.ndarray]:
    if len(obs) == 0:
        return {label: np.zeros(0) for label in windows}
    first = next(iter(windows.values()))
    H = observation_operator(operator, obs, geometry, tuple(first.shape))
    with torch.no_grad():
        return {label: (obs.value.double() - H(w).double()).cpu().numpy() for label, w in windows.items()}


def departure_columns(obs: ObsSet, geometry: Geometry, windows: dict[str, Tensor], operator: OperatorConfig) -> dict[str, float]:
    """The flat per-cycle columns of the module docstring (empty when no observation has a report type)."""
    out: dict[str, float] = {}
    if len(obs) == 0 or not bool((obs.report_type != 0).any()):
        return out
    variables = np.asarray([geometry.layout.channels[c].variable.short for c in obs.channel.tolist()], dtype=object)
    kinds = report_kind(obs.report_type)
    good = (obs.qc == QCFlag.GOOD).cpu().numpy()
    withheld = obs.withheld.cpu().numpy()
    for subset, mask in (("assimilated", good & ~withheld), ("withheld", good & withheld)):
        sub = obs.select(torch.as_tensor(mask, device=obs.device))
        d = _departures(sub, geometry, windows, operator)
        for kind in sorted({k for k in kinds[mask] if k}):
            for var in sorted(set(variables[mask & (kinds == kind)])):
                rows = (kinds[mask] == kind) & (variables[mask] == var)
                for label, values in d.items():
                    x = values[rows]
                    prefix = f"{LABELS[label]}_{subset}_{kind}_{var}"
                    out[f"{prefix}_count"] = float(x.size)
                    out[f"{prefix}_mean"] = float(x.mean())
                    out[f"{prefix}_rms"] = float(np.sqrt((x**2).mean()))
    return out


def summarise_departures(rows: list[dict[str, str]]) -> dict[str, Any]:
    """``{label: {subset: {kind: {variable: {count, mean, rms}}}}}`` over the cycles of a run."""
    if not rows:
        return {}
    columns = list(dict.fromkeys(c for r in rows for c in r if c.endswith("_count") and c.split("_")[0] in LABELS.values()))
    out: dict[str, Any] = {}
    for col in columns:
        parts = col[: -len("_count")].split("_", 3)
        if len(parts) != 4 or parts[1] not in SUBSETS:
            continue
        label, subset, kind, var = parts
        if kind not in ("radiosonde", "surface", "other"):
            continue
        prefix = col[: -len("_count")]
        n = np.array([_float(r.get(f"{prefix}_count")) for r in rows])
        m = np.array([_float(r.get(f"{prefix}_mean")) for r in rows])
        s = np.array([_float(r.get(f"{prefix}_rms")) for r in rows])
        ok = np.isfinite(n) & (n > 0) & np.isfinite(m) & np.isfinite(s)
        total = float(n[ok].sum())
        if total == 0:
            continue
        label_name = {v: k for k, v in LABELS.items()}[label]
        out.setdefault(label_name, {}).setdefault(subset, {}).setdefault(kind, {})[var] = {
            "count": int(total),
            "mean": float((n[ok] * m[ok]).sum() / total),
            "rms": float(math.sqrt((n[ok] * s[ok] ** 2).sum() / total)),
        }
    return out


def _float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def format_departures(name: str, summary: dict[str, Any]) -> list[str]:
    """Table lines: per kind and variable, assimilated O−B / O−A RMS and withheld O−B / O−A RMS."""
    if not summary:
        return []
    lines = ["", f"{name}: O−B / O−A RMS by report type (count; assimilated | withheld)"]
    keys = sorted({(k, v) for sub in summary.get("O-B", {}).values() for k, vs in sub.items() for v in vs})
    for kind, var in keys:
        cells = []
        for subset in SUBSETS:
            b = summary.get("O-B", {}).get(subset, {}).get(kind, {}).get(var)
            a = summary.get("O-A", {}).get(subset, {}).get(kind, {}).get(var)
            cells.append("-" if b is None else f"{b['rms']:.4g} / {a['rms']:.4g} ({b['count']})")
        lines.append(f"  {kind:<10} {var:<5} {cells[0]:>32} | {cells[1]:<32}")
    return lines


# ------------------------------------------------------------------------------ per station
def departure_record(obs: ObsSet, geometry: Geometry, windows: dict[str, Tensor], operator: OperatorConfig) -> dict[str, np.ndarray]:
    """Per observation with a station id (QC-valid ones; invalid positions cannot be mapped):
    arrays ``station, report_type, channel, level, lat, lon, time_index, omb, oma, qc, withheld``."""
    keep = (obs.station != 0) & (obs.qc != QCFlag.INVALID)
    sub = obs.select(keep)
    d = _departures(sub, geometry, windows, operator)
    return {
        "station": sub.station.cpu().numpy(), "report_type": sub.report_type.cpu().numpy(),
        "channel": sub.channel.cpu().numpy().astype(np.int32), "level": sub.level.cpu().numpy().astype(np.float32),
        "lat": sub.lat.cpu().numpy().astype(np.float32), "lon": sub.lon.cpu().numpy().astype(np.float32),
        "time_index": sub.time_index.cpu().numpy().astype(np.int16),
        "omb": d.get("O-B", np.zeros(0)).astype(np.float32), "oma": d.get("O-A", np.zeros(0)).astype(np.float32),
        "qc": sub.qc.cpu().numpy(), "withheld": sub.withheld.cpu().numpy(),
    }


def write_departures(path: Path, record: dict[str, np.ndarray]) -> Path:
    """``record`` as a compressed ``.npz`` (atomically)."""
    from aivarda.files import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **record)

    atomic_write(path, write)
    return path


def station_means(files: list[Path], channels: list[int], label: str = "omb") -> dict[str, np.ndarray]:
    """Per station (QC-good observations of ``channels``): mean of ``label`` over the files,
    count, position and whether it is withheld."""
    acc: dict[int, list[float]] = {}
    for f in files:
        with np.load(f) as z:
            ok = np.isin(z["channel"], channels) & (z["qc"] == int(QCFlag.GOOD))
            for s, la, lo, w, v in zip(z["station"][ok].tolist(), z["lat"][ok].tolist(), z["lon"][ok].tolist(),
                                       z["withheld"][ok].tolist(), z[label][ok].tolist(), strict=True):
                a = acc.setdefault(s, [0.0, 0.0, la, lo, float(w)])
                a[0] += v
                a[1] += 1
    ids = np.array(sorted(acc), dtype=np.int64)
    rows = np.array([acc[s] for s in ids.tolist()]).reshape(-1, 5)
    return {"station": ids, "mean": rows[:, 0] / np.maximum(rows[:, 1], 1), "count": rows[:, 1],
            "lat": rows[:, 2], "lon": rows[:, 3], "withheld": rows[:, 4] > 0}


def plot_station_departures(run_dir: Path, out: Path, variable: str, channel_names: Sequence[str], cycle: int | None = None,
                            label: str = "omb", continents: Any = None) -> Path | None:
    """Map of the per-station O−B (``label="oma"``: O−A) of ``variable`` (all its levels; the run's
    channels are ``channel_names``) for one
    ``cycle`` or the mean over the run (``None``): filled circles assimilated, squares withheld.
    Returns the PNG, or ``None`` when the run has no departures of that variable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aivarda.observations.stations import DEFAULT_CONTINENTS

    folder = Path(run_dir) / "departures"
    files = sorted(folder.glob("cycle_*.npz")) if cycle is None else [folder / f"cycle_{cycle:05d}.npz"]
    files = [f for f in files if f.is_file()]
    channels = [c for c, name in enumerate(channel_names) if ChannelLayout.parse(name)[0] == variable]
    if not files or not channels:
        return None
    s = station_means(files, channels, label)
    if s["station"].size == 0:
        return None
    fig, ax = plt.subplots(figsize=(10, 5))
    for box in continents or DEFAULT_CONTINENTS:
        lo, hi = box.lon_min % 360.0, box.lon_max % 360.0
        spans = [(lo, hi)] if lo < hi else [(lo, 360.0), (0.0, hi)]
        for a, b in spans:
            ax.add_patch(plt.Rectangle((a, box.lat_min), b - a, box.lat_max - box.lat_min, fill=True,
                                       facecolor="0.92", edgecolor="0.6", lw=0.5))
    vmax = float(np.nanpercentile(np.abs(s["mean"]), 98)) or 1.0
    for held, marker in ((False, "o"), (True, "s")):
        m = s["withheld"] == held
        sc = ax.scatter(np.mod(s["lon"][m], 360.0), s["lat"][m], c=s["mean"][m], cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                        s=14 if held else 10, marker=marker, edgecolors="k" if held else "none", linewidths=0.3,
                        label="withheld" if held else "assimilated")
    ax.set_xlim(0, 360)
    ax.set_ylim(-90, 90)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    what = {"omb": "O−B", "oma": "O−A"}[label]
    when = f"cycle {cycle}" if cycle is not None else f"mean over {len(files)} cycles"
    ax.set_title(f"{what} of {variable} per station, {when}")
    ax.legend(loc="lower left", fontsize="small")
    fig.colorbar(sc, ax=ax, shrink=0.8, label=f"{what} {variable}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out
