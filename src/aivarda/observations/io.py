"""ObsSet ⇄ netCDF-4 (HDF5) with IODA-like groups, via xarray + h5netcdf.

Layout (one dimension ``Location`` of length N)::

    MetaData/latitude         float64  degrees north
    MetaData/longitude        float64  degrees east [0, 360)
    MetaData/timeOffset       float64  hours from the analysis time
    MetaData/timeIndex        int64    window state 0 … T−1
    MetaData/channelName      string   e.g. "z500", "t2m" (index resolved against a ChannelLayout on load)
    MetaData/pressure         float64  hPa, NaN for channel observations
    MetaData/withheld         int8     1 = kept for verification
    ObsValue/value            float    y
    ObsError/value            float    σ_o
    PreQC/value               int8     QCFlag (0 = good)

Channel names (not indices) are stored, so a file can be read into another layout that has
those channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from aivarda.channels import ChannelLayout
from aivarda.errors import AivardaError, ObservationError
from aivarda.observations.obsset import ObsSet

DIM = "Location"
_META = {
    "latitude": ("lat", "degrees_north"),
    "longitude": ("lon", "degrees_east"),
    "timeOffset": ("time_offset_hours", "hours"),
    "timeIndex": ("time_index", "1"),
    "pressure": ("level", "hPa"),
}
_GROUPS = {"ObsValue": "value", "ObsError": "error_std", "PreQC": "qc"}


def save_obs(obs: ObsSet, path: str | Path, layout: ChannelLayout) -> Path:
    """Write ``obs`` to ``path`` (netCDF-4 groups, replaces an existing file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obs = obs.to("cpu")
    meta = {key: ((DIM,), getattr(obs, field).numpy(), {"units": units}) for key, (field, units) in _META.items()}
    meta["channelName"] = ((DIM,), np.asarray(obs.channel_names(layout), dtype=object), {})
    meta["withheld"] = ((DIM,), obs.withheld.numpy().astype(np.int8), {})
    xr.Dataset(
        meta, attrs={"title": "aivarda observations", "channel_layout": json.dumps(layout.to_dict()), "n_obs": len(obs)}
    ).to_netcdf(path, mode="w", engine="h5netcdf", group="MetaData")
    for group, field in _GROUPS.items():
        xr.Dataset({"value": ((DIM,), getattr(obs, field).numpy())}).to_netcdf(
            path, mode="a", engine="h5netcdf", group=group
        )
    return path


def _open_group(path: Path, group: str) -> xr.Dataset:
    try:
        return xr.load_dataset(path, engine="h5netcdf", group=group)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ObservationError(f"{path}: not an aivarda observation file (group {group}/: {first})") from None


def load_obs(path: str | Path, layout: ChannelLayout, device: torch.device | str | None = None) -> ObsSet:
    """Read an observation file written by :func:`save_obs`; a malformed file raises one
    ObservationError line naming the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"{path}: observation file not found")
    meta = _open_group(path, "MetaData")
    needed = [*_META, "channelName", "withheld"]
    missing = [f"MetaData/{k}" for k in needed if k not in meta]
    groups = {g: _open_group(path, g) for g in _GROUPS}
    missing += [f"{g}/value" for g, ds in groups.items() if "value" not in ds]
    if missing:
        raise ObservationError(f"{path}: malformed observation file, missing {missing}")
    arrays = {field: meta[key].values for key, (field, _) in _META.items()}
    arrays.update({field: groups[g]["value"].values for g, field in _GROUPS.items()})
    lengths = {k: v.shape for k, v in arrays.items()}
    n = len(meta["channelName"])
    if any(s != (n,) for s in lengths.values()) or meta["withheld"].shape != (n,):
        raise ObservationError(f"{path}: malformed observation file, variables of different shapes {lengths}")
    names, inverse = np.unique(meta["channelName"].values.astype(str), return_inverse=True)
    try:
        indices = np.asarray([layout.index(str(s)) for s in names], dtype=np.int64)
    except AivardaError as exc:
        raise ObservationError(f"{path}: {exc}") from None
    channel = indices[inverse.reshape(-1)] if n else np.zeros(0, np.int64)
    arrays["withheld"] = meta["withheld"].values.astype(bool)
    return ObsSet(channel=torch.as_tensor(channel), **{k: torch.as_tensor(v) for k, v in arrays.items()}).to(
        device or "cpu"
    )
