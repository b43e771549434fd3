"""The Gauss–Newton minimiser (exact solve per outer loop) and the batched Lorenz-96 adjoint it uses:
the analytic 3DVar minimum in one step, the same 4DVar minimum as L-BFGS, the batched Jacobian equal
to one reverse pass per row, config selection, guards and the fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cost import DT, Obs, random_spd  # the shared toy observations and SPD matrices

from aivarda.assimilation import AnalysisProblem, Minimizer, ModelPropagation, VariationalCost, Window, build_method
from aivarda.background import DenseSqrtTransform, IdentityTransform
from aivarda.errors import ConfigError
from aivarda.models.lorenz96 import Lorenz96


def test_one_step_is_the_analytic_3dvar_minimum() -> None:
    """x_a = x_b + B Hᵀ (H B Hᵀ + λ R)⁻¹ (y − H x_b) after one Gauss–Newton step (linear H, dense U)."""
    g = torch.Generator().manual_seed(0)
    n, m, lam = 30, 12, 1.5
    b = random_spd(n, 1)
    x_b = torch.randn(n, generator=g, dtype=DT)
    flat = torch.randperm(n, generator=g)[:m]
    sigma = 0.5 + torch.rand(m, generator=g, dtype=DT)
    y = torch.randn(m, generator=g, dtype=DT)
    cost = VariationalCost(x_b, DenseSqrtTransform(b, (n,)), lambda xw: xw[0, flat], Obs(y, sigma, torch.zeros(m)), bg_lamb=lam)
    result = Minimizer(outer_loops=1, tolerance=1e-10, algorithm="gauss_newton").minimize(cost)

    h = torch.eye(n, dtype=DT)[flat]
    gain = b @ h.T @ torch.linalg.inv(h @ b @ h.T + lam * torch.diag(sigma**2))
    torch.testing.assert_close(result.x_a, x_b + gain @ (y - h @ x_b), rtol=1e-10, atol=1e-10)
    assert not result.fallback
    d = result.diagnostics
    assert [row["outer"] for row in d] == [0, 1]
    assert d[-1]["grad_norm"] < 1e-10 * d[0]["grad_norm"]  # the gradient vanishes at the exact minimum
    for row in d:
        assert row["J"] == pytest.approx(row["J_b"] + row["J_o"], rel=1e-12)
    assert d[-1]["J"] == pytest.approx(float(cost(result.z).total), rel=1e-12)


def _lorenz_4dvar_cost() -> tuple[VariationalCost, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    model = Lorenz96()
    truth0 = model.forecast(8 + torch.randn(40, generator=g, dtype=DT), 200)
    x_b = truth0 + 0.3 * torch.randn(40, generator=g, dtype=DT)
    truth_window = torch.stack([truth0, model.forecast(truth0, 4), model.forecast(truth0, 8)])
    t = torch.arange(3).repeat_interleave(40)
    flat = torch.arange(40).repeat(3)
    obs = Obs(truth_window.reshape(3, -1)[t, flat] + 0.1 * torch.randn(120, generator=g, dtype=DT),
              torch.full((120,), 0.1, dtype=DT), t)
    cost = VariationalCost(x_b, DenseSqrtTransform(0.09 * torch.eye(40, dtype=DT)), lambda xw: xw.reshape(3, -1)[t, flat], obs,
                           propagation=ModelPropagation(model, [4, 4], checkpoint=False))
    return cost, x_b, truth0


def test_4dvar_reaches_the_lbfgs_minimum() -> None:
    """Nonlinear 4DVar through Lorenz-96: Gauss–Newton outer loops and a long L-BFGS run end at the
    same minimum; J falls at every outer loop."""
    cost, x_b, truth0 = _lorenz_4dvar_cost()
    gn = Minimizer(outer_loops=6, tolerance=1e-12, j_tolerance=0.0, algorithm="gauss_newton").minimize(cost)
    lbfgs = Minimizer(outer_loops=4, inner_iterations=50, tolerance=1e-12, j_tolerance=0.0).minimize(cost)
    torch.testing.assert_close(gn.x_a, lbfgs.x_a, rtol=1e-7, atol=1e-7)
    js = [row["J"] for row in gn.diagnostics]
    assert js[1] < js[0] and all(b <= a + 1e-12 * abs(a) for a, b in zip(js, js[1:], strict=False))
    assert gn.converged and not gn.fallback
    assert (gn.x_a - truth0).norm() < 0.5 * (x_b - truth0).norm()


def test_batched_jacobian_equals_one_pass_per_row() -> None:
    """The vmapped Jacobian (torch.func through the Lorenz-96 adjoint's vmap rule) equals one reverse
    pass per observation, and so do the analyses."""
    cost, _, _ = _lorenz_4dvar_cost()
    z = 0.1 * torch.randn(40, generator=torch.Generator().manual_seed(5), dtype=DT)
    batched, rowwise = Minimizer(algorithm="gauss_newton"), Minimizer(algorithm="gauss_newton")
    rowwise._batched_jacobian = False
    r1, g1 = batched._linearise(cost, z)
    r2, g2 = rowwise._linearise(cost, z)
    assert batched._batched_jacobian  # the vmapped path was taken
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    # against central finite differences of r
    eps = 1e-6
    for j in (0, 17, 39):
        e = torch.zeros(40, dtype=DT)
        e[j] = eps
        fd = (cost.residuals(z + e) - cost.residuals(z - e)) / (2 * eps)
        torch.testing.assert_close(g1[:, j], fd, rtol=1e-5, atol=1e-6)


def test_lorenz96_jacobian_by_vmap() -> None:
    """torch.func.jacrev of n RK4 steps (the adjoint's vmap rule) equals the row-by-row Jacobian, also
    for a batch of members."""
    model = Lorenz96()
    x = 8 + torch.randn(3, 40, generator=torch.Generator().manual_seed(1), dtype=DT)
    f = lambda v: model.forecast(v, 7)  # noqa: E731
    for k in range(3):
        torch.testing.assert_close(torch.func.jacrev(f)(x[k]), torch.autograd.functional.jacobian(f, x[k]), rtol=0, atol=1e-12)
    full = torch.func.jacrev(f)(x)  # [3, 40, 3, 40]: block diagonal over the members
    for k in range(3):
        torch.testing.assert_close(full[k, :, k], torch.autograd.functional.jacobian(f, x[k]), rtol=0, atol=1e-12)
        assert full[k, :, (k + 1) % 3].abs().max() == 0


def test_config_selects_gauss_newton_and_guards() -> None:
    g = torch.Generator().manual_seed(2)
    x_b = torch.randn(8, generator=g, dtype=DT)
    y = torch.randn(8, generator=g, dtype=DT)
    obs = Obs(y, torch.ones(8, dtype=DT), torch.zeros(8))
    window = Window(np.datetime64(0, "s"), np.zeros(1, dtype="timedelta64[s]"))
    method = build_method({"method": "3dvar", "algorithm": "gauss_newton", "outer_loops": 1})
    assert method.config.minimizer().algorithm == "gauss_newton"
    problem = AnalysisProblem(x_b, x_b[None], IdentityTransform((8,)), lambda xw: xw[0], obs, window)
    result = method.analyse(problem)
    torch.testing.assert_close(result.x_a, 0.5 * (x_b + y), rtol=1e-12, atol=1e-12)  # B = R = I
    with pytest.raises(ConfigError):
        build_method({"method": "3dvar", "algorithm": "newton"})
    with pytest.raises(ValueError, match="algorithm"):
        Minimizer(algorithm="newton")
    big = VariationalCost(torch.zeros(5000, dtype=DT), IdentityTransform((5000,)), lambda xw: xw[0, :1],
                          Obs(torch.zeros(1, dtype=DT), torch.ones(1, dtype=DT), torch.zeros(1)))
    with pytest.raises(ValueError, match="dense Hessian"):
        Minimizer(algorithm="gauss_newton").minimize(big)


def test_non_finite_falls_back_to_background() -> None:
    x_b = torch.ones(4, dtype=DT)
    obs = Obs(torch.zeros(4, dtype=DT), torch.ones(4, dtype=DT), torch.zeros(4))
    cost = VariationalCost(x_b, IdentityTransform((4,)), lambda xw: torch.log(xw[0] - 2.0), obs)  # NaN everywhere
    with pytest.warns(RuntimeWarning, match="falls back"):
        result = Minimizer(algorithm="gauss_newton").minimize(cost)
    assert result.fallback
    torch.testing.assert_close(result.x_a, x_b)
