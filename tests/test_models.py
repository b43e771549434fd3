"""Neural forecast models: shapes and batching, normalisation, gradients, checkpoints, registry."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from aivarda.channels import ChannelLayout
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid
from aivarda.models.base import ForecastModel
from aivarda.models.checkpoint import (
    build_forecast_model,
    checkpoint_dict,
    load_forecast_model,
    save_checkpoint,
)
from aivarda.models.fengwu import channel_groups
from aivarda.models.normalised import NeuralForecastModel, identity_stats
from aivarda.models.registry import architecture_config
from aivarda.normstats import NormStats

GRID = Grid.gaussian(16, 32)
LAYOUT = ChannelLayout(("u10m", "t2m"), ("z", "q", "t"), (500, 850))
C = LAYOUT.n_channels
FENGWU = {"name": "fengwu", "patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2, "window": [2, 4],
          "mlp_ratio": 2.0, "zero_init_output": False}
SFNO = {"name": "sfno", "embed_dim": 8, "num_layers": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def random_stats(seed: int = 0) -> NormStats:
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(C, generator=g, dtype=torch.float64) * 10
    std = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    return NormStats(LAYOUT.names, mean, std, torch.randn(C, generator=g, dtype=torch.float64) * 0.1,
                     torch.rand(C, generator=g, dtype=torch.float64) * 0.2 + 0.05, 6.0, 10)


def random_states(*lead: int, seed: int = 1) -> torch.Tensor:
    stats = random_stats()
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*lead, C, *GRID.shape, generator=g)
    return (stats.mean.float()[:, None, None] + stats.std.float()[:, None, None] * z)


def make(arch: dict, grid: Grid = GRID, **kw) -> NeuralForecastModel:
    torch.manual_seed(0)
    return build_forecast_model(arch, random_stats(), grid, LAYOUT, 6.0, **kw)


@pytest.mark.parametrize("arch", [FENGWU, SFNO], ids=["fengwu", "sfno"])
def test_shapes_and_batching(arch):
    model = make(arch).eval()
    assert isinstance(model, ForecastModel) and model.dt == 6.0
    x = random_states(3)
    with torch.no_grad():
        y = model.step(x)
        assert y.shape == x.shape and y.dtype == torch.float32
        # a batch gives each member's own forecast; any number of leading dims
        torch.testing.assert_close(model.step(x[1]), y[1], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(model.step(x.reshape(1, 3, C, *GRID.shape))[0], y, rtol=1e-5, atol=1e-4)
        # forecast(n) is n steps; rollout stacks them
        traj = model.rollout(x, 3)
        assert traj.shape == (3, *x.shape)
        torch.testing.assert_close(model.forecast(x, 3), traj[-1])
        torch.testing.assert_close(model.forecast(x, 0), x)
        assert not torch.allclose(y, x)


def test_sfno_on_equiangular_grid():
    grid = Grid.equiangular(17, 32)
    model = make(SFNO, grid=grid).eval()
    x = torch.randn(2, C, *grid.shape) + random_stats().mean.float()[:, None, None]
    assert model.step(x).shape == x.shape
    assert model.net.grid == "equiangular" and make(SFNO).net.grid == "legendre-gauss"


class Constant(nn.Module):
    """Returns a fixed normalised output whatever the input."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, self.value)


class Identity(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z


def test_residual_and_normalisation_round_trip():
    stats = random_stats()
    x = random_states(2)
    col = lambda v: v.float()[:, None, None]  # noqa: E731
    # residual: x + σ_Δ f + μ_Δ with f ≡ 0.5
    m = NeuralForecastModel(Constant(0.5), stats, 6.0, GRID, LAYOUT)
    torch.testing.assert_close(m.step(x), x + 0.5 * col(stats.diff_std) + col(stats.diff_mean))
    # full-state mode with the identity network reproduces the input: μ + σ (x − μ)/σ = x
    m = NeuralForecastModel(Identity(), stats, 6.0, GRID, LAYOUT, residual=False)
    torch.testing.assert_close(m.step(x), x, rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(m.denormalise(m.normalise(x)), x, rtol=1e-6, atol=1e-4)
    # the network sees unit-variance inputs
    z = m.normalise(x)
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


def test_stats_must_match_layout():
    other = ChannelLayout(("t2m",), ("z",), (500,))
    with pytest.raises(DataError, match="channels"):
        NeuralForecastModel(Identity(), random_stats(), 6.0, GRID, other)
    bad = random_stats().to_dict()
    bad["std"][0] = 0.0
    with pytest.raises(DataError, match="positive"):
        NeuralForecastModel(Identity(), bad, 6.0, GRID, LAYOUT)


def test_fengwu_groups_and_periodic_longitude():
    assert [n for n, _ in channel_groups(LAYOUT)] == ["surface", "z", "q", "t"]
    model = make(FENGWU).eval()
    x = random_states(1)
    shift = 2 * 4  # patch · window columns: a symmetry of the shifted-window network
    with torch.no_grad():
        y = model.step(x)
        y_rolled = model.step(torch.roll(x, shift, dims=-1))
    torch.testing.assert_close(y_rolled, torch.roll(y, shift, dims=-1), rtol=1e-4, atol=1e-3)


def test_fengwu_shifted_windows_do_not_wrap_across_the_poles():
    """Two blocks (one shifted) with 2-row windows: a change in the northernmost row can reach
    token rows 0…2 only; without the latitude mask the shifted window (row 7, row 0) would leak it
    to the southernmost rows."""
    model = make(FENGWU).eval()
    x = random_states(1)
    x2 = x.clone()
    x2[..., 0, :] += 5 * random_stats().std.float()[:, None]
    with torch.no_grad():
        dy = (model.step(x2) - model.step(x)).abs().amax(dim=(0, 1, 3))  # per grid row
    assert float(dy[:2].min()) > 0  # the perturbed rows respond
    assert float(dy[-4:].max()) == 0.0  # the southern rows (token rows 6, 7) do not


def test_checkpointed_gradients_match_plain_and_finite_differences():
    torch.manual_seed(3)
    model = make(FENGWU).double()
    model.requires_grad_(False)
    ckpt = copy.deepcopy(model)
    ckpt.checkpoint = True
    x = random_states(2).double().requires_grad_(True)
    u = torch.randn_like(x)

    def j(m: NeuralForecastModel, state: torch.Tensor) -> torch.Tensor:
        return (u * m.forecast(state, 6)).sum()

    (g_plain,) = torch.autograd.grad(j(model, x), x)
    (g_ckpt,) = torch.autograd.grad(j(ckpt, x), x)
    torch.testing.assert_close(g_ckpt, g_plain, rtol=1e-10, atol=1e-12)
    # directional derivative: (J(x + εv) − J(x − εv)) / 2ε = ⟨∇J, v⟩
    with torch.no_grad():
        for seed in range(2):
            v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
            eps = 1e-5
            fd = (j(model, x + eps * v) - j(model, x - eps * v)) / (2 * eps)
            ad = (g_plain * v).sum()
            assert abs(float(fd - ad)) <= 1e-6 * abs(float(ad)) + 1e-8


def test_checkpointing_keeps_parameter_gradients():
    model = make(SFNO, checkpoint=True)
    x = random_states(2)
    model.forecast(x, 3).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("arch", [FENGWU, SFNO], ids=["fengwu", "sfno"])
def test_save_load_round_trip(tmp_path, arch):
    model = make(arch).eval()
    path = save_checkpoint(tmp_path / "m.pt", checkpoint_dict(model, {"step": 7}))
    loaded = load_forecast_model(path)
    assert loaded.dt == 6.0 and loaded.layout == LAYOUT and loaded.grid == GRID
    assert loaded.metadata["step"] == 7
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.stats.mean, model.stats.mean)
    x = random_states(2)
    with torch.no_grad():
        assert torch.equal(loaded.forecast(x, 2), model.forecast(x, 2))
    # through a model YAML (ModelConfig) with activation checkpointing switched on
    cfg = tmp_path / "model.yaml"
    cfg.write_text(yaml.safe_dump({"checkpoint": "m.pt", "grad_checkpointing": True}))
    again = load_forecast_model(cfg)
    assert again.checkpoint
    with torch.no_grad():
        assert torch.equal(again.step(x), model.step(x))


def test_generic_module_by_import_path(tmp_path):
    conv = {"in_channels": C, "out_channels": C, "kernel_size": 3, "padding": [1, 1]}
    torch.manual_seed(0)
    net = nn.Conv2d(**conv)
    torch.save(net.state_dict(), tmp_path / "conv.pt")
    cfg = {"module": "torch.nn:Conv2d", "kwargs": conv, "checkpoint": str(tmp_path / "conv.pt"), "dt": "1h",
           "layout": LAYOUT.to_dict(), "grid": GRID.to_dict()}
    model = load_forecast_model(cfg)
    assert model.dt == 1.0
    x = random_states(2)
    with torch.no_grad():  # identity statistics: x + f(x)
        torch.testing.assert_close(model.step(x), x + net(x))
    # the same network trained from a user's own config: its checkpoint's weights load only
    # through a config that names the class (never from the file alone, see test_security.py)
    arch = {"name": "module", "target": "torch.nn:Conv2d", "kwargs": conv}
    built = build_forecast_model(arch, random_stats(), GRID, LAYOUT, 6.0, allow_module=True)
    save_checkpoint(tmp_path / "c.pt", checkpoint_dict(built))
    again = load_forecast_model({**cfg, "checkpoint": str(tmp_path / "c.pt"), "dt": "6h"})
    with torch.no_grad():
        assert torch.equal(again.net(x), built.net(x))
    # identity statistics are exactly what they claim
    ident = identity_stats(LAYOUT.names)
    assert torch.equal(ident.mean, torch.zeros(C)) and torch.equal(ident.diff_std, torch.ones(C))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "transformerxl"}, "unknown architecture"),
        ({"name": "fengwu", "embed_dims": 3}, "embed_dims: unknown key"),
        ({"name": "fengwu", "embed_dim": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"name": "module", "target": "no colon"}, "target"),
    ],
)
def test_architecture_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        architecture_config(spec, "model.yaml: model.architecture", allow_module=True)


def test_bad_import_path_and_grid_are_one_line_errors():
    with pytest.raises(ConfigError, match="cannot import module 'not_a_module'"):
        build_forecast_model({"name": "module", "target": "not_a_module:Net"}, random_stats(), GRID, LAYOUT, 6.0,
                             allow_module=True)
    with pytest.raises(ConfigError, match="divisible"):
        build_forecast_model({**FENGWU, "window": [2, 5]}, random_stats(), GRID, LAYOUT, 6.0)


@pytest.mark.parametrize("name", ["fengwu_6h", "fengwu_1h", "sfno_6h"])
def test_shipped_configs_build_small_t42_models(name):
    from pathlib import Path

    from aivarda.models.config import load_train_config

    cfg = load_train_config(Path(__file__).parents[1] / "configs" / "models" / f"{name}.yaml")
    layout, grid = ChannelLayout.fengwu69(), Grid.t42()
    model = build_forecast_model(cfg.model.architecture, identity_stats(layout.names), grid, layout, cfg.model.dt)
    assert sum(p.numel() for p in model.parameters()) * 4 <= 20 * 2**20  # ≤ 20 MB of float32 weights
    assert model.dt == (1.0 if name.endswith("1h") else 6.0)
    with torch.no_grad():
        assert model.step(torch.randn(1, 69, 64, 128)).shape == (1, 69, 64, 128)


@pytest.mark.parametrize(("name", "dt"), [("fengwu_6h.pt", 6.0), ("fengwu_6h_rollout.pt", 6.0), ("fengwu_1h.pt", 1.0)])
def test_shipped_default_models_load_and_step(name, dt):
    """The trained default weights (docs/models.md): ≤ 20 MB, the nature run's grid and 69 channels,
    a fitted linear prior, and a finite, differentiable step."""
    from aivarda.paths import ASSETS

    path = ASSETS / name
    assert path.stat().st_size <= 20 * 2**20
    model = load_forecast_model(path)
    assert model.dt == dt and model.grid == Grid.t42() and model.layout == ChannelLayout.fengwu69()
    assert model.prior is not None and bool(model.prior.fitted)
    x = model.mean.expand(1, -1, *model.grid.shape).clone().requires_grad_(True)
    y = model.step(x)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    y[:, model.layout.index("z500")].sum().backward()
    assert bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_linear_prior_only_drops_the_network(tmp_path):
    """``linear_prior_only: true`` keeps the checkpoint's fitted prior and ignores its network; a
    checkpoint without a prior is a clear error."""
    from aivarda.models.linear_prior import fit_linear_prior

    arch = {**FENGWU, "zero_init_output": False}
    model = make(arch, linear_prior={"lmax": 4, "modes": 4})
    z = torch.randn(12, C, *GRID.shape, generator=torch.Generator().manual_seed(2))
    fit_linear_prior(model.prior, [(z, torch.roll(z, 1, dims=-1))], torch.ones(GRID.nlat), progress=False)
    path = save_checkpoint(tmp_path / "m.pt", checkpoint_dict(model.eval()))
    full = load_forecast_model(path)
    only = load_forecast_model({"checkpoint": str(path), "linear_prior_only": True})
    x = random_states(2)
    with torch.no_grad():
        expected = full.denormalise(full.prior(full.normalise(x)))
        assert torch.allclose(only.step(x), expected, atol=1e-5)
        assert not torch.allclose(full.step(x), expected, atol=1e-3)  # the (random) network does contribute
    plain = save_checkpoint(tmp_path / "plain.pt", checkpoint_dict(make(FENGWU).eval()))
    with pytest.raises(ConfigError, match="no linear prior"):
        load_forecast_model({"checkpoint": str(plain), "linear_prior_only": True})
