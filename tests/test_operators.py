"""Observation operators: adjoints (dot-product test, autograd VJP), values, factory choices."""

from __future__ import annotations

import math

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
    LinearObservationOperator,
    LogPressureInterpolation,
    ObservationOperator,
    ObsSet,
    StackedOperator,
    build_operator,
)

LAYOUT = ChannelLayout(("u10m", "t2m"), ("z", "t"), (50, 250, 500, 850, 1000))  # 12 channels
GRID = Grid.gaussian(16, 32)
SHAPE = (LAYOUT.n_channels, *GRID.shape)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _dot_and_vjp(op: LinearObservationOperator, window_shape: tuple[int, ...], seed: int = 0) -> None:
    """(a) ⟨Hx, y⟩ = ⟨x, Hᵀy⟩ to 1e-5 relative; (b) Hᵀy equals autograd's vector–Jacobian product."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(window_shape, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(op.n_obs, generator=g, dtype=torch.float64)
    hx = op(x)
    assert hx.shape == (op.n_obs,)
    hty = op.adjoint(y, window_shape[0])
    assert hty.shape == window_shape
    lhs, rhs = torch.dot(hx, y).item(), torch.sum(x * hty).item()
    assert abs(lhs - rhs) <= 1e-5 * max(abs(lhs), abs(rhs)), (lhs, rhs)
    (vjp,) = torch.autograd.grad(hx, x, grad_outputs=y)
    torch.testing.assert_close(vjp, hty, rtol=1e-12, atol=1e-12)
    # the operator must depend on x (not a trivially zero map) for the test to mean something
    assert torch.count_nonzero(hty) > 0


def _random_obs(n: int, *, on_grid: bool, n_times: int, seed: int = 0, levels: bool = False) -> ObsSet:
    rng = _rng(seed)
    if on_grid:
        lat = GRID.lat[rng.integers(0, GRID.nlat, n)]
        lon = GRID.lon[rng.integers(0, GRID.nlon, n)]
    else:
        lat = rng.uniform(-90, 90, n)  # includes the polar caps beyond the Gaussian rows
        lon = rng.uniform(-180, 540, n)  # normalised to [0, 360) by ObsSet
    if levels:
        upper = np.arange(len(LAYOUT.surface), LAYOUT.n_channels)
        channel = rng.choice(upper, n)
        level = np.exp(rng.uniform(math.log(50), math.log(1000), n))
    else:
        channel = rng.integers(0, LAYOUT.n_channels, n)
        level = np.full(n, np.nan)
    return ObsSet.create(lat, lon, channel, np.zeros(n), 1.0, time_index=rng.integers(0, n_times, n), level=level)


# ------------------------------------------------------------------ adjoint tests
def test_gridpoint_adjoint_lorenz96_shape():
    rng = _rng(1)
    op = GridPointOperator(
        torch.as_tensor(rng.integers(0, 40, 25)), torch.as_tensor(rng.integers(0, 3, 25)), (40,), n_times=3
    )
    _dot_and_vjp(op, (3, 40))


def test_gridpoint_adjoint_repeated_points():
    # the same point observed twice: the adjoint must add both contributions
    op = GridPointOperator(torch.tensor([5, 5, 7]), torch.tensor([0, 0, 1]), (3, 4), n_times=2)
    out = op.adjoint(torch.tensor([1.0, 2.0, 4.0]))
    assert out[0].reshape(-1)[5] == 3.0 and out[1].reshape(-1)[7] == 4.0 and out.sum() == 7.0
    _dot_and_vjp(op, (2, 3, 4))


def test_bilinear_adjoint_gaussian_with_polar_caps():
    obs = _random_obs(400, on_grid=False, n_times=2)
    assert bool((obs.lat.abs() > GRID.lat[0]).any())  # some polar-cap observations are included
    op = BilinearOperator(GRID, obs.lat, obs.lon, obs.channel, obs.time_index, n_channels=SHAPE[0], n_times=2)
    _dot_and_vjp(op, (2, *SHAPE))


def test_bilinear_adjoint_equiangular():
    grid = Grid.equiangular(17, 36)
    rng = _rng(3)
    lat, lon = rng.uniform(-90, 90, 200), rng.uniform(0, 360, 200)
    op = BilinearOperator(grid, lat, lon, rng.integers(0, 3, 200), np.zeros(200, dtype=int), n_channels=3)
    _dot_and_vjp(op, (1, 3, 17, 36))


def test_vertical_composed_adjoint():
    obs = _random_obs(300, on_grid=False, n_times=3, levels=True)
    op = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=3)
    assert isinstance(op, ComposedOperator)
    _dot_and_vjp(op, (3, *SHAPE))


def test_factory_mixed_adjoint_and_order():
    parts = [
        _random_obs(50, on_grid=True, n_times=2, seed=1),
        _random_obs(60, on_grid=False, n_times=2, seed=2),
        _random_obs(70, on_grid=False, n_times=2, seed=3, levels=True),
    ]
    obs = ObsSet.concat(parts)
    perm = torch.as_tensor(_rng(9).permutation(len(obs)))
    obs = obs.select(perm)  # interleave the kinds
    op = build_operator(obs, GRID, LAYOUT, (2, *SHAPE))
    assert isinstance(op, StackedOperator) and len(op.parts) == 3
    _dot_and_vjp(op, (2, *SHAPE))
    # order is kept: each observation equals its own single-observation operator
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    hx = op(x)
    for k in (0, 17, 99, 179):
        single = build_operator(obs.select(torch.tensor([k])), GRID, LAYOUT, SHAPE, n_times=2)
        torch.testing.assert_close(single(x), hx[k : k + 1])


def test_float32_dot_product():
    obs = _random_obs(500, on_grid=False, n_times=1)
    op = build_operator(obs, GRID, LAYOUT, SHAPE)
    x = torch.randn(1, *SHAPE)
    y = torch.randn(len(obs))
    lhs, rhs = torch.dot(op(x), y).item(), torch.sum(x * op.adjoint(y)).item()
    assert abs(lhs - rhs) <= 1e-5 * max(abs(lhs), abs(rhs))
    assert op(x).dtype == torch.float32 and op.adjoint(y).dtype == torch.float32


# ------------------------------------------------------------------ value tests
def _field(fn) -> torch.Tensor:
    """A [1, C, H, W] float64 window whose channel c is fn(c, lat, lon)."""
    lat = torch.as_tensor(GRID.lat)[:, None]
    lon = torch.as_tensor(GRID.lon)[None, :]
    return torch.stack([fn(c, lat, lon).expand(GRID.shape) for c in range(SHAPE[0])])[None].double()


def test_gridpoint_values_are_the_state():
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    obs = _random_obs(100, on_grid=True, n_times=2)
    op = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=2)
    assert isinstance(op, GridPointOperator)
    j = torch.as_tensor(np.abs(obs.lat.numpy()[:, None] - GRID.lat[None]).argmin(1))
    i = torch.round(obs.lon / (360 / GRID.nlon)).long() % GRID.nlon
    torch.testing.assert_close(op(x), x[obs.time_index, obs.channel, j, i])


def test_bilinear_exact_for_linear_field():
    x = _field(lambda c, lat, lon: 3.0 * lat - 0.5 * lon + 10.0 * c)
    rng = _rng(4)
    n = 300
    lat = rng.uniform(GRID.lat[-1], GRID.lat[0], n)
    lon = rng.uniform(0, GRID.lon[-1], n)  # inside the cells where lon is linear (no wrap)
    channel = rng.integers(0, SHAPE[0], n)
    op = BilinearOperator(GRID, lat, lon, channel, np.zeros(n, dtype=int), n_channels=SHAPE[0])
    expected = 3.0 * torch.as_tensor(lat) - 0.5 * torch.as_tensor(lon) + 10.0 * torch.as_tensor(channel)
    torch.testing.assert_close(op(x), expected.double(), rtol=0, atol=1e-10)


def test_bilinear_periodic_wrap():
    x = torch.randn(1, *SHAPE, dtype=torch.float64)
    lat = float(GRID.lat[5])
    op = BilinearOperator(GRID, [lat, lat], [359.9, -0.1], [2, 2], [0, 0], n_channels=SHAPE[0])
    w = (359.9 - GRID.lon[-1]) / (360.0 / GRID.nlon)
    expected = (1 - w) * x[0, 2, 5, -1] + w * x[0, 2, 5, 0]
    torch.testing.assert_close(op(x), torch.stack([expected, expected]))


def test_bilinear_polar_cap_towards_zonal_mean():
    x = torch.randn(1, *SHAPE, dtype=torch.float64)
    dlon = 360.0 / GRID.nlon
    lon = 3.25 * dlon  # between columns 3 and 4
    op = BilinearOperator(
        GRID, [90.0, -90.0, 0.5 * (90 + GRID.lat[0])], [lon, lon, lon], [1, 1, 1], [0, 0, 0], n_channels=SHAPE[0]
    )
    hx = op(x)
    north_mean, south_mean = x[0, 1, 0].mean(), x[0, 1, -1].mean()
    north_lon = 0.75 * x[0, 1, 0, 3] + 0.25 * x[0, 1, 0, 4]
    torch.testing.assert_close(hx[0], north_mean)
    torch.testing.assert_close(hx[1], south_mean)
    torch.testing.assert_close(hx[2], 0.5 * north_lon + 0.5 * north_mean)


def test_bilinear_continuous_at_first_row():
    x = torch.randn(1, *SHAPE, dtype=torch.float64)
    eps = 1e-9
    lat0 = float(GRID.lat[0])
    op = BilinearOperator(GRID, [lat0 - eps, lat0, lat0 + eps], [10.0] * 3, [0] * 3, [0] * 3, n_channels=SHAPE[0])
    hx = op(x)
    torch.testing.assert_close(hx, hx[1].expand(3), rtol=0, atol=1e-7)


def test_log_pressure_exact_for_field_linear_in_log_p():
    # channel value = a + b·ln p on every level of both upper-air variables
    def fn(c, lat, lon):
        name = LAYOUT.names[c]
        var, level = ChannelLayout.parse(name)
        if level is None:
            return torch.zeros(1, 1)
        b = 2.0 if var == "z" else -7.0
        return torch.full((1, 1), 5.0 + b * math.log(level), dtype=torch.float64) + 0.1 * lat

    x = _field(fn)
    rng = _rng(5)
    n = 200
    p = np.exp(rng.uniform(math.log(50), math.log(1000), n))
    p[:3] = [50.0, 1000.0, 500.0]  # on model levels
    var_is_z = rng.random(n) < 0.5
    channel = np.where(var_is_z, LAYOUT.variable_slice("z").start, LAYOUT.variable_slice("t").start + 2)
    lat = GRID.lat[rng.integers(0, GRID.nlat, n)]
    obs = ObsSet.create(lat, np.zeros(n), channel, np.zeros(n), 1.0, level=p)
    op = build_operator(obs, GRID, LAYOUT, SHAPE)
    expected = 5.0 + np.where(var_is_z, 2.0, -7.0) * np.log(p) + 0.1 * lat
    torch.testing.assert_close(op(x), torch.as_tensor(expected), rtol=0, atol=1e-10)


def test_log_pressure_interpolation_weights():
    interp = LogPressureInterpolation(
        torch.tensor([math.sqrt(250 * 500)]), torch.tensor([250.0]), torch.tensor([500.0])
    )
    torch.testing.assert_close(
        interp(torch.tensor([2.0, 4.0], dtype=torch.float64)), torch.tensor([3.0], dtype=torch.float64)
    )
    with pytest.raises(ObservationError):
        LogPressureInterpolation(torch.tensor([600.0]), torch.tensor([250.0]), torch.tensor([500.0]))


# ------------------------------------------------------------------ factory and errors
def test_factory_choices():
    on = _random_obs(10, on_grid=True, n_times=1)
    op = build_operator(on, GRID, LAYOUT, SHAPE)
    assert isinstance(op, GridPointOperator)
    assert isinstance(op, ObservationOperator) and isinstance(op, LinearObservationOperator)
    off = _random_obs(10, on_grid=False, n_times=1)
    assert isinstance(build_operator(off, GRID, LAYOUT, SHAPE), BilinearOperator)
    # a level equal to a model level is a channel observation on that level's channel
    z = LAYOUT.variable_slice("z").start
    exact = on.replace(channel=torch.full((10,), z), level=torch.full((10,), 500.0))
    op = build_operator(exact, GRID, LAYOUT, SHAPE)
    assert isinstance(op, GridPointOperator)
    assert set((op.flat_index // (GRID.nlat * GRID.nlon)).tolist()) == {LAYOUT.index("z500")}


def test_factory_without_grid_is_lorenz96_gridpoint():
    obs = ObsSet.create(np.zeros(4), np.zeros(4), [0, 10, 20, 39], np.zeros(4), 1.0, time_index=[0, 1, 1, 2])
    op = build_operator(obs, None, None, (3, 40))
    x = torch.arange(120.0).reshape(3, 40)
    torch.testing.assert_close(op(x), torch.tensor([0.0, 50.0, 60.0, 119.0]))
    with pytest.raises(ObservationError, match="outside the state"):
        build_operator(obs.replace(channel=torch.tensor([0, 1, 2, 40])), None, None, (40,))


def test_factory_refuses_invalid_observations():
    obs = _random_obs(10, on_grid=False, n_times=1)
    bad = obs.replace(value=torch.tensor([math.nan] + [0.0] * 9))
    with pytest.raises(ObservationError, match="value: 1 of 10"):
        build_operator(bad, GRID, LAYOUT, SHAPE)
    with pytest.raises(ObservationError, match="does not match"):
        build_operator(obs, GRID, LAYOUT, (3, 16, 32))


def test_wrong_window_shape_is_a_clear_error():
    obs = _random_obs(10, on_grid=False, n_times=2)
    op = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=2)
    with pytest.raises(ObservationError, match="expected a window"):
        op(torch.zeros(1, *SHAPE))


def test_empty_observation_set():
    op = build_operator(ObsSet.empty(), GRID, LAYOUT, SHAPE)
    x = torch.zeros(1, *SHAPE, requires_grad=True)
    assert op(x).shape == (0,)
    assert op.adjoint(torch.zeros(0)).shape == (1, *SHAPE)


def test_bilinear_accepts_any_channel_count_without_n_channels():
    op = BilinearOperator(GRID, [10.0], [20.0], [1], [0])
    x = torch.randn(1, SHAPE[0], *GRID.shape)
    assert op(x).shape == (1,)
    assert op.adjoint(torch.ones(1)).shape == (1, 2, *GRID.shape)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_operator_on_cuda():
    obs = ObsSet.concat(
        [_random_obs(100, on_grid=False, n_times=2, levels=True), _random_obs(50, on_grid=True, n_times=2)]
    )
    op_cpu = build_operator(obs, GRID, LAYOUT, SHAPE, n_times=2)
    op_gpu = build_operator(obs.to("cuda"), GRID, LAYOUT, SHAPE, n_times=2)
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    torch.testing.assert_close(op_gpu(x.cuda()).cpu(), op_cpu(x))
    y = torch.randn(len(obs), dtype=torch.float64)
    torch.testing.assert_close(op_gpu.adjoint(y.cuda()).cpu(), op_cpu.adjoint(y))
    torch.testing.assert_close(op_cpu.to("cuda")(x.cuda()).cpu(), op_cpu(x))
