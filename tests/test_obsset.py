"""ObsSet container, validation (malformed observations are never used silently), netCDF I/O,
the observations config section and quality control."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from aivarda.channels import ChannelLayout
from aivarda.config import load_config, validate
from aivarda.errors import ConfigError, ObservationError
from aivarda.grid import Grid
from aivarda.observations import (
    ObservationConfig,
    ObsSet,
    QCConfig,
    QCFlag,
    background_check,
    build_operator,
    gross_check,
    load_obs,
    quality_control,
    save_obs,
)

LAYOUT = ChannelLayout(("u10m", "t2m", "msl"), ("z", "t"), (250, 500, 850))  # 9 channels
GRID = Grid.gaussian(8, 16)


def _obs(n: int = 6) -> ObsSet:
    rng = np.random.default_rng(0)
    return ObsSet.create(
        rng.uniform(-80, 80, n),
        rng.uniform(0, 360, n),
        rng.integers(0, LAYOUT.n_channels, n),
        rng.normal(size=n),
        rng.uniform(0.5, 2.0, n),
        time_index=np.arange(n) % 2,
        time_offset_hours=(np.arange(n) % 2) * 6.0,
    )


# ------------------------------------------------------------------ container
def test_create_defaults_dtypes_and_lon_normalisation():
    obs = ObsSet.create([0.0, 10.0, 20.0], [-10.0, 360.0, 725.5], [0, 1, 2], [1.0, 2.0, 3.0], 0.5)
    assert len(obs) == 3
    torch.testing.assert_close(obs.lon, torch.tensor([350.0, 0.0, 5.5], dtype=torch.float64))
    assert obs.time_index.dtype == torch.int64 and obs.channel.dtype == torch.int64
    assert obs.qc.dtype == torch.int8 and obs.withheld.dtype == torch.bool
    assert obs.value.dtype == torch.float32 and obs.error_std.dtype == torch.float32
    assert torch.isnan(obs.level).all() and (obs.error_std == 0.5).all()
    tiny = ObsSet.create([0.0], [-1e-20], [0], [0.0], 1.0)
    assert 0.0 <= float(tiny.lon[0]) < 360.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ObservationError, match="different lengths"):
        ObsSet.create([0.0, 1.0], [0.0, 1.0], [0], [1.0, 2.0], 1.0)


def test_select_active_verification_concat_and_to():
    obs = _obs(6)
    obs = obs.replace(
        qc=torch.tensor([0, 0, 3, 0, 1, 0], dtype=torch.int8),
        withheld=torch.tensor([False, True, False, False, True, True]),
    )
    assert obs.active().channel.tolist() == obs.channel[[0, 3]].tolist()
    assert obs.verification().channel.tolist() == obs.channel[[1, 5]].tolist()
    assert len(obs.select(torch.tensor([4, 0]))) == 2
    both = ObsSet.concat([obs, obs.active()])
    assert len(both) == 8
    assert obs.to("cpu").device.type == "cpu"
    assert obs.counts() == {"good": 4, "invalid": 1, "gross": 0, "background": 1, "withheld": 3, "active": 2}
    with pytest.raises(ObservationError, match="select mask"):
        obs.select(torch.tensor([True, False]))


def test_flag_keeps_the_first_reason():
    obs = _obs(3).flag(torch.tensor([True, False, False]), QCFlag.GROSS)
    obs = obs.flag(torch.tensor([True, True, False]), QCFlag.BACKGROUND)
    assert obs.qc.tolist() == [QCFlag.GROSS, QCFlag.BACKGROUND, QCFlag.GOOD]


# ------------------------------------------------------------------ validation (acceptance)
@pytest.mark.parametrize(
    ("field", "bad_value", "message"),
    [
        ("lat", 95.0, "lat: 1 of 6 outside the grid"),
        ("lat", math.nan, "lat: 1 of 6 outside the grid"),
        ("lon", math.inf, "lon: 1 of 6 outside the grid"),
        ("value", math.nan, "value: 1 of 6 not finite"),
        ("error_std", -1.0, "error_std: 1 of 6 not positive"),
        ("error_std", 0.0, "error_std: 1 of 6 not positive"),
        ("error_std", math.nan, "error_std: 1 of 6 not positive"),
        ("channel", 9, "channel: 1 of 6 outside the channel layout"),
        ("channel", -1, "channel: 1 of 6 outside the channel layout"),
        ("time_index", 2, "time_index: 1 of 6 outside the window"),
    ],
)
def test_malformed_observations_are_rejected_or_flagged(field, bad_value, message):
    obs = _obs(6)
    column = getattr(obs, field).clone()
    column[3] = bad_value
    bad = obs.replace(**{field: column})
    with pytest.raises(ObservationError) as info:
        bad.validate(GRID, LAYOUT, n_times=2)
    text = str(info.value)
    assert message in text and "observation 3" in text and "\n" not in text
    # or flagged by QC: never in the active set
    flagged = bad.validate(GRID, LAYOUT, n_times=2, qc_reject=True)
    assert flagged.qc.tolist() == [0, 0, 0, QCFlag.INVALID, 0, 0]
    assert len(flagged.active()) == 5
    # and the analysis operator refuses them
    with pytest.raises(ObservationError):
        build_operator(bad, GRID, LAYOUT, (LAYOUT.n_channels, *GRID.shape), n_times=2)
    assert validate is not None  # config path tested below


@pytest.mark.parametrize(
    ("channel", "level", "ok"),
    [
        ("u10m", 500.0, False),  # surface channel with a level
        ("z250", 600.0, True),  # between model levels
        ("z250", 850.0, True),  # on a model level
        ("t500", 1000.0, False),  # below the lowest model level: no extrapolation
        ("t500", 100.0, False),  # above the top level
        ("t500", -5.0, False),
    ],
)
def test_level_validation(channel, level, ok):
    obs = ObsSet.create([10.0], [20.0], [LAYOUT.index(channel)], [1.0], 1.0, level=[level])
    if ok:
        assert obs.validate(GRID, LAYOUT) is obs
    else:
        with pytest.raises(ObservationError, match="level: 1 of 1"):
            obs.validate(GRID, LAYOUT)


def test_several_problems_in_one_line():
    obs = _obs(6)
    bad = obs.replace(value=torch.full((6,), math.nan), error_std=-obs.error_std)
    with pytest.raises(ObservationError) as info:
        bad.validate(GRID, LAYOUT)
    text = str(info.value)
    assert "value: 6 of 6" in text and "error_std: 6 of 6" in text and "\n" not in text


def test_valid_set_passes_unchanged():
    obs = _obs(6)
    assert obs.validate(GRID, LAYOUT, n_times=2) is obs
    assert obs.validate(GRID, LAYOUT, n_times=2, qc_reject=True) is obs


# ------------------------------------------------------------------ netCDF I/O
def test_netcdf_round_trip(tmp_path: Path):
    obs = _obs(6).replace(
        level=torch.tensor([math.nan, 600.0, math.nan, 300.0, math.nan, math.nan], dtype=torch.float64),
        channel=torch.tensor([0, 4, 1, 6, 8, 2]),  # off-level ones on the nearest level (ln p)
        qc=torch.tensor([0, 3, 0, 2, 0, 0], dtype=torch.int8),
        withheld=torch.tensor([False, False, True, False, True, False]),
    )
    path = save_obs(obs, tmp_path / "sub" / "obs.nc", LAYOUT)
    back = load_obs(path, LAYOUT)  # an IODA v3 file: positions, pressure and values are float32 there
    for name in ("time_index", "time_offset_hours", "channel", "qc", "withheld"):
        a, b = getattr(obs, name), getattr(back, name)
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0, msg=name)
    for name in ("lat", "lon", "level", "value", "error_std"):
        a, b = getattr(obs, name).float().double(), getattr(back, name).double()
        torch.testing.assert_close(b, a, equal_nan=True, rtol=0 if name != "value" else 3e-7, atol=0, msg=name)
    with h5py.File(path, "r") as f:  # a JEDI IODA v3 file (tests/test_obs_formats.py checks it in full)
        assert {"MetaData", "ObsValue", "ObsError", "PreQC"} <= set(f.keys())
        assert {"latitude", "longitude", "dateTime", "pressure", "stationIdentification"} <= set(f["MetaData"].keys())
        assert f["MetaData/pressure"][1] == 60000.0 and "geopotentialHeight" in f["ObsValue"]


def test_netcdf_into_another_layout(tmp_path: Path):
    obs = ObsSet.create([1.0, 2.0], [3.0, 4.0], [LAYOUT.index("t2m"), LAYOUT.index("z500")], [1.0, 2.0], 1.0)
    save_obs(obs, tmp_path / "o.nc", LAYOUT)
    fengwu = ChannelLayout.fengwu69()
    back = load_obs(tmp_path / "o.nc", fengwu)
    assert back.channel_names(fengwu) == ["t2m", "z500"]
    with pytest.raises(ObservationError, match="layout does not have .*'z500'"):
        load_obs(tmp_path / "o.nc", ChannelLayout(("t2m",), (), ()))


def test_netcdf_empty_set(tmp_path: Path):
    save_obs(ObsSet.empty(), tmp_path / "e.nc", LAYOUT)
    assert len(load_obs(tmp_path / "e.nc", LAYOUT)) == 0


def test_malformed_files(tmp_path: Path):
    with pytest.raises(ObservationError, match="not found"):
        load_obs(tmp_path / "missing.nc", LAYOUT)
    junk = tmp_path / "junk.nc"
    junk.write_text("this is not HDF5")
    with pytest.raises(ObservationError, match="not an IODA") as info:
        load_obs(junk, LAYOUT)
    assert "\n" not in str(info.value)
    # a valid file without ObsError loads, but observations without σ_o are flagged invalid
    path = save_obs(_obs(4), tmp_path / "o.nc", LAYOUT)
    with h5py.File(path, "a") as f:
        del f["ObsError"]
    assert load_obs(path, LAYOUT).qc.tolist() == [QCFlag.INVALID] * 4
    # a structurally fine file with a NaN value loads, but is never used silently
    path = save_obs(_obs(4).replace(value=torch.tensor([1.0, math.nan, 2.0, 3.0])), tmp_path / "n.nc", LAYOUT)
    loaded = load_obs(path, LAYOUT)
    with pytest.raises(ObservationError, match="value: 1 of 4"):
        build_operator(loaded, GRID, LAYOUT, (LAYOUT.n_channels, *GRID.shape))
    assert loaded.validate(GRID, LAYOUT, qc_reject=True).qc.tolist() == [0, QCFlag.INVALID, 0, 0]
    # a required variable missing from MetaData
    path = save_obs(_obs(4), tmp_path / "p.nc", LAYOUT)
    with h5py.File(path, "a") as f:
        del f["MetaData/latitude"]
    with pytest.raises(ObservationError, match=r"p\.nc: missing MetaData/latitude"):
        load_obs(path, LAYOUT)


# ------------------------------------------------------------------ config
def test_config_defaults():
    cfg = ObservationConfig()
    assert cfg.mode == "random" and cfg.error_fraction == 0.01 and cfg.withhold == 0.0
    assert cfg.error_scale == {"t": 0.25, "t2m": 0.25} and cfg.noise
    assert cfg.qc.limits()["t"] == (150.0, 350.0)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"fraction": 1.5}, "fraction"),
        ({"withhold": -0.1}, "withhold"),
        ({"error_fraction": -0.01}, "error_fraction"),
        ({"error_fraction": 0}, "error_fraction"),
        ({"mode": "satellite"}, "mode"),
        ({"channels": ["z500", "zz500"]}, "channels"),
        ({"error_scale": {"temperature": 0.25}}, "error_scale"),
        ({"error_std": {"t": -1.0}}, "error_std"),
        ({"pressure_levels": [500, -1]}, "pressure_levels"),
        ({"times": [0, 0]}, "times"),
        ({"mode": "fixed", "stations_file": "/nonexistent/stations.csv"}, "stations_file"),
        ({"mask_file": "m.npy"}, "mask_file: Value error, needs mode: grid"),
        ({"mode": "grid", "mask_file": "m.csv"}, "mask_file: Value error, expected a .npy file"),
        ({"qc": {"background_k": 0}}, "qc.background_k"),
        ({"qc": {"gross_limits": {"t": [300, 200]}}}, "qc.gross_limits"),
        ({"nosie": True}, "nosie: unknown key"),
    ],
)
def test_config_errors_are_one_line(data, key):
    with pytest.raises(ConfigError) as info:
        validate(ObservationConfig, data, "exp.yaml: observations")
    text = str(info.value)
    assert key in text and "\n" not in text and text.startswith("exp.yaml: observations")


def test_config_relative_files_resolved(tmp_path: Path):
    (tmp_path / "st.csv").write_text("lat,lon\n10,20\n")
    (tmp_path / "a.yaml").write_text("mode: fixed\nstations_file: st.csv\n")
    cfg = load_config(tmp_path / "a.yaml", ObservationConfig)
    assert cfg.stations_file == (tmp_path / "st.csv").resolve()
    (tmp_path / "b.yaml").write_text("mode: fixed\nstations_file: nothere.csv\n")
    with pytest.raises(ConfigError, match="b.yaml: stations_file: Value error, file not found"):
        load_config(tmp_path / "b.yaml", ObservationConfig)


# ------------------------------------------------------------------ QC
def test_gross_check():
    t500, msl = LAYOUT.index("t500"), LAYOUT.index("msl")
    obs = ObsSet.create([0.0] * 4, [0.0] * 4, [t500, t500, msl, msl], [250.0, 400.0, 101325.0, 5000.0], 1.0)
    assert gross_check(obs, LAYOUT).qc.tolist() == [0, QCFlag.GROSS, 0, QCFlag.GROSS]
    custom = gross_check(obs, LAYOUT, {"t": (260.0, 300.0)})
    assert custom.qc.tolist() == [QCFlag.GROSS, QCFlag.GROSS, 0, 0]


def test_background_check_threshold():
    obs = ObsSet.create([0.0] * 3, [0.0] * 3, [0, 0, 0], [10.0, 14.9, 15.1], [3.0, 3.0, 3.0])
    hx_b = torch.zeros(3)
    # k·sqrt(σo² + σb²) = 3·sqrt(9 + 16) = 15
    out = background_check(obs, hx_b, 4.0, k=3.0)
    assert out.qc.tolist() == [0, 0, QCFlag.BACKGROUND]
    with pytest.raises(ObservationError, match="shape"):
        background_check(obs, torch.zeros(2), 1.0)


def test_quality_control_pipeline_uses_the_background_not_the_truth():
    shape = (LAYOUT.n_channels, *GRID.shape)
    t500 = LAYOUT.index("t500")
    truth = torch.zeros(1, *shape)
    truth[0, t500] = 250.0
    background = truth.clone()
    background[0, t500] = 350.0  # a bad background for t500 …
    n = 5
    obs = ObsSet.create(
        [GRID.lat[2]] * n, [GRID.lon[3]] * n, [t500, t500, 0, 0, 0], [250.0, 250.0, 0.0, 900.0, math.nan], 1.0
    )
    out = quality_control(
        obs, GRID, LAYOUT, QCConfig(background_k=4.0), background=background, background_std=torch.ones(9)
    )
    # … flags the t500 observations even though they equal the truth (QC never sees the truth)
    assert out.qc.tolist() == [QCFlag.BACKGROUND, QCFlag.BACKGROUND, 0, QCFlag.GROSS, QCFlag.INVALID]
    assert len(out.active()) == 1
    no_bg = quality_control(obs, GRID, LAYOUT)
    assert no_bg.qc.tolist() == [0, 0, 0, QCFlag.GROSS, QCFlag.INVALID]
    with pytest.raises(ObservationError, match="background_std"):
        quality_control(obs, GRID, LAYOUT, background=background)
