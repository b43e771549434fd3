"""VariationalCost: hand-computed value, gradient checks (3D linear, 4D through Lorenz-96),
checkpointing, shape-agnosticism and input validation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from aivarda.assimilation import ModelPropagation, VariationalCost
from aivarda.background import DenseSqrtTransform, DiagonalTransform
from aivarda.models.lorenz96 import Lorenz96

DT = torch.float64


@dataclass
class Obs:
    value: torch.Tensor
    error_std: torch.Tensor
    time_index: torch.Tensor


class PointOperator:
    """``x_window.reshape(T, -1)[time_index, flat_index]`` (a grid-point H)."""

    def __init__(self, flat_index: torch.Tensor, time_index: torch.Tensor):
        self.flat_index = flat_index
        self.time_index = time_index

    def __call__(self, x_window: torch.Tensor) -> torch.Tensor:
        return x_window.reshape(x_window.shape[0], -1)[self.time_index, self.flat_index]


class Drift:
    """A linear toy model for any state shape: roll along the last axis and damp."""

    dt = 1.0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return 0.9 * x.roll(1, -1) + 0.05 * x

    def forecast(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = self.step(x)
        return x


def random_spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=DT)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=DT)


def l96_problem(window: int = 3, steps: int = 2, checkpointing: bool = True, flow_error: float = 0.3):
    g = torch.Generator().manual_seed(5)
    model = Lorenz96()
    x_b = model.forecast(8 + torch.randn(40, generator=g, dtype=DT), 100)
    n_obs = 30
    flat = torch.randint(0, 40, (n_obs,), generator=g)
    t = torch.randint(0, window, (n_obs,), generator=g)
    obs = Obs(torch.randn(n_obs, generator=g, dtype=DT) + 2, 0.5 + torch.rand(n_obs, generator=g, dtype=DT), t)
    cost = VariationalCost(
        x_b,
        DenseSqrtTransform(0.3 * random_spd(40, 6)),
        PointOperator(flat, t),
        obs,
        propagation=ModelPropagation(model, [steps] * (window - 1), checkpoint=checkpointing),
        bg_lamb=2.0,
        flow_error=flow_error,
    )
    return cost, model, obs


def test_value_matches_hand_computation() -> None:
    """J = ½‖z‖² + (1/λ)·½ Σ (H M(x_b+Uz) − y)² / (σ²·(1 + (flow_error·t)²))."""
    cost, model, obs = l96_problem()
    z = torch.randn(40, dtype=DT, generator=torch.Generator().manual_seed(7))
    x0 = cost.background + cost.transform.sqrt @ z
    states = [x0, model.forecast(x0, 2), model.forecast(x0, 4)]
    op = cost.operator
    hx = torch.stack([states[int(t)][int(i)] for t, i in zip(op.time_index, op.flat_index)])
    var = obs.error_std**2 * (1 + (0.3 * obs.time_index.to(DT)) ** 2)
    d = hx - obs.value
    j_o = 0.5 / 2.0 * (d**2 / var).sum()
    terms = cost(z)
    torch.testing.assert_close(terms.background, 0.5 * (z**2).sum())
    torch.testing.assert_close(terms.observation, j_o)
    torch.testing.assert_close(terms.total, terms.background + terms.observation)


def test_flow_error_inflates_later_times() -> None:
    """R_t = σ²·(1 + (flow_error·t)²): pure observation error at t = 0, larger later."""
    cost, _, obs = l96_problem(flow_error=0.3)
    t = obs.time_index
    expected = obs.error_std**2 * (1 + (0.3 * t.to(DT)) ** 2)
    torch.testing.assert_close(1.0 / cost.inverse_variance, expected)
    assert bool((t == 0).any()) and bool((t > 0).any())
    torch.testing.assert_close(1.0 / cost.inverse_variance[t == 0], obs.error_std[t == 0] ** 2)
    assert torch.all(1.0 / cost.inverse_variance[t > 0] > obs.error_std[t > 0] ** 2)


def test_gradient_4dvar_lorenz96() -> None:
    """Nonlinear strong-constraint 4DVar (T = 3, 2 model steps per window time): gradcheck."""
    cost, _, _ = l96_problem()
    z = 0.3 * torch.randn(40, dtype=DT, generator=torch.Generator().manual_seed(8))
    z.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: cost(v).total, (z,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradient_3dvar_linear_field() -> None:
    """Linear 3D case on a [C, H, W] state with a per-channel diagonal B: gradcheck."""
    g = torch.Generator().manual_seed(9)
    shape = (3, 4, 5)
    x_b = torch.randn(shape, generator=g, dtype=DT)
    flat = torch.randint(0, 60, (12,), generator=g)
    t = torch.zeros(12, dtype=torch.long)
    obs = Obs(torch.randn(12, generator=g, dtype=DT), torch.full((12,), 0.7, dtype=DT), t)
    cost = VariationalCost(x_b, DiagonalTransform(torch.tensor([1.0, 2.0, 0.5], dtype=DT), shape), PointOperator(flat, t), obs)
    z = torch.randn(shape, generator=g, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: cost(v).total, (z,))


def test_checkpointing_gives_identical_gradient() -> None:
    grads = []
    for ckpt in (True, False):
        cost, _, _ = l96_problem(window=4, steps=3, checkpointing=ckpt)
        z = torch.linspace(-1, 1, 40, dtype=DT).requires_grad_(True)
        (g,) = torch.autograd.grad(cost(z).total, z)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_same_code_for_field_states_in_4d() -> None:
    """[C, H, W] state, T = 3 through a toy model; the gradient still checks."""
    g = torch.Generator().manual_seed(10)
    shape = (2, 3, 4)
    flat = torch.randint(0, 24, (10,), generator=g)
    t = torch.randint(0, 3, (10,), generator=g)
    obs = Obs(torch.randn(10, generator=g, dtype=DT), torch.ones(10, dtype=DT), t)
    cost = VariationalCost(
        torch.randn(shape, generator=g, dtype=DT),
        DenseSqrtTransform(random_spd(24, 11), shape),
        PointOperator(flat, t),
        obs,
        propagation=ModelPropagation(Drift(), [1, 1]),
    )
    assert cost.window(torch.zeros(24, dtype=DT)).shape == (3, *shape)
    z = torch.randn(24, generator=g, dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: cost(v).total, (z,))


def test_nonlinear_transform() -> None:
    class Tanh:
        latent_shape = (40,)
        state_shape = (40,)

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return torch.tanh(z)

    t = torch.zeros(40, dtype=torch.long)
    cost = VariationalCost(
        torch.zeros(40, dtype=DT), Tanh(), lambda xw: xw[0], Obs(torch.ones(40, dtype=DT), torch.ones(40, dtype=DT), t)
    )
    z = torch.full((40,), 0.5, dtype=DT)
    expected = 0.5 * 40 * 0.25 + 0.5 * 40 * (torch.tanh(torch.tensor(0.5, dtype=DT)) - 1) ** 2
    torch.testing.assert_close(cost(z).total, expected)


def test_obsset_active_subset_with_grid_point_operator() -> None:
    """The real ObsSet and GridPointOperator: only active observations (QC good, not withheld)
    enter J_o."""
    from aivarda.observations.obsset import ObsSet
    from aivarda.observations.operators import GridPointOperator

    shape = (2, 3, 4)
    x_b = torch.zeros(shape, dtype=DT)
    flat = torch.tensor([0, 5, 11, 23])
    t = torch.tensor([0, 1, 1, 0])
    obs = ObsSet.create(
        torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.int64), torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT),
        0.5, time_index=t, withheld=torch.tensor([False, False, True, False]),
    )
    active = obs.active()
    op = GridPointOperator(flat[~obs.withheld], active.time_index, shape)
    cost = VariationalCost(
        x_b, DiagonalTransform(torch.ones(2, dtype=DT), shape), op, active, propagation=ModelPropagation(Drift(), [1])
    )
    # x = x_b = 0 everywhere: J_o = ½ Σ_active y² / σ² = ½ (1 + 4 + 16) / 0.25
    torch.testing.assert_close(cost(torch.zeros(shape, dtype=DT)).observation, torch.tensor(42.0, dtype=DT))


def test_validation() -> None:
    x_b = torch.zeros(40, dtype=DT)
    u = DenseSqrtTransform(torch.eye(40, dtype=DT))
    obs = Obs(torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="time_index"):  # a 3D window has one time
        VariationalCost(x_b, u, lambda xw: xw[0, :3], obs)
    with pytest.raises(ValueError, match="time_index"):
        VariationalCost(x_b, u, lambda xw: xw[0, :3], obs, propagation=ModelPropagation(Lorenz96(), [1]))
    with pytest.raises(ValueError, match="error_std"):
        VariationalCost(x_b, u, lambda xw: xw[0, :3], Obs(obs.value, torch.zeros(3, dtype=DT), obs.time_index),
                        propagation=ModelPropagation(Lorenz96(), [1, 1]))
    with pytest.raises(ValueError, match="steps must be positive"):
        ModelPropagation(Lorenz96(), [1, 0])
    cost = VariationalCost(x_b, u, lambda xw: xw[0, :2], obs, propagation=ModelPropagation(Lorenz96(), [1, 1]))
    with pytest.raises(ValueError, match="returned 2 values for 3"):
        cost(torch.zeros(40, dtype=DT))
