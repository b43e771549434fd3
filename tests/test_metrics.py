"""WB2 scores against values computed by hand and with explicit numpy loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from aivarda.evaluation.metrics import (
    acc,
    bias,
    evaluate,
    mae,
    mse,
    per_channel,
    rmse,
    scores_per_channel,
    spatial_mean,
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
