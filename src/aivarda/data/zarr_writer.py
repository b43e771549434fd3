"""Streaming writer of states into the WeatherBench2 (ERA5) Zarr layout.

A state is a ``float32`` array ``[C, H, W]`` in physical units whose channels follow a
:class:`~aivarda.channels.ChannelLayout` (surface channels first, then every upper-air variable on
every level). The store holds one data variable per physical variable, named by its WB2 name:

- upper-air: ``(time, level, latitude, longitude)``, ``level`` in hPa ascending;
- surface: ``(time, latitude, longitude)``;

with latitude N→S (as given by the :class:`~aivarda.grid.Grid`), longitude 0…360, ``float32``,
attrs ``units``, ``long_name``, ``short_name``. The time axis is fixed when the writer is created
(the arrays are pre-allocated and filled with NaN), so states can be written in any order, one
index at a time, and a reader never sees a ragged store. Chunks hold ``time_chunk`` times;
compression is Blosc/zstd with bit-shuffle (lossless). The store is Zarr format 2, as WB2's are,
and its metadata is consolidated on :meth:`ZarrStateWriter.close`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES, ChannelLayout
from aivarda.errors import DataError
from aivarda.grid import Grid


def _time_encoding(times: np.ndarray) -> tuple[np.ndarray, str]:
    """CF encoding of ``times`` (datetime64) as integers since the first time."""
    t0 = times[0]
    offsets = (times - t0).astype("timedelta64[s]").astype(np.int64)
    base = np.datetime_as_string(t0, unit="s").replace("T", " ")
    if np.all(offsets % 3600 == 0):
        return offsets // 3600, f"hours since {base}"
    if np.all(offsets % 60 == 0):
        return offsets // 60, f"minutes since {base}"
    return offsets, f"seconds since {base}"


class ZarrStateWriter:
    """Write ``[C, H, W]`` states at fixed times into a new WB2-layout Zarr store.

    Args:
        path: the store to create (must not exist).
        grid: horizontal grid; its latitudes (N→S) and longitudes become the coordinates.
        layout: channel order of the states written.
        times: the store's time axis (datetime64, strictly increasing), shape ``[T]``.
        attrs: global attributes; mappings and lists are stored as JSON strings.
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
        self.grid, self.layout, self.times = grid, layout, times
        self._index = {t: i for i, t in enumerate(times.astype(np.int64).tolist())}
        compressor = numcodecs.Blosc(cname="zstd", clevel=clevel, shuffle=numcodecs.Blosc.BITSHUFFLE)
        root = zarr.open_group(str(self.path), mode="w-", zarr_format=2)
        root.attrs.update({k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v)
                           for k, v in (attrs or {}).items()})

        def coord(name: str, values: np.ndarray, attributes: dict[str, Any]) -> None:
            arr = root.create_array(name, shape=values.shape, dtype=values.dtype, chunks=values.shape,
                                    compressors=None, fill_value=None,
                                    attributes={"_ARRAY_DIMENSIONS": [name], **attributes})
            arr[...] = values

        encoded, units = _time_encoding(times)
        coord("time", encoded, {"units": units, "calendar": "proleptic_gregorian", "long_name": "time"})
        coord("latitude", grid.lat.astype(np.float32), {"units": "degrees_north", "long_name": "latitude"})
        coord("longitude", grid.lon.astype(np.float32), {"units": "degrees_east", "long_name": "longitude"})
        if layout.upper_air:
            coord("level", np.asarray(layout.levels, dtype=np.int64), {"units": "hPa", "long_name": "pressure_level"})

        H, W = grid.shape
        T, L = times.size, len(layout.levels)
        self._arrays: list[tuple[Any, slice, bool]] = []
        for short in layout.surface + layout.upper_air:
            upper = short in layout.upper_air
            var = UPPER_AIR_VARIABLES[short] if upper else SURFACE_VARIABLES[short]
            shape = (T, L, H, W) if upper else (T, H, W)
            dims = ["time", "level", "latitude", "longitude"] if upper else ["time", "latitude", "longitude"]
            arr = root.create_array(
                var.wb2_name, shape=shape, dtype=np.float32, chunks=(time_chunk, *shape[1:]),
                compressors=compressor, fill_value=np.nan,
                attributes={"_ARRAY_DIMENSIONS": dims, "units": var.units, "long_name": var.long_name,
                            "short_name": short},
            )
            self._arrays.append((arr, layout.variable_slice(short), upper))
        self._closed = False

    def index_of(self, time: np.datetime64) -> int:
        """Position of ``time`` on the store's time axis (a DataError if absent)."""
        key = int(np.datetime64(time, "ns").astype(np.int64))
        if key not in self._index:
            raise DataError(f"{self.path}: time {time} is not on the store's time axis")
        return self._index[key]

    def write(self, index: int, state: np.ndarray) -> None:
        """Write one state ``[C, H, W]`` at time index ``index``."""
        state = np.asarray(state, dtype=np.float32)
        expected = (self.layout.n_channels, *self.grid.shape)
        if state.shape != expected:
            raise DataError(f"zarr writer: state shape {state.shape}, expected {expected}")
        for arr, sl, upper in self._arrays:
            arr[index] = state[sl] if upper else state[sl][0]

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
