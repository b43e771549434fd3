"""WB2 scores against values computed by hand, with explicit numpy loops, and against an independent
implementation of WeatherBench2's formulas (xarray, ``weatherbench2/metrics.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from aivarda.evaluation.metrics import (
    acc,
    baseline_scores,
    bias,
    evaluate,
    mae,
    mse,
    per_channel,
    rmse,
    scores_per_channel,
    spatial_mean,
    time_mean_rmse,
)
from aivarda.grid import Grid

# Grid.equiangular(3, 4): rows at 90°, 0°, −90°, band half-width 45°. Cell areas ∝ sin(upper) − sin(lower):
# pole rows 1 − √2/2, equator row √2; normalised to mean 1 (sum 2, mean 2/3):
W_POLE = 1.5 * (1 - math.sqrt(2) / 2)
W_EQ = 1.5 * math.sqrt(2)


def test_weights_by_hand():
    np.testing.assert_allclose(Grid.equiangular(3, 4).weights, [W_POLE, W_EQ, W_POLE], rtol=1e-12)


def test_rmse_bias_mae_by_hand():
    grid = Grid.equiangular(3, 4)
    truth = torch.zeros(2, 3, 4, dtype=torch.float64)
    fc = torch.zeros_like(truth)
    fc[0, 1] = 1.0  # channel 0: error 1 on the equator row only
    fc[1, 0] = 2.0  # channel 1: +2 at the north pole row, −1 elsewhere
    fc[1, 1:] = -1.0
    # channel 0: MSE = (1/12) · 4 · W_EQ = √2/2
    # channel 1: MSE = (1/12) · 4 · (4 W_POLE + W_EQ + W_POLE); bias = (1/12) · 4 · (2 W_POLE − W_EQ − W_POLE)
    mse1 = (4 * W_POLE + W_EQ + W_POLE) / 3
    bias1 = (2 * W_POLE - W_EQ - W_POLE) / 3
    torch.testing.assert_close(mse(fc, truth, grid), torch.tensor([math.sqrt(2) / 2, mse1], dtype=torch.float64))
    torch.testing.assert_close(rmse(fc, truth, grid), torch.tensor([2**-0.25, math.sqrt(mse1)], dtype=torch.float64))
    torch.testing.assert_close(bias(fc, truth, grid), torch.tensor([W_EQ / 3, bias1], dtype=torch.float64))
    torch.testing.assert_close(
        mae(fc, truth, grid), torch.tensor([W_EQ / 3, (2 * W_POLE + W_EQ + W_POLE) / 3], dtype=torch.float64)
    )
    # an error confined to the poles counts far less than the same error on the equator
    polar = torch.zeros(1, 3, 4, dtype=torch.float64)
    polar[0, 0] = 1.0
    assert rmse(polar, torch.zeros_like(polar), grid).item() < rmse(fc[:1], truth[:1], grid).item() / 2


def _loop_scores(f, t, c, w):
    """Reference implementation with explicit loops over (lat, lon)."""
    h, wd = f.shape
    mean = lambda g: sum(w[i] * g(i, j) for i in range(h) for j in range(wd)) / (h * wd)  # noqa: E731
    m = mean(lambda i, j: (f[i, j] - t[i, j]) ** 2)
    b = mean(lambda i, j: f[i, j] - t[i, j])
    fa, ta = f - c, t - c
    a = mean(lambda i, j: fa[i, j] * ta[i, j]) / math.sqrt(
        mean(lambda i, j: fa[i, j] ** 2) * mean(lambda i, j: ta[i, j] ** 2)
    )
    return math.sqrt(m), b, a


@pytest.mark.parametrize("grid", [Grid.equiangular(5, 8), Grid.gaussian(4, 8)])
def test_scores_match_numpy_loops_with_leading_dims(grid):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(2, 3, *grid.shape))
    t = rng.normal(size=(2, 3, *grid.shape))
    c = rng.normal(size=(3, *grid.shape))
    out = evaluate(torch.from_numpy(f), torch.from_numpy(t), grid, torch.from_numpy(c), scores=("rmse", "bias"))
    assert out["rmse"].shape == (2, 3) and out["acc"].shape == (2, 3)
    for n in range(2):
        for ch in range(3):
            r, b, a = _loop_scores(f[n, ch], t[n, ch], c[ch], grid.weights)
            assert out["rmse"][n, ch].item() == pytest.approx(r, rel=1e-10)
            assert out["bias"][n, ch].item() == pytest.approx(b, rel=1e-10, abs=1e-12)
            assert out["acc"][n, ch].item() == pytest.approx(a, rel=1e-10, abs=1e-12)


def test_acc_limits():
    grid = Grid.equiangular(9, 16)
    clim = torch.randn(2, 9, 16, dtype=torch.float64)
    anomaly = torch.randn(2, 9, 16, dtype=torch.float64)
    truth = clim + anomaly
    torch.testing.assert_close(acc(clim + 3 * anomaly, truth, clim, grid), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(acc(clim - anomaly, truth, clim, grid), -torch.ones(2, dtype=torch.float64))
    # anomalies orthogonal under the area weights → 0: cos(λ) and sin(λ) patterns
    lon = torch.deg2rad(torch.tensor(grid.lon))
    fa = torch.cos(lon).expand(9, 16)
    ta = torch.sin(lon).expand(9, 16)
    value = acc((clim[0] + fa)[None], (clim[0] + ta)[None], clim[0], grid)
    assert abs(value.item()) < 1e-12


def test_float32_and_spatial_mean_of_constant():
    grid = Grid.era5()
    ones = torch.ones(1, *grid.shape)
    assert spatial_mean(ones, grid).item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="does not end with the grid shape"):
        spatial_mean(torch.ones(3, 4), grid)


def test_channel_dicts():
    names = ["z500", "t850"]
    d = per_channel(torch.tensor([1.5, 2.0]), names)
    assert d == {"z500": 1.5, "t850": 2.0}
    nested = scores_per_channel({"rmse": torch.tensor([1.0, 2.0])}, names)
    assert nested == {"rmse": {"z500": 1.0, "t850": 2.0}}
    with pytest.raises(ValueError, match="expected a \\[C\\] tensor with C = 2"):
        per_channel(torch.ones(2, 2), names)
    with pytest.raises(ValueError, match="unknown scores"):
        evaluate(torch.ones(1, 3, 4), torch.ones(1, 3, 4), Grid.equiangular(3, 4), scores=("crps",))


# ------------------------------------------------------------------ WeatherBench2 cross-check
# An independent transcription of WB2's formulas (google-research/weatherbench2, weatherbench2/metrics.py):
# latitudes increasing S → N, cell bounds at the midpoints and ±90°, weights sin(upper) − sin(lower)
# normalised to mean 1 (get_lat_weights); spatial means with xarray's weighted mean over (latitude,
# longitude); the headline RMSE is sqrt(MSE.mean("time")); ACC per time, then the time mean.
def wb2_lat_weights(lat_deg: np.ndarray) -> np.ndarray:
    lat = np.deg2rad(lat_deg)
    bounds = np.concatenate([[-np.pi / 2], (lat[:-1] + lat[1:]) / 2, [np.pi / 2]])
    assert np.all(np.diff(bounds) > 0)
    w = np.sin(bounds[1:]) - np.sin(bounds[:-1])
    return w / np.mean(w)


def wb2_spatial_average(da: xr.DataArray) -> xr.DataArray:
    weights = xr.DataArray(wb2_lat_weights(da.latitude.values), dims="latitude", coords={"latitude": da.latitude})
    return da.weighted(weights).mean(["latitude", "longitude"])


def _wb2_fields(grid: Grid, rng: np.random.Generator, n_time: int = 5, n_channel: int = 3):
    """Random forecast, truth, climatology as xarray (lat increasing) and torch (lat N → S)."""
    shape = (n_time, n_channel, *grid.shape)
    truth = rng.normal(size=shape) * np.array([1.0, 10.0, 1e-3])[:n_channel, None, None] + 5.0
    forecast = truth + rng.normal(size=shape) * (1 + np.cos(np.deg2rad(grid.lat)))[:, None]  # error depends on latitude
    clim = truth.mean(axis=0) + rng.normal(size=shape[1:])
    coords = {"time": np.arange(n_time), "channel": np.arange(n_channel), "latitude": grid.lat[::-1], "longitude": grid.lon}
    dims = ("time", "channel", "latitude", "longitude")
    to_xr = lambda a: xr.DataArray(a[..., ::-1, :], dims=dims, coords=coords)  # noqa: E731
    clim_xr = xr.DataArray(clim[..., ::-1, :], dims=dims[1:], coords={k: coords[k] for k in dims[1:]})
    return (to_xr(forecast), to_xr(truth), clim_xr), tuple(map(torch.from_numpy, (forecast, truth, clim)))


@pytest.mark.parametrize("shape", [(33, 64), (121, 240), (721, 1440)])
def test_equiangular_weights_are_wb2_get_lat_weights(shape):
    grid = Grid.equiangular(*shape)
    np.testing.assert_allclose(grid.weights, wb2_lat_weights(grid.lat[::-1])[::-1], rtol=1e-12)


@pytest.mark.parametrize("shape", [(33, 64), (73, 144)])
def test_scores_match_independent_wb2_implementation(shape):
    grid = Grid.equiangular(*shape)
    (f_x, t_x, c_x), (f, t, c) = _wb2_fields(grid, np.random.default_rng(7))
    mse_wb2 = wb2_spatial_average((f_x - t_x) ** 2)  # WB2 MSE per time
    rmse_headline_wb2 = np.sqrt(mse_wb2.mean("time")).values
    rmse_before_time_avg_wb2 = np.sqrt(mse_wb2).mean("time").values  # WB2 RMSESqrtBeforeTimeAvg
    bias_wb2 = wb2_spatial_average(f_x - t_x).mean("time").values
    fa, ta = f_x - c_x, t_x - c_x
    acc_wb2 = (wb2_spatial_average(fa * ta) / np.sqrt(wb2_spatial_average(fa**2) * wb2_spatial_average(ta**2)))
    acc_wb2 = acc_wb2.mean("time").values

    per_time = rmse(f, t, grid).numpy()  # what the runner records per cycle
    np.testing.assert_allclose(time_mean_rmse(per_time), rmse_headline_wb2, rtol=1e-6)
    np.testing.assert_allclose(mse(f, t, grid).numpy(), mse_wb2.values, rtol=1e-6)
    np.testing.assert_allclose(per_time.mean(axis=0), rmse_before_time_avg_wb2, rtol=1e-6)
    np.testing.assert_allclose(bias(f, t, grid).numpy().mean(axis=0), bias_wb2, rtol=1e-6)
    np.testing.assert_allclose(acc(f, t, c, grid).numpy().mean(axis=0), acc_wb2, rtol=1e-6)
    # the two RMSE aggregations differ (mean of roots < root of mean): the headline is the latter
    assert np.all(per_time.mean(axis=0) < time_mean_rmse(per_time))


def test_gaussian_weights_are_the_exact_band_areas_not_wb2_midpoints():
    """On a Gaussian grid our weights are the Gauss–Legendre ones (they integrate polynomials in
    sin φ exactly); WB2's midpoint rule differs by ≈ 6 % in the polar rows, so scores on the T42
    nature run differ from WB2's by a small amount (here < 1 % for latitude-dependent errors)."""
    grid = Grid.t42()
    ours, wb2 = grid.weights, wb2_lat_weights(grid.lat[::-1])[::-1]
    mu = np.sin(np.deg2rad(grid.lat))
    for k in (2, 4, 6):  # ∫ μ^k dμ / 2 over [−1, 1] = 1 / (k + 1): exact with Gauss–Legendre
        assert np.mean(ours * mu**k) == pytest.approx(1 / (k + 1), rel=1e-12)
    assert 0.05 < np.max(np.abs(ours / wb2 - 1)) < 0.06
    (f_x, t_x, _), (f, t, _) = _wb2_fields(grid, np.random.default_rng(3))
    headline_wb2 = np.sqrt(wb2_spatial_average((f_x - t_x) ** 2).mean("time")).values
    rel = np.abs(time_mean_rmse(rmse(f, t, grid).numpy()) / headline_wb2 - 1)
    assert np.all(rel < 1e-2)


def test_baseline_scores():
    grid = Grid.equiangular(5, 8)
    names = ["z500", "t850"]
    rng = np.random.default_rng(0)
    truth = torch.from_numpy(rng.normal(size=(2, *grid.shape)))
    shift = torch.tensor([3.0, -0.5], dtype=torch.float64)[:, None, None]
    clim = truth.clone()  # a climatology equal to the truth: RMSE 0
    out = baseline_scores(grid, truth, truth + shift, clim, names, clim_std=torch.tensor([2.0, 0.25]))
    assert out["clim_wrmse"] == {"z500": 0.0, "t850": 0.0}
    assert out["pers_wrmse"] == pytest.approx({"z500": 3.0, "t850": 0.5})  # a uniform shift: RMSE = |shift|
    assert out["sigma_clim"] == {"z500": 2.0, "t850": 0.25}
    assert out["pers_nrmse"] == pytest.approx((3.0 / 2.0 + 0.5 / 0.25) / 2) and out["clim_nrmse"] == 0.0
    # a [C, 1, 1] climatology (e.g. per-channel means) broadcasts; the score is the spatial std about it
    const = torch.zeros(2, 1, 1, dtype=torch.float64)
    got = baseline_scores(grid, truth, truth, const, names)
    assert set(got) == {"clim_wrmse", "pers_wrmse"} and got["pers_wrmse"] == {"z500": 0.0, "t850": 0.0}
    assert got["clim_wrmse"]["t850"] == pytest.approx(rmse(truth, torch.zeros_like(truth), grid)[1].item())
    with pytest.raises(ValueError, match="C = 2 channels"):
        baseline_scores(grid, truth[:1], truth[:1], clim, names)
