"""Streaming writer of states into the WeatherBench2 (ERA5) Zarr layout, with CF metadata.

A state is a ``float32`` array ``[C, H, W]`` in physical units whose channels follow a
:class:`~aivarda.channels.ChannelLayout` (surface channels first, then every upper-air variable on
every level). The store holds one data variable per physical variable, named by its WB2 name:

- upper-air: ``(time, level, latitude, longitude)``, ``level`` in hPa ascending;
- surface: ``(time, latitude, longitude)``;
- a forecast store (``leads`` given) has ``prediction_timedelta`` after ``time``, as WB2's forecast
  stores: ``time`` is the initialisation time, ``prediction_timedelta`` the lead (timedelta64).

with latitude N→S (as given by the :class:`~aivarda.grid.Grid`), longitude 0…360, ``float32``, and
the CF attributes of :mod:`aivarda.data.cf` (``units``, ``standard_name``, ``long_name``,
``short_name`` on the variables; ``axis``, ``units``, ``standard_name`` on the coordinates;
``Conventions: CF-1.8`` globally). The time axes are fixed when the writer is created (the arrays
are pre-allocated and filled with NaN), so states can be written in any order, one index at a time,
and a reader never sees a ragged store. Chunks hold ``time_chunk`` times (and one lead);
compression is Blosc/zstd with bit-shuffle (lossless). The store is Zarr format 2, as WB2's are,
and its metadata is consolidated on :meth:`ZarrStateWriter.close`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from aivarda.channels import ChannelLayout
from aivarda.data.cf import (
    CALENDAR,
    CONVENTIONS,
    COORDINATE_ATTRS,
    encode_time,
    encode_timedelta,
    storable_attrs,
    variable,
    variable_attrs,
)
from aivarda.errors import DataError
from aivarda.grid import Grid


class ZarrStateWriter:
    """Write ``[C, H, W]`` states at fixed times into a new WB2-layout Zarr store.

    Args:
        path: the store to create (must not exist).
        grid: horizontal grid; its latitudes (N→S) and longitudes become the coordinates.
        layout: channel order of the states written.
        times: the store's time axis (datetime64, strictly increasing), shape ``[T]``.
        attrs: global attributes (e.g. :func:`aivarda.data.cf.global_attrs`); mappings and lists
            are stored as JSON strings; ``Conventions`` is always ``CF-1.8``.
        leads: forecast leads (timedelta64, strictly increasing, ``[P]``): a WB2 forecast store with
            dims ``(time, prediction_timedelta, …)``, ``times`` the initialisation times.
        time_chunk: number of times per chunk.
        clevel: zstd compression level.
    """

    def __init__(
        self,
        path: str | Path,
        grid: Grid,
        layout: ChannelLayout,
        times: np.ndarray,
        attrs: Mapping[str, Any] | None = None,
        *,
        leads: np.ndarray | None = None,
        time_chunk: int = 1,
        clevel: int = 3,
    ) -> None:
        import numcodecs
        import zarr

        self.path = Path(path)
        if self.path.exists():
            raise DataError(f"{self.path}: store already exists")
        times = np.asarray(times, dtype="datetime64[ns]")
        if times.ndim != 1 or times.size == 0 or not np.all(np.diff(times) > np.timedelta64(0)):
            raise DataError("zarr writer: times must be a non-empty, strictly increasing 1-D array")
        if leads is not None:
            leads = np.asarray(leads, dtype="timedelta64[ns]")
            if leads.ndim != 1 or leads.size == 0 or not np.all(np.diff(leads) > np.timedelta64(0)):
                raise DataError("zarr writer: leads must be a non-empty, strictly increasing 1-D array")
        self.grid, self.layout, self.times, self.leads = grid, layout, times, leads
        self._index = {t: i for i, t in enumerate(times.astype(np.int64).tolist())}
        compressor = numcodecs.Blosc(cname="zstd", clevel=clevel, shuffle=numcodecs.Blosc.BITSHUFFLE)
        root = zarr.open_group(str(self.path), mode="w-", zarr_format=2)
        root.attrs.update(storable_attrs({**(attrs or {}), "Conventions": CONVENTIONS}))

        def coord(name: str, values: np.ndarray, attributes: dict[str, Any]) -> None:
            arr = root.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                                    compressors=None, fill_value=None,
                                    attributes={"_ARRAY_DIMENSIONS": [name], **attributes})
            arr[...] = values

        encoded, units = encode_time(times)
        coord("time", encoded, {**COORDINATE_ATTRS["time"], "units": units, "calendar": CALENDAR})
        leading, lead_shape, lead_chunks = ["time"], (times.size,), (time_chunk,)
        if leads is not None:
            encoded, units = encode_timedelta(leads)  # as xarray writes a timedelta64 coordinate
            coord("prediction_timedelta", encoded,
                  {**COORDINATE_ATTRS["prediction_timedelta"], "units": units, "dtype": "timedelta64[ns]"})
            leading, lead_shape, lead_chunks = ["time", "prediction_timedelta"], (times.size, leads.size), (time_chunk, 1)
        coord("latitude", grid.lat.astype(np.float32), COORDINATE_ATTRS["latitude"])
        coord("longitude", grid.lon.astype(np.float32), COORDINATE_ATTRS["longitude"])
        if layout.upper_air:
            coord("level", np.asarray(layout.levels, dtype=np.int64), COORDINATE_ATTRS["level"])

        H, W = grid.shape
        L = len(layout.levels)
        self._arrays: list[tuple[Any, slice, bool]] = []
        for short in layout.surface + layout.upper_air:
            upper = short in layout.upper_air
            field = (L, H, W) if upper else (H, W)
            dims = [*leading, "level", "latitude", "longitude"] if upper else [*leading, "latitude", "longitude"]
            arr = root.create_array(
                variable(short).wb2_name, shape=(*lead_shape, *field), dtype=np.float32, chunks=(*lead_chunks, *field),
                compressors=compressor, fill_value=np.nan,
                attributes={"_ARRAY_DIMENSIONS": dims, **variable_attrs(short)},
            )
            self._arrays.append((arr, layout.variable_slice(short), upper))
        self._closed = False

    def index_of(self, time: np.datetime64) -> int:
        """Position of ``time`` on the store's time axis (a DataError if absent)."""
        key = int(np.datetime64(time, "ns").astype(np.int64))
        if key not in self._index:
            raise DataError(f"{self.path}: time {time} is not on the store's time axis")
        return self._index[key]

    def write(self, index: int, state: np.ndarray, lead: int | None = None) -> None:
        """Write one state ``[C, H, W]`` at time index ``index`` (and lead index ``lead`` in a
        forecast store)."""
        write_state(self._arrays, self.layout, self.grid, index, state, lead)

    def write_at(self, time: np.datetime64, state: np.ndarray) -> None:
        """Write one state ``[C, H, W]`` valid at ``time``."""
        self.write(self.index_of(time), state)

    def close(self) -> None:
        """Consolidate the metadata (readers open the store with one read)."""
        if not self._closed:
            import zarr

            zarr.consolidate_metadata(str(self.path), zarr_format=2)
            self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()


def write_state(arrays: list[tuple[Any, slice, bool]], layout: ChannelLayout, grid: Grid, index: int,
                state: np.ndarray, lead: int | None = None) -> None:
    """Write ``state`` ``[C, H, W]`` into the per-variable ``arrays`` (``(array, channel slice,
    upper-air?)``) at time index ``index`` and, for a forecast store, lead index ``lead``."""
    state = np.asarray(state, dtype=np.float32)
    expected = (layout.n_channels, *grid.shape)
    if state.shape != expected:
        raise DataError(f"zarr writer: state shape {state.shape}, expected {expected}")
    where = (index,) if lead is None else (index, lead)
    for arr, sl, upper in arrays:
        if arr.ndim != len(where) + (3 if upper else 2):
            raise DataError("zarr writer: a forecast store needs a lead index, an analysis store none")
        arr[where] = state[sl] if upper else state[sl][0]


def open_state_arrays(path: str | Path, layout: ChannelLayout) -> list[tuple[Any, slice, bool]]:
    """The per-variable arrays of an existing store made by :class:`ZarrStateWriter`, opened for
    writing (a resumed run writes into the store it made); a missing variable is a DataError."""
    import zarr

    root = zarr.open_group(str(path), mode="r+", zarr_format=2)
    arrays = []
    for short in layout.surface + layout.upper_air:
        name = variable(short).wb2_name
        if name not in root:
            raise DataError(f"{path}: store has no variable {name!r} (channel {short}); it was made for another layout")
        arrays.append((root[name], layout.variable_slice(short), short in layout.upper_air))
    return arrays
