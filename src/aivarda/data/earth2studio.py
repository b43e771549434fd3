"""Adapter to earth2studio's field arrays: ``xr.DataArray`` with dims ``(time, variable, lat, lon)``.

earth2studio's data sources return one DataArray of every requested variable at the requested
times: dims ``time`` (datetime64), ``variable`` (names such as ``u10m``, ``v10m``, ``t2m``,
``msl``, ``sp``, ``tcwv``, ``z500``, ``t850``, ``q700``, ``u250``), ``lat`` (degrees north, their
global sources run 90 → −90) and ``lon`` (degrees east, 0 … 360). An aivarda state ``[C, H, W]``
holds the same fields in the channel order of a :class:`~aivarda.channels.ChannelLayout`, on a
:class:`~aivarda.grid.Grid` whose latitudes run N → S, in the same units (ERA5's: geopotential in
m² s⁻², pressures in Pa, relative humidity in %).

Variable names: aivarda's channel names *are* earth2studio's (its ``WB2Lexicon``: surface
variables by name, upper-air ones as ``<variable><level in hPa>``), so :data:`EARTH2STUDIO_RENAMES`
maps no channel (:func:`earth2studio_name` is the identity); it is kept as a table so that a channel whose names
differ is added in one place. Example::

    da = to_earth2studio(x, grid, layout, times)      # x [T, C, H, W] → DataArray (time, variable, lat, lon)
    x2, times2 = from_earth2studio(da, layout, grid)   # and back (any variable order, lat either way up)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from aivarda.channels import ChannelLayout
from aivarda.errors import DataError
from aivarda.grid import Grid

if TYPE_CHECKING:
    import xarray as xr

DIMS = ("time", "variable", "lat", "lon")
"""earth2studio's dims of a field array."""


EARTH2STUDIO_RENAMES: Mapping[str, str] = {}
"""Channels whose earth2studio name differs from aivarda's (none today: aivarda names its channels
as earth2studio does)."""


def earth2studio_name(channel: str) -> str:
    """earth2studio's name of an aivarda channel (``"z500" → "z500"``, ``"t2m" → "t2m"``); a name
    that is not a channel is a DataError."""
    ChannelLayout.parse(channel)  # validates the name
    return EARTH2STUDIO_RENAMES.get(channel, channel)


def _names(layout: ChannelLayout) -> list[str]:
    return [earth2studio_name(ch) for ch in layout.names]


def to_earth2studio(x: torch.Tensor | np.ndarray, grid: Grid, layout: ChannelLayout,
                    times: Sequence[Any] | np.ndarray) -> xr.DataArray:
    """States ``x`` ``[T, C, H, W]`` (or one state ``[C, H, W]`` with one time) valid at ``times`` as
    earth2studio's ``DataArray (time, variable, lat, lon)``, ``float32``, latitudes N → S as
    ``grid``'s (units: those of the layout's channels, the same as earth2studio's)."""
    import xarray as xr

    arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    times = np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))
    if arr.ndim == 3:
        arr = arr[None]
    expected = (times.size, layout.n_channels, *grid.shape)
    if arr.shape != expected:
        raise DataError(f"to_earth2studio: states of shape {arr.shape}, expected {expected} (time, channel, lat, lon)")
    names = _names(layout)
    return xr.DataArray(
        arr, dims=DIMS, coords={"time": times, "variable": np.array(names), "lat": grid.lat, "lon": grid.lon},
    )


def from_earth2studio(da: xr.DataArray, layout: ChannelLayout, grid: Grid | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """An earth2studio ``DataArray (time, variable, lat, lon)`` as aivarda states: ``(float32 [T, C,
    H, W] in layout's channel order, times datetime64[ns])``. Variables may come in any order (extra
    ones are ignored) and latitudes either way up; longitudes −180 … 180 are wrapped to 0 … 360. With
    ``grid`` the coordinates must match it (within 1e-4°); without, the grid is inferred
    (:meth:`aivarda.grid.Grid.from_coords`) and only its orientation is applied."""
    missing_dims = [d for d in DIMS if d not in da.dims]
    if missing_dims or da.ndim != 4:
        raise DataError(f"earth2studio array: dims {tuple(da.dims)}, expected {DIMS}")
    da = da.transpose(*DIMS)
    have = [str(v) for v in da["variable"].values]
    names = _names(layout)
    missing = [n for n in names if n not in have]
    if missing:
        raise DataError(f"earth2studio array: variables {missing} of the layout are missing; it has {have}")
    lat = np.asarray(da["lat"].values, dtype=np.float64)
    lon = np.mod(np.asarray(da["lon"].values, dtype=np.float64), 360.0)
    lat_order, lon_order = np.argsort(-lat, kind="stable"), np.argsort(lon, kind="stable")
    target = grid if grid is not None else Grid.from_coords(lat[lat_order], lon[lon_order])
    if target.shape != (lat.size, lon.size) or not (
        np.allclose(target.lat, lat[lat_order], atol=1e-4) and np.allclose(target.lon, lon[lon_order], atol=1e-4)
    ):
        raise DataError(f"earth2studio array: its {lat.size}×{lon.size} lat/lon do not match the grid ({target.describe()})")
    values = da.values[:, [have.index(n) for n in names]][:, :, lat_order][:, :, :, lon_order]
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)), np.asarray(da["time"].values, "datetime64[ns]")
