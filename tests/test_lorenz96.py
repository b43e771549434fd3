"""Lorenz-96 model (values, adjoint, protocol) and a short cycling run of the benchmark."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aivarda.models.base import ForecastModel
from aivarda.models.lorenz96 import Lorenz96

DT = torch.float64
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "lorenz96.py"


def reference_step(x: torch.Tensor, forcing: float = 8.0, dt: float = 0.05) -> torch.Tensor:
    """RK4 written independently with torch autograd ops."""

    def f(v: torch.Tensor) -> torch.Tensor:
        return (v.roll(-1, -1) - v.roll(2, -1)) * v.roll(1, -1) - v + forcing

    k1 = f(x)
    k2 = f(x + 0.5 * dt * k1)
    k3 = f(x + 0.5 * dt * k2)
    k4 = f(x + dt * k3)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def test_protocol_and_fixed_point() -> None:
    model = Lorenz96()
    assert isinstance(model, ForecastModel) and model.dt == 0.05
    x = torch.full((40,), 8.0, dtype=DT)  # x_i = F is an equilibrium
    torch.testing.assert_close(model.forecast(x, 10), x)


def test_tendency_by_hand() -> None:
    """x = e_0 (N = 5): dx/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F by hand, then one Euler-size check."""
    model = Lorenz96(n=5, forcing=0.0, dt=1e-6)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=DT)
    # i=0: (x1 − x3) x4 − x0 = (2−4)·5 − 1 = −11; i=1: (x2 − x4) x0 − x1 = (3−5)·1 − 2 = −4
    # i=2: (x3 − x0) x1 − x2 = 3·2 − 3 = 3; i=3: (x4 − x1) x2 − x3 = 3·3 − 4 = 5; i=4: (x0 − x2) x3 − x4 = −2·4 − 5 = −13
    expected = torch.tensor([-11.0, -4.0, 3.0, 5.0, -13.0], dtype=DT)
    torch.testing.assert_close((model.step(x) - x) / model.dt, expected, rtol=1e-5, atol=1e-4)


def test_matches_reference_and_batches() -> None:
    g = torch.Generator().manual_seed(0)
    x = 8 + 2 * torch.randn(3, 40, generator=g, dtype=DT)
    model = Lorenz96()
    ref = x
    for _ in range(7):
        ref = reference_step(ref)
    torch.testing.assert_close(model.forecast(x, 7), ref, rtol=1e-13, atol=1e-12)
    torch.testing.assert_close(model.forecast(x, 7)[1], model.forecast(x[1], 7))


def test_adjoint_gradcheck_and_reference() -> None:
    g = torch.Generator().manual_seed(1)
    model = Lorenz96()
    x = (8 + 2 * torch.randn(2, 40, generator=g, dtype=DT)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: model.forecast(v, 3), (x,))
    w = torch.randn(2, 40, generator=g, dtype=DT)
    (ours,) = torch.autograd.grad((model.forecast(x, 12) * w).sum(), x)
    ref = x
    for _ in range(12):
        ref = reference_step(ref)
    (theirs,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_climatology() -> None:
    """Chaotic attractor of F = 8: mean ≈ 2.3, std ≈ 3.6 (DAPPER's Climatology rmse 3.6)."""
    model = Lorenz96()
    x = torch.full((40,), 8.0, dtype=DT)
    x[0] += 0.01
    traj = []
    with torch.no_grad():
        x = model.forecast(x, 600)
        for _ in range(400):
            x = model.forecast(x, 5)
            traj.append(x)
    traj = torch.stack(traj)
    assert 2.0 < float(traj.mean()) < 2.7
    assert 3.3 < float(traj.std()) < 3.9


def test_short_3dvar_cycle_beats_observations(lorenz96_benchmark) -> None:
    """100 scored 3DVar cycles after the burn-in: the analysis error is well below the observation
    error (1)."""
    bench = lorenz96_benchmark
    config = {"outer_loops": 1, "inner_iterations": 30, "tolerance": 1e-4, "background_error": {"type": "dense"}}
    row = bench.run_experiment(bench.EXPERIMENTS[0], 100, 3000, config, progress=False)
    assert row["fallbacks"] == 0 and row["scored_cycles"] == 100
    assert row["rmse_a"] < 0.6
    assert math.isfinite(row["wall_s"])


@pytest.mark.slow
def test_benchmark_quick_passes() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--no-progress"], capture_output=True, text=True, timeout=600, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
