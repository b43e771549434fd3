"""What a cycling run writes: metrics tables (CSV and netCDF), forecast scores, the last cycle's
states and, optionally, every analysis/background in the WeatherBench2 Zarr layout and every
scored forecast in the WeatherBench2 forecast layout. Every field file carries the CF metadata of
:mod:`aivarda.data.cf` (see ``docs/outputs.md``).

The metrics row of a cycle is *wide* (one row per cycle):

- ``cycle``, ``time``, ``method``;
- ``bg_wrmse_<ch>``, ``ana_wrmse_<ch>``, ``bg_bias_<ch>``, ``ana_bias_<ch>`` for every channel
  (latitude-weighted, :mod:`aivarda.evaluation.metrics`), ``bg_nrmse``/``ana_nrmse`` (channel mean
  of RMSE/σ_clim);
- with the baselines of :func:`aivarda.evaluation.metrics.baseline_scores`: ``clim_wrmse_<ch>``,
  ``pers_wrmse_<ch>`` (RMSE of the climatological mean state and of persistence of the truth one
  cycle earlier), ``sigma_clim_<ch>`` (σ_clim, the normaliser of the ``*_nrmse`` columns),
  ``clim_nrmse``, ``pers_nrmse``;
- ``obs_<flag>`` counts, and ``{omb,oma}_{assimilated,withheld}_{count,mean,rms,normalised_rms}``
  (observation space, O−B and O−A);
- ``min_iterations``, ``min_J_initial``, ``min_J_final``, ``min_converged``, ``min_fallback``;
- ``b_<name>``: numbers a B reports about its per-cycle update (e.g. ``b_trainable_params``,
  ``b_finetune_loss_last`` of a fine-tuned VAE, :class:`~aivarda.background.transforms.ReportingTransform`);
- ``wall_forecast``, ``wall_observations``, ``wall_b_update`` (the per-cycle update of B from the
  ensemble), ``wall_minimisation`` (the analysis), ``wall_io``, ``wall_total`` (s).

``metrics.nc`` holds the same numbers: per-channel scores (and baselines) as ``[cycle, channel]`` arrays, the rest
as ``[cycle]`` (the CSV is rewritten after every cycle, the netCDF files at the end of a run). Forecast scores (forecast mode) go to ``forecast_scores.csv`` (one row per
forecast and lead, ``rmse_<ch>`` columns) and ``forecasts.nc`` (``rmse [init, lead, channel]``).
Both netCDF files carry the CF global attributes and ``axis: T`` on their time coordinates.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aivarda.channels import ChannelLayout
from aivarda.data.cf import COORDINATE_ATTRS, global_attrs, write_states
from aivarda.files import atomic_write, atomic_write_text
from aivarda.grid import Grid

__all__ = ["StateSeries", "forecast_rows", "metrics_row", "write_metrics", "write_states"]

PER_CHANNEL = ("bg_wrmse", "ana_wrmse", "bg_bias", "ana_bias")
BASELINE_PER_CHANNEL = ("clim_wrmse", "pers_wrmse", "sigma_clim")
"""Per-channel columns of the baselines (present when the runner passes ``baselines``)."""
BASELINE_SCALARS = ("clim_nrmse", "pers_nrmse")
WALL_STAGES = ("forecast", "observations", "b_update", "minimisation", "io")


def metrics_row(
    cycle: int,
    time: np.datetime64,
    method: str,
    scores: dict[str, Any],
    counts: dict[str, int],
    obs_space: dict[str, Any],
    minimizer: dict[str, Any],
    wall: dict[str, float],
    baselines: dict[str, Any] | None = None,
    background_error: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The wide metrics row of one cycle (see the module docstring); ``baselines`` is the result of
    :func:`aivarda.evaluation.metrics.baseline_scores` for the cycle (None: no baseline columns),
    ``background_error`` what the B reports about its update (``b_<name>`` columns)."""
    row: dict[str, Any] = {"cycle": cycle, "time": str(np.datetime64(time, "s")), "method": method}
    for key in PER_CHANNEL:
        row.update({f"{key}_{ch}": v for ch, v in scores[key].items()})
    row["bg_nrmse"] = scores["normalised_wrmse"]["background"]
    row["ana_nrmse"] = scores["normalised_wrmse"]["analysis"]
    if baselines is not None:
        for key in BASELINE_PER_CHANNEL:
            row.update({f"{key}_{ch}": v for ch, v in baselines.get(key, {}).items()})
        row.update({key: baselines[key] for key in BASELINE_SCALARS if key in baselines})
    row.update({f"obs_{k}": v for k, v in counts.items()})
    for subset in ("assimilated", "withheld"):
        for label, prefix in (("O-B", "omb"), ("O-A", "oma")):
            stats = obs_space.get(subset, {}).get(label, {"count": 0})
            for stat in ("count", "mean", "rms", "normalised_rms"):
                row[f"{prefix}_{subset}_{stat}"] = stats.get(stat, math.nan)
    row.update({f"min_{k}": (math.nan if v is None else v) for k, v in minimizer.items()})
    row.update({f"b_{k}": float(v) for k, v in (background_error or {}).items()})
    row.update({f"wall_{k}": wall.get(k, 0.0) for k in WALL_STAGES})
    row["wall_total"] = wall.get("total", sum(wall.get(k, 0.0) for k in WALL_STAGES))
    return row


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:  # the union of the columns (a run resumed by a newer version may add some), empty where absent
        fields = list(dict.fromkeys(col for row in rows for col in row))
        writer = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def forecast_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (forecast, lead): ``cycle, init_time, lead_hours, rmse_<ch>…``."""
    rows = []
    for rec in records:
        fc = rec.get("forecast")
        if not fc:
            continue
        for i, lead in enumerate(fc["lead_hours"]):
            rows.append({"cycle": rec["row"]["cycle"], "init_time": rec["row"]["time"], "lead_hours": lead,
                         **{f"rmse_{ch}": v[i] for ch, v in fc["rmse"].items()}})
    return rows


def write_metrics(out: Path, records: list[dict[str, Any]], layout: ChannelLayout, netcdf: bool = True,
                  attrs: dict[str, Any] | None = None) -> None:
    """``metrics.csv`` and, if any forecast was scored, ``forecast_scores.csv``; with ``netcdf`` also
    ``metrics.nc`` and ``forecasts.nc`` (the runner writes those at the end of a run), whose global
    attributes are ``attrs`` (default: :func:`aivarda.data.cf.global_attrs`)."""
    import xarray as xr

    rows = [r["row"] for r in records]
    atomic_write_text(out / "metrics.csv", _csv_text(rows))
    frows = forecast_rows(records)
    if frows:
        atomic_write_text(out / "forecast_scores.csv", _csv_text(frows))
    if not rows or not netcdf:
        return
    names = list(layout.names)
    columns = list(dict.fromkeys(col for row in rows for col in row))
    keys = [*PER_CHANNEL, *(k for k in BASELINE_PER_CHANNEL if f"{k}_{names[0]}" in columns)]
    data: dict[str, Any] = {
        key: (("cycle", "channel"),
              np.array([[r.get(f"{key}_{ch}", math.nan) for ch in names] for r in rows], dtype=np.float64))
        for key in keys
    }
    per_channel_cols = {f"{k}_{ch}" for k in keys for ch in names}
    for col in columns:
        if col in per_channel_cols or col in ("cycle", "time", "method"):
            continue
        data[col] = (("cycle",), np.array([float(r.get(col, math.nan)) for r in rows], dtype=np.float64))
    attrs = attrs if attrs is not None else global_attrs("aivarda cycling scores")
    ds = xr.Dataset(
        data,
        coords={"cycle": [r["cycle"] for r in rows], "channel": names,
                "time": ("cycle", np.array([r["time"] for r in rows], dtype="datetime64[ns]"), COORDINATE_ATTRS["time"])},
        attrs={**attrs, "method": rows[0]["method"]},
    )
    atomic_write(out / "metrics.nc", lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))
    if frows:
        fcs = [r for r in records if r.get("forecast")]
        leads = sorted({lead for r in fcs for lead in r["forecast"]["lead_hours"]})
        rmse = np.full((len(fcs), len(leads), len(names)), np.nan)
        for i, rec in enumerate(fcs):
            for j, lead in enumerate(rec["forecast"]["lead_hours"]):
                rmse[i, leads.index(lead)] = [rec["forecast"]["rmse"][ch][j] for ch in names]
        fds = xr.Dataset(
            {"rmse": (("init", "lead_hours", "channel"), rmse)},
            coords={"init": [r["row"]["cycle"] for r in fcs], "lead_hours": leads, "channel": names,
                    "init_time": ("init", np.array([r["row"]["time"] for r in fcs], dtype="datetime64[ns]"),
                                  {**COORDINATE_ATTRS["time"], "long_name": "forecast initialisation time"})},
            attrs={**attrs, "method": rows[0]["method"]},
        )
        atomic_write(out / "forecasts.nc", lambda tmp: fds.to_netcdf(tmp, engine="h5netcdf"))


class StateSeries:
    """States at the cycle times in a WB2-layout Zarr store (:class:`~aivarda.data.zarr_writer.ZarrStateWriter`),
    created on the first use and reopened on resume (writing a time index again overwrites it).
    With ``leads`` it is a WB2 forecast store: ``times`` are the initialisation times and
    :meth:`write` takes the lead index."""

    def __init__(self, path: Path, grid: Grid, layout: ChannelLayout, times: np.ndarray, attrs: dict[str, Any],
                 leads: np.ndarray | None = None) -> None:
        from aivarda.data.zarr_writer import ZarrStateWriter, open_state_arrays

        self.path, self.grid, self.layout, self.times = Path(path), grid, layout, np.asarray(times, "datetime64[ns]")
        if not self.path.exists():  # created beside, then renamed: never half-made
            import shutil

            tmp = self.path.with_name(f".{self.path.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            with ZarrStateWriter(tmp, grid, layout, self.times, attrs, leads=leads):
                pass
            tmp.rename(self.path)
        self._arrays = open_state_arrays(self.path, layout)

    def write(self, index: int, state: torch.Tensor, lead: int | None = None) -> None:
        """Write ``state`` ``[C, H, W]`` at time index ``index`` (and lead index ``lead``)."""
        from aivarda.data.zarr_writer import write_state

        write_state(self._arrays, self.layout, self.grid, index, state.detach().to("cpu", torch.float32).numpy(), lead)
