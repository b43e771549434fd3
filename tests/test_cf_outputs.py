"""CF metadata of every field file, the WeatherBench2 forecast layout of ``forecasts.zarr`` and the
earth2studio adapter.

The expected standard names and physical dimensions below are written out independently of
``aivarda.channels`` (from the CF standard-name table and the ERA5 parameter units); units are
parsed by ``cf_xarray.units`` (pint with the UDUNITS-style syntax CF uses), not by aivarda.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

cf_xarray = pytest.importorskip("cf_xarray")
from cf_xarray.units import units as cf_units  # noqa: E402
from test_cycling import cycling_store, write_config  # noqa: E402,F401

from aivarda.channels import WB2_LEVELS, ChannelLayout  # noqa: E402
from aivarda.config import load_config  # noqa: E402
from aivarda.cycling.config import CyclingConfig  # noqa: E402
from aivarda.cycling.runner import CyclingRunner  # noqa: E402
from aivarda.data.cf import (  # noqa: E402
    channels_array,
    encode_time,
    encode_timedelta,
    fields_dataset,
    global_attrs,
    read_states,
    write_states,
)
from aivarda.data.earth2studio import earth2studio_name, from_earth2studio, to_earth2studio  # noqa: E402
from aivarda.data.sources import Wb2ZarrSource  # noqa: E402
from aivarda.errors import DataError  # noqa: E402
from aivarda.evaluation.metrics import rmse  # noqa: E402
from aivarda.grid import Grid  # noqa: E402

# WB2 name -> (CF standard name, physical dimensions of its units)
EXPECTED = {
    "10m_u_component_of_wind": ("eastward_wind", "[length] / [time]"),
    "10m_v_component_of_wind": ("northward_wind", "[length] / [time]"),
    "2m_temperature": ("air_temperature", "[temperature]"),
    "mean_sea_level_pressure": ("air_pressure_at_mean_sea_level", "[mass] / [length] / [time] ** 2"),
    "surface_pressure": ("surface_air_pressure", "[mass] / [length] / [time] ** 2"),
    "total_column_water_vapour": ("atmosphere_mass_content_of_water_vapor", "[mass] / [length] ** 2"),
    "geopotential": ("geopotential", "[length] ** 2 / [time] ** 2"),
    "specific_humidity": ("specific_humidity", "dimensionless"),
    "u_component_of_wind": ("eastward_wind", "[length] / [time]"),
    "v_component_of_wind": ("northward_wind", "[length] / [time]"),
    "temperature": ("air_temperature", "[temperature]"),
    "vertical_velocity": ("lagrangian_tendency_of_air_pressure", "[mass] / [length] / [time] ** 3"),
    "relative_humidity": ("relative_humidity", "dimensionless"),
}


def check_cf(ds: xr.Dataset, what: str) -> None:
    """What every aivarda field file must satisfy, checked with cf_xarray."""
    axes = ds.cf.axes
    assert axes["X"] == ["longitude"] and axes["Y"] == ["latitude"] and axes["T"] == ["time"], (what, axes)
    assert axes.get("Z") == ["level"], (what, axes)
    assert ds.cf["latitude"].attrs["units"] == "degrees_north" and ds.cf["longitude"].attrs["units"] == "degrees_east"
    z = ds.cf["Z"]
    assert z.attrs["units"] == "hPa" and z.attrs["positive"] == "down" and z.attrs["standard_name"] == "air_pressure"
    assert np.issubdtype(ds.cf["T"].dtype, np.datetime64), what  # CF-encoded time, decoded by xarray
    assert ds.attrs["Conventions"] == "CF-1.8" and ds.attrs["source"].startswith("aivarda ")
    assert ds.attrs["title"] and ds.attrs["history"]
    names = ds.cf.standard_names
    assert set(map(str, ds.data_vars)) <= set(EXPECTED), what
    for name, da in ds.data_vars.items():
        standard, dims = EXPECTED[str(name)]
        assert str(name) in names[standard], (what, name)
        assert str(cf_units.Quantity(1, da.attrs["units"]).dimensionality) == dims, (what, name, da.attrs["units"])
        assert da.attrs["long_name"] and da.attrs["short_name"]


@pytest.fixture(scope="module")
def cf_run(cycling_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[CyclingConfig, Path]:  # noqa: F811
    """A 4-cycle 3DVar run (persistence model) writing every field file: analyses, backgrounds and
    the fields of the 18-hour forecasts of cycles 0 and 2."""
    tmp = tmp_path_factory.mktemp("cf")
    config = write_config(tmp / "cf.yaml", cycling_store, tmp / "run",
                          outputs={"analyses_zarr": True, "backgrounds_zarr": True, "forecast_fields": True})
    cfg = load_config(config, CyclingConfig)
    CyclingRunner(cfg, progress=False).run()
    return cfg, tmp / "run"


def test_every_field_file_of_a_run_is_cf(cf_run, cycling_store: Path) -> None:  # noqa: F811
    cfg, run = cf_run
    times = cfg.cycle_times()
    stores = {"analyses.zarr": times, "backgrounds.zarr": times, "forecasts.zarr": times[::2]}
    for name, expected_times in stores.items():
        with xr.open_zarr(run / name) as ds:
            check_cf(ds, name)
            np.testing.assert_array_equal(ds["time"].values, expected_times)
            assert ds.attrs["experiment"] == cfg.name and ds.attrs["method"] == "3dvar"
    with xr.open_dataset(run / "last_cycle.nc", engine="h5netcdf") as ds:
        check_cf(ds, "last_cycle.nc")
        assert list(ds["state"].values) == ["background", "analysis", "truth"]
        np.testing.assert_array_equal(ds["time"].values, times[-1:])
    with xr.open_zarr(cycling_store) as ds:  # the nature run, written by aivarda too
        check_cf(ds, "nature run")
    for name in ("metrics.nc", "forecasts.nc"):  # the score tables carry the CF globals
        with xr.open_dataset(run / name, engine="h5netcdf") as ds:
            assert ds.attrs["Conventions"] == "CF-1.8" and ds.cf.axes["T"]


def test_stored_fields_are_the_run_states(cf_run, cycling_store: Path) -> None:  # noqa: F811
    cfg, run = cf_run
    truth = Wb2ZarrSource(cycling_store)
    analyses, backgrounds = Wb2ZarrSource(run / "analyses.zarr"), Wb2ZarrSource(run / "backgrounds.zarr")
    states, grid, layout, when = read_states(run / "last_cycle.nc")
    assert when == cfg.cycle_times()[-1] and layout == truth.layout and np.array_equal(grid.lat, truth.grid.lat)
    np.testing.assert_array_equal(states["analysis"], analyses.state(when).numpy())
    np.testing.assert_array_equal(states["background"], backgrounds.state(when).numpy())
    np.testing.assert_array_equal(states["truth"], truth.state(when).numpy())
    # forecasts.zarr: with M(x) = x every lead is the analysis it started from, and its RMSE against
    # the truth at the valid time is the one forecast_scores.csv reports
    with (run / "forecast_scores.csv").open() as fh:
        scores = {(int(r["cycle"]), float(r["lead_hours"])): float(r["rmse_z500"]) for r in csv.DictReader(fh)}
    with xr.open_zarr(run / "forecasts.zarr") as fc:
        x = channels_array(fc.load(), layout, ("time", "prediction_timedelta"))
        leads = fc["prediction_timedelta"].values
    z500, compared = layout.index("z500"), 0
    for i, init in enumerate(cfg.cycle_times()[::2]):
        for k, lead in enumerate(leads):
            np.testing.assert_array_equal(x[i, k], analyses.state(init).numpy())
            hours = lead / np.timedelta64(1, "h")
            if k and (init + lead) in truth.times:
                got = rmse(torch.from_numpy(x[i, k]), truth.state(init + lead), truth.grid)[z500].item()
                assert got == pytest.approx(scores[(2 * i, hours)], rel=1e-6)
                compared += 1
    assert compared == len(scores) > 0  # every scored lead was checked


def test_forecast_store_reads_into_the_weatherbench2_forecast_structure(cf_run, cycling_store: Path) -> None:  # noqa: F811
    """The layout WB2's evaluation reads (weatherbench2 is not on PyPI): ``time`` = initialisation
    time, ``prediction_timedelta`` timedelta64, ``level``, ``latitude``, ``longitude``, one variable
    per field named as in WB2's ERA5; its ``apply_time_conventions(by_init=True)`` renames to
    ``init_time``/``lead_time`` and adds ``valid_time = init_time + lead_time``, which must be
    selectable in the truth store."""
    cfg, run = cf_run
    with xr.open_zarr(run / "forecasts.zarr") as fc:
        assert fc["prediction_timedelta"].dtype == np.dtype("timedelta64[ns]")
        assert fc["time"].dtype == np.dtype("datetime64[ns]")
        np.testing.assert_array_equal(fc["prediction_timedelta"].values, np.arange(4) * np.timedelta64(6, "h"))
        assert fc["geopotential"].dims == ("time", "prediction_timedelta", "level", "latitude", "longitude")
        assert fc["2m_temperature"].dims == ("time", "prediction_timedelta", "latitude", "longitude")
        assert list(fc["level"].values) == list(WB2_LEVELS)
        # the steps of WB2's schema.apply_time_conventions(forecast, by_init=True)
        wb2 = fc.rename({"prediction_timedelta": "lead_time"}).rename({"time": "init_time"})
        wb2.coords["valid_time"] = wb2.init_time + wb2.lead_time
        assert wb2["valid_time"].dims == ("init_time", "lead_time")
        with xr.open_zarr(cycling_store) as obs:
            valid = wb2["valid_time"].values.ravel()
            truth = obs["geopotential"].sel(time=valid[np.isin(valid, obs["time"].values)], level=500)
            assert truth.sizes["time"] > 0
        # WB2 flips latitude to increasing (evaluation.make_latitude_increasing): still the same field
        flipped = fc.sel(latitude=fc["latitude"].values[::-1])
        np.testing.assert_array_equal(flipped["temperature"].values[..., ::-1, :], fc["temperature"].values)


def test_resumed_run_writes_the_same_forecast_fields(cf_run, tmp_path: Path) -> None:
    """Killed in cycle 2 before its forecast: the resumed run redoes cycle 2 and its
    forecasts.zarr equals the uninterrupted run's, value for value."""
    cfg, ref = cf_run

    def fail(cycle: int, stage: str) -> None:
        if (cycle, stage) == (2, "analysis"):
            raise RuntimeError("injected")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="injected"):
        CyclingRunner(cfg, out, progress=False, hook=fail).run()
    with xr.open_zarr(out / "forecasts.zarr") as fc:  # cycle 0's forecast is there, cycle 2's not yet
        assert not np.isnan(fc["temperature"].values[0]).any() and np.isnan(fc["temperature"].values[1]).all()
    CyclingRunner(cfg, out, progress=False).run(resume=True)
    for name in ("forecasts.zarr", "analyses.zarr", "backgrounds.zarr"):
        with xr.open_zarr(out / name) as a, xr.open_zarr(ref / name) as b:
            xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
            assert not any(np.isnan(a[v].values).any() for v in a.data_vars)  # every slot was written


def test_assimilate_states_file_is_cf(tiny_nature_run: Path, tmp_path: Path) -> None:
    import yaml

    from aivarda.cli import main

    cfg = {"name": "cf_single", "data": {"source": "zarr", "path": str(tiny_nature_run)}, "span": "eval",
           "background": {"lag": "24h"}, "observations": {"mode": "random", "fraction": 0.1, "withhold": 0.15},
           "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"}, "outer_loops": 1,
                            "inner_iterations": 5}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["assimilate", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "out"), "--json"]) == 0
    with xr.open_dataset(tmp_path / "out" / "states.nc", engine="h5netcdf") as ds:
        check_cf(ds, "states.nc")
    states, _, layout, when = read_states(tmp_path / "out" / "states.nc")
    truth = Wb2ZarrSource(tiny_nature_run)
    np.testing.assert_array_equal(states["truth"], truth.state(when).numpy())
    np.testing.assert_array_equal(states["background"], truth.state(when - np.timedelta64(24, "h")).numpy())


def test_forecast_fields_need_forecasts(cycling_store: Path, tmp_path: Path) -> None:  # noqa: F811
    config = write_config(tmp_path / "x.yaml", cycling_store, tmp_path / "x", forecast={"every": 0},
                          outputs={"forecast_fields": True})
    with pytest.raises(Exception, match="forecast_fields"):
        load_config(config, CyclingConfig)


# ---------------------------------------------------------------------------------------- units
def small_case(seed: int = 0) -> tuple[Grid, ChannelLayout, np.ndarray, np.ndarray]:
    grid = Grid.equiangular(6, 12, poles=False)
    layout = ChannelLayout(("u10m", "t2m", "msl"), ("z", "q", "t"), (500, 850))
    times = np.datetime64("2000-01-01T00", "ns") + np.arange(3) * np.timedelta64(6, "h")
    x = np.random.default_rng(seed).normal(size=(3, layout.n_channels, *grid.shape)).astype(np.float32)
    return grid, layout, times, x


def test_time_encodings() -> None:
    t0 = np.datetime64("2000-01-01T00", "ns")
    values, unit = encode_time(t0 + np.array([0, 6, 12]) * np.timedelta64(1, "h"))
    assert unit == "hours since 2000-01-01 00:00:00" and values.tolist() == [0, 6, 12]
    values, unit = encode_time(t0 + np.array([0, 90]) * np.timedelta64(1, "m"))
    assert unit == "minutes since 2000-01-01 00:00:00" and values.tolist() == [0, 90]
    values, unit = encode_timedelta(np.array([0, 30], "timedelta64[s]"))
    assert unit == "seconds" and values.tolist() == [0, 30]


def test_fields_dataset_round_trip_and_cf_in_netcdf(tmp_path: Path) -> None:
    grid, layout, times, x = small_case()
    leads = np.arange(2) * np.timedelta64(6, "h")
    xx = np.stack([x, x + 1])[:, :, None].repeat(2, axis=2)[:, 0]  # [2 inits, 2 leads, C, H, W]
    ds = fields_dataset(xx, grid, layout, {"time": times[:2], "prediction_timedelta": leads}, global_attrs("t"))
    ds.to_netcdf(tmp_path / "f.nc", engine="h5netcdf")
    with xr.open_dataset(tmp_path / "f.nc", engine="h5netcdf") as back:
        check_cf(back, "f.nc")
        assert back["prediction_timedelta"].dtype == np.dtype("timedelta64[ns]")
        np.testing.assert_array_equal(channels_array(back, layout, ("time", "prediction_timedelta")), xx)
    with pytest.raises(DataError, match="expected"):
        fields_dataset(x, grid, layout, {"time": times[:2]})
    with pytest.raises(DataError, match="specific_humidity"):
        channels_array(ds.drop_vars("specific_humidity"), layout, ("time", "prediction_timedelta"))


def test_states_file_round_trip(tmp_path: Path) -> None:
    grid, layout, times, x = small_case(1)
    write_states(tmp_path / "s.nc", grid, layout, {"background": x[0], "analysis": torch.from_numpy(x[1])}, times[1],
                 global_attrs("states"))
    states, g, lay, when = read_states(tmp_path / "s.nc")
    assert list(states) == ["background", "analysis"] and lay == layout and when == times[1]
    assert np.array_equal(g.lat, grid.lat) and np.array_equal(g.lon, grid.lon)
    np.testing.assert_array_equal(states["background"], x[0])
    np.testing.assert_array_equal(states["analysis"], x[1])
    xr.Dataset({"a": ("x", [1.0])}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    with pytest.raises(DataError, match="other.nc"):
        read_states(tmp_path / "other.nc")


# ---------------------------------------------------------------------------------- earth2studio
def test_earth2studio_names_follow_its_wb2_lexicon() -> None:
    """earth2studio's WB2Lexicon: surface names and <variable><level> on the 13 WB2 levels."""
    lexicon = {"u10m", "v10m", "t2m", "msl", "sp", "tcwv"}
    lexicon |= {f"{v}{p}" for v in "uvwztqr" for p in WB2_LEVELS}
    layout = ChannelLayout.fengwu69()
    assert {earth2studio_name(ch) for ch in layout.names} <= lexicon
    assert earth2studio_name("z500") == "z500" and earth2studio_name("u10m") == "u10m"
    with pytest.raises(DataError, match="unknown channel"):
        earth2studio_name("z")


def test_earth2studio_round_trip() -> None:
    grid, layout, times, x = small_case(2)
    da = to_earth2studio(torch.from_numpy(x), grid, layout, times)
    assert da.dims == ("time", "variable", "lat", "lon") and da.dtype == np.float32
    assert list(da["variable"].values) == list(layout.names)
    np.testing.assert_array_equal(da.sel(variable="t850").values, x[:, layout.index("t850")])
    back, back_times = from_earth2studio(da, layout, grid)
    np.testing.assert_array_equal(back.numpy(), x)
    np.testing.assert_array_equal(back_times, times)
    # another source's conventions: variables shuffled with an extra one, latitudes S → N,
    # longitudes −180 … 180, dims in another order
    extra = xr.concat([da, da.isel(variable=[0]).assign_coords(variable=["sst"])], dim="variable")
    shuffled = extra.isel(variable=np.random.default_rng(0).permutation(extra.sizes["variable"]))
    flipped = shuffled.isel(lat=slice(None, None, -1)).assign_coords(lon=((shuffled.lon + 180) % 360) - 180)
    flipped = flipped.sortby("lon").transpose("lat", "time", "lon", "variable")
    back, _ = from_earth2studio(flipped, layout)
    np.testing.assert_array_equal(back.numpy(), x)
    one = to_earth2studio(x[0], grid, layout, times[0])  # one state
    assert one.sizes["time"] == 1
    with pytest.raises(DataError, match=r"\['msl'\]"):
        from_earth2studio(da.sel(variable=[n for n in layout.names if n != "msl"]), layout, grid)
    with pytest.raises(DataError, match="do not match the grid"):
        from_earth2studio(da, layout, Grid.equiangular(6, 12, poles=True))
