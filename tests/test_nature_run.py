"""The embedded Held–Suarez nature run and the WB2 Zarr writer."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from aivarda.channels import (
    SURFACE_VARIABLES,
    UPPER_AIR_VARIABLES,
    WB2_LEVELS,
    ChannelLayout,
)
from aivarda.cli import main as cli_main
from aivarda.config import load_config, validate
from aivarda.data.nature_run import (
    GRAVITY,
    LAPSE_RATE,
    R_DRY,
    NatureRunConfig,
    SpanConfig,
    default_store_path,
    ensure_nature_run,
    generate_nature_run,
    sigma_to_pressure,
)
from aivarda.data.zarr_writer import ZarrStateWriter
from aivarda.errors import AivardaError, ConfigError, DataError
from aivarda.grid import Grid

LAYOUT = ChannelLayout.fengwu69()


def _short_cfg(seed: int = 0) -> NatureRunConfig:
    """Tiny model, one simulated day, 6-hourly (5 times)."""
    cfg = NatureRunConfig.tiny()
    cfg.spans = {"train": SpanConfig(start=datetime(2000, 1, 1), end=datetime(2000, 1, 2), interval_hours=6)}
    cfg.seed = seed
    return cfg


@pytest.fixture(scope="module")
def tiny(tiny_nature_run: Path) -> xr.Dataset:
    return xr.open_zarr(tiny_nature_run)


# ---------------------------------------------------------------------------------------------- store
def test_tiny_store_has_the_wb2_layout(tiny: xr.Dataset) -> None:
    cfg = NatureRunConfig.tiny()
    for short in LAYOUT.surface:
        var = SURFACE_VARIABLES[short]
        assert tiny[var.wb2_name].dims == ("time", "latitude", "longitude")
        assert tiny[var.wb2_name].attrs["units"] == var.units
        assert tiny[var.wb2_name].attrs["short_name"] == short
    for short in LAYOUT.upper_air:
        var = UPPER_AIR_VARIABLES[short]
        assert tiny[var.wb2_name].dims == ("time", "level", "latitude", "longitude")
        assert tiny[var.wb2_name].attrs["units"] == var.units
        assert tiny[var.wb2_name].dtype == np.float32
    assert tiny.level.values.tolist() == list(WB2_LEVELS)
    grid = Grid.from_dict(json.loads(tiny.attrs["aivarda_grid"]))
    assert grid == Grid.gaussian(32, 64)
    assert np.all(np.diff(tiny.latitude.values) < 0)  # N → S
    np.testing.assert_allclose(tiny.latitude.values, grid.lat, atol=1e-4)
    assert tiny.longitude.values[0] == 0 and tiny.longitude.values[-1] < 360
    np.testing.assert_array_equal(tiny.time.values, cfg.output_times())
    spans = json.loads(tiny.attrs["aivarda_spans"])
    assert spans["train"]["interval_hours"] == 6 and spans["eval"]["interval_hours"] == 1
    assert tiny.time.size == 12 + 24
    assert NatureRunConfig.model_validate(json.loads(tiny.attrs["aivarda_config"])) == cfg
    assert int(tiny.attrs["seed"]) == 0 and "Held–Suarez" in tiny.attrs["source"]


def test_tiny_store_values_are_physical(tiny: xr.Dataset) -> None:
    ds = tiny.load()
    for name in ds.data_vars:
        assert np.all(np.isfinite(ds[name].values)), name
    t = ds.temperature.values
    assert 150 < t.min() and t.max() < 330
    z500 = ds.geopotential.sel(level=500).values
    assert 4.5e4 < z500.min() and z500.max() < 6.2e4
    assert ds.specific_humidity.values.min() >= 0 and ds.specific_humidity.values.max() < 0.03
    msl = ds.mean_sea_level_pressure.values
    assert 9.0e4 < msl.min() and msl.max() < 1.1e5
    assert np.abs(ds.u_component_of_wind.values).max() < 120
    # z decreases with pressure everywhere (monotone even below the ground at 1000 hPa)
    assert np.all(np.diff(ds.geopotential.values, axis=1) < 0)
    # moisture: moist tropics, dry poles and upper levels
    q = ds.specific_humidity.mean(("time", "longitude"))
    assert float(q.sel(level=1000).max()) > 10 * float(q.sel(level=300).max())
    lat = ds.latitude.values
    q1000 = q.sel(level=1000).values
    assert q1000[np.abs(lat).argmin()] > 5 * q1000[0]
    # the Held–Suarez equator-to-pole contrast, with the warm equator in the middle rows (N→S order)
    t850 = ds.temperature.sel(level=850).mean(("time", "longitude")).values
    assert t850[np.abs(lat).argmin()] - t850[0] > 20 and t850[np.abs(lat).argmin()] - t850[-1] > 20


def test_tiny_run_starts_from_a_spun_up_state_with_eddies(tiny: xr.Dataset) -> None:
    """The shipped T42 state, truncated to T21, carries baroclinic eddies and mid-latitude jets."""
    z500 = tiny.geopotential.sel(level=500).isel(time=0).values
    assert z500.std(axis=1).max() > 300.0  # m²/s²: zonal anomalies (a rest start would have ~0)
    u = tiny.u_component_of_wind.sel(level=250).mean(("time", "longitude")).values
    lat = tiny.latitude.values
    assert u[lat > 20].max() > 15 and u[lat < -20].max() > 15


def test_surface_channels_come_from_the_lowest_level(tiny: xr.Dataset) -> None:
    ds = tiny.isel(time=slice(0, 4)).load()
    # t2m is T at the lowest model level (p_L < 1000 hPa); t1000 is extrapolated down from it with the lapse rate
    t2m, t1000 = ds["2m_temperature"].values, ds.temperature.sel(level=1000).values
    assert np.all(t1000 >= t2m - 1e-3) and np.all(t1000 - t2m < 8.0)
    # surface drag: the near-surface wind is weaker than the jet-level wind
    assert np.abs(ds["10m_u_component_of_wind"]).mean() < 0.5 * np.abs(ds.u_component_of_wind.sel(level=250)).mean()
    np.testing.assert_allclose(ds.mean_sea_level_pressure.values.mean(), 1.0e5, rtol=5e-3)  # mass of the HS atmosphere


# ---------------------------------------------------------------------------------------------- interpolation
def test_sigma_to_pressure_is_exact_for_an_isothermal_column() -> None:
    """T = T0: Φ(σ) = −R T0 ln σ exactly; linear-in-ln p interpolation reproduces it between levels,
    and below the lowest level Φ follows the standard lapse rate from it."""
    t0, ps = 250.0, np.full((2, 3), 98000.0)
    sigma = (np.arange(10) + 0.5) / 10
    log_sigma = np.log(sigma)
    phi = -R_DRY * t0 * log_sigma
    fields = {"z": np.broadcast_to(phi[:, None, None], (10, 2, 3)), "t": np.full((10, 2, 3), t0)}
    p = np.array([10000.0, 50000.0, 90000.0, 97000.0, 100000.0])
    out = {k: np.asarray(v) for k, v in sigma_to_pressure(fields, log_sigma, p, ps).items()}
    inside = p / 98000.0 <= sigma[-1]
    np.testing.assert_allclose(out["z"][inside, 0, 0], -R_DRY * t0 * np.log(p[inside] / 98000.0), rtol=1e-5)
    np.testing.assert_allclose(out["t"][inside], t0)
    ratio = p[~inside] / (sigma[-1] * 98000.0)
    expo = R_DRY * LAPSE_RATE / GRAVITY
    np.testing.assert_allclose(out["t"][~inside, 0, 0], t0 * ratio**expo, rtol=1e-5)
    np.testing.assert_allclose(out["z"][~inside, 0, 0], phi[-1] + GRAVITY * t0 / LAPSE_RATE * (1 - ratio**expo), rtol=1e-4)
    assert np.all(np.diff(out["z"][:, 0, 0]) < 0)


# ---------------------------------------------------------------------------------------------- generation
def test_generation_is_deterministic_and_seeded(tmp_path: Path, tiny: xr.Dataset) -> None:
    """Same seed → bit-identical states (the tiny store's first day, made by another run); another seed differs."""
    a = xr.open_zarr(generate_nature_run(_short_cfg(0), tmp_path / "a.zarr", progress=False)).load()
    c = xr.open_zarr(generate_nature_run(_short_cfg(1), tmp_path / "c.zarr", progress=False)).load()
    b = tiny.isel(time=slice(0, 5)).load()
    np.testing.assert_array_equal(a.time.values, b.time.values)
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    diff = np.abs(a.temperature.isel(time=-1).values - c.temperature.isel(time=-1).values)
    assert 0 < diff.max() < 5.0  # 0.1 K seeds grow but stay small after one day
    assert a.time.size == 5


def test_refuses_to_overwrite_and_leaves_nothing_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "store.zarr"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(AivardaError, match="already exists"):
        generate_nature_run(_short_cfg(), out, progress=False)
    assert (out / "keep").read_text() == "x"

    def boom(self: ZarrStateWriter, index: int, state: np.ndarray) -> None:
        if index == 2:
            raise RuntimeError("disk full")
        ZarrStateWriter.__dict__["_orig_write"](self, index, state)

    monkeypatch.setattr(ZarrStateWriter, "_orig_write", ZarrStateWriter.write, raising=False)
    monkeypatch.setattr(ZarrStateWriter, "write", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate_nature_run(_short_cfg(), out, force=True, progress=False)
    assert (out / "keep").read_text() == "x"  # the old store survives a failed --force run
    with pytest.raises(RuntimeError):
        generate_nature_run(_short_cfg(), tmp_path / "new.zarr", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]  # no half store, no temp sibling


def test_cli_generates_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file = tmp_path / "nr.yaml"
    cfg_file.write_text(
        "resolution: T21\nsigma_levels: 8\ntime_step_minutes: 30\n"
        "spans:\n  eval: {start: 2000-01-01T00:00, end: 2000-01-01T03:00, interval_hours: 1}\n"
    )
    out = tmp_path / "cli.zarr"
    assert cli_main(["data", "nature-run", "--config", str(cfg_file), "--out", str(out), "--seed", "3"]) == 0
    ds = xr.open_zarr(out)
    assert ds.time.size == 4 and int(ds.attrs["seed"]) == 3
    assert cli_main(["data", "nature-run", "--config", str(cfg_file), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["data", "nature-run", "--config", str(cfg_file), "--out", str(out), "--force"]) == 0
    assert int(xr.open_zarr(out).attrs["seed"]) == 0


def test_invalid_configs_are_one_line_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: T42\nsigma_levls: 13\n")
    with pytest.raises(ConfigError, match="sigma_levls: unknown key"):
        load_config(bad, NatureRunConfig)
    bad.write_text("spans:\n  train: {start: 2000-01-02, end: 2000-01-01, interval_hours: 6}\n")
    with pytest.raises(ConfigError, match="end must not be before start"):
        load_config(bad, NatureRunConfig)
    bad.write_text("spans:\n  train: {start: 1999-12-31, end: 2000-01-01, interval_hours: 6}\n")
    with pytest.raises(ConfigError, match="starts before"):
        load_config(bad, NatureRunConfig)
    bad.write_text("time_step_minutes: 25\n")
    with pytest.raises(ConfigError, match="divide one hour"):
        load_config(bad, NatureRunConfig)
    assert cli_main(["data", "nature-run", "--config", str(bad), "--out", str(tmp_path / "x.zarr")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aivarda: error: ") and "\n" not in err
    assert not (tmp_path / "x.zarr").exists()


def test_default_config_and_cached_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = NatureRunConfig()
    assert (cfg.resolution, cfg.sigma_levels, cfg.time_step_minutes, cfg.initial_state) == ("T42", 13, 20.0, "spun_up")
    assert cfg.grid() == Grid.t42()
    days = {k: (s.end - s.start).days for k, s in cfg.spans.items()}
    assert days["train"] >= 180 and cfg.spans["train"].interval_hours == 6
    assert cfg.spans["hourly"].interval_hours == cfg.spans["eval"].interval_hours == 1
    monkeypatch.setenv("AIVARDA_HOME", str(tmp_path / "home"))
    path = default_store_path(cfg)
    assert path.parent == tmp_path / "home" / "nature_run" and path.suffix == ".zarr"
    assert default_store_path(_short_cfg(1)) != default_store_path(_short_cfg(0))
    first = ensure_nature_run(_short_cfg(), progress=False)
    stamp = (first / ".zmetadata").stat().st_mtime_ns
    assert ensure_nature_run(_short_cfg(), progress=False) == first
    assert (first / ".zmetadata").stat().st_mtime_ns == stamp  # cached, not regenerated


# ---------------------------------------------------------------------------------------------- restarts
def _from_restart(restart: Path, start: datetime, **changes: object) -> NatureRunConfig:
    """The tiny world continued from ``restart`` (dated ``start``): 6-hourly on 2000-01-03, then the
    first 3 hours of 2000-01-04 hourly (all times of the tiny store)."""
    spans = {
        "train": SpanConfig(start=datetime(2000, 1, 3), end=datetime(2000, 1, 3, 18), interval_hours=6),
        "eval": SpanConfig(start=datetime(2000, 1, 4), end=datetime(2000, 1, 4, 2), interval_hours=1),
    }
    fields = {**NatureRunConfig.tiny().model_dump(), "initial_state": "restart", "restart_file": restart,
              "start": start, "spans": spans, **changes}
    return NatureRunConfig.model_validate(fields)


def test_a_run_from_a_restart_continues_the_trajectory(
    tmp_path: Path, tiny: xr.Dataset, tiny_nature_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny world's restart after 27 h (not an output time of the tiny store), continued for two
    days with other steps between outputs: the states equal the continuous run's at the same valid
    times, and the store is the same world (fingerprint) with the same origin, so the leakage guard
    compares it by date."""
    from aivarda.data.fingerprint import nature_run_fingerprint, nature_run_origin, store_identity

    restart = tmp_path / "restart.npz"
    assert cli_main(["data", "restart", "--tiny", "--at", "2000-01-02T03", "--out", str(restart)]) == 0
    assert "1.125 simulated days" in capsys.readouterr().out
    with np.load(restart) as npz:
        meta = json.loads(str(npz["meta"]))
    world = store_identity(tiny_nature_run)
    assert meta["fingerprint"] == world.fingerprint and np.datetime64(meta["origin"], "ns") == world.origin
    assert (meta["valid_time"], meta["elapsed_hours"], meta["command"].split()[:3]) == (
        "2000-01-02T03:00:00", 27.0, ["aivarda", "data", "restart"])

    cfg = _from_restart(restart, datetime(2000, 1, 2, 3))
    assert nature_run_fingerprint(cfg) == world.fingerprint and nature_run_origin(cfg) == world.origin
    out = xr.open_zarr(generate_nature_run(cfg, tmp_path / "r.zarr", progress=False))
    ref = tiny.sel(time=out.time.values)
    assert out.time.size == 7
    for name in out.data_vars:  # bit-identical: the restart is the state itself, the same compiled steps follow
        np.testing.assert_array_equal(out[name].values, ref[name].values, err_msg=name)
    identity = store_identity(tmp_path / "r.zarr")
    assert (identity.fingerprint, identity.origin) == (world.fingerprint, world.origin)
    assert identity.content != world.content

    # a restart of the restart run: the same world, the elapsed time adds up
    again = tmp_path / "again.npz"
    args = ["--config", _yaml(tmp_path, cfg), "--at", "2000-01-03T00", "--out", str(again)]
    assert cli_main(["data", "restart", *args]) == 0
    with np.load(again) as npz:
        meta2 = json.loads(str(npz["meta"]))
    assert (meta2["fingerprint"], meta2["origin"]) == (meta["fingerprint"], meta["origin"])
    assert meta2["elapsed_hours"] == 48.0


def _yaml(tmp_path: Path, cfg: NatureRunConfig) -> str:
    import yaml

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.dump()))
    return str(path)


def test_a_restart_must_match_the_world_and_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run from a restart with another seed, resolution or start date, a missing file, or a file
    that is not a restart: one clear error naming the field."""
    from aivarda.data.nature_run import RESTART_KIND, build_model, make_restart, restart_meta, save_restart

    restart = tmp_path / "restart.npz"
    cfg = _short_cfg()
    state, meta = make_restart(cfg, np.datetime64("2000-01-01T06"), progress=False)
    meta = save_restart(restart, build_model(cfg), state, meta)
    assert meta["kind"] == RESTART_KIND and len(meta["sha256"]) == 64
    assert restart_meta(_from_restart(restart, datetime(2000, 1, 1, 6)))["valid_time"] == "2000-01-01T06:00:00"
    with pytest.raises(ConfigError, match=r"start: 2000-01-01T00:00:00 is not the valid time .*start: 2000-01-01T06"):
        restart_meta(_from_restart(restart, datetime(2000, 1, 1)))
    with pytest.raises(ConfigError, match=r"seed: must equal the restart's .*seed=0"):
        restart_meta(_from_restart(restart, datetime(2000, 1, 1, 6), seed=1))
    with pytest.raises(ConfigError, match=r"resolution, sigma_levels: must equal"):
        restart_meta(_from_restart(restart, datetime(2000, 1, 1, 6), resolution="T31", sigma_levels=13))
    with pytest.raises(DataError, match="restart state not found"):
        restart_meta(_from_restart(tmp_path / "none.npz", datetime(2000, 1, 1, 6)))
    not_restart = tmp_path / "x.npz"
    np.savez(not_restart, meta=np.array(json.dumps({"resolution": "T21"})))
    with pytest.raises(DataError, match="not a restart state"):
        restart_meta(_from_restart(not_restart, datetime(2000, 1, 1, 6)))
    with np.load(restart) as npz:  # a restart whose recorded world is not the one of its configuration
        forged = {k: npz[k] for k in npz.files} | {"meta": np.array(json.dumps(meta | {"fingerprint": "0" * 16}))}
    np.savez(not_restart, **forged)
    with pytest.raises(DataError, match=r"records world 0{16} .* but the configuration it was made with is world"):
        restart_meta(_from_restart(not_restart, datetime(2000, 1, 1, 6)))
    with pytest.raises(ConfigError, match="whole number of 30-min steps"):
        make_restart(cfg, np.datetime64("2000-01-01T00:10"), progress=False)
    with pytest.raises(ConfigError, match="restart_file is only read with initial_state: restart"):
        validate(NatureRunConfig, {"restart_file": str(restart)}, "nr.yaml")
    assert cli_main(["data", "restart", "--tiny", "--at", "2000-01-01T06"]) == 2  # the packaged one is the default world's
    assert "--out is required" in capsys.readouterr().err


def test_the_shipped_restart_is_the_default_world_on_2000_07_16() -> None:
    """The packaged restart: the default world's state 197 days after its origin, small, finite."""
    from aivarda.data.fingerprint import nature_run_fingerprint
    from aivarda.data.nature_run import RESTART_ASSET, RESTART_TIME

    assert RESTART_ASSET.stat().st_size < 20e6
    with np.load(RESTART_ASSET) as npz:
        meta = json.loads(str(npz["meta"]))
        assert all(np.all(np.isfinite(npz[k])) for k in npz.files if k != "meta")
    assert meta["fingerprint"] == nature_run_fingerprint(NatureRunConfig())
    assert (meta["origin"], meta["valid_time"]) == ("2000-01-01T00:00:00", RESTART_TIME.isoformat())
    assert meta["elapsed_hours"] == 197 * 24 and meta["config"] == NatureRunConfig().dump()
    assert meta["command"] == "aivarda data restart --at 2000-07-16T00"


# ---------------------------------------------------------------------------------------------- writer
def test_zarr_writer_round_trips_states(tmp_path: Path) -> None:
    grid = Grid.gaussian(8, 16)
    layout = ChannelLayout(("t2m", "msl"), ("z", "t"), (500, 850))
    times = np.array(["2000-01-01T00", "2000-01-01T06", "2000-01-02T00"], dtype="datetime64[ns]")
    rng = np.random.default_rng(0)
    states = rng.normal(size=(3, layout.n_channels, 8, 16)).astype(np.float32)
    with ZarrStateWriter(tmp_path / "w.zarr", grid, layout, times, {"note": "x", "spans": {"a": 1}}) as w:
        w.write_at(times[2], states[2])
        w.write(0, states[0])
        with pytest.raises(DataError, match="state shape"):
            w.write(1, states[1][:3])
        with pytest.raises(DataError, match="not on the store's time axis"):
            w.write_at(np.datetime64("2001-01-01"), states[1])
    ds = xr.open_zarr(tmp_path / "w.zarr").load()
    np.testing.assert_array_equal(ds.time.values, times)
    np.testing.assert_array_equal(ds.temperature.values[2], states[2][layout.variable_slice("t")])
    np.testing.assert_array_equal(ds["mean_sea_level_pressure"].values[0], states[0][layout.index("msl")])
    assert np.all(np.isnan(ds.geopotential.values[1]))  # never written
    assert json.loads(ds.attrs["spans"]) == {"a": 1} and ds.attrs["note"] == "x"
    with pytest.raises(DataError, match="already exists"):
        ZarrStateWriter(tmp_path / "w.zarr", grid, layout, times)
