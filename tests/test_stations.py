"""Station network, station observations, cycling from observation files (IODA, BUFR) and O−B/O−A
by report type, on the tiny nature run."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from aivarda.channels import ChannelLayout
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.runner import CyclingRunner
from aivarda.errors import ConfigError, ObservationError
from aivarda.grid import Grid
from aivarda.observations.config import ObservationConfig
from aivarda.observations.obsset import ObsSet
from aivarda.observations.stations import (
    DEFAULT_CONTINENTS,
    StationNetwork,
    StationNetworkConfig,
    generate_network,
    land_area_fraction,
    land_mask,
    simulate_station_table,
    thin_reports,
    withheld_stations,
)
from aivarda.observations.table import encode_station_ids

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"radiosonde": {"count": 20, "significant_levels": 2}, "surface": {"count": 60}}


# ------------------------------------------------------------------------------ network
def test_network_is_deterministic_land_biased_and_withholds_about_15_percent() -> None:
    cfg = StationNetworkConfig()
    a, b = generate_network(cfg), generate_network(cfg)
    assert len(a) == 750 and (a.kind == "radiosonde").sum() == 150 and (a.kind == "surface").sum() == 600
    for name in ("station", "lat", "lon", "land"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert len(set(a.station.tolist())) == 750
    other = generate_network(StationNetworkConfig(seed=1))
    assert not np.array_equal(a.lat, other.lat)
    # land bias measured from the positions: stations per unit area over land ÷ over ocean
    land = land_mask(a.lat, a.lon)
    f = land_area_fraction()
    # quadrature of the mask = the boxes' exact areas (they do not overlap), about Earth's 29 % of land
    assert f == pytest.approx(sum(b.area_fraction() for b in DEFAULT_CONTINENTS), abs=2e-3)
    assert 0.27 < f < 0.32
    assert land_mask(np.array([-80.0, -80.0, 0.0]), np.array([0.0, 200.0, 200.0])).tolist() == [True, True, False]
    density_ratio = (land.sum() / f) / ((~land).sum() / (1 - f))
    assert density_ratio > 10  # 0.85-0.9 of the sites on 30 % of the area
    assert land.sum() == round(0.85 * 150) + round(0.9 * 600)
    assert density_ratio == pytest.approx(a.density_ratio(), rel=1e-3)
    # whole stations withheld by a seeded choice of ids: ≈ 15 %, deterministic, seed-dependent
    held = withheld_stations(a.station, 0.15, seed=0)
    assert np.array_equal(held, withheld_stations(a.station[::-1], 0.15, seed=0)[::-1])  # order-independent
    assert abs(held.mean() - 0.15) < 4 * math.sqrt(0.15 * 0.85 / 750)
    mean_over_seeds = np.mean([withheld_stations(a.station, 0.15, seed=s).mean() for s in range(40)])
    assert abs(mean_over_seeds - 0.15) < 0.01
    assert not np.array_equal(held, withheld_stations(a.station, 0.15, seed=1))
    # positions are float32-exact (IODA keeps float32 positions) and in range
    assert np.array_equal(a.lat, a.lat.astype(np.float32).astype(np.float64))
    assert np.all(np.abs(a.lat) <= 90) and np.all((a.lon >= 0) & (a.lon < 360))


# ------------------------------------------------------------------------------ simulation
def _one_station(kind: str, lat: float, lon: float) -> StationNetwork:
    return StationNetwork(np.array(["50000"], dtype=object), np.array([kind], dtype=object), np.array([lat]),
                          np.array([lon]), np.array([True]), np.zeros(1))


def test_radiosonde_levels_interpolated_in_ln_p_as_by_hand() -> None:
    grid = Grid.equiangular(9, 16)
    layout = ChannelLayout(("t2m", "msl"), ("t", "q", "z"), (300, 500, 700, 850))
    truth = torch.randn(layout.n_channels, *grid.shape, dtype=torch.float64) + 250.0
    j, i = 3, 5
    net = _one_station("radiosonde", float(grid.lat[j]), float(grid.lon[i]))
    cfg = StationNetworkConfig(radiosonde={"levels": [850.0, 600.0, 400.0, 200.0], "significant_levels": 0,
                                           "humidity_top": 500.0}, noise=False)
    table = simulate_station_table(cfg, net, truth, np.datetime64("2000-01-01T00"), grid, layout)
    # 200 hPa is above the model's top level (300 hPa): not reported
    assert sorted(set((table.pressure / 100).tolist())) == [400.0, 600.0, 850.0]
    assert set(table.report_type.tolist()) == {120}
    t = layout.variable_slice("t")

    def expected(p: float, var_slice: slice) -> float:
        col = truth[var_slice, j, i].numpy()  # levels 300, 500, 700, 850
        levels = np.array([300.0, 500.0, 700.0, 850.0])
        k = np.searchsorted(levels, p)
        lo, hi = levels[k - 1], levels[k]
        a = (math.log(p) - math.log(lo)) / (math.log(hi) - math.log(lo))
        return (1 - a) * col[k - 1] + a * col[k]

    for p in (400.0, 600.0):
        row = (table.variable == "airTemperature") & np.isclose(table.pressure, p * 100)
        assert table.value[row][0] == pytest.approx(expected(p, t), rel=1e-6)
    row = (table.variable == "airTemperature") & np.isclose(table.pressure, 85000)
    assert table.value[row][0] == pytest.approx(float(truth[t.start + 3, j, i]), rel=1e-6)
    # z in geopotential height (m), q only at p >= humidity_top
    z = layout.variable_slice("z")
    row = (table.variable == "geopotentialHeight") & np.isclose(table.pressure, 60000)
    assert table.value[row][0] == pytest.approx(expected(600.0, z) / 9.80665, rel=1e-6)
    assert sorted((table.pressure[table.variable == "specificHumidity"] / 100).tolist()) == [600.0, 850.0]
    # significant levels never repeat a level of the ascent (BUFR TEMP has one value per level)
    many = cfg.model_copy(update={"radiosonde": cfg.radiosonde.model_copy(update={"significant_levels": 400})})
    table = simulate_station_table(many, net, truth, np.datetime64("2000-01-01T12"), grid, layout)
    keys = list(zip(table.variable.tolist(), table.pressure.tolist(), strict=True))
    assert len(keys) == len(set(keys)) > 3 * 100


def test_surface_reports_types_and_noise_are_deterministic() -> None:
    grid = Grid.equiangular(9, 16)
    layout = ChannelLayout(("u10m", "v10m", "t2m", "msl"), ("t",), (500, 850))
    truth = torch.randn(layout.n_channels, *grid.shape, dtype=torch.float64)
    cfg = StationNetworkConfig(**SMALL)
    net = generate_network(cfg)
    t06 = np.datetime64("2000-01-01T06")
    a = simulate_station_table(cfg, net, truth, t06, grid, layout)
    b = simulate_station_table(cfg, net, truth, t06, grid, layout)
    assert np.array_equal(a.value, b.value)
    assert len(a) == 60 * 4  # no radiosondes at 06 UTC
    assert set(a.report_type.tolist()) == {181, 281}
    assert set(a.variable[a.report_type == 281].tolist()) == {"windEastwardAt10M", "windNorthwardAt10M"}
    noise = a.value[a.variable == "airTemperatureAt2M"] - simulate_station_table(
        cfg.model_copy(update={"noise": False}), net, truth, t06, grid, layout).value[a.variable == "airTemperatureAt2M"]
    assert 0.6 < noise.std() < 1.4  # σ_o(t2m) = 1 K


def test_thinning_keeps_the_report_nearest_the_box_centre() -> None:
    grid = Grid.equiangular(9, 16)  # 22.5° spacing
    lat = [0.0, 2.0, 0.0, 5.0]
    lon = [1.0, 0.5, 90.0, 90.0]
    stations = encode_station_ids(["A", "B", "C", "D"])
    obs = ObsSet.create(np.repeat(lat, 2), np.repeat(lon, 2), np.zeros(8, dtype=np.int64), np.zeros(8), 1.0,
                        station=np.repeat(stations, 2), report_type=np.full(8, 181))
    kept, thinned = thin_reports(obs, grid, box=1)
    assert thinned == 2
    assert sorted(set(kept.station.tolist())) == sorted([int(stations[0]), int(stations[2])])
    assert len(kept) == 4  # whole reports
    # superobbing: the kept report's values become the box means (A and B share channel 0 and level)
    values = torch.tensor([1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 9.0, 9.0])
    superob, _ = thin_reports(obs.replace(value=values), grid, box=1, method="mean")
    assert superob.value.tolist() == [2.0, 2.0, 7.0, 7.0]
    assert torch.equal(superob.lat, kept.lat)


# ------------------------------------------------------------------------------ config
def test_observation_source_config_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs path"):
        ObservationConfig(source="files")
    with pytest.raises(ValueError, match="only apply to source: simulate"):
        ObservationConfig(source="files", path="obs/{time:%Y%m%d%H}.nc4", mode="fixed")
    with pytest.raises(ValueError, match="needs a \\{time"):
        ObservationConfig(source="files", path="obs/all.nc4")
    with pytest.raises(ValueError, match="only .time:FORMAT. fields"):
        ObservationConfig(source="files", path="obs/{date}.nc4")
    with pytest.raises(ValueError, match="thinning applies"):
        ObservationConfig(thinning={"box": 2})
    cfg = ObservationConfig(source="files", path=tmp_path, pattern="{time:%Y%m%d%H}.bufr")
    from datetime import datetime

    assert cfg.file_for(datetime(2000, 8, 1, 6)) == tmp_path / "2000080106.bufr"


# ------------------------------------------------------------------------------ cycling from files
def _network_yaml(tmp: Path, store: Path) -> Path:
    path = tmp / "network.yaml"
    path.write_text(yaml.safe_dump({"seed": 5, "data": {"source": "zarr", "path": str(store)}, **SMALL}))
    return path


def _run_config(path: Path, store: Path, out: Path, observations: dict[str, Any], end: str = "2000-01-02T12:00",
                start: str = "2000-01-02T00:00") -> Path:
    cfg = {
        "name": path.stem, "seed": 3, "data": {"source": "zarr", "path": str(store)},
        "start_time": start, "end_time": end, "dynamic_member": 2, "gap": 2, "device": "cpu",
        "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"}, "outer_loops": 1,
                         "inner_iterations": 8},
        "model": {"module": "torch.nn:Identity", "dt": "6h", "residual": False,
                  "layout": ChannelLayout.fengwu69().to_dict()},
        "observations": observations, "outputs": {"analyses_zarr": True, "departures": True},
        "output_dir": str(out), "allow_in_sample": True,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _analyses(run: Path) -> np.ndarray:
    import xarray as xr

    with xr.open_zarr(run / "analyses.zarr") as ds:
        return np.concatenate([ds[v].values.ravel() for v in sorted(ds.data_vars)])


@pytest.fixture(scope="module")
def station_runs(tiny_nature_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three cycles of 3DVar from the in-memory network, from IODA files and from BUFR files."""
    from aivarda.data.stations_cli import report_times, write_station_files

    tmp = tmp_path_factory.mktemp("stations")
    net_yaml = _network_yaml(tmp, tiny_nature_run)
    net_cfg = load_config(net_yaml, StationNetworkConfig)
    times = report_times("2000-01-02T00", "2000-01-02T12", "6h")
    for fmt in ("ioda", "bufr"):
        write_station_files(net_cfg, tmp / fmt, fmt, times)
    common = {"withhold": 0.15, "thinning": {"box": 1}}
    errors = dict(net_cfg.error_std)
    sources = {
        "memory": {"source": "stations", "network": str(net_yaml), **common},
        "ioda": {"source": "files", "path": str(tmp / "ioda" / "{time:%Y%m%d%H}.nc4"), **common},
        "bufr": {"source": "files", "path": str(tmp / "bufr"), "pattern": "{time:%Y%m%d%H}.bufr",
                 "error_std": errors, **common},
    }
    runs = {}
    for name, obs in sources.items():
        config = _run_config(tmp / f"{name}.yaml", tiny_nature_run, tmp / f"run_{name}", obs)
        CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
        runs[name] = tmp / f"run_{name}"
    runs["tmp"] = tmp
    return runs


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_cycling_from_ioda_files_equals_cycling_from_the_simulated_network(station_runs: dict[str, Path]) -> None:
    memory, ioda = _analyses(station_runs["memory"]), _analyses(station_runs["ioda"])
    assert np.array_equal(memory, ioda)  # bit for bit: the same reports in the same order
    rm, ri = _rows(station_runs["memory"]), _rows(station_runs["ioda"])
    for a, b in zip(rm, ri, strict=True):
        for k in ("obs_active", "obs_withheld", "omb_assimilated_rms", "oma_withheld_rms"):
            assert a[k] == b[k]
    assert int(rm[0]["obs_active"]) > 0 and int(rm[0]["obs_withheld"]) > 0
    assert ri[0]["obs_file_missing"] == "0.0"


def _last_cycle(run: Path) -> dict[str, np.ndarray]:
    from aivarda.data.cf import read_states

    states, *_ = read_states(run / "last_cycle.nc")
    return {k: states[k] for k in ("background", "analysis")}


def test_cycling_from_bufr_files_matches_to_bufr_precision(station_runs: dict[str, Path]) -> None:
    memory, bufr = _last_cycle(station_runs["memory"]), _last_cycle(station_runs["bufr"])
    # BUFR rounds wind directions to 1°, speeds to 0.1 m/s, z to 1 m, T to 0.01 K: the analyses
    # differ, by a small part of the increment (per variable, over its levels)
    layout = ChannelLayout.fengwu69()
    increment = np.abs(memory["analysis"] - memory["background"])
    difference = np.abs(bufr["analysis"] - memory["analysis"])
    assert difference.max() > 0
    for var in (*layout.surface, *layout.upper_air):
        c = [k for k, ch in enumerate(layout.channels) if ch.variable.short == var]
        assert difference[c].max() <= 0.1 * increment[c].max(), var
    rm, rb = _rows(station_runs["memory"]), _rows(station_runs["bufr"])
    assert [r["obs_active"] for r in rm] == [r["obs_active"] for r in rb]


def test_obs_minus_background_by_report_type_in_metrics_report_and_maps(station_runs: dict[str, Path]) -> None:
    from aivarda.evaluation.report import load_run, run_summary
    from aivarda.evaluation.station_stats import plot_station_departures

    rows = _rows(station_runs["ioda"])
    r0, r1 = rows[0], rows[1]  # 00 UTC: radiosondes and surface; 06 UTC: surface only
    for col in ("omb_assimilated_radiosonde_t_rms", "oma_assimilated_radiosonde_u_rms", "omb_withheld_surface_t2m_rms",
                "omb_assimilated_surface_msl_count", "omb_assimilated_radiosonde_q_mean"):
        assert float(r0[col]) >= 0 or col.endswith("mean")
    assert r1.get("omb_assimilated_radiosonde_t_rms", "") == ""
    assert float(r1["omb_assimilated_surface_t2m_count"]) > 0
    # the per-report-type counts add up to the totals
    total = sum(float(v) for k, v in r0.items() if k.startswith("omb_assimilated_") and k.endswith("_count")
                and k.count("_") == 4 and v)
    assert total == float(r0["omb_assimilated_count"])
    # the analysis fits the assimilated observations better than the background
    assert float(r0["oma_assimilated_surface_t2m_rms"]) < float(r0["omb_assimilated_surface_t2m_rms"])
    summary = run_summary(load_run(station_runs["ioda"]))["obs_by_report"]
    n = sum(float(r["omb_assimilated_surface_t2m_count"]) for r in rows)
    s = summary["O-B"]["assimilated"]["surface"]["t2m"]
    assert s["count"] == n
    expected = math.sqrt(sum(float(r["omb_assimilated_surface_t2m_count"]) * float(r["omb_assimilated_surface_t2m_rms"]) ** 2
                             for r in rows) / n)
    assert s["rms"] == pytest.approx(expected)
    names = ChannelLayout.fengwu69().names
    png = plot_station_departures(station_runs["ioda"], station_runs["tmp"] / "maps" / "omb_t2m.png", "t2m", names)
    assert png is not None and png.stat().st_size > 1000
    assert plot_station_departures(station_runs["ioda"], station_runs["tmp"] / "maps" / "omb_t.png", "t", names, cycle=0)
    dep = np.load(station_runs["ioda"] / "departures" / "cycle_00000.npz")
    assert dep["omb"].size == int(r0["obs_good"]) + int(r0["obs_gross"]) + int(r0["obs_background"])


def test_a_missing_observation_file_is_one_error_naming_it_or_skipped(station_runs: dict[str, Path],
                                                                      tiny_nature_run: Path) -> None:
    tmp = station_runs["tmp"]
    path = tmp / "ioda" / "{time:%Y%m%d%H}.nc4"
    config = _run_config(tmp / "missing.yaml", tiny_nature_run, tmp / "run_missing", {"source": "files", "path": str(path)},
                         start="2000-01-02T18:00", end="2000-01-02T18:00")
    with pytest.raises(ObservationError, match="2000010218.nc4: observation file of cycle 0 .* not found.*missing: skip"):
        CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
    config = _run_config(tmp / "skip.yaml", tiny_nature_run, tmp / "run_skip",
                         {"source": "files", "path": str(path), "missing": "skip"}, start="2000-01-02T12:00",
                         end="2000-01-02T18:00")
    CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
    rows = _rows(tmp / "run_skip")
    assert [r["obs_file_missing"] for r in rows] == ["0.0", "1.0"]
    assert int(rows[0]["obs_active"]) > 0 and rows[1]["obs_active"] == "0"


def test_writing_station_files_refuses_to_overwrite(station_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from aivarda.cli import main

    tmp = station_runs["tmp"]
    before = (tmp / "ioda" / "2000010200.nc4").read_bytes()
    rc = main(["data", "stations", str(tmp / "network.yaml"), "--format", "ioda", "--out", str(tmp / "ioda"),
               "--start", "2000-01-02T00", "--end", "2000-01-02T00"])
    assert rc == 2
    assert "2000010200.nc4: exists" in capsys.readouterr().err
    assert (tmp / "ioda" / "2000010200.nc4").read_bytes() == before


def test_exp_3dvar_stations_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "exp_3DVar_stations.yaml", CyclingConfig)
    assert cfg.observations.source == "files" and cfg.observations.withhold == 0.15
    from datetime import datetime

    from aivarda.paths import aivarda_home

    # the file the docs' `aivarda data stations ... --out ${AIVARDA_HOME}/obs/stations_ioda` writes
    assert cfg.observations.file_for(datetime(2000, 8, 1, 6)) == aivarda_home() / "obs" / "stations_ioda" / "2000080106.nc4"
    assert len(cfg.cycle_times()) == 124
    net = load_config(root / "configs" / "stations" / "network.yaml", StationNetworkConfig)
    assert net.radiosonde.count == 150 and net.surface.count == 600
    with pytest.raises(ConfigError):
        from aivarda.data.stations_cli import report_times

        report_times("2000-01-02T00", "2000-01-01T00", "6h")


def test_reports_go_to_the_nearest_window_time_and_keep_their_own_time() -> None:
    from aivarda.observations.sources import station_window
    from aivarda.observations.table import ObsTable

    grid = Grid.equiangular(9, 16)
    layout = ChannelLayout(("t2m",), ("t",), (500, 850))
    t0 = np.datetime64("2000-01-01T00:00:00")
    times = t0 + np.array([50, 130, 170, 400], dtype="timedelta64[m]")  # 0:50, 2:10, 2:50, 6:40
    table = ObsTable.create(["airTemperatureAt2M"] * 4, times, [10.0] * 4, [20.0, 40.0, 60.0, 80.0],
                            [280.0] * 4, error=[1.0] * 4, station=["60001", "60002", "60003", "60004"])
    offsets = [np.timedelta64(h, "h") for h in (0, 1, 2, 3)]  # an FGAT-like window of hourly times
    obs, _ = station_window(table, ObservationConfig(source="files", path="x/{time:%H}.nc4"), layout, grid, t0,
                            offsets, seed=0, device="cpu")
    assert obs.time_index.tolist() == [1, 2, 3]  # 6:40 is outside the window: left out
    assert obs.time_offset_hours.tolist() == pytest.approx([50 / 60, 130 / 60, 170 / 60])
    one, _ = station_window(table, ObservationConfig(source="files", path="x/{time:%H}.nc4"), layout, grid, t0,
                            offsets[:1], seed=0, device="cpu")
    assert one.time_index.tolist() == [0, 0, 0]  # 3DVar: ±3 h around the analysis time


def test_report_draws_the_station_maps_of_a_run(station_runs: dict[str, Path]) -> None:
    """``aivarda report``'s figures include the per-station O−B maps of a run with departures."""
    from aivarda.evaluation.report import load_run, plot_report

    run = load_run(station_runs["ioda"])
    figures = plot_report([run], station_runs["tmp"] / "report_maps")
    names = {p.name for p in figures}
    assert {f"omb_stations_{run.name}_t.png", f"omb_stations_{run.name}_t2m.png"} <= names
    assert all(p.is_file() and p.stat().st_size > 0 for p in figures)
