"""Observation files: JEDI IODA v3 (files written here directly with netCDF4 in JEDI's layout),
WMO BUFR TEMP/SYNOP through ecCodes, prepbufr-style Parquet/CSV through pyarrow — all read into one
ObsTable and from there into the ObsSet of a window."""

from __future__ import annotations

import math
from pathlib import Path

import netCDF4
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from aivarda.channels import ChannelLayout
from aivarda.errors import ObservationError
from aivarda.observations import (
    ObsSet,
    ObsTable,
    QCFlag,
    decode_station_ids,
    encode_station_ids,
    load_obs,
    read_ioda,
    read_observations,
    read_table,
    save_obs,
    write_ioda,
)
from aivarda.observations.bufr import (
    direction_speed_to_wind,
    read_bufr,
    specific_humidity_from_dewpoint,
    wind_to_direction_speed,
    write_bufr,
)
from aivarda.observations.ioda import FLOAT_MISSING, INT64_MISSING, INT_MISSING
from aivarda.observations.tabular import read_tabular, write_tabular
from aivarda.observations.variables import STANDARD_GRAVITY

LAYOUT = ChannelLayout(("u10m", "v10m", "t2m", "msl", "sp"), ("z", "q", "u", "v", "t"), (250, 500, 850))
T0 = np.datetime64("2020-01-01T00:00:00", "s")
WINDOW = [np.timedelta64(0, "h"), np.timedelta64(6, "h")]
EPOCH = np.datetime64("1970-01-01T00:00:00", "s")


def _seconds(t: str) -> int:
    return int((np.datetime64(t, "s") - EPOCH) / np.timedelta64(1, "s"))


# ------------------------------------------------------------------ a JEDI-layout file written with netCDF4
def _jedi_file(path: Path, *, datetime_units: str = "seconds since 1970-01-01T00:00:00Z", drop: str | None = None,
               char_ids: bool = False, preqc: int = 0) -> Path:
    """Three radiosonde levels of station 10393 and one SYNOP of 'EGLL' in JEDI's IODA v3 layout."""
    f4, i4 = FLOAT_MISSING, INT_MISSING
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("Location", 5)
        ds.createVariable("Location", "i4", ("Location",))[:] = np.arange(5)
        ds.setncattr("_ioda_layout", "ObsGroup")
        ds.setncattr("_ioda_layout_version", np.int32(3))
        md = ds.createGroup("MetaData")
        if drop != "dateTime":
            v = md.createVariable("dateTime", "i8", ("Location",), fill_value=INT64_MISSING)
            v[:] = [_seconds("2020-01-01T00:00:00"), _seconds("2020-01-01T00:00:00"),
                    _seconds("2020-01-01T00:20:00"), _seconds("2020-01-01T05:50:00"), _seconds("2020-01-02T00:00:00")]
            v.units = datetime_units
        lat = md.createVariable("latitude", "f4", ("Location",), fill_value=f4)
        lat[:] = [52.2, 52.2, 52.3, 51.5, 51.5]
        lat.units = "degree_north"
        lon = md.createVariable("longitude", "f4", ("Location",), fill_value=f4)
        lon[:] = [14.1, 14.1, 14.2, -0.45, -0.45]
        p = md.createVariable("pressure", "f4", ("Location",), fill_value=f4)
        p[:] = np.ma.masked_array([85000.0, 60000.0, 50000.0, 0.0, 0.0], mask=[0, 0, 0, 1, 1])
        p.units = "Pa"
        ids = ["10393", "10393", "10393", "EGLL", "EGLL"]
        if char_ids:
            ds.createDimension("nstring", 8)
            s = md.createVariable("stationIdentification", "S1", ("Location", "nstring"))
            s[:] = netCDF4.stringtochar(np.array(ids, dtype="S8"))
        else:
            md.createVariable("stationIdentification", str, ("Location",))[:] = np.array(ids, dtype=object)
        # ioda-converters' prepbufr converters name it prepbufrReportType; older files observationTypeNum
        rt = md.createVariable("observationTypeNum" if char_ids else "prepbufrReportType", "i4", ("Location",),
                               fill_value=i4)
        rt[:] = [120, 120, 120, 181, 181]
        values = {  # name: (units, values; masked = not observed, errors)
            "airTemperature": ("K", [270.5, 255.25, 240.0, 285.0, 280.0], [1.0, 1.0, 1.2, 1.5, 1.0]),
            "geopotentialHeight": ("m", [1450.0, None, 5550.0, None, None], [10.0, None, None, None, None]),
            "pressureReducedToMeanSeaLevel": ("Pa", [None, None, None, 101300.0, None], [None, None, None, 120.0, None]),
            "virtualTemperature": ("K", [271.0, None, None, None, None], [1.0, None, None, None, None]),
        }
        groups = {g: ds.createGroup(g) for g in ("ObsValue", "ObsError", "PreQC")}
        for name, (units, vals, errs) in values.items():
            for g, data, dtype, fill in (("ObsValue", vals, "f4", f4), ("ObsError", errs, "f4", f4),
                                         ("PreQC", [preqc if x is not None else None for x in vals], "i4", i4)):
                var = groups[g].createVariable(name, dtype, ("Location",), fill_value=fill)
                var[:] = np.ma.masked_array([0 if x is None else x for x in data], mask=[x is None for x in data])
                if g != "PreQC":
                    var.units = units
    return path


def test_reads_a_jedi_ioda_v3_file(tmp_path: Path):
    path = _jedi_file(tmp_path / "sonde_synop.nc4")
    table = read_ioda(path)
    # not observed (fill ObsValue) → no row; virtualTemperature is read but has no aivarda variable
    assert len(table) == 9 and sorted(set(table.variable)) == [
        "airTemperature", "geopotentialHeight", "pressureReducedToMeanSeaLevel", "virtualTemperature"]
    obs = read_observations(path, LAYOUT, T0, WINDOW)
    names = obs.channel_names(LAYOUT)
    stations = decode_station_ids(obs.station)
    got = {(n, float(lv) if not math.isnan(lv) else None): (v, e, t, s, r) for n, lv, v, e, t, s, r in zip(
        names, obs.level.tolist(), obs.value.tolist(), obs.error_std.tolist(), obs.time_index.tolist(), stations,
        obs.report_type.tolist(), strict=True)}
    # the 2020-01-02 observation is outside the window; virtualTemperature is not a state variable
    assert len(obs) == 7
    assert got[("t850", None)] == (270.5, 1.0, 0, "10393", 120)
    assert got[("t500", 600.0)] == (255.25, 1.0, 0, "10393", 120)  # off the model levels: level kept (hPa)
    assert got[("t500", None)][:3] == (240.0, pytest.approx(1.2), 0)
    assert got[("z850", None)][0] == pytest.approx(1450.0 * STANDARD_GRAVITY, rel=1e-7)  # geopotential height × g0
    assert got[("z500", None)][1] != got[("z500", None)][1]  # no ObsError: NaN σ_o …
    assert got[("t2m", None)] == (285.0, 1.5, 1, "EGLL", 181)  # airTemperature without pressure → 2 m
    assert got[("msl", None)][:3] == (101300.0, 120.0, 1)
    t500 = [i for i, (n, lv) in enumerate(zip(names, obs.level.tolist(), strict=True)) if n == "t500" and lv != lv]
    assert obs.time_offset_hours[t500[0]] == pytest.approx(1 / 3)
    # … so it is flagged invalid (never used silently), unless error_std gives one
    assert obs.qc[names.index("z500")] == QCFlag.INVALID and int((obs.qc != 0).sum()) == 1
    with_err = read_observations(path, LAYOUT, T0, WINDOW, error_std={"z": 50.0})
    assert with_err.error_std[names.index("z500")] == 50.0 and int((with_err.qc != 0).sum()) == 0
    # a one-time window (3DVar): ±3 h by default
    assert len(read_observations(path, LAYOUT, T0, [np.timedelta64(0, "h")])) == 5  # not 05:50 nor the next day
    # fixed-length character station ids are read as well
    other = read_observations(_jedi_file(tmp_path / "c.nc", char_ids=True), LAYOUT, T0, WINDOW)
    assert decode_station_ids(other.station)[:1] == ["10393"] and other.report_type.tolist()[:1] == [120]


def test_ncep_quality_markers_in_ioda(tmp_path: Path):
    path = _jedi_file(tmp_path / "qm.nc")
    with netCDF4.Dataset(path, "a") as ds:
        ds.renameGroup("PreQC", "QualityMarker")
        ds["QualityMarker/airTemperature"][:] = [2, 9, 1, 3, 0]  # NCEP: > 3 rejected
    t = read_ioda(path)
    air = t.variable == "airTemperature"
    assert t.qc[air].tolist() == [0, int(QCFlag.INVALID), 0, 0, 0]


def test_foreign_preqc_needs_a_threshold(tmp_path: Path):
    path = _jedi_file(tmp_path / "q.nc", preqc=2)  # e.g. ioda-converters' sonde files write PreQC = 2
    assert set(read_ioda(path).qc.tolist()) == {int(QCFlag.INVALID)}
    assert set(read_ioda(path, preqc_good=3).qc.tolist()) == {0}


def test_malformed_ioda_files_give_one_clear_error(tmp_path: Path):
    for kwargs, match in (
        ({"drop": "dateTime"}, r"q\.nc: missing MetaData/dateTime"),
        ({"datetime_units": "hours since 1970-01-01T00:00:00Z"}, r"q\.nc: MetaData/dateTime: units 'hours since"),
    ):
        path = _jedi_file(tmp_path / "q.nc", **kwargs)
        with pytest.raises(ObservationError, match=match) as info:
            read_ioda(path)
        assert "\n" not in str(info.value)
        path.unlink()
    with netCDF4.Dataset(tmp_path / "v2.nc", "w") as ds:
        ds.createDimension("nlocs", 2)
    with pytest.raises(ObservationError, match="no root dimension 'Location'.*nlocs"):
        read_ioda(tmp_path / "v2.nc")
    (tmp_path / "junk.nc").write_text("not HDF5")
    with pytest.raises(ObservationError, match="junk.nc: not an IODA"):
        read_ioda(tmp_path / "junk.nc")
    with pytest.raises(ObservationError, match="not found"):
        read_ioda(tmp_path / "missing.nc")
    with pytest.raises(ObservationError, match="unknown observation file type '.grib'"):
        read_table(tmp_path / "x.grib")


# ------------------------------------------------------------------ ObsSet ⇄ IODA round trip
def _obsset(n: int = 40, seed: int = 0) -> ObsSet:
    rng = np.random.default_rng(seed)
    channel = rng.integers(0, LAYOUT.n_channels, n)
    upper = channel >= len(LAYOUT.surface)
    level = np.where(upper & (rng.random(n) < 0.4), rng.uniform(260.0, 840.0, n), np.nan)
    names = [LAYOUT.names[c] for c in channel]
    value = np.array([{"z": 5e4, "q": 3e-3, "t": 250.0, "m": 1e5, "s": 9e4}.get(nm[0], 5.0) for nm in names])
    tidx = rng.integers(0, 2, n)
    return ObsSet.create(
        rng.uniform(-89, 89, n), rng.uniform(0, 360, n), channel, value * rng.uniform(0.5, 1.5, n),
        rng.uniform(0.5, 2.0, n) * np.abs(value) * 0.01, time_index=tidx,
        time_offset_hours=tidx * 6.0 + rng.integers(-7200, 7200, n) / 3600.0, level=level,
        qc=rng.integers(0, 4, n), withheld=rng.random(n) < 0.3,
        station=encode_station_ids([["", "10393", "SHIP1234X", "KXYZ"][k] for k in rng.integers(0, 4, n)]),
        report_type=rng.choice([0, 120, 181], n),
    )


def _sorted(obs: ObsSet) -> ObsSet:
    key = np.lexsort([obs.value.numpy(), obs.channel.numpy(), obs.lat.numpy()])
    return obs.select(torch.as_tensor(key))


def test_save_load_round_trip_compares_every_value(tmp_path: Path):
    obs = _obsset()
    path = save_obs(obs, tmp_path / "sub" / "obs.nc", LAYOUT, analysis_time=T0, window_offsets=WINDOW)
    back = load_obs(path, LAYOUT)
    assert len(back) == len(obs)
    a, b = _sorted(obs), _sorted(back)
    f32 = lambda t: t.float().double()  # noqa: E731 — IODA stores positions and pressure as float
    torch.testing.assert_close(b.lat, f32(a.lat), rtol=0, atol=0)
    torch.testing.assert_close(b.lon, torch.remainder(f32(a.lon), 360.0), rtol=0, atol=0)
    torch.testing.assert_close(b.level, (a.level * 100).float().double() / 100, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(b.time_offset_hours, a.time_offset_hours, rtol=0, atol=1e-12)
    for name in ("time_index", "qc", "withheld", "station", "report_type"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # the same variable; the same channel for channel observations (off-level ones: nearest level)
    var = lambda o: [ChannelLayout.parse(n)[0] for n in o.channel_names(LAYOUT)]  # noqa: E731
    assert var(a) == var(b)
    on_level = torch.isnan(a.level)
    assert torch.equal(a.channel[on_level], b.channel[on_level])
    is_z = torch.tensor([v == "z" for v in var(a)])
    for name in ("value", "error_std"):
        x, y = getattr(a, name), getattr(b, name)
        assert torch.equal(f32(x[~is_z]), y[~is_z].double()), name  # float32 in the file (as IODA has it)
        torch.testing.assert_close(y[is_z].double(), x[is_z], rtol=3e-7, atol=0)  # via geopotential height (m)
    # the file is IODA v3
    with netCDF4.Dataset(path) as ds:
        assert list(ds.dimensions) == ["Location"] and ds.getncattr("_ioda_layout_version") == 3
        dt = ds["MetaData/dateTime"]
        assert dt.units == "seconds since 1970-01-01T00:00:00Z" and dt.dtype == np.int64
        assert dt.getncattr("_FillValue") == INT64_MISSING
        assert ds["ObsValue/airTemperature"].getncattr("_FillValue") == np.float32(-3.3687953e38)
        assert ds["PreQC/airTemperature"].dtype == np.int32
        assert ds["PreQC/airTemperature"].getncattr("_FillValue") == -2147483643
        assert ds["MetaData/pressure"].units == "Pa"
    with pytest.raises(ObservationError, match="exists"):
        save_obs(obs, path, LAYOUT)


def test_table_round_trip_through_ioda(tmp_path: Path):
    table = ObsTable.from_obsset(_obsset(30, seed=1), LAYOUT, T0)
    back = read_ioda(write_ioda(table, tmp_path / "t.nc"))
    assert len(back) == len(table)
    order = lambda t: np.lexsort([t.value, t.variable.astype(str), t.lat.astype(np.float32)])  # noqa: E731
    a, b = table.select(order(table)), back.select(order(back))
    assert a.variable.tolist() == b.variable.tolist() and a.station.tolist() == b.station.tolist()
    assert np.array_equal(a.time, b.time)
    for name in ("lat", "lon", "pressure", "value", "error"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name).astype(np.float32), err_msg=name)
    for name in ("qc", "report_type", "withheld"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)


def test_empty_set_round_trips(tmp_path: Path):
    save_obs(ObsSet.empty(), tmp_path / "e.nc", LAYOUT)
    assert len(load_obs(tmp_path / "e.nc", LAYOUT)) == 0


# ------------------------------------------------------------------ station ids and the new ObsSet fields
def test_station_ids_pack_into_int64_and_survive_select_and_concat():
    ids = ["10393", "ABC12345X", "", "K", "~!"]
    codes = encode_station_ids(ids)
    assert decode_station_ids(codes) == ids and codes[2] == 0 and (codes >= 0).all()
    with pytest.raises(ObservationError, match="ABCDEFGHIJ"):
        encode_station_ids(["ABCDEFGHIJ"])
    obs = ObsSet.create([0.0, 1.0], [0.0, 1.0], [0, 1], [1.0, 2.0], 1.0, station=codes[:2], report_type=[120, 220])
    both = ObsSet.concat([obs, obs.select(torch.tensor([1]))])
    assert decode_station_ids(both.station) == ["10393", "ABC12345X", "ABC12345X"]
    assert both.report_type.tolist() == [120, 220, 220] and both.report_type.dtype == torch.int32
    plain = ObsSet.create([0.0], [0.0], [0], [1.0], 1.0)
    assert plain.station.tolist() == [0] and plain.report_type.tolist() == [0]


# ------------------------------------------------------------------ BUFR
def test_dewpoint_and_wind_conversions_against_known_values():
    # saturation at 20 °C and 1000 hPa: e_s = 2337 Pa (Bolton), q_s ≈ 14.7 g/kg (meteorological tables)
    q = specific_humidity_from_dewpoint(np.array([293.15]), np.array([100000.0]))
    assert q[0] == pytest.approx(0.622 * 2337.0 / (100000.0 - 0.378 * 2337.0), rel=2e-3)
    d, s = wind_to_direction_speed(np.array([0.0, 5.0, -3.0]), np.array([-5.0, 0.0, 0.0]))
    np.testing.assert_allclose(d, [0.0, 270.0, 90.0], atol=1e-12)  # from north, from west, from east
    u, v = direction_speed_to_wind(d, s)
    np.testing.assert_allclose([u, v], [[0.0, 5.0, -3.0], [-5.0, 0.0, 0.0]], atol=1e-12)


def _station_reports(seed: int = 0) -> ObsTable:
    """Radiosondes (levels with T, q, u, v, z) and SYNOPs (T2m, 10 m wind, msl, sp)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("variable", "time", "lat", "lon", "value", "pressure", "station")}

    def add(var, t, lat, lon, val, p, sid):
        for k, x in zip(rows, (var, t, lat, lon, val, p, sid), strict=True):
            rows[k].append(x)

    for k, sid in enumerate(["10393", "72520", "SHIP1234X"]):
        t = T0 + np.timedelta64(int(rng.integers(-3600, 3600)), "s")
        lat, lon = rng.uniform(-80, 80), rng.uniform(-180, 180)
        for j, p in enumerate(np.sort(rng.uniform(10000, 100000, 6))[::-1]):
            la, lo = lat + 0.01 * j, lon + 0.02 * j
            add("airTemperature", t, la, lo, rng.uniform(200, 300), p, sid)
            add("specificHumidity", t, la, lo, rng.uniform(1e-5, 1.5e-2), p, sid)
            add("windEastward", t, la, lo, rng.normal(0, 15), p, sid)
            add("windNorthward", t, la, lo, rng.normal(0, 15), p, sid)
            if k != 2:
                add("geopotentialHeight", t, la, lo, rng.uniform(100, 16000), p, sid)
    for sid in ["03772", "KXYZ"]:
        t = T0 + np.timedelta64(int(rng.integers(-180, 180)) * 60, "s")
        lat, lon = rng.uniform(-80, 80), rng.uniform(0, 360)
        for var, val in (("airTemperatureAt2M", rng.uniform(250, 310)), ("windEastwardAt10M", rng.normal(0, 8)),
                         ("windNorthwardAt10M", rng.normal(0, 8)), ("stationPressure", rng.uniform(8e4, 1.03e5)),
                         ("pressureReducedToMeanSeaLevel", rng.uniform(9.6e4, 1.04e5))):
            add(var, t, lat, lon, val, np.nan, sid)
    return ObsTable.create(rows["variable"], rows["time"], rows["lat"], rows["lon"], rows["value"],
                           pressure=rows["pressure"], station=rows["station"])


def _by_key(t: ObsTable) -> dict[tuple, tuple]:
    return {(s, v, round(float(p) / 10) if np.isfinite(p) else None): (tm, la, lo, val, rt)
            for s, v, p, tm, la, lo, val, rt in zip(t.station, t.variable, t.pressure, t.time, t.lat, t.lon, t.value,
                                                     t.report_type, strict=True)}


def test_bufr_round_trip_preserves_every_value_to_bufr_precision(tmp_path: Path):
    table = _station_reports()
    back = read_bufr(write_bufr(table, tmp_path / "reports.bufr"))
    assert len(back) == len(table)
    a, b = _by_key(table), _by_key(back)
    assert a.keys() == b.keys()
    winds = {}
    for key, (t, lat, lon, val, _rt) in a.items():
        sid, var, _p = key
        tb, latb, lonb, valb, rtb = b[key]
        surface = var.endswith(("At2M", "At10M")) or "ressure" in var
        assert tb == (t.astype("datetime64[m]").astype("datetime64[s]") if surface else t), key  # SYNOP: minutes
        assert abs(latb - lat) <= 1e-5 + 1e-9 and abs((lonb - lon + 180) % 360 - 180) <= 1e-5 + 1e-9, key
        assert rtb == {"airTemperature": 120, "specificHumidity": 120, "geopotentialHeight": 120,
                       "windEastward": 220, "windNorthward": 220, "airTemperatureAt2M": 181, "stationPressure": 181,
                       "pressureReducedToMeanSeaLevel": 181}.get(var, 281)
        if var.startswith("airTemperature"):
            assert abs(valb - val) <= 0.005 + 1e-9, key  # 0.01 K
        elif var == "geopotentialHeight":
            assert abs(valb - val) <= 0.5, key  # 1 m
        elif "ressure" in var:
            assert abs(valb - val) <= 5.0, key  # 10 Pa
        elif var == "specificHumidity":  # dew point to 0.01 K at the level's pressure (10 Pa)
            assert abs(valb - val) <= 2e-3 * val, key
        else:
            winds.setdefault((sid, key[2]), {})[var.replace("At10M", "")] = (val, valb)
    for uv in winds.values():
        (u, ub), (v, vb) = uv["windEastward"], uv["windNorthward"]
        speed = math.hypot(u, v)  # direction to 1°, speed to 0.1 m/s
        assert math.hypot(ub - u, vb - v) <= 0.05 + speed * math.radians(0.5) + 1e-9


def test_reads_a_two_subset_synop_message_encoded_with_eccodes(tmp_path: Path):
    """A SYNOP message with two stations (uncompressed subsets), encoded here with ecCodes directly."""
    import eccodes as ec

    h = ec.codes_bufr_new_from_samples("BUFR4")
    ec.codes_set(h, "dataCategory", 0)
    ec.codes_set(h, "numberOfSubsets", 2)
    ec.codes_set(h, "compressedData", 0)
    ec.codes_set_array(h, "inputDelayedDescriptorReplicationFactor", [0, 0, 0, 0])
    ec.codes_set_array(h, "unexpandedDescriptors", [307080])
    stations = [(3, 772, 51.48, -0.45, 284.15, 250, 6.2, 101250.0), (10, 393, 52.21, 14.12, 271.35, 90, 2.0, 102010.0)]
    for k, (b, s, lat, lon, t2, d, v, msl) in enumerate(stations):
        for key, val in (("blockNumber", b), ("stationNumber", s), ("year", 2020), ("month", 1), ("day", 1),
                         ("hour", 0), ("minute", 30), ("latitude", lat), ("longitude", lon), ("airTemperature", t2),
                         ("windDirection", d), ("windSpeed", v), ("pressureReducedToMeanSeaLevel", msl)):
            ec.codes_set(h, f"#{k + 1}#{key}", val)
    ec.codes_set(h, "pack", 1)
    (tmp_path / "synop.bufr").write_bytes(ec.codes_get_message(h))
    ec.codes_release(h)
    obs = read_observations(tmp_path / "synop.bufr", LAYOUT, T0, [np.timedelta64(0, "h")],
                            error_std={"t2m": 1.0, "u10m": 2.0, "v10m": 2.0, "msl": 100.0})
    got = {(s, n): v for s, n, v in zip(decode_station_ids(obs.station), obs.channel_names(LAYOUT), obs.value.tolist(),
                                        strict=True)}
    assert len(obs) == 8 and (obs.time_offset_hours == 0.5).all() and (obs.qc == 0).all()
    assert got[("03772", "t2m")] == pytest.approx(284.15) and got[("10393", "msl")] == 102010.0
    # 6.2 m/s from 250°: u = −6.2 sin 250° = 5.826, v = −6.2 cos 250° = 2.121; 2 m/s from the east: u = −2
    assert got[("03772", "u10m")] == pytest.approx(5.8261, abs=1e-4) and got[("03772", "v10m")] == pytest.approx(2.1205, abs=1e-4)
    assert got[("10393", "u10m")] == pytest.approx(-2.0) and got[("10393", "v10m")] == pytest.approx(0.0, abs=1e-6)


def test_bufr_writer_rejects_what_the_templates_cannot_carry(tmp_path: Path):
    table = ObsTable.create(["windEastward"], [T0], [0.0], [0.0], [3.0], pressure=[50000.0], station=["10393"])
    with pytest.raises(ObservationError, match="direction and speed"):
        write_bufr(table, tmp_path / "u.bufr")
    table = ObsTable.create(["precipitableWater"], [T0], [0.0], [0.0], [3.0])
    with pytest.raises(ObservationError, match="cannot write"):
        write_bufr(table, tmp_path / "p.bufr")
    table = ObsTable.create(["airTemperatureAt2M"], [T0], [0.0], [0.0], [280.0])
    with pytest.raises(ObservationError, match="1 observations have no station id"):
        write_bufr(table, tmp_path / "s.bufr")
    assert not (tmp_path / "s.bufr").exists()
    (tmp_path / "junk.bufr").write_bytes(b"BUFR not really")
    with pytest.raises(ObservationError, match="junk.bufr"):
        read_bufr(tmp_path / "junk.bufr")


# ------------------------------------------------------------------ Parquet / CSV
def test_nnja_style_parquet_written_with_pyarrow(tmp_path: Path):
    path = tmp_path / "adpupa_adpsfc.parquet"
    pq.write_table(pa.table({
        "SID": ["10393", "10393", "EGLL", "EGLL"],
        "time": pa.array([np.datetime64("2020-01-01T00:05:00")] * 2 + [np.datetime64("2019-12-31T23:00:00")] * 2,
                         type=pa.timestamp("s")),
        "XOB": [14.1, 14.1, 359.55, 359.55], "YOB": [52.2, 52.2, 51.5, 51.5], "TYP": [120, 220, 181, 281],
        "POB": [500.0, 500.0, 1001.0, None], "TOB": [-33.15, None, 12.0, None], "QOB": [1500.0, None, None, None],
        "ZOB": [5550.0, None, None, None], "UOB": [None, 12.0, None, 3.0], "VOB": [None, -4.0, None, 1.0],
        "PMO": [None, None, 1013.0, None], "TQM": [2, None, 1, None], "QQM": [9, None, None, None],
        "WQM": [None, 1, None, 2], "TOE": [1.1, None, 1.5, None],
    }), path)
    obs = read_observations(path, LAYOUT, T0, [np.timedelta64(0, "h")], error_std={"q": 1e-3, "z": 40.0, "u": 2.0,
                            "v": 2.0, "sp": 100.0, "msl": 100.0, "u10m": 2.0, "v10m": 2.0, "t": 1.0, "t2m": 1.0})
    got = {n: (v, q, s) for n, v, q, s in zip(obs.channel_names(LAYOUT), obs.value.tolist(), obs.qc.tolist(),
                                                decode_station_ids(obs.station), strict=True)}
    assert got["t500"] == (pytest.approx(240.0), 0, "10393")
    assert got["q500"] == (pytest.approx(1.5e-3), int(QCFlag.INVALID), "10393")  # quality marker 9: rejected upstream
    assert got["z500"][0] == pytest.approx(5550.0 * STANDARD_GRAVITY)
    assert got["u500"][0] == 12.0 and got["v500"][0] == -4.0
    assert got["t2m"][0] == pytest.approx(285.15) and got["sp"][0] == pytest.approx(100100.0)
    assert got["msl"][0] == pytest.approx(101300.0) and got["u10m"][0] == 3.0
    assert obs.error_std[obs.channel_names(LAYOUT).index("t2m")] == 1.5
    pq.write_table(pa.table({"SID": ["a"], "XOB": [0.0], "YOB": [0.0]}), tmp_path / "bad.parquet")
    with pytest.raises(ObservationError, match=r"bad.parquet: missing required columns \['TYP', 'time"):
        read_tabular(tmp_path / "bad.parquet")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_tabular_round_trip(tmp_path: Path, suffix: str):
    table = _station_reports(seed=3)
    table.error[:] = [{"air": 1.25, "win": 2.5, "sta": 150.0}.get(v[:3], np.nan) for v in table.variable]  # WOE: u and v
    t_rows = np.flatnonzero(table.variable == "airTemperature")  # wind components share WQM, pressures PQM
    table.qc[t_rows[::3]] = int(QCFlag.INVALID)
    back = read_tabular(write_tabular(table, tmp_path / f"r{suffix}"))
    assert len(back) == len(table)
    order = lambda t: np.lexsort([t.variable.astype(str), t.pressure, t.station.astype(str)])  # noqa: E731
    a, b = table.select(order(table)), back.select(order(back))
    assert a.variable.tolist() == b.variable.tolist() and a.station.tolist() == b.station.tolist()
    assert np.array_equal(a.time, b.time) and np.array_equal(a.qc, b.qc)
    for name in ("lat", "lon", "pressure", "value", "error"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-12, err_msg=name)


def test_one_representation_for_every_format(tmp_path: Path):
    """The same reports through IODA, BUFR, Parquet and CSV give the same ObsSet (to BUFR precision)."""
    table = _station_reports(seed=5)
    errors = {"t": 1.0, "q": 1e-3, "u": 2.0, "v": 2.0, "z": 50.0, "t2m": 1.0, "u10m": 2.0, "v10m": 2.0,
              "msl": 100.0, "sp": 100.0}
    sets = {}
    for name, writer in (("nc", write_ioda), ("bufr", write_bufr), ("parquet", write_tabular), ("csv", write_tabular)):
        path = writer(table, tmp_path / f"r.{name}")
        sets[name] = _sorted(read_observations(path, LAYOUT, T0, [np.timedelta64(0, "h")], error_std=errors))
    ref = sets["parquet"]
    assert len(ref) > 0
    for name, obs in sets.items():
        assert len(obs) == len(ref), name
        assert decode_station_ids(obs.station) == decode_station_ids(ref.station), name
        assert torch.equal(obs.channel, ref.channel) and torch.equal(obs.time_index, ref.time_index), name
        torch.testing.assert_close(obs.level, ref.level, equal_nan=True, rtol=0, atol=0.051, msg=name)  # 10 Pa
        torch.testing.assert_close(obs.value, ref.value, rtol=2e-3, atol=0.6, msg=name)

