"""``ObsTable``: the one in-memory form of observations read from (or written to) files.

Every reader (IODA netCDF, WMO BUFR, Parquet/CSV) returns an :class:`ObsTable`; every writer takes
one. It has one row per scalar observation, in file terms: the IODA variable name, the absolute
time, latitude/longitude, pressure in Pa (NaN for a surface observation), the value and σ_o in
IODA units (:mod:`aivarda.observations.variables`), an aivarda :class:`QCFlag`, the station id
(a string, ``""`` when none), the NCEP prepbufr report type (0 when unknown) and the withheld flag.

Only :meth:`ObsTable.to_obsset` (given a channel layout, the analysis time and the window's
offsets) and :meth:`ObsTable.from_obsset` convert to and from the engine's :class:`ObsSet`:

- a row whose variable has no aivarda state variable, or whose variable is not in the layout, or
  whose time is outside the window is left out (it is not an observation of this state/window);
- ``time_index`` is the nearest window time; ``time_offset_hours = (time − analysis time) / 1 h``;
- an upper-air row on one of the layout's levels becomes that channel with ``level = NaN``; any
  other pressure keeps ``level`` (hPa) on the variable's channel at the nearest level (ln p);
- a row that maps to the state but cannot be used — missing value (a fill value in the file),
  missing position or time, no σ_o in the file nor in ``error_std``, a pressure outside the
  layout's levels — is kept and flagged ``QCFlag.INVALID``, so that ``ObsSet.active()`` drops it
  and ``ObsSet.counts()`` shows it.

Station ids travel in :class:`ObsSet` as int64 codes (:func:`encode_station_ids`): up to 9
characters of 7-bit ASCII packed 7 bits each (the 72-bit CCITT IA5 ship/mobile-station
identifier of BUFR, 001011, and the 8-character prepbufr ``SID`` both fit), 0 meaning none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from aivarda.channels import ChannelLayout
from aivarda.errors import AivardaError, ObservationError
from aivarda.observations.obsset import ObsSet, QCFlag
from aivarda.observations.variables import BY_AIVARDA, for_aivarda, resolve

STATION_ID_CHARS = 9
GOOD_MARKER_MAX = 3  # NCEP quality markers: 0 keep, 1 good, 2 neutral, 3 suspect; larger: rejected
_SECOND = np.timedelta64(1, "s")


def encode_station_ids(ids: Sequence[str] | np.ndarray, where: str = "station ids") -> np.ndarray:
    """Pack station ids (≤ 9 printable ASCII characters, no leading/trailing blanks kept) into int64;
    ``""`` → 0. Reversible by :func:`decode_station_ids`."""
    out = np.zeros(len(ids), dtype=np.int64)
    cache: dict[str, int] = {}
    for i, raw in enumerate(ids):
        s = str(raw).strip()
        code = cache.get(s)
        if code is None:
            if len(s) > STATION_ID_CHARS or any(not (32 < ord(c) < 127) for c in s):
                raise ObservationError(
                    f"{where}: station id {s!r} is not up to {STATION_ID_CHARS} printable ASCII characters"
                )
            code = 0
            for c in s:
                code = (code << 7) | ord(c)
            cache[s] = code
        out[i] = code
    return out


def decode_station_ids(codes: Any) -> list[str]:
    """Inverse of :func:`encode_station_ids` (0 → ``""``)."""
    values = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64)
    cache: dict[int, str] = {}
    out = []
    for code in values.tolist():
        s = cache.get(code)
        if s is None:
            chars, c = [], code
            while c:
                chars.append(chr(c & 0x7F))
                c >>= 7
            s = cache[code] = "".join(reversed(chars))
        out.append(s)
    return out


_COLUMNS: dict[str, Any] = {
    "variable": object,
    "time": "datetime64[s]",
    "lat": np.float64,
    "lon": np.float64,
    "pressure": np.float64,
    "value": np.float64,
    "error": np.float64,
    "qc": np.int32,
    "station": object,
    "report_type": np.int32,
    "withheld": np.bool_,
}


@dataclass(eq=False)
class ObsTable:
    """Observations as read from a file: one row per scalar observation (see the module doc).

    Missing entries are ``NaN`` (floats), ``NaT`` (time), ``""`` (station), 0 (report type).
    """

    variable: np.ndarray  # object [N], IODA variable name
    time: np.ndarray  # datetime64[s] [N]
    lat: np.ndarray  # float64 [N], degrees north
    lon: np.ndarray  # float64 [N], degrees east (any range)
    pressure: np.ndarray  # float64 [N], Pa; NaN for surface observations
    value: np.ndarray  # float64 [N], IODA units
    error: np.ndarray  # float64 [N], σ_o in IODA units; NaN when the file has none
    qc: np.ndarray  # int32 [N], QCFlag (0 = good)
    station: np.ndarray  # object [N], station id, "" when none
    report_type: np.ndarray  # int32 [N], prepbufr report type, 0 when unknown
    withheld: np.ndarray  # bool [N], kept for verification (aivarda)

    def __post_init__(self) -> None:
        n = len(self.variable)
        for f in fields(self):
            a = np.asarray(getattr(self, f.name))
            if f.name in ("variable", "station"):
                a = np.asarray([str(x) for x in a.reshape(-1)], dtype=object)
            else:
                a = a.astype(_COLUMNS[f.name]).reshape(-1)
            if a.shape != (n,):
                raise ObservationError(f"observation table: column {f.name!r} has {a.shape[0]} rows, expected {n}")
            setattr(self, f.name, a)

    @classmethod
    def create(
        cls,
        variable: Any,
        time: Any,
        lat: Any,
        lon: Any,
        value: Any,
        *,
        pressure: Any = None,
        error: Any = None,
        qc: Any = None,
        station: Any = None,
        report_type: Any = None,
        withheld: Any = None,
    ) -> ObsTable:
        """A table with defaults for the optional columns (surface, no σ_o, good, no station)."""
        n = len(np.asarray(variable, dtype=object).reshape(-1))

        def full(x: Any, fill: Any, dtype: Any) -> np.ndarray:
            return np.full(n, fill, dtype=dtype) if x is None else np.asarray(x)

        return cls(
            variable=np.asarray(variable, dtype=object),
            time=np.asarray(time, dtype="datetime64[s]"),
            lat=lat,
            lon=lon,
            pressure=full(pressure, np.nan, np.float64),
            value=value,
            error=full(error, np.nan, np.float64),
            qc=full(qc, 0, np.int32),
            station=full(station, "", object),
            report_type=full(report_type, 0, np.int32),
            withheld=full(withheld, False, np.bool_),
        )

    @classmethod
    def empty(cls) -> ObsTable:
        return cls.create([], np.zeros(0, "datetime64[s]"), [], [], [])

    @classmethod
    def concat(cls, tables: Sequence[ObsTable]) -> ObsTable:
        if not tables:
            return cls.empty()
        return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)})

    def __len__(self) -> int:
        return len(self.variable)

    def select(self, mask: np.ndarray) -> ObsTable:
        return ObsTable(**{f.name: getattr(self, f.name)[mask] for f in fields(self)})

    def __repr__(self) -> str:
        names, counts = np.unique(self.variable.astype(str), return_counts=True)
        return f"ObsTable(n={len(self)}, variables={dict(zip(names.tolist(), counts.tolist(), strict=True))})"

    # ------------------------------------------------------------------ ObsTable → ObsSet
    def to_obsset(
        self,
        layout: ChannelLayout,
        analysis_time: np.datetime64 | str,
        window_offsets: Sequence[np.timedelta64] | np.ndarray,
        *,
        tolerance: np.timedelta64 | None = None,
        error_std: Mapping[str, float] | None = None,
        strict: bool = False,
        device: torch.device | str | None = None,
    ) -> ObsSet:
        """The observations of this table that observe ``layout`` inside the window.

        ``window_offsets`` are the window times relative to ``analysis_time`` (``Window.offsets``).
        A row belongs to the nearest window time when it is at most ``tolerance`` from it (default:
        half the smallest spacing of the offsets, or 3 h for a one-time window). ``error_std`` gives
        σ_o per aivarda variable (state units, as ``observations.error_std`` in a config) for rows
        whose file has no error. ``strict``: an observation of an aivarda variable that ``layout``
        lacks is an error instead of being left out (for files that should match the layout).
        """
        t0 = np.datetime64(analysis_time, "s")
        offsets = np.asarray([np.timedelta64(o, "s") for o in window_offsets], dtype="timedelta64[s]")
        if offsets.size == 0 or np.any(np.diff(offsets) <= np.timedelta64(0, "s")):
            raise ObservationError(f"observations: window offsets must be increasing and non-empty, got {offsets}")
        if tolerance is None:
            tolerance = np.min(np.diff(offsets)) // 2 if offsets.size > 1 else np.timedelta64(3, "h")
        tol_s = int(np.timedelta64(tolerance, "s") / _SECOND)
        layout_levels = np.asarray(layout.levels, dtype=np.float64)
        n = len(self)

        # which rows observe this state (variable and layout)
        channel = np.full(n, -1, dtype=np.int64)
        level = np.full(n, np.nan)
        scale = np.ones(n)
        state_var = np.empty(n, dtype=object)
        invalid = np.zeros(n, dtype=bool)
        has_p = np.isfinite(self.pressure)
        for (name, with_p), rows in _groups(self.variable, has_p):
            var = resolve(name, with_p)
            if var is None:
                continue
            if (var.aivarda not in layout.upper_air if var.upper_air else var.aivarda not in layout.surface) and strict:
                example = var.aivarda + (f"{self.pressure[rows[0]] / 100:g}" if var.upper_air else "")
                raise ObservationError(
                    f"observations: {rows.size} observations of {name} — channels this layout does not have "
                    f"(e.g. {example!r}; layout: surface {list(layout.surface)}, upper-air {list(layout.upper_air)})"
                )
            if var.upper_air:
                if var.aivarda not in layout.upper_air or not with_p:
                    continue
                first = layout.variable_slice(var.aivarda).start
                p_hpa = self.pressure[rows] / 100.0
                on_level = np.isclose(p_hpa[:, None], layout_levels[None, :], rtol=1e-9, atol=0.0)
                hit = on_level.any(axis=1)
                nearest = np.abs(np.log(np.maximum(p_hpa, 1e-30))[:, None] - np.log(layout_levels)[None, :]).argmin(1)
                channel[rows] = first + np.where(hit, on_level.argmax(1), nearest)
                level[rows] = np.where(hit, np.nan, p_hpa)
                lo, hi = layout_levels.min(), layout_levels.max()
                invalid[rows] |= ~hit & ((p_hpa < lo * (1 - 1e-9)) | (p_hpa > hi * (1 + 1e-9)) | ~np.isfinite(p_hpa))
            else:
                if var.aivarda not in layout.surface:
                    continue
                channel[rows] = layout.index(var.aivarda)
            scale[rows] = var.scale
            state_var[rows] = var.aivarda
        keep = channel >= 0

        # window time
        nat = np.isnat(self.time)
        dt = np.where(nat, 0, (self.time.astype("datetime64[s]") - t0) / _SECOND).astype(np.int64)
        off_s = (offsets / _SECOND).astype(np.int64)
        t_index = np.abs(dt[:, None] - off_s[None, :]).argmin(1)
        in_window = np.abs(dt - off_s[t_index]) <= tol_s
        keep &= in_window | nat
        invalid |= nat

        # σ_o: the file's, else error_std (state units)
        err = self.error * scale
        if error_std:
            unknown = sorted(set(error_std) - set(BY_AIVARDA))
            if unknown:
                raise ObservationError(f"observations: error_std for unknown variables {unknown}")
            fallback = np.array([error_std.get(v, np.nan) if v else np.nan for v in state_var])
            err = np.where(np.isfinite(err), err, fallback)
        value = self.value * scale
        invalid |= ~np.isfinite(value) | ~np.isfinite(err) | (err <= 0)
        invalid |= ~np.isfinite(self.lat) | ~np.isfinite(self.lon) | (np.abs(self.lat) > 90)
        qc = np.where(invalid & (self.qc == QCFlag.GOOD), int(QCFlag.INVALID), self.qc)

        rows = np.flatnonzero(keep)
        try:
            stations = encode_station_ids(self.station[rows])
        except AivardaError as exc:
            raise ObservationError(str(exc)) from None
        obs = ObsSet(
            time_index=torch.as_tensor(np.where(nat, 0, t_index)[rows]),
            time_offset_hours=torch.as_tensor(np.where(nat, np.nan, dt / 3600.0)[rows]),
            lat=torch.as_tensor(self.lat[rows]),
            lon=torch.as_tensor(np.where(np.isfinite(self.lon), self.lon, np.nan)[rows]),
            channel=torch.as_tensor(channel[rows]),
            level=torch.as_tensor(level[rows]),
            value=torch.as_tensor(value[rows].astype(np.float32)),
            error_std=torch.as_tensor(err[rows].astype(np.float32)),
            qc=torch.as_tensor(np.clip(qc[rows], -128, 127).astype(np.int8)),
            withheld=torch.as_tensor(self.withheld[rows]),
            station=torch.as_tensor(stations),
            report_type=torch.as_tensor(self.report_type[rows]),
        )
        return obs.to(device or "cpu")

    # ------------------------------------------------------------------ ObsSet → ObsTable
    @classmethod
    def from_obsset(cls, obs: ObsSet, layout: ChannelLayout, analysis_time: np.datetime64 | str) -> ObsTable:
        """The table of ``obs``: absolute times (analysis time + offset, to the second), IODA names
        and units, pressure in Pa from ``level`` or the channel's level."""
        obs = obs.to("cpu")
        t0 = np.datetime64(analysis_time, "s")
        names = layout.names
        n = len(obs)
        variable = np.empty(n, dtype=object)
        pressure = np.full(n, np.nan)
        scale = np.ones(n)
        level = obs.level.numpy()
        chans = obs.channel.numpy()
        for c in np.unique(chans).tolist():
            if not 0 <= c < layout.n_channels:
                raise ObservationError(f"observations: channel {c} outside the channel layout (0 … {layout.n_channels - 1})")
            var_name, lev = ChannelLayout.parse(names[c])
            var = for_aivarda(var_name)
            rows = chans == c
            variable[rows] = var.ioda
            scale[rows] = var.scale
            if lev is not None:
                pressure[rows] = np.where(np.isfinite(level[rows]), level[rows], float(lev)) * 100.0
        seconds = np.round(obs.time_offset_hours.numpy() * 3600.0)
        time = np.where(np.isfinite(seconds), t0 + seconds.astype(np.int64) * _SECOND if n else t0, np.datetime64("NaT"))
        return cls(
            variable=variable,
            time=np.asarray(time, dtype="datetime64[s]"),
            lat=obs.lat.numpy(),
            lon=obs.lon.numpy(),
            pressure=pressure,
            value=obs.value.double().numpy() / scale,
            error=obs.error_std.double().numpy() / scale,
            qc=obs.qc.numpy().astype(np.int32),
            station=np.asarray(decode_station_ids(obs.station), dtype=object),
            report_type=obs.report_type.numpy(),
            withheld=obs.withheld.numpy(),
        )


def _groups(variable: np.ndarray, has_p: np.ndarray) -> list[tuple[tuple[str, bool], np.ndarray]]:
    """Row indices per (variable name, has pressure)."""
    out = []
    for name in np.unique(variable.astype(str)).tolist():
        is_name = variable == name
        for with_p in (True, False):
            rows = np.flatnonzero(is_name & (has_p == with_p))
            if rows.size:
                out.append(((name, with_p), rows))
    return out


def hours_to_offsets(hours: Sequence[float]) -> list[np.timedelta64]:
    """Window offsets given in hours, e.g. ``[-3, 0, 3]``."""
    return [np.timedelta64(int(round(h * 3600)), "s") for h in hours]
