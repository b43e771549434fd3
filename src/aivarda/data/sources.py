"""Field sources: the truth/reanalysis readers that hand out states ``[C, H, W]``.

A :class:`FieldSource` knows its :class:`~aivarda.grid.Grid`, its
:class:`~aivarda.channels.ChannelLayout` and its valid times, and returns states in physical units
(``torch.float32``, latitude N → S, longitude 0 … 360). :class:`Wb2ZarrSource` reads the
WeatherBench2 ERA5 Zarr layout (one data variable per physical variable, named by its WB2 name, dims
``time, level, latitude, longitude`` or, as WB2 publishes its 1.5° and 5.625° stores,
``time, level, longitude, latitude``; latitude either way up, other variables ignored), which is
also the layout of the embedded nature run, so the same reader serves both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES, ChannelLayout
from aivarda.errors import ConfigError, DataError
from aivarda.geometry import Geometry
from aivarda.grid import Grid
from aivarda.provenance import parse_time
from aivarda.timeaxis import format_time, from_hours  # noqa: F401 (re-exported for data users)

if TYPE_CHECKING:
    import xarray as xr

    from aivarda.config import DataConfig

TimeLike = str | datetime | np.datetime64
"""What :func:`as_time` understands: ISO string, ``datetime`` (incl. ``pd.Timestamp``), ``np.datetime64``."""

READ_CACHE_BYTES = 256 * 2**20
"""Bytes of recently read states a :class:`Wb2ZarrSource` keeps (about 110 states at T42; at least one state whatever its size)."""

_METADATA_FILES = ("zarr.json", ".zmetadata", ".zattrs", ".zgroup", ".zarray")


@runtime_checkable
class FieldSource(Protocol):
    """Truth/reanalysis reader.

    Attributes:
        grid: horizontal grid of the states, ``(H, W)``.
        layout: channel order of the states, ``C = len(layout)``.
        times: valid times, ``datetime64[ns]``, shape ``[T]``, increasing.
    """

    grid: Grid
    layout: ChannelLayout
    times: np.ndarray

    def state(self, time: TimeLike) -> torch.Tensor:
        """The state at ``time``: ``float32 [C, H, W]`` in physical units."""
        ...

    def states(self, times: Sequence[TimeLike] | np.ndarray) -> torch.Tensor:
        """The states at ``times``: ``float32 [T, C, H, W]``."""
        ...


# --------------------------------------------------------------------------------------- helpers
def as_time(value: TimeLike) -> np.datetime64:
    """Convert a time-like value to ``np.datetime64[ns]``; a bad string raises DataError."""
    return parse_time(value, "time")


def as_times(values: Sequence[TimeLike] | np.ndarray) -> np.ndarray:
    """Convert a sequence of time-like values to a ``datetime64[ns]`` array."""
    if isinstance(values, np.ndarray) and np.issubdtype(values.dtype, np.datetime64):
        return values.astype("datetime64[ns]")
    return np.array([as_time(v) for v in values], dtype="datetime64[ns]")


def layout_from_channels(names: Sequence[str]) -> ChannelLayout:
    """Build a layout from channel names (e.g. ``["t2m", "z500", "z850", "t500", "t850"]``).

    The names must be surface variables plus upper-air variables on one common set of levels (a
    layout is a product variables × levels); the result is in canonical order (surface variables
    first, levels ascending).
    """
    surface: list[str] = []
    upper: list[str] = []
    levels: set[int] = set()
    for name in names:
        var, level = ChannelLayout.parse(name)
        if level is None:
            if var not in surface:
                surface.append(var)
        else:
            if var not in upper:
                upper.append(var)
            levels.add(level)
    layout = ChannelLayout(tuple(surface), tuple(upper), tuple(sorted(levels)))
    missing = sorted(set(layout.names) - set(names), key=layout.names.index)
    if missing:
        raise DataError(
            f"channels {list(names)}: upper-air variables must share the same levels; missing {missing}"
        )
    return layout


def holdout_cut(n_times: int, fraction: float, where: str) -> int:
    """Index of the first held-out time when the last ``fraction`` of ``n_times`` times is held
    out (``times[:cut]`` train, ``times[cut:]`` validation); too few times is a DataError."""
    cut = int(n_times * (1 - fraction))
    if cut < 2 or cut >= n_times:
        raise DataError(f"{where} has too few times ({n_times}) to hold out {fraction:g}")
    return cut


def store_signature(path: str | Path) -> str:
    """A cheap fingerprint of a local Zarr store: size and mtime of its metadata files.

    Rewriting a store (``to_zarr(mode="w")``) rewrites these files, so the signature changes.
    """
    path = Path(path)
    entries = []
    for directory in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        for name in _METADATA_FILES:
            f = directory / name
            if f.is_file():
                st = f.stat()
                entries.append(f"{f.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()[:16]


def _is_zarr_store(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in ("zarr.json", ".zgroup", ".zmetadata"))


def _has_consolidated_metadata(path: Path) -> bool:
    """Zarr v2 ``.zmetadata``, or Zarr v3 ``zarr.json`` carrying ``consolidated_metadata``."""
    if (path / ".zmetadata").is_file():
        return True
    meta = path / "zarr.json"
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("consolidated_metadata") is not None
        except (json.JSONDecodeError, OSError):
            return False
    return False


def open_wb2_dataset(path: str | Path) -> xr.Dataset:
    """Open a WeatherBench2-layout Zarr store lazily (no dask; only requested slices are read)."""
    import xarray as xr

    path = Path(path)
    if not _is_zarr_store(path):
        raise DataError(
            f"{path}: no Zarr store found (expected a WeatherBench2-layout store with dims "
            "time, level, latitude, longitude in either horizontal order; generate one with `aivarda data nature-run`)"
        )
    try:
        ds = xr.open_dataset(
            path, engine="zarr", chunks=None, cache=False, consolidated=_has_consolidated_metadata(path)
        )
    except Exception as exc:  # noqa: BLE001 - any failure to parse the store is a data error
        raise DataError(f"{path}: cannot open Zarr store: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    for coord in ("time", "latitude", "longitude"):
        if coord not in ds.coords:
            raise DataError(
                f"{path}: not a WeatherBench2-layout store: coordinate {coord!r} is missing "
                f"(the store has {sorted(map(str, ds.coords))})"
            )
    return ds


def store_layout(path: str | Path) -> ChannelLayout:
    """Every channel of the store that aivarda knows: known surface variables, then known
    upper-air variables on all of the store's levels (variables present on the level axis)."""
    ds = open_wb2_dataset(path)
    surface = tuple(s for s, v in SURFACE_VARIABLES.items() if v.wb2_name in ds.data_vars)
    upper = tuple(
        s for s, v in UPPER_AIR_VARIABLES.items() if v.wb2_name in ds.data_vars and "level" in ds[v.wb2_name].dims
    )
    levels = tuple(int(p) for p in ds["level"].values) if upper else ()
    if not surface and not upper:
        raise DataError(
            f"{path}: the store holds no known variable (has {sorted(map(str, ds.data_vars))}; expected WB2 names "
            f"such as {[v.wb2_name for v in SURFACE_VARIABLES.values()][:4]} or 'geopotential')"
        )
    return ChannelLayout(surface, upper, tuple(sorted(levels)))


def _read_json_attr(ds: xr.Dataset, key: str, path: Path) -> Any:
    raw = ds.attrs.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise DataError(f"{path}: global attribute {key!r} is not valid JSON") from None


# --------------------------------------------------------------------------------------- reader
class Wb2ZarrSource:
    """States from a WeatherBench2-layout Zarr store (ERA5 from WB2, or the embedded nature run).

    Args:
        path: the ``.zarr`` directory.
        layout: channels to read (default: FengWu's 69). A channel the store lacks is a DataError.
        span: name of a time span of the store's ``aivarda_spans`` attribute (e.g. ``"train"``,
            ``"hourly"``, ``"eval"``): restricts ``times`` to that span's start…end at its interval.
        time_range: ``(start, end)``, inclusive (``None`` for an open end); restricts ``times`` further.

    Latitudes are returned N → S and longitudes 0 … 360 whatever the order in the store.
    """

    def __init__(
        self,
        path: str | Path,
        layout: ChannelLayout | None = None,
        span: str | None = None,
        time_range: tuple[TimeLike | None, TimeLike | None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.layout = layout if layout is not None else ChannelLayout.fengwu69()
        self.span = span
        self._ds = open_wb2_dataset(self.path)
        self.attrs: dict[str, Any] = dict(self._ds.attrs)
        self.spans: dict[str, dict[str, Any]] = _read_json_attr(self._ds, "aivarda_spans", self.path) or {}
        self.grid, self._lat_order, self._lon_order = self._infer_grid()
        self._lon_first: dict[str, bool] = {}
        self._variables, self._level_index = self._check_layout()
        self._store_times = self._ds["time"].values.astype("datetime64[ns]")
        # the most recently read states (checked): a cycle reads its truth again as the next
        # cycle's previous truth, and a forecast's verifying states become later cycles' truths
        self._recent: OrderedDict[int, np.ndarray] = OrderedDict()
        self._time_range = None if time_range is None else (
            np.datetime64("NaT") if time_range[0] is None else as_time(time_range[0]),
            np.datetime64("NaT") if time_range[1] is None else as_time(time_range[1]),
        )
        self.times = self._select_times()

    @property
    def geometry(self) -> Geometry:
        """The grid and channel layout of the states this source returns."""
        return Geometry(self.grid, self.layout)

    # ------------------------------------------------------------------ construction
    def _infer_grid(self) -> tuple[Grid, np.ndarray | None, np.ndarray | None]:
        lat = np.asarray(self._ds["latitude"].values, dtype=np.float64)
        lon = np.mod(np.asarray(self._ds["longitude"].values, dtype=np.float64), 360.0)
        lat_order = np.argsort(-lat, kind="stable")
        lon_order = np.argsort(lon, kind="stable")
        lat_sorted, lon_sorted = lat[lat_order], lon[lon_order]
        if np.any(np.diff(lat_sorted) == 0) or np.any(np.diff(lon_sorted) == 0):
            raise DataError(f"{self.path}: duplicate latitudes or longitudes in the store")
        grid_attr = _read_json_attr(self._ds, "aivarda_grid", self.path)
        if grid_attr is not None:
            grid = Grid.from_dict(grid_attr)
            if grid.shape != (lat.size, lon.size) or not (
                np.allclose(grid.lat, lat_sorted, atol=1e-4) and np.allclose(grid.lon, lon_sorted, atol=1e-4)
            ):
                raise DataError(
                    f"{self.path}: attribute aivarda_grid ({grid.describe()}) does not match the latitude/longitude "
                    f"coordinates ({lat.size}×{lon.size})"
                )
        else:
            try:
                grid = Grid.from_coords(lat_sorted.astype(self._ds["latitude"].dtype), lon_sorted)
            except DataError as exc:
                raise DataError(f"{self.path}: {exc}") from None
        identity_lat = np.array_equal(lat_order, np.arange(lat.size))
        identity_lon = np.array_equal(lon_order, np.arange(lon.size))
        return grid, None if identity_lat else lat_order, None if identity_lon else lon_order

    def _check_layout(self) -> tuple[list[str], np.ndarray | None]:
        have = sorted(map(str, self._ds.data_vars))
        variables: list[str] = []
        for ch_var in self.layout.surface:
            variables.append(self._require_variable(SURFACE_VARIABLES[ch_var].wb2_name, ch_var, have, upper=False))
        for ch_var in self.layout.upper_air:
            variables.append(self._require_variable(UPPER_AIR_VARIABLES[ch_var].wb2_name, ch_var, have, upper=True))
        if not self.layout.upper_air:
            return variables, None
        store_levels = [int(p) for p in np.asarray(self._ds["level"].values)]
        missing = [p for p in self.layout.levels if p not in store_levels]
        if missing:
            raise DataError(
                f"{self.path}: pressure level(s) {missing} hPa not found; the store has levels {store_levels} hPa"
            )
        return variables, np.array([store_levels.index(p) for p in self.layout.levels])

    def _require_variable(self, wb2_name: str, short: str, have: list[str], upper: bool) -> str:
        if wb2_name not in self._ds.data_vars:
            raise DataError(f"{self.path}: variable {wb2_name!r} ({short}) not found; the store has {have}")
        dims = tuple(map(str, self._ds[wb2_name].dims))
        head = ("time", "level") if upper else ("time",)
        allowed = (head + ("latitude", "longitude"), head + ("longitude", "latitude"))
        if dims not in allowed:
            raise DataError(
                f"{self.path}: variable {wb2_name!r} has dims {dims}, expected {allowed[0]} or {allowed[1]}"
            )
        self._lon_first[wb2_name] = dims == allowed[1]
        return wb2_name

    def _select_times(self) -> np.ndarray:
        times = self._store_times
        mask = np.ones(times.size, dtype=bool)
        if self.span is not None:
            if not self.spans:
                raise DataError(
                    f"{self.path}: the store has no aivarda spans (attribute aivarda_spans), so span {self.span!r} is "
                    "undefined: set the option naming it to null (e.g. statistics_span: null, span: null) and select "
                    "the store's times with data.start/data.end"
                )
            if self.span not in self.spans:
                raise DataError(
                    f"{self.path}: unknown span {self.span!r}; the store has spans {sorted(self.spans) or 'none'}"
                )
            spec = self.spans[self.span]
            start, end = as_time(spec["start"]), as_time(spec["end"])
            step = from_hours(spec["interval_hours"])
            mask &= (times >= start) & (times <= end) & ((times - start) % step == np.timedelta64(0, "ns"))
        if self._time_range is not None:
            start, end = self._time_range
            if not np.isnat(start):
                mask &= times >= start
            if not np.isnat(end):
                mask &= times <= end
        selected = times[mask]
        if selected.size == 0:
            raise DataError(f"{self.path}: no times selected (span {self.span!r}, range {self._time_range_text()}; "
                            f"the store covers {self._range_text(times)})")
        return selected

    # ------------------------------------------------------------------ descriptions
    @staticmethod
    def _range_text(times: np.ndarray) -> str:
        if times.size == 0:
            return "no times"
        return f"{format_time(times[0])} … {format_time(times[-1])} ({times.size} times)"

    def _time_range_text(self) -> str:
        if self._time_range is None:
            return "all"
        return " … ".join("open" if np.isnat(t) else format_time(t) for t in self._time_range)

    def __repr__(self) -> str:
        return (
            f"Wb2ZarrSource({str(self.path)!r}, {len(self.layout)} channels, {self.grid.describe()}, "
            f"{self._range_text(self.times)}{'' if self.span is None else f', span {self.span!r}'})"
        )

    def cache_token(self) -> str:
        """Identity of what this source returns, for caches: store path + signature + selection."""
        return json.dumps(
            {
                "path": str(self.path.resolve()),
                "signature": store_signature(self.path),
                "span": self.span,
                "time_range": None if self._time_range is None else [str(t) for t in self._time_range],
                "channels": list(self.layout.names),
            },
            sort_keys=True,
        )

    # ------------------------------------------------------------------ reading
    def time_indices(self, times: Sequence[TimeLike] | np.ndarray) -> np.ndarray:
        """Indices of ``times`` in the store's time axis; a time outside ``self.times`` is a DataError."""
        wanted = as_times(times)
        pos = np.searchsorted(self.times, wanted)
        pos_clipped = np.minimum(pos, self.times.size - 1)
        bad = self.times[pos_clipped] != wanted
        if np.any(bad):
            t = wanted[np.argmax(bad)]
            interval = ""
            if self.times.size > 1:
                hours = np.unique(np.diff(self.times)).astype("timedelta64[m]").astype(int) / 60
                interval = f", every {', '.join(f'{h:g}' for h in hours[:3])} h"
            raise DataError(
                f"{self.path}: time {format_time(t)} is not in the source; available "
                f"{self._range_text(self.times)}{interval}"
                f"{'' if self.span is None else f' (span {self.span!r})'}"
            )
        return np.searchsorted(self._store_times, wanted)

    def state(self, time: TimeLike) -> torch.Tensor:
        """``float32 [C, H, W]`` at ``time``."""
        return self.states([time])[0]

    def states(self, times: Sequence[TimeLike] | np.ndarray) -> torch.Tensor:
        """``float32 [T, C, H, W]`` at ``times`` (a new tensor; one read of the store per call for
        the times not among the last :data:`READ_CACHE_BYTES` of states read)."""
        idx = self.time_indices(times)
        if idx.size == 0:
            return torch.empty((0, len(self.layout), *self.grid.shape), dtype=torch.float32)
        unique, inverse = np.unique(idx, return_inverse=True)
        cache = self._recent
        got = {int(i): cache[int(i)] for i in unique if int(i) in cache}
        missing = np.array([i for i in unique if int(i) not in got], dtype=unique.dtype)
        if missing.size:
            got.update((int(i), state) for i, state in zip(missing, self._read(missing)))
        data = np.stack([got[int(i)] for i in unique]) if unique.size > 1 else got[int(unique[0])][None].copy()
        for i in unique:  # most recently used last; evicted only after this call's states are taken
            cache[int(i)] = got[int(i)]
            cache.move_to_end(int(i))
        while len(cache) > max(1, READ_CACHE_BYTES // max(1, data[0].nbytes)):
            cache.popitem(last=False)
        if unique.size != idx.size or not np.array_equal(unique, idx):
            data = data[inverse]
        return torch.from_numpy(np.ascontiguousarray(data))

    def _read(self, time_index: np.ndarray) -> np.ndarray:
        """Read sorted, unique store time indices → ``float32 [T, C, H, W]`` (N → S, lon 0…360)."""
        t_sel: slice | np.ndarray = time_index
        if time_index.size == 1 or np.all(np.diff(time_index) == 1):
            t_sel = slice(int(time_index[0]), int(time_index[-1]) + 1)
        indexers: dict[str, Any] = {"time": t_sel}
        if self._level_index is not None:
            indexers["level"] = self._level_index
        subset = self._ds[self._variables].isel(indexers)
        out = np.empty((time_index.size, len(self.layout), *self.grid.shape), dtype=np.float32)
        n_surface, n_levels = len(self.layout.surface), len(self.layout.levels)
        for k, name in enumerate(self._variables):
            try:
                values = np.asarray(subset[name].values, dtype=np.float32)
            except Exception as exc:  # noqa: BLE001 - a damaged chunk (truncated, bad header) is a data error
                raise DataError(self._unreadable(name, time_index, exc)) from None
            self._check_finite(name, k, values, time_index)
            if self._lon_first[name]:
                values = np.swapaxes(values, -1, -2)
            if k < n_surface:
                out[:, k] = values
            else:
                start = n_surface + (k - n_surface) * n_levels
                out[:, start : start + n_levels] = values
        if self._lat_order is not None:
            out = out[..., self._lat_order, :]
        if self._lon_order is not None:
            out = out[..., self._lon_order]
        return out


    # ------------------------------------------------------------------ damage
    def chunk_file(self, name: str, index: Sequence[int]) -> Path:
        """The file of the chunk holding element ``index`` (store order) of variable ``name``
        (Zarr v2 keys ``i.j.k`` or ``i/j/k``, Zarr v3 default keys ``c/i/j/k``)."""
        folder = self.path / name
        chunks = self._ds[name].encoding.get("chunks") or tuple(1 for _ in index)
        ids = [str(int(i) // max(int(c), 1)) for i, c in zip(index, chunks, strict=False)]
        if (folder / ".zarray").is_file():
            sep = json.loads((folder / ".zarray").read_text()).get("dimension_separator") or "."
            return folder / sep.join(ids)
        return folder.joinpath("c", *ids)

    def _time_chunk_files(self, name: str, t: int) -> list[Path]:
        """Every chunk file of variable ``name`` that holds store time index ``t``."""
        folder = self.path / name
        head = self.chunk_file(name, (t,))  # the time part of the key
        if head.parent == folder and not head.is_dir():  # Zarr v2 with "." separators: ``t.l.y.x``
            return sorted(p for p in folder.iterdir() if p.is_file() and p.name.split(".")[0] == head.name)
        if head.is_dir():
            return sorted(p for p in head.rglob("*") if p.is_file())
        return [head] if head.is_file() else []

    def _chunk_files_by_time(self, name: str) -> dict[str, list[Path]]:
        """Every chunk file of variable ``name`` by the time part of its key (one listing)."""
        folder = self.path / name
        head = self.chunk_file(name, (0,))
        out: dict[str, list[Path]] = {}
        if head.parent == folder and (folder / ".zarray").is_file() and not head.is_dir():  # v2 "t.l.y.x"
            for entry in os.scandir(folder):
                if entry.is_file() and not entry.name.startswith("."):
                    out.setdefault(entry.name.split(".")[0], []).append(Path(entry.path))
        elif head.parent.is_dir():  # v2 "t/l/y/x" or v3 "c/t/l/y/x"
            for entry in os.scandir(head.parent):
                if entry.is_dir():
                    out[entry.name] = [p for p in Path(entry.path).rglob("*") if p.is_file()]
                elif entry.is_file() and not entry.name.startswith(".") and entry.name != "zarr.json":
                    out[entry.name] = [Path(entry.path)]
        return out

    def content_hash(self, times: Sequence[TimeLike] | np.ndarray, max_read: int = 8) -> str:
        """16 hex digits of a SHA-256 over the chunk files the states at ``times`` are read from:
        the name and size of every one, and the bytes of those of at most ``max_read`` evenly spread
        times. A key of caches that changes when the data do (a repaired or rewritten chunk), unlike
        modification times, and costs a listing plus a few chunk reads even for ERA5 at 0.25°."""
        selection = {"span": self.span, "channels": list(self.layout.names),
                     "time_range": None if self._time_range is None else [str(t) for t in self._time_range]}
        h = hashlib.sha256(json.dumps(selection, sort_keys=True).encode())
        store_index = np.unique(self.time_indices(times))
        read = set(store_index[np.unique(np.linspace(0, store_index.size - 1, min(max_read, store_index.size)).round().astype(int))].tolist()) \
            if store_index.size else set()
        for name in self._variables:
            chunks = self._ds[name].encoding.get("chunks") or (1,)
            by_time = self._chunk_files_by_time(name)
            seen: set[str] = set()
            for t in store_index:
                key = str(int(t) // max(int(chunks[0]), 1))
                if key in seen:
                    continue
                seen.add(key)
                for f in sorted(by_time.get(key, [])):
                    h.update(f"{f.relative_to(self.path)}:{f.stat().st_size}\n".encode())
                    if int(t) in read:
                        h.update(f.read_bytes())
        return h.hexdigest()[:16]

    def _channel_name(self, k: int, level_position: int) -> str:
        n_surface = len(self.layout.surface)
        if k < n_surface:
            return self.layout.surface[k]
        return f"{self.layout.upper_air[k - n_surface]}{self.layout.levels[level_position]}"

    def _store_index(self, name: str, time_index: np.ndarray, element: Sequence[int]) -> list[int]:
        """Store indices of ``element`` of the subset read for ``time_index`` (level selection undone)."""
        out = [int(time_index[element[0]])]
        if self._ds[name].ndim == 4:
            lev = int(element[1])
            out.append(int(self._level_index[lev]) if self._level_index is not None else lev)
            out += [int(i) for i in element[2:]]
        else:
            out += [int(i) for i in element[1:]]
        return out

    def _check_finite(self, name: str, k: int, values: np.ndarray, time_index: np.ndarray) -> None:
        """One DataError line naming variable, channel, time and chunk file of the first NaN/Inf."""
        bad = ~np.isfinite(values)
        if not bad.any():
            return
        first = np.argwhere(bad)[0]
        index = self._store_index(name, time_index, first)
        chunk = self.chunk_file(name, index)
        where = f"chunk {chunk.relative_to(self.path)}" + ("" if chunk.exists() else " (missing: read as the fill value)")
        channel = self._channel_name(k, int(first[1]) if values.ndim == 4 else 0)
        raise DataError(
            f"{self.path}: {int(bad.sum())} NaN/Inf values in {name} ({channel} first) at "
            f"{format_time(self._store_times[index[0]])}, {where}"
        )

    def _unreadable(self, name: str, time_index: np.ndarray, exc: Exception) -> str:
        """The message for a chunk that cannot be decoded: finds it by reading one time at a time."""
        for t in time_index:
            try:
                self._ds[name].isel(time=int(t)).values  # noqa: B018 - read to find the damaged chunk
            except Exception:  # noqa: BLE001
                files = self._time_chunk_files(name, int(t))
                sizes = ", ".join(f"{f.relative_to(self.path)} ({f.stat().st_size} bytes)" for f in files[:3])
                return (f"{self.path}: cannot decode {name} at {format_time(self._store_times[int(t)])}: "
                        f"damaged chunk in {sizes or 'a missing chunk file'} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})")
        return f"{self.path}: cannot read {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def data_time_range(data_cfg: DataConfig) -> tuple[TimeLike | None, TimeLike | None] | None:
    """``(data.start, data.end)`` as a ``time_range`` of :class:`Wb2ZarrSource`; None when neither is set."""
    return None if data_cfg.start is None and data_cfg.end is None else (data_cfg.start, data_cfg.end)


def open_source(data_cfg: DataConfig, span: str | None = None) -> Wb2ZarrSource:
    """The field source a ``data:`` config section describes.

    ``source: nature_run`` opens (generating it on first use) the embedded nature run;
    ``source: zarr`` opens ``path``. ``variables`` (channel names) selects the layout; default FengWu's 69.
    ``start``/``end`` restrict the times (inclusive), e.g. of a WeatherBench2 store that has no
    aivarda spans; ``span`` names one of the store's ``aivarda_spans``.
    """
    if data_cfg.source == "nature_run":
        from aivarda.data.nature_run import ensure_nature_run

        path = Path(ensure_nature_run())
    else:
        if data_cfg.path is None:
            raise ConfigError("data.path: required when data.source is 'zarr'")
        path = Path(data_cfg.path)
    layout = layout_from_channels(data_cfg.variables) if data_cfg.variables else None
    return Wb2ZarrSource(path, layout=layout, span=span, time_range=data_time_range(data_cfg))
