"""Conventional reports as tables (Parquet or CSV, read with pyarrow) ⇄ :class:`ObsTable`.

The columns are NCEP prepbufr mnemonics, as the NOAA–NASA Joint Archive (NNJA) tables of
prepbufr ``ADPUPA`` (radiosonde) and ``ADPSFC`` (surface land) reports carry them, one row per
report level, in prepbufr units:

======  ========  ==============================================================  ==========
column  required  meaning                                                         units
======  ========  ==============================================================  ==========
SID     yes       station identifier (≤ 9 characters)                             text
XOB     yes       longitude                                                       degree E
YOB     yes       latitude                                                        degree N
time    yes*      observation time (timestamp or ISO 8601 text, UTC)              —
DHR     yes*      hours from the cycle time (with ``cycle_time=`` instead of time) h
TYP     yes       prepbufr report type: ``TYP % 100 ≥ 80`` surface (181 SYNOP      code
                  mass, 281 wind, …), otherwise upper air (120 radiosonde mass,
                  220 wind, …)
POB     no        upper air: pressure of the level; surface: station pressure     hPa (mb)
TOB     no        upper air: air temperature; surface: 2 m temperature            °C
QOB     no        specific humidity (upper air)                                   mg kg⁻¹
ZOB     no        geopotential height (upper air)                                 m
UOB     no        eastward wind (upper air; surface: 10 m)                        m s⁻¹
VOB     no        northward wind                                                  m s⁻¹
PMO     no        pressure reduced to mean sea level (surface)                    hPa (mb)
TOE     no        temperature error                                               K
WOE     no        wind error (each component)                                     m s⁻¹
POE     no        pressure error (station pressure)                               hPa (mb)
PQM     no        pressure quality marker (also marks PMO, and POB as a level)    code
TQM     no        temperature quality marker                                      code
QQM     no        humidity quality marker                                         code
ZQM     no        height quality marker                                           code
WQM     no        wind quality marker                                             code
======  ========  ==============================================================  ==========

(*) one of ``time`` or ``DHR``. Empty cells (null) are missing. A quality marker ≤ 3 (NCEP: 0 keep,
1 good, 2 neutral, 3 suspect) keeps the observation; larger markers (rejected upstream) flag it
``QCFlag.INVALID``. An upper-air level without ``POB`` is flagged invalid. Values are converted to
IODA units (K, kg kg⁻¹, Pa); the variables are those of :mod:`aivarda.observations.variables`.
:func:`write_tabular` writes the same columns (time as a timestamp), so a table round-trips.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aivarda.errors import ObservationError
from aivarda.files import atomic_write
from aivarda.observations.obsset import QCFlag
from aivarda.observations.table import GOOD_MARKER_MAX, ObsTable
from aivarda.observations.variables import resolve

ZERO_CELSIUS = 273.15
REQUIRED = ("SID", "XOB", "YOB", "TYP")
# column → (IODA variable upper air, IODA variable surface, file → IODA: (scale, offset), QM, error column, error scale)
VALUE_COLUMNS: dict[str, tuple[str | None, str | None, tuple[float, float], str, str | None, float]] = {
    "TOB": ("airTemperature", "airTemperatureAt2M", (1.0, ZERO_CELSIUS), "TQM", "TOE", 1.0),
    "QOB": ("specificHumidity", None, (1e-6, 0.0), "QQM", None, 1.0),
    "ZOB": ("geopotentialHeight", None, (1.0, 0.0), "ZQM", None, 1.0),
    "UOB": ("windEastward", "windEastwardAt10M", (1.0, 0.0), "WQM", "WOE", 1.0),
    "VOB": ("windNorthward", "windNorthwardAt10M", (1.0, 0.0), "WQM", "WOE", 1.0),
    "POB": (None, "stationPressure", (100.0, 0.0), "PQM", "POE", 100.0),
    "PMO": (None, "pressureReducedToMeanSeaLevel", (100.0, 0.0), "PQM", None, 1.0),
}


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError as exc:
        raise ObservationError(f"Parquet/CSV observation files need pyarrow (pip install pyarrow): {exc}") from None
    return pyarrow


def is_surface(report_type: np.ndarray) -> np.ndarray:
    """prepbufr report types 180–199 / 280–299 (``TYP % 100 ≥ 80``) are surface reports."""
    return np.mod(report_type, 100) >= 80


def read_tabular(path: str | Path, *, cycle_time: np.datetime64 | str | None = None) -> ObsTable:
    """Read a Parquet (``.parquet``/``.pq``) or CSV (``.csv``) table of prepbufr-style reports."""
    pa = _pyarrow()
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"{path}: observation file not found")
    try:
        if path.suffix.lower() == ".csv":
            opts = pa.csv.ConvertOptions(column_types={"SID": pa.string()}, strings_can_be_null=True)
            tab = pa.csv.read_csv(path, convert_options=opts)
        else:
            tab = pa.parquet.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ObservationError(f"{path}: not a readable {path.suffix} table ({first})") from None
    names = set(tab.column_names)
    missing = [c for c in REQUIRED if c not in names]
    if "time" not in names and not ("DHR" in names and cycle_time is not None):
        missing.append("time (or DHR with cycle_time=)")
    if missing:
        raise ObservationError(f"{path}: missing required columns {missing}; found {sorted(names)}")

    def num(col: str) -> np.ndarray:
        if col not in names:
            return np.full(tab.num_rows, np.nan)
        try:
            return np.asarray(tab.column(col).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise ObservationError(f"{path}: column {col} is not numeric ({tab.column(col).type})") from None

    station = np.asarray(["" if s is None else str(s).strip() for s in tab.column("SID").to_pylist()], dtype=object)
    lon, lat, typ = num("XOB"), num("YOB"), num("TYP")
    if not np.isfinite(typ).all():
        raise ObservationError(f"{path}: column TYP has empty cells; every report needs its prepbufr type")
    if "time" in names:
        time = _times(path, tab.column("time").to_pylist())
    else:
        dhr = num("DHR")
        t0 = np.datetime64(cycle_time, "s")
        time = np.where(np.isfinite(dhr), t0 + np.round(np.nan_to_num(dhr) * 3600).astype(np.int64) * np.timedelta64(1, "s"),
                        np.datetime64("NaT"))
    surface = is_surface(typ.astype(np.int64))
    pob = num("POB") * 100.0  # Pa
    out = []
    for col, (upper_name, surface_name, (scale, offset), qm_col, err_col, err_scale) in VALUE_COLUMNS.items():
        if col not in names:
            continue
        value = num(col) * scale + offset
        marker = num(qm_col)
        error = num(err_col) * err_scale if err_col else np.full(tab.num_rows, np.nan)
        for is_sfc, name in ((False, upper_name), (True, surface_name)):
            if name is None:
                continue
            rows = np.flatnonzero(np.isfinite(value) & (surface == is_sfc))
            if not rows.size:
                continue
            bad = np.isfinite(marker[rows]) & (marker[rows] > GOOD_MARKER_MAX)
            pressure = np.full(rows.size, np.nan) if is_sfc else pob[rows]
            if not is_sfc:
                bad |= ~np.isfinite(pressure)
            out.append(ObsTable.create(
                [name] * rows.size, time[rows], lat[rows], lon[rows], value[rows], pressure=pressure,
                error=error[rows], qc=np.where(bad, int(QCFlag.INVALID), 0), station=station[rows],
                report_type=typ[rows].astype(np.int32),
            ))
    return ObsTable.concat(out)


def _times(path: Path, values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype="datetime64[s]")
    for i, v in enumerate(values):
        if v is None:
            out[i] = np.datetime64("NaT")
            continue
        try:
            if hasattr(v, "tzinfo") and v.tzinfo is not None:
                v = v.replace(tzinfo=None) - (v.utcoffset() or 0)
            out[i] = np.datetime64(str(v).rstrip("Z").replace(" ", "T")[:19] if isinstance(v, str) else v, "s")
        except (ValueError, TypeError):
            raise ObservationError(f"{path}: column time, row {i}: {v!r} is not a time (ISO 8601, UTC)") from None
    return out


# column of each IODA variable when writing (inverse of VALUE_COLUMNS)
_WRITE = {name: col for col, (up, sfc, *_rest) in VALUE_COLUMNS.items() for name in (up, sfc) if name}


def write_tabular(table: ObsTable, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``table`` as a prepbufr-style Parquet or CSV table (one row per report level:
    station, time, position, report type, pressure). Rows without a report type get 120/220
    (upper air) or 181/281 (surface)."""
    pa = _pyarrow()
    path = Path(path)
    if path.exists() and not overwrite:
        raise ObservationError(f"{path}: exists; refusing to overwrite an observation file")
    has_p = np.isfinite(table.pressure)
    rows: dict[tuple, dict[str, Any]] = {}
    for i in range(len(table)):
        var = resolve(str(table.variable[i]), bool(has_p[i]))
        name = var.ioda if var is not None else str(table.variable[i])
        col = _WRITE.get(name)
        if col is None or (col == "POB" and has_p[i]):
            raise ObservationError(f"{path}: variable {name} has no prepbufr column ({sorted(_WRITE)})")
        wind = col in ("UOB", "VOB")
        typ = int(table.report_type[i]) or (200 if wind else 100) + (81 if not has_p[i] else 20)
        key = (table.station[i], int(table.time[i].astype(np.int64)), float(table.lat[i]), float(table.lon[i]),
               float(table.pressure[i]) if has_p[i] else None, typ)
        row = rows.setdefault(key, {"SID": key[0], "time": table.time[i], "XOB": key[3], "YOB": key[2], "TYP": typ,
                                    "POB": table.pressure[i] / 100.0 if has_p[i] else None})
        scale, offset = VALUE_COLUMNS[col][2]
        if row.get(col) is not None:
            raise ObservationError(f"{path}: two {col} values in the report of {key[0]!r} at {table.time[i]}")
        row[col] = (table.value[i] - offset) / scale
        qm_col, err_col, err_scale = VALUE_COLUMNS[col][3], VALUE_COLUMNS[col][4], VALUE_COLUMNS[col][5]
        row[qm_col] = max(row.get(qm_col) or 0, 0 if table.qc[i] == 0 else 13)
        if err_col and np.isfinite(table.error[i]):
            row[err_col] = table.error[i] / err_scale
    columns = ["SID", "time", "XOB", "YOB", "TYP", *VALUE_COLUMNS, "TOE", "WOE", "POE", "PQM", "TQM", "QQM", "ZQM", "WQM"]
    data = {c: [r.get(c) for r in rows.values()] for c in columns}
    data["time"] = [np.datetime64(t, "s").astype(object) for t in data["time"]]
    types = {c: pa.string() if c == "SID" else pa.timestamp("s") if c == "time" else pa.int32()
             if c == "TYP" or c.endswith("QM") else pa.float64() for c in columns}
    arrow = pa.table({c: pa.array(data[c], type=types[c]) for c in columns})
    if path.suffix.lower() == ".csv":
        atomic_write(path, lambda tmp: pa.csv.write_csv(arrow, tmp))
    else:
        atomic_write(path, lambda tmp: pa.parquet.write_table(arrow, tmp))
    return path
