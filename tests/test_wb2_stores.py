"""WeatherBench2 stores as WB2 publishes them, written with plain xarray (never aivarda's writer):
dims ``(time, level, longitude, latitude)`` or latitude first, latitude ascending, no aivarda
attributes, extra variables; read lazily, selected by data.start/end, and analysed by 3DVar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import yaml

from aivarda.config import DataConfig, load_config
from aivarda.data.describe import describe_store
from aivarda.data.sources import Wb2ZarrSource, layout_from_channels, open_source
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid

CHANNELS = ["t2m", "z500", "z850", "t500", "t850"]
T0 = np.datetime64("2020-01-01T00", "ns")


def wb2_lat_weights(lat_deg: np.ndarray) -> np.ndarray:
    """WB2's get_lat_weights (weatherbench2/utils.py), transcribed: latitudes S → N, cell bounds at
    the midpoints and ±90°, sin(upper) − sin(lower), normalised to mean 1."""
    lat = np.deg2rad(lat_deg)
    bounds = np.concatenate([[-np.pi / 2], (lat[:-1] + lat[1:]) / 2, [np.pi / 2]])
    w = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return w / w.mean()


def write_wb2_store(path: Path, nlon: int, nlat: int, poles: bool, lon_first: bool, n_time: int = 8,
                    seed: int = 0) -> dict[str, xr.DataArray]:
    """A store in WB2's layout: latitude ascending, no global attributes, float32 fields, level in
    hPa, a static extra variable and an unknown one. Returns the written fields (lat ascending)."""
    if poles:
        lat = np.linspace(-90.0, 90.0, nlat)
    else:
        d = 180.0 / nlat
        lat = np.linspace(-90.0 + d / 2, 90.0 - d / 2, nlat)
    lon = np.arange(nlon) * (360.0 / nlon)
    time = T0 + np.arange(n_time) * np.timedelta64(6, "h")
    level = np.array([500, 850], dtype=np.int64)
    rng = np.random.default_rng(seed)
    phi, lam = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")  # [lat, lon]
    tt = np.arange(n_time)[:, None, None] * 0.3

    def field(mean: float, amp: float) -> np.ndarray:  # smooth travelling wave + small noise, [T, lat, lon]
        wave = np.cos(phi) * np.sin(3 * lam - tt) + 0.5 * np.sin(2 * phi) * np.cos(2 * lam + tt)
        return (mean + amp * wave + 0.05 * amp * rng.standard_normal(wave.shape)).astype(np.float32)

    fields = {
        "2m_temperature": field(280.0, 15.0),
        "geopotential": np.stack([field(54000.0, 1500.0), field(14000.0, 800.0)], axis=1),
        "temperature": np.stack([field(250.0, 10.0), field(270.0, 12.0)], axis=1),
        "total_precipitation_6hr": field(0.001, 0.0005),  # not a channel: ignored
    }
    horizontal = ("longitude", "latitude") if lon_first else ("latitude", "longitude")
    data_vars = {}
    for name, values in fields.items():
        dims = ("time", "level", "latitude", "longitude") if values.ndim == 4 else ("time", "latitude", "longitude")
        da = xr.DataArray(values, dims=dims)
        data_vars[name] = da.transpose(*dims[:-2], *horizontal)
    data_vars["land_sea_mask"] = xr.DataArray((np.cos(lam) > 0).astype(np.float32), dims=("latitude", "longitude"))
    ds = xr.Dataset(data_vars, coords={"time": time, "level": level, "latitude": lat, "longitude": lon})
    ds.to_zarr(path, mode="w", encoding={n: {"chunks": ds[n].shape if n == "land_sea_mask" else (1, *ds[n].shape[1:])}
                                         for n in ds.data_vars})
    return {name: ds[name].transpose(*ds[name].dims[:-2], "latitude", "longitude") for name in fields}


LAYOUTS = [
    pytest.param(64, 32, False, True, id="64x32-no-poles-lon-first"),
    pytest.param(64, 32, False, False, id="64x32-no-poles-lat-first"),
    pytest.param(240, 121, True, True, id="240x121-poles-lon-first"),
    pytest.param(240, 121, True, False, id="240x121-poles-lat-first"),
]


@pytest.mark.parametrize("nlon, nlat, poles, lon_first", LAYOUTS)
def test_published_layouts_open_with_exact_states_grid_and_wb2_weights(tmp_path, nlon, nlat, poles, lon_first):
    path = tmp_path / "wb2.zarr"
    written = write_wb2_store(path, nlon, nlat, poles, lon_first)
    layout = layout_from_channels(CHANNELS)
    src = Wb2ZarrSource(path, layout=layout)
    assert src.spans == {} and src.times.size == 8
    assert src.grid.kind == "equiangular" and src.grid.poles is poles and src.grid.shape == (nlat, nlon)
    lat_ascending = written["2m_temperature"]["latitude"].values
    np.testing.assert_array_equal(src.grid.lat, lat_ascending[::-1])
    np.testing.assert_allclose(src.grid.weights, wb2_lat_weights(lat_ascending)[::-1], rtol=0, atol=1e-12)
    # states N → S, identical to the written float32 values
    t = src.times[5]
    x = src.state(t).numpy()
    expected = [written["2m_temperature"].sel(time=t).values]
    expected += [written[v].sel(time=t, level=p).values for v in ("geopotential", "temperature") for p in (500, 850)]
    np.testing.assert_array_equal(x, np.stack(expected)[:, ::-1, :])
    # describe: the right grid, and its dict round-trips to the same weights
    info = describe_store(path, max_samples=4)
    assert info["grid"]["kind"] == "equiangular" and (info["grid"].get("poles", True) is poles)
    assert info["grid"]["lat_range"] == [float(lat_ascending[-1]), float(lat_ascending[0])]
    assert [c["channel"] for c in info["channels"]] == CHANNELS  # the extra variables are ignored
    grid = Grid.from_dict({k: v for k, v in info["grid"].items() if k != "lat_range"})
    np.testing.assert_allclose(grid.weights, wb2_lat_weights(lat_ascending)[::-1], rtol=0, atol=1e-12)


def test_cli_describe_names_a_pole_less_grid(tmp_path, capsys):
    from aivarda.cli import main

    path = tmp_path / "wb2.zarr"
    write_wb2_store(path, 64, 32, False, True, n_time=4)
    assert main(["data", "describe", str(path)]) == 0
    assert "grid      equiangular 32×64 without poles (lat 87.188 … -87.188)" in capsys.readouterr().out


def test_reads_only_the_requested_time(tmp_path):
    """Lazy reads: the chunks of every other time are damaged, and one time still reads."""
    path = tmp_path / "wb2.zarr"
    written = write_wb2_store(path, 64, 32, False, True, n_time=4)
    src = Wb2ZarrSource(path, layout=layout_from_channels(CHANNELS))
    for name in ("2m_temperature", "geopotential", "temperature"):
        for t in (0, 1, 3):
            for f in src._time_chunk_files(name, t):
                f.write_bytes(b"damaged")
    x = src.state(src.times[2])
    np.testing.assert_array_equal(x[0].numpy(), written["2m_temperature"].isel(time=2).values[::-1])
    with pytest.raises(DataError, match="damaged chunk"):
        src.state(src.times[1])


def test_start_end_select_times_and_spans_need_them(tmp_path):
    path = tmp_path / "wb2.zarr"
    write_wb2_store(path, 64, 32, False, False)
    base = {"source": "zarr", "path": str(path), "variables": CHANNELS}
    cfg = DataConfig(**base, start="2020-01-01T06:00", end="2020-01-02T00:00")
    src = open_source(cfg)
    np.testing.assert_array_equal(src.times, T0 + np.array([6, 12, 18, 24], dtype="timedelta64[h]"))
    assert open_source(DataConfig(**base, start="2020-01-02T00:00")).times.size == 4  # open end
    zoned = DataConfig(**base, start="2020-01-01T07:00+01:00", end="2020-01-02T00:00Z")  # zones → UTC
    np.testing.assert_array_equal(open_source(zoned).times, src.times)
    assert open_source(DataConfig(**base)).times.size == 8
    with pytest.raises(DataError) as err:
        open_source(cfg, span="eval")
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and "no aivarda spans" in msg and "data.start/data.end" in msg
    assert "statistics_span: null" in msg
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {**base, "start": "2020-01-02", "end": "2020-01-01"}}))
    from aivarda.config import ExperimentConfig

    with pytest.raises(ConfigError, match="before start"):
        load_config(bad, ExperimentConfig)


def test_store_of_unknown_latitudes_is_one_data_error(tmp_path):
    path = tmp_path / "odd.zarr"
    lat = np.array([-60.0, -20.0, 10.0, 50.0])  # neither equiangular nor Gaussian
    ds = xr.Dataset({"2m_temperature": (("time", "longitude", "latitude"), np.zeros((1, 8, 4), np.float32))},
                    coords={"time": [T0], "latitude": lat, "longitude": np.arange(8) * 45.0})
    ds.to_zarr(path, mode="w")
    with pytest.raises(DataError, match=r"odd\.zarr: grid: 4 latitudes .* neither equiangular"):
        Wb2ZarrSource(path, layout=layout_from_channels(["t2m"]))


def test_one_3dvar_analysis_on_a_wb2_store(tmp_path):
    from aivarda.assimilate import AnalyseConfig, run_single_analysis

    torch.set_num_threads(1)
    path = tmp_path / "wb2.zarr"
    write_wb2_store(path, 64, 32, False, True, n_time=12)
    cfg_path = tmp_path / "a.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": "wb2_3dvar",
        "data": {"source": "zarr", "path": str(path), "variables": CHANNELS, "start": "2020-01-01T00:00",
                 "end": "2020-01-03T18:00"},
        "span": None,
        "statistics_span": None,
        "allow_in_sample": True,
        "background": {"lag": "24h"},
        "observations": {"mode": "random", "fraction": 0.2, "withhold": 0.15},
        "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"}, "outer_loops": 1,
                         "inner_iterations": 10},
        "output_dir": str(tmp_path / "out"),
    }))
    cfg = load_config(cfg_path, AnalyseConfig)
    m = run_single_analysis(cfg, progress=False).metrics
    assert m["normalised_wrmse"]["analysis"] < m["normalised_wrmse"]["background"]
    fit = m["observation_space"]["assimilated"]
    assert fit["O-A"]["rms"] < fit["O-B"]["rms"]


def test_training_sources_keep_inside_data_start_end(mini_wb2_store):
    from aivarda.learning.train_model import open_training_sources
    from aivarda.models.config import TrainDataConfig

    data = TrainDataConfig(source="zarr", path=mini_wb2_store.path, variables=list(mini_wb2_store.layout.names),
                           train_span="train", val_fraction=0.25, start="2020-01-01T06:00", end="2020-01-02T12:00")
    train, val = open_training_sources(data)
    times = np.concatenate([train.times, val.times])
    assert times.min() == np.datetime64("2020-01-01T06:00") and times.max() == np.datetime64("2020-01-02T12:00")
    assert times.size == 6 and np.intersect1d(train.times, val.times).size == 0
