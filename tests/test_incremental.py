"""Multi-incremental 4DVar (aivarda.assimilation.incremental): exact for a linear model, the inner
cost starts at the true nonlinear J, the outer loops reach the nonlinear minimum, and the method's
``inner_model`` option."""

from __future__ import annotations

import pytest
import torch
from test_cost import Drift, Obs, PointOperator, random_spd

from aivarda.assimilation import ModelPropagation, VariationalCost
from aivarda.assimilation.analysis import AnalysisProblem
from aivarda.assimilation.incremental import IncrementalPropagation, multi_incremental
from aivarda.assimilation.methods import build_method
from aivarda.assimilation.minimizer import Minimizer
from aivarda.assimilation.window import Window
from aivarda.background import DenseSqrtTransform
from aivarda.errors import ConfigError
from aivarda.models.base import HasLinearPart, trajectory

DT = torch.float64
N, STEPS = 24, (2, 2, 2)


class Linear(Drift):
    """A linear model that is its own linear part."""

    def linear_part(self) -> Drift:
        return self


class Nonlinear:
    """``M(x) = D(x) + ε·(x² rolled)``: weakly nonlinear; its linear part is ``D`` (:class:`Drift`)."""

    dt = 1.0

    def __init__(self, eps: float = 0.05):
        self.eps = eps

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return Drift().step(x) + self.eps * torch.tanh(x).roll(2, -1) * x

    def forecast(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = self.step(x)
        return x

    def linear_part(self) -> Drift:
        return Drift()


def problem(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x_b = torch.randn(N, generator=g, dtype=DT)
    n_obs = 40
    t = torch.randint(0, len(STEPS) + 1, (n_obs,), generator=g)
    flat = torch.randint(0, N, (n_obs,), generator=g)
    truth = trajectory(model, x_b + 0.8 * torch.randn(N, generator=g, dtype=DT), STEPS)
    y = truth.reshape(len(STEPS) + 1, -1)[t, flat] + 0.1 * torch.randn(n_obs, generator=g, dtype=DT)
    obs = Obs(y, torch.full((n_obs,), 0.1, dtype=DT), t)
    return x_b, DenseSqrtTransform(0.5 * random_spd(N, 7)), PointOperator(flat, t), obs


def full_cost(model, x_b, transform, operator, obs):
    return VariationalCost(x_b, transform, operator, obs, propagation=ModelPropagation(model, STEPS), flow_error=0.2)


def test_linear_model_one_outer_loop_is_plain_4dvar():
    """With an affine model that is its own linear part, J⁰ ≡ J: the same L-BFGS iterates."""
    model = Linear()
    x_b, U, H, obs = problem(model)
    plain = Minimizer(outer_loops=1, inner_iterations=8).minimize(full_cost(model, x_b, U, H, obs))
    mi = multi_incremental(x_b, trajectory(model, x_b, STEPS), U, H, obs, model, model.linear_part(), STEPS,
                           Minimizer(outer_loops=1, inner_iterations=8), flow_error=0.2)
    assert not mi.fallback
    torch.testing.assert_close(mi.z, plain.z, rtol=1e-10, atol=1e-10)
    assert [r["J"] for r in mi.diagnostics] == pytest.approx([r["J"] for r in plain.diagnostics], rel=1e-12)


def test_inner_cost_starts_at_the_nonlinear_cost_and_gradient_checks():
    """J^k(z^k) = J(z^k) exactly (the outer trajectory is reproduced), and ∇J^k passes gradcheck."""
    model = Nonlinear()
    x_b, U, H, obs = problem(model)
    z_k = 0.3 * torch.randn(N, generator=torch.Generator().manual_seed(1), dtype=DT)
    outer = trajectory(model, x_b + U.decode(z_k), STEPS)
    prop = IncrementalPropagation(outer, model.linear_part(), STEPS)
    inner = VariationalCost(x_b, U, H, obs, propagation=prop, flow_error=0.2)
    full = full_cost(model, x_b, U, H, obs)
    torch.testing.assert_close(inner.window(z_k), full.window(z_k), rtol=1e-12, atol=1e-12)
    assert float(inner(z_k).total) == pytest.approx(float(full(z_k).total), rel=1e-12)
    # away from z^k the inner cost is the linearisation, not the nonlinear cost
    z = z_k + 0.5
    assert abs(float(inner(z).total) - float(full(z).total)) > 1e-6 * float(full(z).total)
    torch.autograd.gradcheck(lambda v: inner(v).total, (z.clone().requires_grad_(True),))


def test_outer_loops_reach_the_nonlinear_minimum():
    """Re-linearising about the full model: the nonlinear J falls with every outer loop towards the
    full 4DVar minimum (1 outer loop: 4.2× its J; 4 loops: within 10 %). With a simplified inner
    model (not the tangent-linear of the full one) the fixed point is near, not at, the minimum."""
    model = Nonlinear(eps=0.15)
    x_b, U, H, obs = problem(model)
    J = full_cost(model, x_b, U, H, obs)
    best = Minimizer(outer_loops=6, inner_iterations=10, tolerance=0.0).minimize(J)
    bg = trajectory(model, x_b, STEPS)
    js = []
    for k in (1, 2, 4):
        r = multi_incremental(x_b, bg, U, H, obs, model, model.linear_part(), STEPS,
                              Minimizer(outer_loops=k, inner_iterations=10, tolerance=0.0), flow_error=0.2)
        assert not r.fallback and {row["outer"] for row in r.diagnostics} == set(range(k))
        js.append(float(J(r.z).total))
    j_best, j0 = float(J(best.z).total), float(J(torch.zeros(N, dtype=DT)).total)
    assert js[0] < j0 and js[1] < js[0] and js[2] <= js[1] + 1e-9
    assert js[0] > 3 * j_best  # the linear model alone misses the nonlinear minimum
    assert j_best < js[2] < 1.1 * j_best


def _problem_for_method(model):
    x_b, U, H, obs = problem(model)
    window = Window(torch.zeros(()).numpy().astype("datetime64[h]"), [0, 1, 2, 3], STEPS)
    return AnalysisProblem(x_b, trajectory(model, x_b, STEPS), U, H, obs, window, model)


def test_method_option_and_its_errors():
    cfg = {"method": "4dvar", "da_win": 4, "flow_error": 0.2, "outer_loops": 3, "inner_iterations": 10,
           "inner_model": "linear_prior"}
    model = Nonlinear(eps=0.15)
    method = build_method(cfg)
    result = method.analyse(_problem_for_method(model))
    again = multi_incremental(*_args(model), Minimizer(outer_loops=3, inner_iterations=10), flow_error=0.2)
    torch.testing.assert_close(result.z, again.z)
    with pytest.raises(ConfigError, match="linear prior"):
        method.analyse(_problem_for_method(Drift()))  # no linear_part
    with pytest.raises(ConfigError):
        build_method({**cfg, "inner_model": "tangent"})


def _args(model):
    x_b, U, H, obs = problem(model)
    return x_b, trajectory(model, x_b, STEPS), U, H, obs, model, model.linear_part(), STEPS


def test_neural_model_linear_part_is_a_view(tmp_path):
    """``linear_part()`` of a network with a fitted prior shares its weights, steps with the prior
    alone and leaves the model itself unchanged."""
    from test_models import FENGWU, GRID, make, random_states

    from aivarda.models.linear_prior import fit_linear_prior

    model = make({**FENGWU, "zero_init_output": False}, linear_prior={"lmax": 4, "modes": 4})
    z = torch.randn(12, model.mean.shape[0], *GRID.shape, generator=torch.Generator().manual_seed(2))
    fit_linear_prior(model.prior, [(z, torch.roll(z, 1, dims=-1))], torch.ones(GRID.nlat), progress=False)
    model.eval()
    assert isinstance(model, HasLinearPart)
    lin = model.linear_part()
    x = random_states(2)
    with torch.no_grad():
        full_before = model.step(x)
        expected = model.denormalise(model.prior(model.normalise(x)))
        torch.testing.assert_close(lin.step(x), expected)
        torch.testing.assert_close(model.step(x), full_before)  # the original still runs its network
    assert not torch.allclose(full_before, expected, atol=1e-3)
    assert lin.prior is model.prior and next(lin.parameters()) is next(model.parameters())
