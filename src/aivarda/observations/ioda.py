"""JEDI IODA v3 observation files (netCDF-4/HDF5) ⇄ :class:`~aivarda.observations.table.ObsTable`.

Layout written (and required when read), as JEDI's IODA v3 ``ObsGroup`` defines it::

    dimensions:  Location = N                        (root group; variable Location = 0 … N−1)
    MetaData/dateTime               int64   "seconds since 1970-01-01T00:00:00Z"
    MetaData/latitude               float   degree_north
    MetaData/longitude              float   degree_east
    MetaData/pressure               float   Pa   (fill for surface observations)
    MetaData/stationIdentification  string
    MetaData/prepbufrReportType     int     NCEP prepbufr report type (fill when unknown)
    MetaData/withheld               int     aivarda: 1 = kept for verification, not assimilated
    ObsValue/<variable>             float   IODA units (aivarda.observations.variables)
    ObsError/<variable>             float   σ_o, same units
    PreQC/<variable>                int     aivarda QCFlag (0 good, 1 invalid, 2 gross, 3 background)

Every variable carries ``_FillValue``, JEDI's missing value of its type (``util::missingValue`` in
oops: float ``−3.3687953e+38`` = 0.99 × lowest float, int ``−2147483643`` = lowest int32 + 5, int64
``−9223372036854775801`` = lowest int64 + 7, string ``"MISSING*"``). One Location holds all
variables observed at one (time, position, pressure, station); a variable not observed there is
its fill value. Global attributes: ``_ioda_layout = "ObsGroup"``, ``_ioda_layout_version = 3``,
``datetimeReference`` (the analysis time, ISO 8601), ``converter = "aivarda"``, and aivarda's
``aivarda_window_offsets_seconds`` (the window of the file's ObsSet, so :func:`load_obs` restores
``time_index``) and ``aivarda_preqc = "QCFlag"``.

Reading accepts any IODA v3 file: ``Location`` dimension, ``MetaData/latitude``, ``longitude`` and
``dateTime`` (``seconds since <ISO time>``; any epoch) are required, the rest is optional. A value
equal to the variable's ``_FillValue`` (or to JEDI's missing value) is missing: a missing ObsValue
means "not observed here" (no row); a NaN ObsValue is an observation without a usable value, and a
missing position, time, error or pressure makes the row unusable too (both flagged
``QCFlag.INVALID`` by :meth:`ObsTable.to_obsset`, never used silently). Rows come back in Location
order (variables by name within a Location). ``PreQC`` is read as an aivarda
QCFlag in files aivarda wrote; for other files ``preqc_good`` says which PreQC values are good
(``PreQC ≤ preqc_good`` → good, larger → ``QCFlag.INVALID``; default 0). NCEP quality markers in
``QualityMarker/<variable>`` (prepbufr converters) flag an observation invalid when larger than 3, as
in :mod:`aivarda.observations.tabular`. The report type is ``MetaData/prepbufrReportType`` (as
ioda-converters' prepbufr converters write it), else ``MetaData/observationTypeNum``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5netcdf.legacyapi as nc
import numpy as np

from aivarda.errors import ObservationError
from aivarda.files import atomic_write
from aivarda.observations.obsset import QCFlag
from aivarda.observations.table import GOOD_MARKER_MAX, ObsTable
from aivarda.observations.variables import BY_IODA, SURFACE_ALIASES

EPOCH_UNITS = "seconds since 1970-01-01T00:00:00Z"
FLOAT_MISSING = np.float32(float(np.finfo(np.float32).min) * 0.99)  # -3.3687953e+38
DOUBLE_MISSING = np.float64(np.float32(float(np.finfo(np.float32).min) * 0.98))
INT_MISSING = np.int32(np.iinfo(np.int32).min + 5)  # -2147483643
INT64_MISSING = np.int64(np.iinfo(np.int64).min + 7)  # -9223372036854775801
STRING_MISSING = "MISSING*"
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
_SECOND = np.timedelta64(1, "s")


# ---------------------------------------------------------------------------------------- write
def write_ioda(
    table: ObsTable,
    path: str | Path,
    *,
    analysis_time: np.datetime64 | str | None = None,
    window_offsets: Sequence[np.timedelta64] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``table`` as an IODA v3 file (atomically; an existing file is an error unless
    ``overwrite``). ``analysis_time`` becomes ``datetimeReference``; ``window_offsets`` are kept
    for :func:`load_obs`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ObservationError(f"{path}: exists; refusing to overwrite an observation file")
    unknown = sorted(set(table.variable.tolist()) - set(BY_IODA) - set(SURFACE_ALIASES))
    if unknown:
        raise ObservationError(f"{path}: variables {unknown} have no IODA units in aivarda.observations.variables")
    loc, n_loc = _locations(table)
    variables = sorted(set(table.variable.tolist()))
    first = np.full(n_loc, -1, dtype=np.int64)
    first[loc[::-1]] = np.arange(len(table))[::-1]  # a row of each Location (same metadata)

    def meta(column: np.ndarray) -> np.ndarray:
        return column[first] if n_loc else column[:0]

    def write(tmp: Path) -> None:
        with nc.Dataset(tmp, "w") as ds:
            ds.createDimension("Location", n_loc)
            v = ds.createVariable("Location", np.int32, ("Location",))
            v[:] = np.arange(n_loc, dtype=np.int32)
            ds.setncattr("_ioda_layout", "ObsGroup")
            ds.setncattr("_ioda_layout_version", np.int32(3))
            ds.setncattr("converter", "aivarda")
            ds.setncattr("aivarda_preqc", "QCFlag")
            if analysis_time is not None:
                ds.setncattr("datetimeReference", str(np.datetime64(analysis_time, "s")) + "Z")
            if window_offsets is not None:
                offs = np.asarray([np.timedelta64(o, "s") / _SECOND for o in window_offsets], dtype=np.int64)
                ds.setncattr("aivarda_window_offsets_seconds", offs)
            md = ds.createGroup("MetaData")
            time = meta(table.time)
            seconds = (time - _EPOCH).astype("timedelta64[s]").astype(np.int64)
            seconds[np.isnat(time)] = INT64_MISSING
            _var(md, "dateTime", seconds, INT64_MISSING, EPOCH_UNITS)
            _var(md, "latitude", meta(table.lat), FLOAT_MISSING, "degree_north")
            _var(md, "longitude", meta(table.lon), FLOAT_MISSING, "degree_east")
            _var(md, "pressure", meta(table.pressure), FLOAT_MISSING, "Pa")
            station = np.asarray([s or STRING_MISSING for s in meta(table.station)], dtype=object)
            s = md.createVariable("stationIdentification", str, ("Location",))
            s[:] = station
            rtype = meta(table.report_type)
            _var(md, "prepbufrReportType", np.where(rtype == 0, INT_MISSING, rtype).astype(np.int32), INT_MISSING)
            _var(md, "withheld", meta(table.withheld).astype(np.int32), INT_MISSING, "1")
            groups = {g: ds.createGroup(g) for g in ("ObsValue", "ObsError", "PreQC")}
            for name in variables:
                rows = np.flatnonzero(table.variable == name)
                units = BY_IODA[SURFACE_ALIASES.get(name, name) if name not in BY_IODA else name].units
                for group, column, fill, dtype in (
                    ("ObsValue", table.value, FLOAT_MISSING, np.float32),
                    ("ObsError", table.error, FLOAT_MISSING, np.float32),
                    ("PreQC", table.qc, INT_MISSING, np.int32),
                ):
                    data = np.full(n_loc, fill, dtype=dtype)
                    data[loc[rows]] = column[rows]  # a NaN value stays NaN: present, but unusable
                    _var(groups[group], name, data, fill, None if group == "PreQC" else units)

    atomic_write(path, write)
    return path


def _var(group: Any, name: str, data: np.ndarray, fill: Any, units: str | None = None) -> None:
    dtype = np.asarray(fill).dtype
    data = np.asarray(data)
    if dtype == np.float32 and group.name.strip("/") != "ObsValue":
        data = np.where(np.isfinite(data), data, fill)
    v = group.createVariable(name, dtype, ("Location",), fill_value=fill)
    if data.size:
        v[:] = data.astype(dtype)
    if units is not None:
        v.setncattr("units", units)


def _locations(table: ObsTable) -> tuple[np.ndarray, int]:
    """Location index of every row: rows with the same time, position, pressure (as stored,
    float32), station, report type and withheld flag share a Location, one value per variable."""
    lat32 = table.lat.astype(np.float32)
    lon32 = table.lon.astype(np.float32)
    p32 = table.pressure.astype(np.float32)
    index: dict[tuple, int] = {}
    seen: dict[tuple, int] = {}
    loc = np.empty(len(table), dtype=np.int64)
    times = table.time.astype(np.int64).tolist()
    for i, key in enumerate(zip(times, lat32.tolist(), lon32.tolist(),
                                 [None if np.isnan(p) else p for p in p32.tolist()], table.station.tolist(),
                                 table.report_type.tolist(), table.withheld.tolist(), strict=True)):
        occurrence = seen.get((key, table.variable[i]), 0)
        seen[(key, table.variable[i])] = occurrence + 1
        full = (*key, occurrence)
        if full not in index:
            index[full] = len(index)
        loc[i] = index[full]
    return loc, len(index)


# ---------------------------------------------------------------------------------------- read
def _fail(path: Path, msg: str) -> ObservationError:
    return ObservationError(f"{path}: {msg}")


def _read(path: Path, group: Any, name: str, where: str, nan_missing: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Values and a 'missing' mask of one variable (its _FillValue, JEDI's missing value, and NaN
    unless ``nan_missing`` is false)."""
    var = group.variables[name]
    try:
        raw = var[...]
    except Exception as exc:  # noqa: BLE001 — h5py/h5netcdf raise many types for damaged data
        raise _fail(path, f"{where}: cannot be read ({type(exc).__name__}: {exc})") from None
    raw = np.ma.getdata(raw)
    if raw.ndim == 2 and raw.dtype.kind == "S":  # fixed-length char array [Location, nstring]
        raw = np.asarray([b"".join(row).decode("ascii", "replace") for row in raw], dtype=object)
    if raw.ndim != 1:
        raise _fail(path, f"{where}: expected dimensions (Location,), got shape {raw.shape}")
    if raw.dtype.kind in "OSU":
        values = np.asarray([x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in raw], dtype=object)
        values = np.asarray([s.strip().rstrip("\x00") for s in values], dtype=object)
        missing = np.isin(values, ["", STRING_MISSING])
        return values, missing
    fill = var.attrs.get("_FillValue") if hasattr(var, "attrs") else None
    missing = np.zeros(raw.shape, dtype=bool)
    if fill is not None:
        missing |= raw == np.asarray(fill).astype(raw.dtype).reshape(())
    if raw.dtype.kind == "f":
        missing |= (raw == FLOAT_MISSING) | (raw == DOUBLE_MISSING) | (np.isinf(raw) if not nan_missing else ~np.isfinite(raw))
    elif raw.dtype.kind in "iu":
        jedi = INT64_MISSING if raw.dtype.itemsize == 8 else INT_MISSING
        if raw.dtype.itemsize >= 4:
            missing |= raw == jedi
    return raw, missing


def _epoch_from_units(path: Path, units: Any) -> np.datetime64:
    text = units.decode() if isinstance(units, bytes) else str(units) if units is not None else ""
    if not text.startswith("seconds since "):
        raise _fail(path, f"MetaData/dateTime: units {text!r}, expected 'seconds since <ISO time>' "
                          f"(IODA: {EPOCH_UNITS!r})")
    ref = text[len("seconds since "):].strip().rstrip("Z").replace(" ", "T")
    try:
        return np.datetime64(ref, "s")
    except ValueError:
        raise _fail(path, f"MetaData/dateTime: cannot read the reference time in units {text!r}") from None


def read_ioda(path: str | Path, *, preqc_good: int | None = None) -> ObsTable:
    """Read an IODA v3 file (any converter's, or :func:`write_ioda`'s) into an :class:`ObsTable`."""
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"{path}: observation file not found")
    try:
        ds = nc.Dataset(path, "r")
    except Exception as exc:  # noqa: BLE001 — not HDF5 / not netCDF-4
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"not an IODA (netCDF-4/HDF5) observation file ({first})") from None
    with ds:
        return _read_open(path, ds, preqc_good)


def _read_open(path: Path, ds: Any, preqc_good: int | None) -> ObsTable:
    if "Location" not in ds.dimensions:
        found = sorted(ds.dimensions)
        hint = " — an IODA v1/v2 file ('nlocs'): upgrade it to v3 (ioda-upgrade-v2-to-v3)" if "nlocs" in found else ""
        raise _fail(path, f"no root dimension 'Location' (IODA v3); found {found}{hint}")
    n = int(ds.dimensions["Location"].size)
    groups = ds.groups
    if "MetaData" not in groups:
        raise _fail(path, "missing group MetaData/")
    md = groups["MetaData"]
    for name in ("dateTime", "latitude", "longitude"):
        if name not in md.variables:
            old = name == "dateTime" and "datetime" in md.variables
            hint = " (an old 'datetime' string variable: upgrade the file to IODA v3)" if old else ""
            raise _fail(path, f"missing MetaData/{name}{hint}")
    seconds, t_missing = _read(path, md, "dateTime", "MetaData/dateTime")
    if seconds.dtype.kind not in "iu":
        raise _fail(path, f"MetaData/dateTime: type {seconds.dtype}, expected int64 seconds")
    epoch = _epoch_from_units(path, md.variables["dateTime"].attrs.get("units"))
    time = np.where(t_missing, np.datetime64("NaT"), epoch + np.where(t_missing, 0, seconds).astype(np.int64) * _SECOND)

    def column(name: str, dtype: Any, missing_as: Any) -> np.ndarray:
        if name not in md.variables:
            return np.full(n, missing_as, dtype=dtype)
        values, miss = _read(path, md, name, f"MetaData/{name}")
        if values.shape != (n,):
            raise _fail(path, f"MetaData/{name}: {values.shape[0]} values, expected Location = {n}")
        out = values.astype(dtype) if dtype is not object else values
        out = np.asarray(out, dtype=dtype)
        out[miss] = missing_as
        return out

    lat = column("latitude", np.float64, np.nan)
    lon = column("longitude", np.float64, np.nan)
    pressure = column("pressure", np.float64, np.nan)
    station = column("stationIdentification", object, "")
    report_type = column("prepbufrReportType" if "prepbufrReportType" in md.variables else "observationTypeNum",
                         np.int32, 0)
    withheld = column("withheld", np.int32, 0).astype(bool)
    if time.shape != (n,):
        raise _fail(path, f"MetaData/dateTime: {time.shape[0]} values, expected Location = {n}")

    if "ObsValue" not in groups:
        raise _fail(path, "missing group ObsValue/")
    aivarda_qc = str(ds.attrs.get("aivarda_preqc", "")) == "QCFlag" if preqc_good is None else False
    tables, locations = [], []
    for name in sorted(groups["ObsValue"].variables):
        value, v_missing = _read(path, groups["ObsValue"], name, f"ObsValue/{name}", nan_missing=False)
        if value.shape != (n,) or value.dtype.kind not in "fiu":
            raise _fail(path, f"ObsValue/{name}: expected {n} numbers (Location), got {value.shape} {value.dtype}")
        error = np.full(n, np.nan)
        if "ObsError" in groups and name in groups["ObsError"].variables:
            e, e_missing = _read(path, groups["ObsError"], name, f"ObsError/{name}")
            if e.shape != (n,):
                raise _fail(path, f"ObsError/{name}: {e.shape[0]} values, expected Location = {n}")
            error = np.where(e_missing, np.nan, e.astype(np.float64))
        qc = np.zeros(n, dtype=np.int32)
        if "QualityMarker" in groups and name in groups["QualityMarker"].variables:  # NCEP markers (prepbufr)
            m, m_missing = _read(path, groups["QualityMarker"], name, f"QualityMarker/{name}")
            if m.shape != (n,) or m.dtype.kind not in "iu":
                raise _fail(path, f"QualityMarker/{name}: expected {n} integers (Location), got {m.shape} {m.dtype}")
            qc = np.where(~m_missing & (m > GOOD_MARKER_MAX), int(QCFlag.INVALID), 0).astype(np.int32)
        if "PreQC" in groups and name in groups["PreQC"].variables:
            q, q_missing = _read(path, groups["PreQC"], name, f"PreQC/{name}")
            if q.shape != (n,) or q.dtype.kind not in "iu":
                raise _fail(path, f"PreQC/{name}: expected {n} integers (Location), got {q.shape} {q.dtype}")
            q = np.where(q_missing, 0, q).astype(np.int64)
            if aivarda_qc:
                qc = np.where((q >= 0) & (q <= max(QCFlag)), q, int(QCFlag.INVALID)).astype(np.int32)
            else:
                qc = np.maximum(qc, np.where(q <= (preqc_good or 0), 0, int(QCFlag.INVALID))).astype(np.int32)
        rows = np.flatnonzero(~v_missing)
        locations.append(rows)
        tables.append(ObsTable(
            variable=np.full(rows.size, name, dtype=object), time=time[rows], lat=lat[rows], lon=lon[rows],
            pressure=pressure[rows], value=value[rows].astype(np.float64), error=error[rows], qc=qc[rows],
            station=station[rows], report_type=report_type[rows], withheld=withheld[rows],
        ))
    table = ObsTable.concat(tables)  # rows in Location order (variables by name within a Location)
    return table.select(np.argsort(np.concatenate(locations), kind="stable")) if tables else table


def file_window(path: str | Path) -> tuple[np.datetime64 | None, list[np.timedelta64] | None]:
    """The analysis time (``datetimeReference``) and aivarda window offsets stored in an IODA file
    (``None`` where absent)."""
    path = Path(path)
    try:
        with nc.Dataset(path, "r") as ds:
            ref = ds.attrs.get("datetimeReference")
            offs = ds.attrs.get("aivarda_window_offsets_seconds")
    except Exception:  # noqa: BLE001 — read_ioda gives the clear error
        return None, None
    t0 = None
    if ref is not None:
        try:
            t0 = np.datetime64(str(ref).rstrip("Z"), "s")
        except ValueError:
            raise _fail(path, f"global attribute datetimeReference {ref!r} is not an ISO 8601 time") from None
    offsets = None if offs is None else [np.timedelta64(int(s), "s") for s in np.atleast_1d(offs)]
    return t0, offsets
