"""Diagnostics of background-error models: the single-observation analysis, power spectra, bands."""

from __future__ import annotations

import numpy as np
import torch

from aivarda.background.diagnostics import single_observation_analysis
from aivarda.background.transforms import DenseSqrtTransform
from aivarda.background.vae.diagnostics import DEFAULT_BANDS, band_power, mean_power_spectrum
from aivarda.grid import Grid
from aivarda.sphere import SphereOps


def test_single_observation_analysis_of_a_linear_b_is_the_column_of_b():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(24, 24, generator=gen, dtype=torch.float64)
    B = a @ a.T / 24 + 0.1 * torch.eye(24, dtype=torch.float64)
    U = DenseSqrtTransform(B, state_shape=(2, 3, 4))
    c, i, j, d, sigma, lam = 1, 2, 3, 1.7, 0.4, 3.0
    k = int(np.ravel_multi_index((c, i, j), (2, 3, 4)))
    expected = (B[:, k] * d / (B[k, k] + lam * sigma**2)).reshape(2, 3, 4)
    dx, summary = single_observation_analysis(U, c, i, j, d, sigma, lam)
    torch.testing.assert_close(dx, expected, rtol=1e-6, atol=1e-8)
    assert summary["j_final"] < summary["j_initial"]
    assert abs(summary["increment_at_obs"] - float(expected[c, i, j])) < 1e-6


def test_power_spectrum_parseval_and_degree():
    grid = Grid.gaussian(32, 64)
    ops = SphereOps(grid)
    x = ops.truncate(torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    w = torch.as_tensor(np.asarray(grid.weights))[:, None]
    torch.testing.assert_close(ops.power_spectrum(x).sum(-1), (x**2 * w).sum((-2, -1)) / (w.sum() * 64))
    # a single spherical harmonic (l = 5, m = 2) has all its power at l = 5
    spec = torch.zeros(ops.lmax, ops.lmax, dtype=torch.complex128)
    spec[5, 2] = 1.0 + 0.5j
    p = ops.power_spectrum(ops.synthesis(spec))
    assert int(p.argmax()) == 5 and float(p.sum() - p[5]) < 1e-12 * float(p[5])


def test_mean_power_spectrum_and_bands():
    grid = Grid.gaussian(32, 64)
    ops = SphereOps(grid)
    x = torch.randn(5, 2, 32, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dev = x - x.mean(0)
    expected = ops.power_spectrum(dev).sum(0) / 4
    got = mean_power_spectrum(x, ops, batch=2)
    torch.testing.assert_close(got, expected)
    bands = band_power(got)
    assert bands.shape == (2, len(DEFAULT_BANDS))
    # bands clipped at the truncation (L = 32 here): the octaves cover every degree exactly once
    torch.testing.assert_close(bands.sum(-1), got.sum(-1))
