"""benchmarks/lorenz96.py: the 4DEnVar rows' own square-root ensemble update (against the Kalman
analysis covariance), a short run of those rows, the Gauss–Newton 3DVar row against the exact
Kalman-gain 3DVar, the tuning overrides and the DAPPER comparison (when DAPPER is installed)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math

import pytest
import torch

DT = torch.float64


def test_sqrt_transform_gives_the_kalman_analysis_covariance(lorenz96_benchmark) -> None:
    """X'_a = T X' with T = (I + Y Yᵀ/(N − 1))^{-1/2}, Y = H X' R^{-1/2}: X'_aᵀX'_a/(N − 1) equals
    P − P Hᵀ(H P Hᵀ + R)⁻¹ H P for P = X'ᵀX'/(N − 1); T⁻¹ is its inverse."""
    g = torch.Generator().manual_seed(0)
    n, nx = 12, 9
    x = torch.randn(n, nx, generator=g, dtype=DT)
    anomalies = x - x.mean(0)
    h = torch.randn(5, nx, generator=g, dtype=DT)
    r_std = 0.5 + torch.rand(5, generator=g, dtype=DT)
    ys = anomalies @ h.T / r_std
    sqrt_t, inv_t = lorenz96_benchmark.sqrt_transform(ys)
    analysis = sqrt_t @ anomalies
    p = anomalies.T @ anomalies / (n - 1)
    expected = p - p @ h.T @ torch.linalg.inv(h @ p @ h.T + torch.diag(r_std**2)) @ h @ p
    torch.testing.assert_close(analysis.T @ analysis / (n - 1), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sqrt_t @ inv_t, torch.eye(n, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(analysis.mean(0), torch.zeros(nx, dtype=DT), rtol=0, atol=1e-12)  # T keeps the mean 0


def test_4denvar_transform_rows_run(lorenz96_benchmark) -> None:
    """Short runs of the 4DEnVar rows on their own ensemble: no fallback, analysis error well below
    the observation error (1)."""
    bench = lorenz96_benchmark
    config = {"outer_loops": 1, "inner_iterations": 30, "tolerance": 1e-4, "algorithm": "gauss_newton"}
    for exp in bench.EXPERIMENTS:
        if exp.method == "4denvar":
            assert exp.ensemble == "transform"
            row = bench.run_experiment(exp, 40, 4000, config, progress=False)
            assert row["fallbacks"] == 0 and row["rmse_a"] < 0.5, row


def test_gauss_newton_3dvar_row_is_the_kalman_gain_3dvar(lorenz96_benchmark) -> None:
    """The 3DVar row with the Gauss–Newton minimiser cycles exactly the Kalman-gain 3DVar
    x_a = x_b + B(B + I)⁻¹(y − x_b) (every variable observed, R = I) written independently."""
    bench = lorenz96_benchmark
    exp = next(e for e in bench.EXPERIMENTS if e.name == "3dvar")
    config = {"outer_loops": 1, "inner_iterations": 30, "tolerance": 1e-4, "algorithm": "gauss_newton",
              "background_error": {"type": "dense"}}
    row = bench.run_experiment(exp, 30, 3000, config, progress=False)

    model, burn_in, n_obs, _, truth, obs_steps, y = bench.twin_setup(exp, 30, 3000)
    b = exp.x_b * torch.cov(truth.T)
    gain = b @ torch.linalg.inv(b + torch.eye(40, dtype=DT))
    x = torch.zeros(40, dtype=DT)
    x[0] = 1.0
    errors = []
    for ko in range(n_obs):
        x = model.forecast(x, 1)
        x = x + gain @ (y[ko] - x)
        if ko >= burn_in:
            errors.append(float((x - truth[obs_steps[ko]]).pow(2).mean().sqrt()))
    assert row["rmse_a"] == pytest.approx(sum(errors) / len(errors), abs=1e-4)


def test_overrides_are_typed_and_checked(lorenz96_benchmark) -> None:
    bench = lorenz96_benchmark
    parser = argparse.ArgumentParser()
    out = bench.parse_overrides("inflation=1.05,outer=2,ensemble=letkf", parser)
    assert out == {"inflation": 1.05, "outer": 2, "ensemble": "letkf"}
    exp = dataclasses.replace(bench.EXPERIMENTS[-1], **out)
    assert exp.inflation == 1.05 and exp.outer == 2 and "loc_rad=inf" in exp.settings
    for bad in ("published=0.1", "nonsense=1", "inflation="):
        with pytest.raises(SystemExit):
            bench.parse_overrides(bad, parser)


@pytest.mark.skipif(importlib.util.find_spec("dapper") is None, reason="DAPPER not installed (pip install 'aivarda[dapper]')")
def test_dapper_comparison_runs(lorenz96_benchmark) -> None:
    """DAPPER's Var3D on its sakov2008 HMM with our cycle count: an analysis error of the right size."""
    bench = lorenz96_benchmark
    exp = next(e for e in bench.EXPERIMENTS if e.name == "3dvar")
    row = bench.run_dapper(exp, 50, 3000)
    assert row["dapper_method"] == "Var3D(xB=0.02)" and row["dapper_version"] == "1.7.1"
    assert 0.2 < row["rmse_a"] < 0.8 and row["wall_s"] > 0 and math.isfinite(row["wall_s"])


def test_enkf_n_inflation_minimises_the_dual(lorenz96_benchmark) -> None:
    """l1 is the minimiser of DAPPER's EnKF-N dual cost (written here from its formula, on a fine grid),
    and grows with the innovation."""
    import numpy as np

    g = torch.Generator().manual_seed(4)
    n, p, xn = 20, 40, 2.0
    ys = torch.randn(n, p, generator=g, dtype=DT) * 0.3
    ys = ys - ys.mean(0)
    dy = torch.randn(p, generator=g, dtype=DT)
    l1 = lorenz96_benchmark.enkf_n_inflation(ys, dy, xn)

    s = torch.linalg.svdvals(ys).numpy()
    du = (torch.linalg.svd(ys, full_matrices=False)[2] @ dy).numpy()
    n1 = n - 1
    e_n, c_l = (n + 1) / n, n / n1
    mc = math.sqrt((e_n / c_l) ** (np.mean(1 / (s**2 + n1)) * n1))
    e_n, c_l = xn * e_n / mc, xn * c_l * mc
    grid = np.linspace(0.3, 10.0, 200001)
    cost = (du[None] ** 2 / (grid[:, None] ** 2 * s[None] ** 2 + n1)).sum(1) + e_n / grid**2 + c_l * np.log(grid**2)
    assert l1 == pytest.approx(grid[np.argmin(cost)], abs=1e-4)
    assert lorenz96_benchmark.enkf_n_inflation(ys, 3 * dy, xn) > l1


@pytest.mark.skipif(importlib.util.find_spec("dapper") is None, reason="DAPPER not installed (pip install 'aivarda[dapper]')")
def test_dapper_on_our_truth_pairs_cycle_by_cycle(lorenz96_benchmark) -> None:
    """``--dapper-same-truth``: DAPPER's Var3D on our truth and observations is the same Kalman-gain
    3DVar as our 3DVar row, so the paired difference is zero to round-off — which checks that
    DAPPER's cycles and ours are aligned (a shift of one cycle would give a difference of ~0.1)."""
    bench = lorenz96_benchmark
    exp = next(e for e in bench.EXPERIMENTS if e.name == "3dvar")
    config = {"outer_loops": 1, "inner_iterations": 30, "tolerance": 1e-4, "algorithm": "gauss_newton",
              "background_error": {"type": "dense"}}
    ours = bench.run_experiment(exp, 60, 3000, config, progress=False)
    row = bench.run_dapper(exp, 60, 3000, same_truth=True, ours=ours["errors"])
    d = row["paired_difference"]
    assert d["cycles"] == 60 and row["rmse_a_same_cycles"] == pytest.approx(ours["rmse_a"], abs=1e-4)
    assert abs(d["aivarda_minus_dapper"]) < 1e-4 and d["interval_95"][0] <= 0 <= d["interval_95"][1] + 1e-4
