"""Minimizer and method registry: analytic 3DVar solutions, the single-observation test,
diagnostics, NaN/divergence fallback, and YAML selection of methods."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from aivarda.assimilation import (
    METHODS,
    AnalysisProblem,
    AnalysisResult,
    AssimilationConfig,
    Method,
    Minimizer,
    ModelPropagation,
    VariationalCost,
    Window,
    build_method,
    method_names,
    parse_method_config,
)
from aivarda.assimilation.cost import CostTerms
from aivarda.background import DenseSqrtTransform, IdentityTransform
from aivarda.config import read_yaml
from aivarda.errors import ConfigError
from aivarda.models.lorenz96 import Lorenz96

DT = torch.float64


@dataclass
class Obs:
    value: torch.Tensor
    error_std: torch.Tensor
    time_index: torch.Tensor


def random_spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=DT)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=DT)


def selection(flat: torch.Tensor):
    return lambda xw: xw.reshape(xw.shape[0], -1)[0, flat]


def test_quadratic_3dvar_reaches_analytic_solution() -> None:
    """x_a = x_b + B Hᵀ (H B Hᵀ + λ R)⁻¹ (y − H x_b) on a [2, 3, 4] state."""
    g = torch.Generator().manual_seed(0)
    shape, n, m, lam = (2, 3, 4), 24, 10, 2.0
    b = random_spd(n, 1)
    x_b = torch.randn(shape, generator=g, dtype=DT)
    flat = torch.randperm(n, generator=g)[:m]
    sigma = 0.5 + torch.rand(m, generator=g, dtype=DT)
    y = torch.randn(m, generator=g, dtype=DT)
    cost = VariationalCost(x_b, DenseSqrtTransform(b, shape), selection(flat), Obs(y, sigma, torch.zeros(m)), bg_lamb=lam)
    result = Minimizer(outer_loops=4, inner_iterations=10, tolerance=1e-10).minimize(cost)

    h = torch.eye(n, dtype=DT)[flat]
    gain = b @ h.T @ torch.linalg.inv(h @ b @ h.T + lam * torch.diag(sigma**2))
    expected = x_b.reshape(-1) + gain @ (y - h @ x_b.reshape(-1))
    torch.testing.assert_close(result.x_a.reshape(-1), expected, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(result.increment, result.x_a - x_b)
    assert result.converged and not result.fallback


def test_single_observation_increment_is_b_column() -> None:
    """One observation of variable i: δx = B[:, i] (y − x_b[i]) / (B[i, i] + λ σ²)."""
    b = random_spd(40, 2)
    x_b = torch.linspace(-1, 1, 40, dtype=DT)
    i, y, sigma, lam = 17, 3.0, 0.4, 1.5
    obs = Obs(torch.tensor([y], dtype=DT), torch.tensor([sigma], dtype=DT), torch.zeros(1))
    cost = VariationalCost(x_b, DenseSqrtTransform(b, method="cholesky"), lambda xw: xw[0, i : i + 1], obs, bg_lamb=lam)
    result = Minimizer(outer_loops=2, inner_iterations=10, tolerance=1e-12).minimize(cost)
    expected = b[:, i] * (y - x_b[i]) / (b[i, i] + lam * sigma**2)
    torch.testing.assert_close(result.increment, expected, rtol=1e-8, atol=1e-10)


def test_diagnostics_and_4dvar_convergence() -> None:
    """4DVar through Lorenz-96: J falls monotonically, J = J_b + J_o, and the fit improves."""
    g = torch.Generator().manual_seed(3)
    model = Lorenz96()
    truth0 = model.forecast(8 + torch.randn(40, generator=g, dtype=DT), 200)
    x_b = truth0 + 0.5 * torch.randn(40, generator=g, dtype=DT)
    truth_window = torch.stack([truth0, model.forecast(truth0, 4), model.forecast(truth0, 8)])
    t = torch.arange(3).repeat_interleave(40)
    flat = torch.arange(40).repeat(3)
    y = truth_window.reshape(3, -1)[t, flat]
    obs = Obs(y, torch.full((120,), 0.1, dtype=DT), t)
    op = lambda xw: xw.reshape(3, -1)[t, flat]
    cost = VariationalCost(x_b, DenseSqrtTransform(0.25 * torch.eye(40, dtype=DT)), op, obs,
                           propagation=ModelPropagation(model, [4, 4]))
    result = Minimizer(outer_loops=3, inner_iterations=15, tolerance=1e-6).minimize(cost)
    d = result.diagnostics
    assert d[0]["iteration"] == 0 and {"outer", "J", "J_b", "J_o", "grad_norm", "evaluations"} <= set(d[0])
    js = [row["J"] for row in d]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(js))
    for row in d:
        assert row["J"] == pytest.approx(row["J_b"] + row["J_o"], rel=1e-12)
    assert d[-1]["grad_norm"] < 1e-3 * d[0]["grad_norm"]
    assert (result.x_a - truth0).norm() < 0.2 * (x_b - truth0).norm()


def test_nan_falls_back_to_background() -> None:
    calls = {"n": 0}

    def flaky(xw: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        out = xw[0, :5]
        return out * float("nan") if calls["n"] > 2 else out

    x_b = torch.zeros(40, dtype=DT)
    obs = Obs(torch.ones(5, dtype=DT), torch.ones(5, dtype=DT), torch.zeros(5))
    cost = VariationalCost(x_b, IdentityTransform((40,)), flaky, obs)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        result = Minimizer().minimize(cost)
    assert result.fallback and not result.converged
    assert torch.equal(result.x_a, x_b) and torch.count_nonzero(result.z) == 0


def test_divergence_falls_back_to_background() -> None:
    """A cost that drifts upwards with every evaluation (a non-deterministic model) ends with
    J(z_final) > J(z_0) when evaluated afresh: the analysis is rejected."""

    class Drifting:
        background = torch.zeros(4, dtype=DT)
        latent_shape = (4,)
        calls = 0

        def state(self, z: torch.Tensor) -> torch.Tensor:
            return self.background + z

        def __call__(self, z: torch.Tensor) -> CostTerms:
            self.calls += 1
            j_b = 0.5 * (z * z).sum()
            j_o = -0.01 * z.sum() + 0.5 * self.calls
            return CostTerms(j_b + j_o, j_b, j_o)

    with pytest.warns(RuntimeWarning, match="J rose"):
        result = Minimizer().minimize(Drifting())  # type: ignore[arg-type]
    assert result.fallback and torch.equal(result.x_a, torch.zeros(4, dtype=DT))


def test_config_selects_methods_from_yaml(tmp_path) -> None:
    path = tmp_path / "assim.yaml"
    path.write_text(
        "method: 4dvar\nda_win: 3\nwindow_interval: 2h\nbg_lamb: 2\nflow_error: 0.1\n"
        "outer_loops: 2\ninner_iterations: 10\nbackground_error:\n  type: diagonal\n  scale: 0.2\n"
    )
    cfg = parse_method_config(read_yaml(path), str(path))
    assert cfg.method == "4dvar" and cfg.da_win == 3 and cfg.background_error.type == "diagonal"
    assert cfg.model_dump()["background_error"]["scale"] == 0.2
    assert {"none", "3dvar", "3dvar-fgat", "4dvar"} <= set(method_names())
    method = build_method(cfg)
    assert method.needs.window_model and not method.needs.ensemble
    assert list(method.window_offsets()) == [np.timedelta64(0, "h"), np.timedelta64(2, "h"), np.timedelta64(4, "h")]
    assert method.window(np.datetime64("2000-01-01T00"), Lorenz96(dt=0.5)).steps == (4, 4)
    with pytest.raises(ConfigError, match="not a whole number of model steps"):
        method.window(np.datetime64("2000-01-01T00"), Lorenz96(dt=1.5))

    for text, match in [
        ("method: 5dvar\n", "unknown assimilation method"),
        ("method: 3dvar\nda_win: 2\n", "da_win: unknown key"),
        ("method: 4dvar\nda_win: 1\n", "da_win: Input should be greater than or equal to 2"),
        ("method: 3dvar\nbackground_error: {type: nope}\n", "unknown background_error type"),
        ("method: 3dvar\nniter: 3\n", "niter: unknown key"),
        ("method: 4dvar\nwindow_interval: 0h\n", "window_interval: Value error, must be a positive duration"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=match):
            parse_method_config(read_yaml(path), str(path))


def test_methods_none_3dvar_and_registration() -> None:
    x_b = torch.zeros(40, dtype=DT)
    obs = Obs(torch.ones(40, dtype=DT), torch.ones(40, dtype=DT), torch.zeros(40))
    window = Window(np.datetime64("2000-01-01"), np.zeros(1, dtype="timedelta64[s]"))

    def analyse(method: str) -> AnalysisResult:
        m = build_method({"method": method})
        problem = AnalysisProblem(x_b, m.background_window(x_b, window, None), IdentityTransform((40,)),
                                  lambda xw: xw[0], obs, window)
        return m.analyse(problem)

    none = analyse("none")
    assert torch.equal(none.x_a, x_b) and none.converged
    three = analyse("3dvar")
    # B = R = I, H = I: x_a = (x_b + y) / 2
    torch.testing.assert_close(three.x_a, torch.full((40,), 0.5, dtype=DT))

    class HalfwayConfig(AssimilationConfig):
        method: str = "halfway-test"

    class Halfway(Method):
        def analyse(self, p: AnalysisProblem) -> AnalysisResult:
            x_a = p.background + 0.25
            return AnalysisResult(x_a, torch.zeros(40, dtype=DT), x_a - p.background, [], True)

    METHODS.register("halfway-test", HalfwayConfig)(Halfway)
    try:
        assert torch.equal(analyse("halfway-test").x_a, x_b + 0.25)
        with pytest.raises(ValueError, match="already registered"):
            METHODS.register("halfway-test", HalfwayConfig)(Halfway)
    finally:
        METHODS.unregister("halfway-test")
    with pytest.raises(ConfigError, match="unknown assimilation method 'halfway-test'"):
        build_method({"method": "halfway-test"})


def test_fgat_sees_the_background_trajectory_and_a_constant_increment() -> None:
    """3DVar-FGAT: J_o compares y_t with x^b_t + U z (the background trajectory of the window
    model, the increment constant in time); 4DVar with M_{0→t}(x_b + U z). For a linear model
    that preserves constants the two agree when the increment is constant; here M damps, so they
    differ by exactly the model's action on the increment."""
    model = Lorenz96()
    g = torch.Generator().manual_seed(3)
    x_b = model.forecast(8 + torch.randn(40, generator=g, dtype=DT), 50)
    window = Window(np.datetime64("2000-01-01"), np.arange(3) * np.timedelta64(1, "h"), (2, 2))
    t = torch.arange(3).repeat_interleave(40)
    flat = torch.arange(40).repeat(3)
    op = lambda xw: xw.reshape(3, -1)[t, flat]  # noqa: E731
    obs = Obs(torch.randn(120, generator=g, dtype=DT), torch.ones(120, dtype=DT), t)
    fgat = build_method({"method": "3dvar-fgat", "da_win": 3})
    bg_window = fgat.background_window(x_b, window, model)
    problem = AnalysisProblem(x_b, bg_window, IdentityTransform((40,)), op, obs, window, model)
    z = 0.1 * torch.randn(40, generator=g, dtype=DT)
    expected = 0.5 * (z**2).sum() + 0.5 * ((bg_window + z).reshape(3, -1)[t, flat] - obs.value).pow(2).sum()
    torch.testing.assert_close(fgat.cost(problem)(z).total, expected)
    four = build_method({"method": "4dvar", "da_win": 3}).cost(problem)
    states = torch.stack([x_b + z, model.forecast(x_b + z, 2), model.forecast(x_b + z, 4)])
    torch.testing.assert_close(four.window(z), states)
    # the FGAT analysis window is x^b_t + δx, starting exactly at x_a
    result = fgat.analyse(problem)
    an = fgat.analysis_window(problem, result)
    assert torch.equal(an[0], result.x_a)
    torch.testing.assert_close(an[1:], bg_window[1:] + result.increment)
