"""WMO BUFR station reports ⇄ :class:`~aivarda.observations.table.ObsTable`, with ecCodes.

Two WMO templates (BUFR edition 4, ecCodes sample ``BUFR4``, one report per message, uncompressed):

- **TEMP** (radiosonde, ``unexpandedDescriptors = 309052``, data category 2): WMO block/station
  number (``blockNumber``, ``stationNumber``) or the 9-character ``shipOrMobileLandStationIdentifier``,
  launch time and position, then per level (``extendedDelayedDescriptorReplicationFactor`` levels)
  ``timePeriod`` (s since launch), ``pressure``, ``nonCoordinateGeopotentialHeight``,
  ``latitudeDisplacement``/``longitudeDisplacement``, ``airTemperature``, ``dewpointTemperature``,
  ``windDirection``, ``windSpeed``. Observations with a pressure (upper-air) are written as TEMP.
- **SYNOP** (surface land station, ``unexpandedDescriptors = 307080``, data category 0): block/station
  number (or ``stationOrSiteName`` for a non-WMO id), time to the minute, position,
  ``nonCoordinatePressure`` (station pressure), ``pressureReducedToMeanSeaLevel``, 2 m
  ``airTemperature``, 10 m ``windDirection``/``windSpeed``. Surface observations are written as SYNOP.

Conversions (BUFR carries what a station reports): specific humidity ⇄ dew point at the level's
pressure with Bolton's (1980) saturation vapour pressure over water,
``e_s(T) = 611.2 exp(17.67 (T − 273.15) / (T − 29.65))`` Pa and ``q = ε e / (p − (1 − ε) e)``,
``ε = 0.621981``; wind components ⇄ direction (from which, degrees true) and speed,
``u = −s sin(d)``, ``v = −s cos(d)``. Report types on reading are the NCEP prepbufr ones: 120 (TEMP
mass: T, q, z), 220 (TEMP wind), 181 (SYNOP mass: T, pressures), 281 (SYNOP wind).

Precision of each element (the WMO BUFR table B scale): pressure 10 Pa; temperature and dew point
0.01 K; geopotential height 1 m; wind direction 1°; wind speed 0.1 m s⁻¹; latitude, longitude and
their displacements 10⁻⁵ degree; time 1 s (TEMP: launch time + ``timePeriod``) and 1 minute
(SYNOP, which has no seconds: they are dropped). BUFR has no σ_o, QC flag or withheld mark: a read
table has no error (give ``error_std`` to :meth:`ObsTable.to_obsset`), QC good, not withheld.

ecCodes is imported when a function is called (the ``eccodes`` package, whose wheel brings the
ecCodes library); a missing install is one clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aivarda.errors import ObservationError
from aivarda.files import atomic_write
from aivarda.observations.table import ObsTable
from aivarda.observations.variables import resolve

EPSILON = 0.621981  # Rd / Rv
TEMP_TEMPLATE = 309052
SYNOP_TEMPLATE = 307080
UPPER_AIR = ("airTemperature", "specificHumidity", "windEastward", "windNorthward", "geopotentialHeight")
SURFACE = ("airTemperatureAt2M", "windEastwardAt10M", "windNorthwardAt10M", "pressureReducedToMeanSeaLevel",
           "stationPressure")
REPORT_TYPES = {"temp_mass": 120, "temp_wind": 220, "synop_mass": 181, "synop_wind": 281}
_SECOND = np.timedelta64(1, "s")


def _eccodes() -> Any:
    try:
        import eccodes
    except (ImportError, RuntimeError) as exc:
        raise ObservationError(
            f"BUFR needs the 'eccodes' Python package with its ecCodes library (pip install eccodes): {exc}"
        ) from None
    return eccodes


# ------------------------------------------------------------------------------ conversions
def saturation_vapour_pressure(t: np.ndarray) -> np.ndarray:
    """Bolton (1980) over water, Pa, ``t`` in K."""
    return 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))


def specific_humidity_from_dewpoint(td: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``q = ε e / (p − (1 − ε) e)``, ``e = e_s(Td)``; ``p`` in Pa."""
    e = saturation_vapour_pressure(td)
    return EPSILON * e / (p - (1.0 - EPSILON) * e)


def dewpoint_from_specific_humidity(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Inverse of :func:`specific_humidity_from_dewpoint` (``q > 0``)."""
    e = q * p / (EPSILON + (1.0 - EPSILON) * q)
    x = np.log(e / 611.2)
    return (29.65 * x - 17.67 * 273.15) / (x - 17.67)


def wind_to_direction_speed(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Meteorological direction (from which, degrees in [0, 360)) and speed."""
    return np.mod(np.degrees(np.arctan2(-u, -v)), 360.0), np.hypot(u, v)


def direction_speed_to_wind(d: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rad = np.radians(d)
    return -s * np.sin(rad), -s * np.cos(rad)


# ------------------------------------------------------------------------------ write
def write_bufr(table: ObsTable, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the station reports of ``table`` as BUFR messages: one TEMP message per (station, time)
    with upper-air rows, one SYNOP message per (station, time) with surface rows."""
    ec = _eccodes()
    path = Path(path)
    if path.exists() and not overwrite:
        raise ObservationError(f"{path}: exists; refusing to overwrite an observation file")
    has_p = np.isfinite(table.pressure)
    names = np.empty(len(table), dtype=object)
    for i, (name, p) in enumerate(zip(table.variable.tolist(), has_p.tolist(), strict=True)):
        var = resolve(name, p)
        names[i] = var.ioda if var is not None else name
    bad = sorted({n for n, p in zip(names.tolist(), has_p.tolist(), strict=True)
                  if n not in (UPPER_AIR if p else SURFACE)})
    if bad:
        raise ObservationError(
            f"{path}: BUFR TEMP/SYNOP carry upper-air {list(UPPER_AIR)} (with a pressure) and surface "
            f"{list(SURFACE)} (without); cannot write {bad}"
        )
    if np.isnat(table.time).any() or not np.isfinite(table.lat).all() or not np.isfinite(table.lon).all():
        raise ObservationError(f"{path}: every observation written to BUFR needs a time and a position")
    if (table.station == "").any():
        raise ObservationError(f"{path}: BUFR reports are per station; {int((table.station == '').sum())} "
                               "observations have no station id (ObsTable.station / ObsSet.station)")
    reports: dict[tuple[bool, str, int], list[int]] = {}
    for i, key in enumerate(zip(has_p.tolist(), table.station.tolist(), table.time.astype(np.int64).tolist(), strict=True)):
        reports.setdefault(key, []).append(i)
    messages = [(_encode_temp if key[0] else _encode_synop)(ec, table, names, np.asarray(reports[key]), path)
                for key in sorted(reports, key=lambda k: (not k[0], k[1], k[2]))]
    atomic_write(path, lambda tmp: tmp.write_bytes(b"".join(messages)))
    return path


def _column(table: ObsTable, names: np.ndarray, sel: np.ndarray, variable: str, where: str,
            p_keys: np.ndarray | None = None, levels: np.ndarray | None = None) -> np.ndarray:
    """Values of ``variable`` per level (upper-air) or the single value (surface); NaN if absent."""
    rows = sel[names[sel] == variable]
    if levels is None:
        if rows.size > 1:
            raise ObservationError(f"{where}: {rows.size} values of {variable} in one report")
        return np.asarray([table.value[rows[0]] if rows.size else np.nan])
    out = np.full(levels.size, np.nan)
    for r in rows:
        i = int(np.searchsorted(-levels, -np.float32(table.pressure[r])))
        if not np.isnan(out[i]):
            raise ObservationError(f"{where}: two values of {variable} at {table.pressure[r]} Pa")
        out[i] = table.value[r]
    return out


def _station_keys(station: str) -> tuple[int | None, int | None, str]:
    if len(station) == 5 and station.isdigit():
        return int(station[:2]), int(station[2:]), ""
    return None, None, station


def _set_time_header(ec: Any, h: Any, t: np.datetime64, with_seconds: bool) -> None:
    dt = t.astype("datetime64[s]").item()
    for key, value in (("year", dt.year), ("month", dt.month), ("day", dt.day), ("hour", dt.hour), ("minute", dt.minute)):
        ec.codes_set(h, "typical" + key.capitalize(), value)
        ec.codes_set(h, key, value)
    ec.codes_set(h, "typicalSecond", dt.second if with_seconds else 0)
    if with_seconds:
        ec.codes_set(h, "second", dt.second)


def _set(ec: Any, h: Any, key: str, values: np.ndarray, integer: bool = False) -> None:
    missing = ec.CODES_MISSING_LONG if integer else ec.CODES_MISSING_DOUBLE
    arr = np.where(np.isfinite(values), np.round(values) if integer else values, missing)
    if integer:
        ec.codes_set_array(h, key, arr.astype(np.int64))
    else:
        ec.codes_set_array(h, key, arr.astype(np.float64))


def _start_message(ec: Any, h: Any, category: tuple[int, int], template: int, station: str, ident_key: str, *,
                   delayed: list[int], extended: list[int] | None = None) -> None:
    """The section-1 category, one uncompressed observed subset, the template (replication factors
    first, as ecCodes expands the descriptors when they are set) and the station: WMO block/station
    numbers, or the identifier under ``ident_key``."""
    ec.codes_set(h, "dataCategory", category[0])
    ec.codes_set(h, "internationalDataSubCategory", category[1])
    ec.codes_set(h, "numberOfSubsets", 1)
    ec.codes_set(h, "observedData", 1)
    ec.codes_set(h, "compressedData", 0)
    if extended is not None:
        ec.codes_set_array(h, "inputExtendedDelayedDescriptorReplicationFactor", extended)
    ec.codes_set_array(h, "inputDelayedDescriptorReplicationFactor", delayed)
    ec.codes_set_array(h, "unexpandedDescriptors", [template])
    block, number, ident = _station_keys(station)
    if block is not None:
        ec.codes_set(h, "blockNumber", block)
        ec.codes_set(h, "stationNumber", number)
    elif ident:
        ec.codes_set(h, ident_key, ident)


def _encoded(ec: Any, where: str, fill: Callable[[Any], None]) -> bytes:
    """A new BUFR4 message filled by ``fill(handle)`` and packed; an ecCodes error is one
    ObservationError naming ``where``; the handle is always released."""
    h = ec.codes_bufr_new_from_samples("BUFR4")
    try:
        fill(h)
        ec.codes_set(h, "pack", 1)
        return ec.codes_get_message(h)
    except ec.CodesInternalError as exc:
        raise ObservationError(f"{where}: ecCodes could not encode it ({exc})") from None
    finally:
        ec.codes_release(h)


def _encode_temp(ec: Any, table: ObsTable, names: np.ndarray, sel: np.ndarray, path: Path) -> bytes:
    station, t = table.station[sel[0]], table.time[sel[0]]
    where = f"{path}: TEMP report of station {station!r} at {t}"
    levels = np.unique(table.pressure[sel].astype(np.float32))[::-1].astype(np.float64)  # surface first
    lev_of = {float(p): i for i, p in enumerate(levels)}
    lat = np.full(levels.size, np.nan)
    lon = np.full(levels.size, np.nan)
    for r in sel:
        i = lev_of[float(np.float32(table.pressure[r]))]
        if np.isnan(lat[i]):
            lat[i], lon[i] = table.lat[r], table.lon[r]
        elif (lat[i], lon[i]) != (table.lat[r], table.lon[r]):
            raise ObservationError(f"{where}: two positions at {levels[i]} Pa")
    col = {v: _column(table, names, sel, v, where, levels=levels) for v in UPPER_AIR}
    u, v = col["windEastward"], col["windNorthward"]
    if np.any(np.isfinite(u) != np.isfinite(v)):
        raise ObservationError(f"{where}: BUFR carries wind as direction and speed; give both components at each level")
    q = col["specificHumidity"]
    if np.any(np.isfinite(q) & (q <= 0)):
        raise ObservationError(f"{where}: specific humidity must be positive to be written as a dew point")
    direction, speed = wind_to_direction_speed(u, v)
    lon0 = lon[0]
    dlon = (lon - lon0 + 180.0) % 360.0 - 180.0

    def fill(h: Any) -> None:
        _start_message(ec, h, (2, 4), TEMP_TEMPLATE, station, "shipOrMobileLandStationIdentifier",
                       delayed=[0], extended=[levels.size])
        _set_time_header(ec, h, t, with_seconds=True)
        ec.codes_set(h, "latitude", float(lat[0]))
        ec.codes_set(h, "longitude", float((lon0 + 180.0) % 360.0 - 180.0))
        _set(ec, h, "timePeriod", np.zeros(levels.size), integer=True)
        _set(ec, h, "pressure", levels)
        _set(ec, h, "nonCoordinateGeopotentialHeight", col["geopotentialHeight"], integer=True)
        _set(ec, h, "latitudeDisplacement", lat - lat[0])
        _set(ec, h, "longitudeDisplacement", dlon)
        _set(ec, h, "airTemperature", col["airTemperature"])
        _set(ec, h, "dewpointTemperature", np.where(np.isfinite(q), dewpoint_from_specific_humidity(
            np.where(q > 0, q, 1.0), levels), np.nan))
        _set(ec, h, "windDirection", direction, integer=True)
        _set(ec, h, "windSpeed", speed)

    return _encoded(ec, where, fill)


def _encode_synop(ec: Any, table: ObsTable, names: np.ndarray, sel: np.ndarray, path: Path) -> bytes:
    station, t = table.station[sel[0]], table.time[sel[0]]
    where = f"{path}: SYNOP report of station {station!r} at {t}"
    positions = {(float(table.lat[r]), float(table.lon[r])) for r in sel}
    if len(positions) > 1:
        raise ObservationError(f"{where}: {len(positions)} positions in one report")
    lat, lon = positions.pop()
    col = {v: _column(table, names, sel, v, where) for v in SURFACE}
    u, v = col["windEastwardAt10M"], col["windNorthwardAt10M"]
    if np.isfinite(u[0]) != np.isfinite(v[0]):
        raise ObservationError(f"{where}: BUFR carries wind as direction and speed; give both 10 m components")
    direction, speed = wind_to_direction_speed(u, v)

    def fill(h: Any) -> None:
        _start_message(ec, h, (0, 0), SYNOP_TEMPLATE, station, "stationOrSiteName", delayed=[0, 0])
        _set_time_header(ec, h, t, with_seconds=False)
        ec.codes_set(h, "latitude", lat)
        ec.codes_set(h, "longitude", (lon + 180.0) % 360.0 - 180.0)
        _set(ec, h, "nonCoordinatePressure", col["stationPressure"])
        _set(ec, h, "pressureReducedToMeanSeaLevel", col["pressureReducedToMeanSeaLevel"])
        ec.codes_set(h, "#1#heightOfSensorAboveLocalGroundOrDeckOfMarinePlatform", 2.0)
        _set(ec, h, "#1#airTemperature", col["airTemperatureAt2M"])
        ec.codes_set(h, "#7#heightOfSensorAboveLocalGroundOrDeckOfMarinePlatform", 10.0)
        _set(ec, h, "#1#windDirection", direction, integer=True)
        _set(ec, h, "#1#windSpeed", speed)

    return _encoded(ec, where, fill)


# ------------------------------------------------------------------------------ read
def read_bufr(path: str | Path) -> ObsTable:
    """Decode the TEMP and SYNOP reports of a BUFR file (one or more uncompressed subsets per
    message) into an :class:`ObsTable`; other templates raise one ObservationError line."""
    ec = _eccodes()
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"{path}: observation file not found")
    tables = []
    with open(path, "rb") as fh:
        for k, h in enumerate(_messages(ec, fh, path)):
            try:
                where = f"{path}: message {k + 1}"
                try:
                    ec.codes_set(h, "unpack", 1)
                except ec.CodesInternalError as exc:
                    raise ObservationError(f"{where}: cannot be decoded ({exc})") from None
                n_sub = int(ec.codes_get(h, "numberOfSubsets"))
                if n_sub > 1 and int(ec.codes_get(h, "compressedData")):
                    raise ObservationError(f"{where}: compressed multi-subset messages are not supported")
                temp = _has(ec, h, "extendedVerticalSoundingSignificance") or _has(ec, h, "verticalSoundingSignificance")
                synop = _has(ec, h, "pressureReducedToMeanSeaLevel")
                if not (temp or synop):
                    desc = ec.codes_get_array(h, "unexpandedDescriptors").tolist()
                    raise ObservationError(
                        f"{where}: template {desc} is neither a TEMP (309052-like) nor a SYNOP (307080-like) report"
                    )
                for s in range(1, n_sub + 1):
                    prefix = f"/subsetNumber={s}/" if n_sub > 1 else ""
                    tables.append((_decode_temp if temp else _decode_synop)(ec, h, prefix, where))
            finally:
                ec.codes_release(h)
    return ObsTable.concat(tables)


def _messages(ec: Any, fh: Any, path: Path) -> Iterator[Any]:
    while True:
        try:
            h = ec.codes_bufr_new_from_file(fh)
        except ec.CodesInternalError as exc:
            raise ObservationError(f"{path}: not a readable BUFR file ({exc})") from None
        if h is None:
            return
        yield h


def _has(ec: Any, h: Any, key: str) -> bool:
    try:
        return bool(ec.codes_is_defined(h, key))
    except ec.CodesInternalError:
        return False


def _get(ec: Any, h: Any, key: str) -> np.ndarray:
    """Values of a key (all its occurrences), missing → NaN (floats) or NaN (ints, as float)."""
    if not _has(ec, h, key.split("/")[-1]):
        return np.zeros(0)
    try:
        values = np.asarray(ec.codes_get_array(h, key))
    except ec.KeyValueNotFoundError:
        return np.zeros(0)
    if values.dtype.kind in "iu":
        return np.where(values == ec.CODES_MISSING_LONG, np.nan, values.astype(np.float64))
    if values.dtype.kind == "f":
        return np.where(values == ec.CODES_MISSING_DOUBLE, np.nan, values)
    return values


def _scalar(ec: Any, h: Any, key: str) -> float:
    v = _get(ec, h, key)
    return float(v[0]) if v.size and v.dtype.kind == "f" else np.nan


def _station(ec: Any, h: Any, prefix: str, text_key: str) -> str:
    block, number = _scalar(ec, h, prefix + "blockNumber"), _scalar(ec, h, prefix + "stationNumber")
    if np.isfinite(block) and np.isfinite(number):
        return f"{int(block):02d}{int(number):03d}"
    if _has(ec, h, text_key):
        try:
            return str(ec.codes_get_string(h, prefix + text_key)).strip()
        except ec.CodesInternalError:
            return ""
    return ""


def _time(ec: Any, h: Any, prefix: str, where: str) -> np.datetime64:
    parts = [_scalar(ec, h, prefix + k) for k in ("year", "month", "day", "hour", "minute", "second")]
    if not all(np.isfinite(parts[:4])):
        raise ObservationError(f"{where}: report without a complete date and hour")
    y, mo, d, hh, mi, ss = (int(x) if np.isfinite(x) else 0 for x in parts)
    try:
        return np.datetime64(f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d}", "s")
    except ValueError:
        raise ObservationError(f"{where}: invalid report time {parts}") from None


def _rows(variable: list[str], **columns: Any) -> ObsTable:
    return ObsTable.create(variable, **columns)


def _decode_temp(ec: Any, h: Any, prefix: str, where: str) -> ObsTable:
    station = _station(ec, h, prefix, "shipOrMobileLandStationIdentifier")
    launch = _time(ec, h, prefix, where)
    lat0, lon0 = _scalar(ec, h, prefix + "latitude"), _scalar(ec, h, prefix + "longitude")
    p = _get(ec, h, prefix + "pressure")
    n = p.size
    reps = _get(ec, h, prefix + "extendedDelayedDescriptorReplicationFactor")
    if reps.size and np.isfinite(reps[0]):
        n = min(n, int(reps[0]))
    p = p[:n]

    def level(key: str) -> np.ndarray:
        v = _get(ec, h, prefix + key)
        return v[:n] if v.size >= n else np.full(n, np.nan)

    dt, dlat, dlon = (np.nan_to_num(level(k)) for k in ("timePeriod", "latitudeDisplacement", "longitudeDisplacement"))
    t, td, z = level("airTemperature"), level("dewpointTemperature"), level("nonCoordinateGeopotentialHeight")
    u, v = direction_speed_to_wind(level("windDirection"), level("windSpeed"))
    q = specific_humidity_from_dewpoint(td, p)
    time = launch + dt.astype(np.int64) * _SECOND
    out = []
    for name, values, rtype in (("airTemperature", t, 120), ("specificHumidity", q, 120),
                                ("geopotentialHeight", z, 120), ("windEastward", u, 220), ("windNorthward", v, 220)):
        ok = np.isfinite(values) & np.isfinite(p)
        out.append(_rows([name] * int(ok.sum()), time=time[ok], lat=(lat0 + dlat)[ok], lon=(lon0 + dlon)[ok],
                         value=values[ok], pressure=p[ok], station=[station] * int(ok.sum()),
                         report_type=np.full(int(ok.sum()), rtype)))
    return ObsTable.concat(out)


def _decode_synop(ec: Any, h: Any, prefix: str, where: str) -> ObsTable:
    station = _station(ec, h, prefix, "stationOrSiteName")
    t = _time(ec, h, prefix, where)
    lat, lon = _scalar(ec, h, prefix + "latitude"), _scalar(ec, h, prefix + "longitude")
    first = "#1#" if not prefix else ""
    u, v = direction_speed_to_wind(np.asarray([_scalar(ec, h, prefix + first + "windDirection")]),
                                   np.asarray([_scalar(ec, h, prefix + first + "windSpeed")]))
    values = {
        "stationPressure": (_scalar(ec, h, prefix + "nonCoordinatePressure"), 181),
        "pressureReducedToMeanSeaLevel": (_scalar(ec, h, prefix + "pressureReducedToMeanSeaLevel"), 181),
        "airTemperatureAt2M": (_scalar(ec, h, prefix + first + "airTemperature"), 181),
        "windEastwardAt10M": (float(u[0]), 281),
        "windNorthwardAt10M": (float(v[0]), 281),
    }
    names = [k for k, (x, _) in values.items() if np.isfinite(x)]
    m = len(names)
    return _rows(names, time=np.full(m, t), lat=np.full(m, lat), lon=np.full(m, lon),
                 value=[values[k][0] for k in names], station=[station] * m,
                 report_type=[values[k][1] for k in names])
