"""CF metadata of every field file aivarda writes, and the WeatherBench2-layout datasets they hold.

One table (:data:`aivarda.channels.SURFACE_VARIABLES`, :data:`aivarda.channels.UPPER_AIR_VARIABLES`)
gives each physical variable its WB2/ERA5 name, units (UDUNITS syntax, as ERA5 writes them:
``m s**-1``), long name and CF ``standard_name``; this module turns it into attributes:

- data variables: ``units``, ``standard_name``, ``long_name``, ``short_name`` (the earth2studio name);
- coordinates (CF 1.8, found by ``cf_xarray`` as the X/Y/Z/T axes):

  ============================ ====== ================= ============================ ============
  coordinate                   axis   units             standard_name                other
  ============================ ====== ================= ============================ ============
  ``time``                     T      CF-encoded        ``time``                     ``calendar``
  ``latitude``                 Y      ``degrees_north`` ``latitude``
  ``longitude``                X      ``degrees_east``  ``longitude``
  ``level``                    Z      ``hPa``           ``air_pressure``             ``positive: down``
  ``prediction_timedelta``            ``hours`` …       ``forecast_period``          forecasts only
  ============================ ====== ================= ============================ ============

- global: ``Conventions: CF-1.8``, ``title``, ``source`` (aivarda version and git commit when
  known), ``history`` (UTC time and what wrote the file).

A field dataset is in the WB2 layout: one data variable per physical variable, named by its WB2
name, dims ``(*leading, level, latitude, longitude)`` for upper-air variables and
``(*leading, latitude, longitude)`` for surface ones, where ``leading`` is e.g. ``(time,)`` (an
analysis series), ``(state, time)`` (``states.nc``: background, analysis, truth at one time) or
``(time, prediction_timedelta)`` (a WB2 forecast store: ``time`` is the initialisation time).
:func:`fields_dataset` builds one from ``[..., C, H, W]`` arrays and :func:`channels_array` is its
inverse; :func:`write_states`/:func:`read_states` are the ``states.nc``/``last_cycle.nc`` file.

Two simplifications of strict CF: the 10 m winds and the 2 m temperature carry their height in
``long_name`` only (no scalar ``height`` coordinate), and ``state`` is a plain label dimension.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES, ChannelLayout, Variable
from aivarda.errors import DataError
from aivarda.files import atomic_write
from aivarda.grid import Grid

if TYPE_CHECKING:
    import xarray as xr

CONVENTIONS = "CF-1.8"
CALENDAR = "proleptic_gregorian"
STATE_DIM = "state"
"""The label dimension of ``states.nc``/``last_cycle.nc`` (``background``, ``analysis``, ``truth``)."""

COORDINATE_ATTRS: dict[str, dict[str, str]] = {
    "time": {"standard_name": "time", "long_name": "time", "axis": "T"},
    "latitude": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north", "axis": "Y"},
    "longitude": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east", "axis": "X"},
    "level": {"standard_name": "air_pressure", "long_name": "pressure level", "units": "hPa", "axis": "Z",
              "positive": "down"},
    "prediction_timedelta": {"standard_name": "forecast_period", "long_name": "forecast lead time"},
    STATE_DIM: {"long_name": "which state: background, analysis or truth"},
}
"""CF attributes of the coordinates (``time``'s ``units``/``calendar`` come from :func:`encode_time`,
``prediction_timedelta``'s ``units`` from :func:`encode_timedelta`)."""


def variable(short: str) -> Variable:
    """The table entry of a surface or upper-air variable by its short name (``"t2m"``, ``"z"``)."""
    var = SURFACE_VARIABLES.get(short) or UPPER_AIR_VARIABLES.get(short)
    if var is None:
        raise DataError(f"unknown variable {short!r}; expected one of {sorted(SURFACE_VARIABLES) + sorted(UPPER_AIR_VARIABLES)}")
    return var


def variable_attrs(short: str) -> dict[str, str]:
    """CF attributes of a data variable: ``units``, ``standard_name``, ``long_name``, ``short_name``."""
    var = variable(short)
    return {"units": var.units, "standard_name": var.standard_name, "long_name": var.long_name, "short_name": short}


def source_text(commit: str | None = None) -> str:
    """``aivarda 0.1.0`` or, with a known git commit, ``aivarda 0.1.0 (git 1a2b3c4…)``."""
    from aivarda import __version__

    return f"aivarda {__version__}" + (f" (git {commit})" if commit and commit != "unknown" else "")


def global_attrs(title: str, *, commit: str | None = None, history: str = "written by aivarda",
                 now: datetime | None = None) -> dict[str, str]:
    """CF global attributes: ``Conventions``, ``title``, ``source`` (:func:`source_text`) and
    ``history`` (``"<UTC time>: <history>"``)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"Conventions": CONVENTIONS, "title": title, "source": source_text(commit), "history": f"{stamp}: {history}"}


def storable_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes netCDF/Zarr can hold: strings and numbers as they are, anything else as JSON."""
    return {k: v if isinstance(v, (str, int, float, bool, np.integer, np.floating)) else json.dumps(v)
            for k, v in attrs.items()}


def encode_time(times: np.ndarray) -> tuple[np.ndarray, str]:
    """CF encoding of ``times`` (datetime64): integers and ``"<unit> since <first time>"``, in the
    coarsest of hours, minutes, seconds that holds every time exactly."""
    times = np.asarray(times, dtype="datetime64[ns]")
    t0 = times[0]
    offsets = (times - t0).astype("timedelta64[s]").astype(np.int64)
    base = np.datetime_as_string(t0, unit="s").replace("T", " ")
    unit, factor = _coarsest_unit(offsets)
    return offsets // factor, f"{unit} since {base}"


def encode_timedelta(deltas: np.ndarray) -> tuple[np.ndarray, str]:
    """CF encoding of durations (timedelta64): integers and ``"hours"``/``"minutes"``/``"seconds"``."""
    seconds = np.asarray(deltas, dtype="timedelta64[ns]").astype("timedelta64[s]").astype(np.int64)
    unit, factor = _coarsest_unit(seconds)
    return seconds // factor, unit


def _coarsest_unit(seconds: np.ndarray) -> tuple[str, int]:
    for unit, factor in (("hours", 3600), ("minutes", 60)):
        if np.all(seconds % factor == 0):
            return unit, factor
    return "seconds", 1


def _time_coord(times: np.ndarray) -> tuple[np.ndarray, dict[str, str], dict[str, str]]:
    """``(values, attrs, encoding)`` of a datetime64 ``time`` coordinate for xarray."""
    times = np.asarray(times, dtype="datetime64[ns]")
    return times, dict(COORDINATE_ATTRS["time"]), {"units": encode_time(times)[1], "calendar": CALENDAR}


def fields_dataset(x: Any, grid: Grid, layout: ChannelLayout, leading: Mapping[str, Any],
                   attrs: Mapping[str, Any] | None = None) -> xr.Dataset:
    """States ``x`` ``[*leading, C, H, W]`` (physical units; numpy or torch) as a CF dataset in the
    WB2 layout (see the module docstring). ``leading`` names the leading dims and their coordinate
    values in order (``{"time": times}``, ``{"state": [...], "time": [t]}``, ``{"time": inits,
    "prediction_timedelta": leads}``); ``datetime64`` and ``timedelta64`` coordinates are
    CF-encoded when written."""
    import xarray as xr

    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    names = list(leading)
    expected = (*(len(v) for v in leading.values()), layout.n_channels, *grid.shape)
    if arr.shape != expected:
        raise DataError(f"fields dataset: states of shape {arr.shape}, expected {expected} "
                        f"({', '.join(names)}, channel, latitude, longitude)")
    coords: dict[str, Any] = {
        "latitude": ("latitude", grid.lat.astype(np.float32), COORDINATE_ATTRS["latitude"]),
        "longitude": ("longitude", grid.lon.astype(np.float32), COORDINATE_ATTRS["longitude"]),
    }
    encodings: dict[str, dict[str, str]] = {}
    for name, values in leading.items():
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.datetime64):
            values, coord_attrs, encodings[name] = _time_coord(values)
        elif np.issubdtype(values.dtype, np.timedelta64):
            values = values.astype("timedelta64[ns]")
            coord_attrs = dict(COORDINATE_ATTRS.get(name, {}))
            encodings[name] = {"units": encode_timedelta(values)[1], "dtype": "int64"}
        else:
            coord_attrs = dict(COORDINATE_ATTRS.get(name, {}))
        coords[name] = (name, values, coord_attrs)
    if layout.upper_air:
        coords["level"] = ("level", np.asarray(layout.levels, dtype=np.int64), COORDINATE_ATTRS["level"])
    data: dict[str, Any] = {}
    for short in layout.surface + layout.upper_air:
        upper = short in layout.upper_air
        block = arr[..., layout.variable_slice(short), :, :]
        dims = (*names, "level", "latitude", "longitude") if upper else (*names, "latitude", "longitude")
        data[variable(short).wb2_name] = (dims, block if upper else block[..., 0, :, :], variable_attrs(short))
    ds = xr.Dataset(data, coords=coords, attrs=storable_attrs(attrs or {}))
    for name, enc in encodings.items():
        ds[name].encoding.update(enc)
    return ds


def channels_array(ds: xr.Dataset, layout: ChannelLayout, leading: tuple[str, ...]) -> np.ndarray:
    """The inverse of :func:`fields_dataset`: ``float32 [*leading, C, H, W]`` in ``layout``'s channel
    order, from a WB2-layout dataset (latitude and longitude in the dataset's order; a missing
    variable or level is a DataError naming it)."""
    blocks = []
    for short in layout.surface + layout.upper_air:
        name = variable(short).wb2_name
        if name not in ds.data_vars:
            raise DataError(f"dataset has no variable {name!r} (channel {short}); it has {sorted(map(str, ds.data_vars))}")
        da = ds[name]
        if short in layout.upper_air:
            missing = sorted(set(layout.levels) - set(np.asarray(da["level"].values).astype(int).tolist()))
            if missing:
                raise DataError(f"variable {name!r} lacks levels {missing} hPa")
            blocks.append(da.sel(level=list(layout.levels)).transpose(*leading, "level", "latitude", "longitude").values)
        else:
            blocks.append(da.transpose(*leading, "latitude", "longitude").values[..., None, :, :])
    return np.concatenate(blocks, axis=-3).astype(np.float32)


def write_states(path: Path, grid: Grid, layout: ChannelLayout, states: Mapping[str, Any], time: np.datetime64,
                 attrs: Mapping[str, Any]) -> None:
    """A CF netCDF (``states.nc``, ``last_cycle.nc``) of named ``[C, H, W]`` states valid at ``time``:
    the WB2 layout with leading dims ``(state, time)``, ``state`` the names (``background``,
    ``analysis``, ``truth``). ``attrs`` are the global attributes (:func:`global_attrs` and more);
    the grid is kept as ``aivarda_grid`` so a reader gets the exact grid back. Written atomically."""
    stacked = np.stack([np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
                        for x in states.values()])[:, None]
    ds = fields_dataset(stacked, grid, layout, {STATE_DIM: list(states), "time": [np.datetime64(time, "ns")]},
                        {**attrs, "aivarda_grid": grid.to_dict(), "aivarda_channels": layout.to_dict()})
    atomic_write(Path(path), lambda tmp: ds.to_netcdf(tmp, engine="h5netcdf"))


def read_states(path: Path) -> tuple[dict[str, np.ndarray], Grid, ChannelLayout, np.datetime64]:
    """The states of a :func:`write_states` file: ``({name: float32 [C, H, W]}, grid, layout, time)``."""
    import xarray as xr

    with xr.open_dataset(path, engine="h5netcdf") as ds:
        if STATE_DIM not in ds.dims or "aivarda_channels" not in ds.attrs:
            raise DataError(f"{path}: not a states file written by aivarda (no '{STATE_DIM}' dimension or "
                            f"'aivarda_channels' attribute)")
        layout = ChannelLayout.from_dict(json.loads(ds.attrs["aivarda_channels"]))
        grid = Grid.from_dict(json.loads(ds.attrs["aivarda_grid"]))
        x = channels_array(ds, layout, (STATE_DIM, "time"))[:, 0]
        names = [str(s) for s in ds[STATE_DIM].values]
        time = np.datetime64(ds["time"].values[0], "ns")
    return dict(zip(names, x, strict=True)), grid, layout, time
