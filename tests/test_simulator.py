"""Observation simulator: modes, reproducibility, the noise really added, error stds, withholding."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from aivarda.channels import ChannelLayout
from aivarda.errors import ObservationError
from aivarda.grid import Grid
from aivarda.observations import (
    BilinearOperator,
    ComposedOperator,
    GridPointOperator,
    ObservationConfig,
    ObservationSimulator,
    StackedOperator,
    build_operator,
)

LAYOUT = ChannelLayout(("u10m", "t2m"), ("z", "t"), (250, 500, 850))  # 8 channels
GRID = Grid.gaussian(16, 32)
SHAPE = (LAYOUT.n_channels, *GRID.shape)
CLIM_STD = torch.tensor([5.0, 10.0, 800.0, 600.0, 400.0, 8.0, 6.0, 5.0])
OFFSETS = [-3.0, 0.0, 3.0]


def _truth(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.0, 280.0, 1e5, 5e4, 1.4e4, 220.0, 250.0, 280.0])
    return base[None, :, None, None] + CLIM_STD[None, :, None, None] * torch.randn(3, *SHAPE, generator=g)


def _sim(seed: int = 0, **cfg) -> ObservationSimulator:
    return ObservationSimulator(ObservationConfig(**cfg), GRID, LAYOUT, CLIM_STD, seed=seed)


def _normalised_errors(sim: ObservationSimulator, truth: torch.Tensor, cycle: int = 0) -> torch.Tensor:
    obs = sim.simulate(truth, OFFSETS, cycle)
    hx = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=truth.shape[0])(truth)
    return ((obs.value.double() - hx.double()) / obs.error_std.double()), obs


def test_random_mode_counts_and_metadata():
    obs = _sim(fraction=0.25).simulate(_truth(), OFFSETS, cycle=0)
    n_cols = round(0.25 * GRID.nlat * GRID.nlon)
    assert len(obs) == 3 * n_cols * LAYOUT.n_channels
    assert obs.time_index.bincount().tolist() == [n_cols * LAYOUT.n_channels] * 3
    torch.testing.assert_close(obs.time_offset_hours, torch.tensor(OFFSETS, dtype=torch.float64)[obs.time_index])
    assert obs.validate(GRID, LAYOUT, n_times=3) is obs  # everything it produces is valid
    # columns are distinct grid points within one time, and differ between times
    key = obs.lat * 1000 + obs.lon
    t0, t1 = key[obs.time_index == 0], key[obs.time_index == 1]
    assert torch.unique(t0).numel() == n_cols
    assert not torch.equal(torch.unique(t0), torch.unique(t1))
    assert isinstance(build_operator(obs, GRID, LAYOUT, SHAPE), GridPointOperator)


def test_noise_is_added_with_the_right_statistics():
    sim = _sim(fraction=1.0)  # every column: 3 × 512 × 8 = 12288 observations
    r, obs = _normalised_errors(sim, _truth().double())  # float64: no float32 rounding of small σ·ε
    n = len(obs)
    assert n == 3 * 512 * 8
    assert abs(float(r.mean())) < 4 / math.sqrt(n)
    assert abs(float(r.std()) - 1.0) < 0.03
    assert float((r.abs() > 0).float().mean()) == 1.0  # no observation is noise-free


def test_noise_free_option_returns_h_of_truth():
    r, _ = _normalised_errors(_sim(noise=False), _truth())
    assert float(r.abs().max()) < 1e-6


def test_error_std_per_channel():
    sim = _sim()
    expected = 0.01 * CLIM_STD.double().numpy()
    for name in ("t2m", "t250", "t500", "t850"):
        expected[LAYOUT.index(name)] *= 0.25
    np.testing.assert_allclose(sim.channel_error_std, expected, rtol=1e-6)
    obs = sim.simulate(_truth(), OFFSETS, cycle=0)
    torch.testing.assert_close(obs.error_std, torch.as_tensor(expected, dtype=torch.float32)[obs.channel])
    absolute = _sim(error_std={"z": 50.0}, error_scale={}, error_fraction=0.02)
    assert absolute.channel_error_std[LAYOUT.index("z500")] == 50.0
    assert absolute.channel_error_std[LAYOUT.index("t500")] == pytest.approx(0.02 * 6.0)


def test_zero_climatological_std_is_a_clear_error():
    clim = CLIM_STD.clone()
    clim[LAYOUT.index("t250")] = 0.0
    with pytest.raises(ObservationError, match=r"\['t250'\]"):
        ObservationSimulator(ObservationConfig(), GRID, LAYOUT, clim)
    # fine when that channel is not observed
    ObservationSimulator(ObservationConfig(channels=["t500"]), GRID, LAYOUT, clim)


def test_reproducible_and_resumable():
    truth = _truth()
    a = _sim(seed=7).simulate(truth, OFFSETS, cycle=3)
    sim = _sim(seed=7)
    for cycle in range(3):
        sim.simulate(truth, OFFSETS, cycle)
    b = sim.simulate(truth, OFFSETS, cycle=3)  # same draws whatever ran before
    for name in ("lat", "lon", "channel", "value", "withheld"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = _sim(seed=7).simulate(truth, OFFSETS, cycle=4)
    d = _sim(seed=8).simulate(truth, OFFSETS, cycle=3)
    assert not torch.equal(a.lat, c.lat) and not torch.equal(a.lat, d.lat)


def test_fixed_stations_persist_across_cycles():
    sim = _sim(mode="fixed", n_stations=40)
    a = sim.simulate(_truth(0), OFFSETS, cycle=0)
    b = sim.simulate(_truth(1), OFFSETS, cycle=1)
    assert len(a) == 3 * 40 * LAYOUT.n_channels
    assert torch.equal(a.lat, b.lat) and torch.equal(a.lon, b.lon)
    assert not torch.equal(a.value, b.value)
    other = _sim(seed=1, mode="fixed", n_stations=40).simulate(_truth(0), OFFSETS, cycle=0)
    assert not torch.equal(a.lat, other.lat)


def test_stations_file_uses_bilinear(tmp_path: Path):
    path = tmp_path / "stations.csv"
    path.write_text("lat,lon\n51.5,-0.1\n-33.9,151.2\n89.0,10.0\n")
    cfg = {"mode": "fixed", "stations_file": str(path), "channels": ["t2m", "z500"]}
    obs = _sim(**cfg).simulate(_truth(), OFFSETS, cycle=0)
    assert len(obs) == 3 * 3 * 2
    assert obs.lon.min() >= 0 and float(obs.lon[0]) == pytest.approx(359.9)
    assert isinstance(build_operator(obs, GRID, LAYOUT, SHAPE), BilinearOperator)
    bad = tmp_path / "bad.csv"
    bad.write_text("latitude,longitude\n1,2\n")
    with pytest.raises(ObservationError, match="columns lat,lon"):
        _sim(mode="fixed", stations_file=str(bad))
    bad.write_text("lat,lon\n95,2\n")
    with pytest.raises(ObservationError, match="line 2: station outside the grid"):
        _sim(mode="fixed", stations_file=str(bad))


def test_grid_mode_stride_and_mask_file(tmp_path: Path):
    obs = _sim(mode="grid", grid_stride=4, times=[1]).simulate(_truth(), OFFSETS, cycle=0)
    assert len(obs) == (16 // 4) * (32 // 4) * LAYOUT.n_channels
    assert set(obs.time_index.tolist()) == {1}
    mask = np.zeros(GRID.shape, dtype=bool)
    mask[3, 5] = mask[10, 31] = True
    np.save(tmp_path / "mask.npy", mask)
    obs = _sim(mode="grid", mask_file=str(tmp_path / "mask.npy"), channels=["z500"]).simulate(_truth(), OFFSETS, 0)
    assert len(obs) == 2 * 3
    assert set(zip(obs.lat.tolist(), obs.lon.tolist(), strict=True)) == {
        (GRID.lat[3], GRID.lon[5]),
        (GRID.lat[10], GRID.lon[31]),
    }
    np.save(tmp_path / "wrong.npy", np.ones((3, 3), dtype=bool))
    with pytest.raises(ObservationError, match="expected the grid's"):
        _sim(mode="grid", mask_file=str(tmp_path / "wrong.npy"))


def test_offgrid_mode_is_consistent_with_the_analysis_operator():
    sim = _sim(mode="offgrid", count=300, noise=False)
    truth = _truth()
    obs = sim.simulate(truth, OFFSETS, cycle=2)
    assert len(obs) == 3 * 300 * LAYOUT.n_channels
    op = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=3)
    assert isinstance(op, BilinearOperator)
    torch.testing.assert_close(op(truth), obs.value)
    # positions uniform on the sphere: sin(lat) has mean ≈ 0 and variance ≈ 1/3
    s = torch.sin(torch.deg2rad(obs.lat[:: LAYOUT.n_channels]))
    assert abs(float(s.mean())) < 0.1 and abs(float(s.var()) - 1 / 3) < 0.05


def test_pressure_level_profiles():
    sim = _sim(mode="offgrid", count=50, channels=["t2m", "z500", "t850"], pressure_levels=[300.0, 500.0, 700.0])
    obs = sim.simulate(_truth(), OFFSETS, cycle=0)
    per_column = 1 + 3 + 3  # t2m, z at 3 pressures, t at 3 pressures
    assert len(obs) == 3 * 50 * per_column
    levels = obs.level[:per_column].tolist()
    assert math.isnan(levels[0]) and levels[1:] == [300.0, 500.0, 700.0] * 2
    op = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=3)
    assert isinstance(op, StackedOperator)
    assert any(isinstance(part, ComposedOperator) for _, part in op.parts)
    r, _ = _normalised_errors(sim, _truth())
    assert abs(float(r.std()) - 1) < 0.1
    with pytest.raises(ObservationError, match="outside the model levels"):
        _sim(pressure_levels=[100.0])


def test_withheld_columns():
    obs = _sim(fraction=1.0, withhold=0.15).simulate(_truth(), OFFSETS, cycle=0)
    frac = float(obs.withheld.double().mean())
    assert abs(frac - 0.15) < 0.03
    # whole columns are withheld: every channel of a column shares the flag
    cols = obs.withheld.reshape(-1, LAYOUT.n_channels)
    assert bool((cols.all(1) | ~cols.any(1)).all())
    assert len(obs.active()) + int(obs.withheld.sum()) == len(obs)


def test_channel_subset_and_bad_inputs():
    obs = _sim(channels=["z500", "u10m"]).simulate(_truth(), OFFSETS, cycle=0)
    assert set(obs.channel_names(LAYOUT)) == {"z500", "u10m"}
    with pytest.raises(Exception, match="unknown channel 'q500'"):
        _sim(channels=["q500"])
    sim = _sim()
    with pytest.raises(ObservationError, match="truth window must be"):
        sim.simulate(torch.zeros(SHAPE), [0.0], 0)
    with pytest.raises(ObservationError, match="window offsets"):
        sim.simulate(_truth(), [0.0], 0)
    with pytest.raises(ObservationError, match=r"observations\.times"):
        _sim(times=[5]).simulate(_truth(), OFFSETS, 0)
    with pytest.raises(ObservationError, match="clim_std"):
        ObservationSimulator(ObservationConfig(), GRID, LAYOUT, torch.ones(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_simulator_same_draws_on_cuda():
    truth = _truth()
    cpu = _sim(mode="offgrid", count=100).simulate(truth, OFFSETS, 1)
    gpu = _sim(mode="offgrid", count=100).simulate(truth.cuda(), OFFSETS, 1)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.value.cpu(), cpu.value)
