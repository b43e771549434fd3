"""GEN_BE: spherical operators, fitting, the control-variable transform U, NMC samples and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aivarda.assimilation.cost import VariationalCost
from aivarda.assimilation.minimizer import Minimizer
from aivarda.background.genbe import (
    FitSettings,
    GenBeStatistics,
    GenBeTransform,
    Regrid,
    SphereOps,
    fit_genbe,
)
from aivarda.background.genbe.fit import apply_regression
from aivarda.background.registry import (
    TransformContext,
    build_transform,
    transform_names,
)
from aivarda.channels import ChannelLayout
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid
from aivarda.learning.nmc import forecast_differences, lagged_differences

LAYOUT = ChannelLayout(("t2m", "msl"), ("z", "q", "u", "v", "t"), (300, 500, 850))
OMEGA2 = 1.46e-4  # ≈ 2Ω, the synthetic geostrophic balance coefficient z = 2Ω sinφ ψ


def iso(ops: SphereOps, shape: tuple[int, ...], scale: float, std: float, gen: torch.Generator) -> torch.Tensor:
    """Isotropic Gaussian fields ``[*shape, H, W]`` of length scale ~``scale`` (m), std ``std``, no global mean."""
    amp = ops.gaussian_amplitudes(torch.tensor(scale)) * (ops.dof_degree > 0)
    z = torch.randn(*shape, ops.n_dofs, dtype=torch.float64, generator=gen)
    return std * ops.dofs_to_field(z * amp)


def synthetic_samples(grid: Grid, n: int, seed: int = 0) -> torch.Tensor:
    """NMC-like samples ``[n, 17, H, W]`` of :data:`LAYOUT` with a known balance:
    ``z = 2Ω sinφ ψ + noise``, ``χ = 0.1 sinφ ψ + χ_u``, ``t = 10⁻⁶ sinφ Σψ + noise``."""
    gen = torch.Generator().manual_seed(seed)
    ops = SphereOps(grid)
    P = len(LAYOUT.levels)
    A = torch.tensor([[1.0, 0, 0], [0.7, 0.7, 0], [0.3, 0.6, 0.7]], dtype=torch.float64)
    psi = torch.einsum("ij,njhw->nihw", A, iso(ops, (n, P), 1.2e6, 5e6, gen))
    sinphi = torch.tensor(np.sin(np.deg2rad(grid.lat)))[:, None]
    chi = iso(ops, (n, P), 9e5, 3e5, gen) + 0.1 * sinphi * psi
    u, v = ops.streamfunction_to_wind(psi, chi)
    z = OMEGA2 * sinphi * psi + iso(ops, (n, P), 1e6, 100.0, gen)
    t = 1e-6 * sinphi * psi.sum(1, keepdim=True).expand(-1, P, -1, -1) + iso(ops, (n, P), 8e5, 1.0, gen)
    q = iso(ops, (n, P), 7e5, 1e-4, gen)
    t2m = iso(ops, (n, 1), 6e5, 1.5, gen)
    msl = 2e-3 * sinphi * psi[:, 2:3] + iso(ops, (n, 1), 1.1e6, 100.0, gen)
    return torch.cat([t2m, msl, z, q, u, v, t], 1).float()


@pytest.fixture(scope="module")
def fitted() -> GenBeStatistics:
    grid = Grid.gaussian(32, 64)
    return fit_genbe(synthetic_samples(grid, 48), LAYOUT, grid)


# ------------------------------------------------------------------------------------------ sphere
@pytest.mark.parametrize("grid", [Grid.gaussian(32, 64), Grid.equiangular(33, 64)], ids=["gaussian", "equiangular"])
def test_solid_body_rotation_and_psi_chi_round_trip(grid: Grid) -> None:
    ops = SphereOps(grid)
    phi = torch.tensor(np.deg2rad(grid.lat), dtype=torch.float64)[:, None].expand(grid.shape)
    # ψ = −a U₀ sinφ is solid-body rotation u = U₀ cosφ, v = 0; χ = a V₀ sinφ gives v = V₀ cosφ
    U0 = 10.0
    u, v = ops.streamfunction_to_wind(-ops.radius * U0 * torch.sin(phi), ops.radius * U0 * torch.sin(phi))
    assert torch.allclose(u, U0 * torch.cos(phi), atol=1e-4 * U0)
    assert torch.allclose(v, U0 * torch.cos(phi), atol=1e-4 * U0)
    # (ψ, χ) → (u, v) → (ψ, χ) is exact up to the global mean (degree 0) and the truncation
    gen = torch.Generator().manual_seed(1)
    psi, chi = iso(ops, (2,), 1e6, 5e6, gen), iso(ops, (2,), 8e5, 1e6, gen)
    u, v = ops.streamfunction_to_wind(psi, chi)
    psi2, chi2 = ops.wind_to_streamfunction(u, v)
    assert float((psi2 - psi).abs().max()) < 1e-5 * float(psi.abs().max())
    assert float((chi2 - chi).abs().max()) < 1e-5 * float(chi.abs().max())
    # a wind that is not resolved exactly still splits into rotational + divergent parts that add up
    u_rough = torch.randn(grid.shape, dtype=torch.float64, generator=gen)
    v_rough = torch.randn(grid.shape, dtype=torch.float64, generator=gen)
    p, c = ops.wind_to_streamfunction(u_rough, v_rough)
    u3, v3 = ops.streamfunction_to_wind(p, c)
    u4, v4 = ops.streamfunction_to_wind(*ops.wind_to_streamfunction(u3, v3))
    assert torch.allclose(u3, u4, atol=1e-5) and torch.allclose(v3, v4, atol=1e-5)


@pytest.mark.parametrize("grid", [Grid.gaussian(32, 64), Grid.equiangular(33, 64)], ids=["gaussian", "equiangular"])
def test_fused_transforms_equal_the_torch_harmonics_chain(grid: Grid) -> None:
    """``dofs_to_field`` and ``streamfunction_to_wind`` run as one gather + one batched matrix
    product per wavenumber + one FFT; they must equal the torch-harmonics transforms they fuse
    (float64, to round-off) for any batch shape, and the packing gather's transpose must be its
    adjoint (dot-product test, through a double backward too)."""
    ops = SphereOps(grid)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, 3, ops.n_dofs, dtype=torch.float64, generator=gen)
    reference = ops.synthesis(ops.dofs_to_spectrum(z))
    assert torch.allclose(ops.dofs_to_field(z), reference, rtol=0, atol=1e-12 * float(reference.abs().max()))
    psi, chi = 1e7 * ops.dofs_to_field(z[0]), 3e6 * ops.dofs_to_field(z[1])
    st = torch.stack([ops.analysis(chi), -ops.analysis(psi)], dim=-3) / ops.radius
    w = ops._ivsht(st)
    u, v = ops.streamfunction_to_wind(psi, chi)
    scale = float(w.abs().max())
    assert torch.allclose(u, w[..., 1, :, :], rtol=0, atol=1e-12 * scale)
    assert torch.allclose(v, -w[..., 0, :, :], rtol=0, atol=1e-12 * scale)
    # float32 follows the float64 numbers to float32 round-off
    u32, _ = ops.streamfunction_to_wind(psi.float(), chi.float())
    assert float((u32.double() - u).abs().max()) < 1e-5 * scale
    # adjoint: <U z, y> = <z, Uᵀ y> with Uᵀ from autograd; differentiating Uᵀ y (a double
    # backward, as 4DVar's adjoint with create_graph) gives U back
    zz = torch.zeros_like(z[0], requires_grad=True)
    y = torch.randn(3, *grid.shape, dtype=torch.float64, generator=gen, requires_grad=True)
    (g,) = torch.autograd.grad((ops.dofs_to_field(zz) * y).sum(), zz, create_graph=True)
    assert math.isclose(float((ops.dofs_to_field(z[0]) * y).sum().detach()), float((g * z[0]).sum().detach()), rel_tol=1e-12)
    (back,) = torch.autograd.grad((g * z[1]).sum(), y)
    assert torch.allclose(back, ops.dofs_to_field(z[1]), rtol=0, atol=1e-12 * float(back.abs().max()))


def test_unit_variance_spectrum_and_length_scale() -> None:
    ops = SphereOps(Grid.gaussian(32, 64))
    L = torch.tensor([7e5, 1.5e6])
    s = ops.calibrate_scale(L)
    amp = ops.gaussian_amplitudes(s)  # [2, K]
    power = amp[:, [int(np.argmax(ops.dof_degree.numpy() == ell)) for ell in range(ops.lmax)]] ** 2
    assert torch.allclose(ops.spectral_length_scale(power), L.double(), rtol=1e-6)
    # the unit-variance normalisation holds at every point: Σ_l (2l+1)/(4π) a_l² = 1
    ell = torch.arange(ops.lmax, dtype=torch.float64)
    assert torch.allclose(((2 * ell + 1) / (4 * math.pi) * power).sum(-1), torch.ones(2, dtype=torch.float64))
    # a Laplacian check: ∇²(sinφ) = −2 sinφ / a² (Y_1^0)
    phi = torch.tensor(np.deg2rad(ops.grid.lat))[:, None].expand(ops.grid.shape)
    assert torch.allclose(ops.laplacian(torch.sin(phi)), -2 * torch.sin(phi) / ops.radius**2, atol=1e-6 / ops.radius**2)


def test_regrid_is_bilinear_and_adjoint() -> None:
    src, dst = Grid.gaussian(16, 32), Grid.equiangular(25, 48)
    R = Regrid(src, dst)
    lat = torch.tensor(np.clip(dst.lat, src.lat[-1], src.lat[0]))
    field = torch.tensor(src.lat)[:, None].expand(src.shape).clone()
    assert torch.allclose(R(field.double()), lat[:, None].expand(dst.shape).double(), atol=1e-9)
    x, y = torch.randn(3, *src.shape, dtype=torch.float64), torch.randn(3, *dst.shape, dtype=torch.float64)
    assert torch.allclose((R(x) * y).sum(), (x * R.adjoint(y)).sum())


# ------------------------------------------------------------------------------------------ fitting
def test_balance_regression_recovers_known_balance(fitted: GenBeStatistics) -> None:
    grid = fitted.control_grid
    sinphi = torch.tensor(np.sin(np.deg2rad(grid.lat)))
    R = fitted.regression["z"]  # [H, 3, 3]
    rows = np.abs(grid.lat) > 15
    diag = R.diagonal(dim1=1, dim2=2)[rows]  # [H', 3]
    expected = OMEGA2 * sinphi[rows][:, None].expand_as(diag)
    assert torch.allclose(diag, expected, rtol=0.05)
    off = R[rows] - torch.diag_embed(diag)
    assert float(off.abs().max()) < 0.1 * OMEGA2
    # the balanced parts of χ (0.1 sinφ ψ) and t (10⁻⁶ sinφ Σψ) are recovered for a new ψ with the
    # samples' vertical structure
    gen = torch.Generator().manual_seed(11)
    ops = SphereOps(grid)
    A = torch.tensor([[1.0, 0, 0], [0.7, 0.7, 0], [0.3, 0.6, 0.7]], dtype=torch.float64)
    psi = torch.einsum("ij,njhw->nihw", A, iso(ops, (4, 3), 1.2e6, 5e6, gen))[:, :, rows]
    s = sinphi[rows][:, None]
    for name, truth in (("chi", 0.1 * s * psi), ("t", 1e-6 * s * psi.sum(1, keepdim=True).expand(-1, 3, -1, -1))):
        pred = apply_regression(fitted.regression[name][rows], psi)
        assert float((pred - truth).norm() / truth.norm()) < (0.15 if name == "chi" else 0.05), name
    # the unbalanced z is the noise (std 100 m²/s²), not the 2Ω sinφ ψ signal (std ~ 500)
    assert torch.all(fitted.variance["z"] < 1.3 * 100.0**2)
    # q is not balanced; ψ is the balancing variable
    assert set(fitted.regression) == {"chi", "z", "t", "t2m", "msl"}


def test_statistics_round_trip_through_a_file(fitted: GenBeStatistics, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "genbe.pt")
    back = GenBeStatistics.load(path)
    assert back.layout == fitted.layout and back.control_grid == fitted.control_grid
    for name in fitted.eigenvalues:
        assert torch.equal(back.eigenvalues[name], fitted.eigenvalues[name])
        assert torch.equal(back.length_scale[name], fitted.length_scale[name])
    assert back.metadata["n_samples"] == 48 and back.settings["vertical"] == "empirical"


def test_parametric_vertical_covariance() -> None:
    grid = Grid.gaussian(16, 32)
    stats = fit_genbe(synthetic_samples(grid, 8), LAYOUT, grid, settings=FitSettings(vertical="parametric"))
    E, lam = stats.eigenvectors["q"], stats.eigenvalues["q"]
    V = E @ torch.diag(lam) @ E.T
    s = stats.variance["q"]
    idx = torch.arange(3.0, dtype=torch.float64)
    expected = torch.sqrt(s[:, None] * s[None, :]) * torch.exp(-(idx[:, None] - idx[None, :]).abs())
    assert torch.allclose(V, expected, rtol=1e-6)


# ------------------------------------------------------------------------------------------ the transform U
def test_dot_product_with_interpolation_to_a_finer_state_grid() -> None:
    grid = Grid.gaussian(16, 32)
    stats = fit_genbe(synthetic_samples(grid, 8), LAYOUT, grid, state_grid=Grid.equiangular(25, 48))
    U = GenBeTransform(stats, dtype=torch.float64)
    assert U.state_shape == (17, 25, 48) and U.latent_shape == (17, 16 * 16)
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(2, *U.latent_shape, dtype=torch.float64, generator=gen)
    dx = torch.randn(2, *U.state_shape, dtype=torch.float64, generator=gen)
    lhs, rhs = (U.decode(z) * dx).sum(), (z * U.adjoint(dx)).sum()
    assert abs(float(lhs - rhs)) <= 1e-10 * abs(float(lhs))
    # linear, and differentiable (the cost uses autograd)
    assert torch.allclose(U.decode(2 * z[0] - z[1]), 2 * U.decode(z[0]) - U.decode(z[1]), atol=1e-9 * float(U.decode(z[0]).abs().max()))
    zg = z[0].clone().requires_grad_(True)
    (U.decode(zg) * dx[0]).sum().backward()
    assert torch.allclose(zg.grad, U.adjoint(dx[0]))


def test_randomisation_variances_and_length_scales(fitted: GenBeStatistics) -> None:
    """200+ draws of U z, z ~ N(0, I): per-channel variances within 10 % and length scales within
    15 % of the fitted ones."""
    U = GenBeTransform(fitted, dtype=torch.float64)
    ops, n = U.ops, 240
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(n, *U.latent_shape, dtype=torch.float64, generator=gen)
    unbalanced = U.unbalanced(z)
    for name, field in unbalanced.items():
        var = ops.variance(field)
        assert torch.allclose(var, fitted.variance[name], rtol=0.10), (name, var / fitted.variance[name])
        modes = torch.einsum("ik,nihw->nkhw", fitted.eigenvectors[name], field) / fitted.eigenvalues[name].sqrt()[:, None, None]
        L = ops.length_scale(modes)
        assert torch.allclose(L, fitted.length_scale[name], rtol=0.15), (name, L / fitted.length_scale[name])
    # the full scalar output channels: var = diag(V_u) + ⟨diag(R(φ) V_ψ R(φ)ᵀ)⟩_area (ψ ⟂ unbalanced)
    x = U.decode(z)
    w = torch.tensor(fitted.control_grid.weights, dtype=torch.float64)
    V_psi = fitted.eigenvectors["psi"] @ torch.diag(fitted.eigenvalues["psi"]) @ fitted.eigenvectors["psi"].T
    for var in fitted.variables:
        name = var["name"]
        if name in ("psi", "chi"):
            continue
        expected = fitted.variance[name].clone()
        if name in fitted.regression:
            R = fitted.regression[name]
            balanced = torch.einsum("hij,jk,hik->hi", R, V_psi, R)
            expected += (balanced * w[:, None]).mean(0)
        got = ops.variance(x[:, var["channels"]])
        assert torch.allclose(got, expected, rtol=0.10), (name, got / expected)
    # the winds carry the ψ/χ variance: u and v have the same global variance (isotropy) within 10 %
    vu = ops.variance(x[:, LAYOUT.variable_slice("u")])
    vv = ops.variance(x[:, LAYOUT.variable_slice("v")])
    assert torch.allclose(vu, vv, rtol=0.10)


@dataclass
class _Obs:
    value: torch.Tensor
    error_std: torch.Tensor
    time_index: torch.Tensor


def test_single_observation_increment_is_the_b_column(fitted: GenBeStatistics) -> None:
    U = GenBeTransform(fitted, dtype=torch.float64)
    c, i, j = LAYOUT.index("z500"), 8, 20
    x_b = torch.zeros(U.state_shape, dtype=torch.float64)
    y, sigma, lam = 300.0, 50.0, 1.0
    e = torch.zeros(U.state_shape, dtype=torch.float64)
    e[c, i, j] = 1.0
    column = U.decode(U.adjoint(e))  # B e_i = U Uᵀ e_i, independently of the minimiser
    B_ii = float(column[c, i, j])
    expected = column * (y - 0.0) / (B_ii + lam * sigma**2)
    obs = _Obs(torch.tensor([y], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64), torch.tensor([0]))
    cost = VariationalCost(x_b, U, lambda xw: xw[0, c, i, j].reshape(1), obs, bg_lamb=lam)
    result = Minimizer(outer_loops=2, inner_iterations=10, tolerance=1e-10).minimize(cost)
    inc = result.increment
    assert float((inc - expected).abs().max()) < 1e-4 * float(expected.abs().max())
    # the balanced wind increment: geostrophic, so the wind circulates around the z500 extremum
    assert float(inc[LAYOUT.index("u500")].abs().max()) > 0


def test_registered_as_background_error_type(fitted: GenBeStatistics, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "g.pt")
    assert "genbe" in transform_names()
    U = build_transform({"type": "genbe", "file": str(path), "scale": 2.0}, TransformContext((17, 32, 64)))
    assert isinstance(U, GenBeTransform) and U.scale == 2.0
    with pytest.raises(ConfigError, match="fitted for states"):
        build_transform({"type": "genbe", "file": str(path)}, TransformContext((17, 16, 32)))
    with pytest.raises(DataError, match="learn-b genbe"):
        build_transform({"type": "genbe", "file": str(tmp_path / "missing.pt")}, TransformContext((17, 32, 64)))


# ------------------------------------------------------------------------------------------ NMC samples
class _DampedModel:
    """``M(x) = 0.9 x`` with 6-hour steps (hand-computable forecasts)."""

    dt = 6.0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return 0.9 * x

    def forecast(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x * 0.9**n


class _ListSource:
    def __init__(self, times: np.ndarray, states: torch.Tensor):
        self.times, self._states = times, states

    def states(self, times: np.ndarray) -> torch.Tensor:
        return self._states[np.searchsorted(self.times, times)]


def test_nmc_forecast_and_lagged_differences() -> None:
    start, end = np.datetime64("2000-01-01T00", "h"), np.datetime64("2000-01-05T00", "h")
    times = np.arange(start, end, np.timedelta64(6, "h")).astype("datetime64[ns]")
    states = torch.randn(times.size, 2, 4, 8)
    src = _ListSource(times, states)
    valid = times[8:11]
    d = forecast_differences(_DampedModel(), src, valid, 48.0, 24.0, batch_size=2, progress=False)
    expected = 0.9**8 * states[0:3] - 0.9**4 * states[4:7]
    assert torch.allclose(d, expected, atol=1e-6)
    lagged = lagged_differences(src, valid, 24.0, progress=False)
    assert torch.allclose(lagged, states[8:11] - states[4:7])


# ------------------------------------------------------------------------------------------ CLI
def write_random_store(path: Path, grid: Grid, seed: int = 0) -> None:
    """A WB2-layout store of :data:`LAYOUT` with smooth random fields: 6-hourly ``train`` (3 days)
    and hourly ``eval`` (the next 6 h)."""
    import pandas as pd
    import xarray as xr

    from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES

    train = pd.date_range("2000-01-01T00", "2000-01-03T18", freq="6h")
    hourly = pd.date_range("2000-01-04T00", "2000-01-04T06", freq="1h")
    times = np.concatenate([train.values, hourly.values]).astype("datetime64[ns]")
    x = synthetic_samples(grid, times.size, seed).numpy()
    x += np.array([280.0, 1e5, *[5e4] * 3, *[1e-3] * 3, *[0.0] * 6, *[250.0] * 3], dtype=np.float32)[None, :, None, None]
    data = {}
    for short in LAYOUT.surface:
        data[SURFACE_VARIABLES[short].wb2_name] = (("time", "latitude", "longitude"), x[:, LAYOUT.index(short)])
    for short in LAYOUT.upper_air:
        data[UPPER_AIR_VARIABLES[short].wb2_name] = (("time", "level", "latitude", "longitude"), x[:, LAYOUT.variable_slice(short)])
    spans = {
        "train": {"start": "2000-01-01T00:00", "end": "2000-01-03T18:00", "interval_hours": 6},
        "eval": {"start": "2000-01-04T00:00", "end": "2000-01-04T06:00", "interval_hours": 1},
    }
    ds = xr.Dataset(
        data,
        coords={"time": times, "level": np.array(LAYOUT.levels), "latitude": grid.lat, "longitude": grid.lon},
        attrs={"aivarda_grid": json.dumps(grid.to_dict()), "aivarda_spans": json.dumps(spans)},
    )
    ds.to_zarr(path, mode="w", consolidated=False, zarr_format=3)


def test_learn_b_cli_and_3dvar_with_genbe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aivarda.assimilate import AnalyseConfig, run_single_analysis
    from aivarda.cli import main
    from aivarda.config import load_config
    from aivarda.learning.nmc import NmcSamples

    store = tmp_path / "store.zarr"
    write_random_store(store, Grid.gaussian(16, 32))
    cfg = {
        "name": "test",
        "data": {"source": "zarr", "path": str(store), "variables": list(LAYOUT.names)},
        "nmc": {"kind": "lagged_truth", "lag": "24h", "span": "train"},
        "genbe": {"control_grid": {"kind": "gaussian", "nlat": 16, "nlon": 32}},
    }
    config = tmp_path / "learn.yaml"
    config.write_text(yaml.safe_dump(cfg))
    samples = tmp_path / "nmc.pt"
    assert main(["learn-b", "nmc", str(config), "--out", str(samples), "--quiet"]) == 0
    s = NmcSamples.load(samples)
    assert len(s) == 8 and s.kind == "lagged_truth" and tuple(s.samples.shape) == (8, 17, 16, 32)
    # never overwrite silently
    assert main(["learn-b", "nmc", str(config), "--out", str(samples), "--quiet"]) == 2
    assert "exists" in capsys.readouterr().err
    out = tmp_path / "genbe.pt"
    assert main(["learn-b", "genbe", str(config), "--samples", str(samples), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_samples"] == 8 and [r["variable"] for r in report["variables"]][:2] == ["psi", "chi"]
    assert main(["learn-b", "genbe", str(config), "--samples", str(samples), "--out", str(out)]) == 2

    # forecast NMC samples through the model loader: a persistence model (identity network, no
    # residual, identity statistics) gives x(t − 48 h) − x(t − 24 h)
    from aivarda.data.sources import Wb2ZarrSource

    cfg["nmc"] = {
        "kind": "forecast",
        "span": "train",
        "model": {"module": "torch.nn:Identity", "dt": "6h", "layout": LAYOUT.to_dict(), "residual": False},
    }
    (tmp_path / "fc.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["learn-b", "nmc", str(tmp_path / "fc.yaml"), "--out", str(tmp_path / "fc.pt"), "--quiet"]) == 0
    fc = NmcSamples.load(tmp_path / "fc.pt")
    src = Wb2ZarrSource(store, layout=LAYOUT)
    hours = lambda h: np.timedelta64(h, "h")  # noqa: E731
    expected = src.states(fc.valid_times - hours(48)) - src.states(fc.valid_times - hours(24))
    assert len(fc) == 4 and fc.kind == "forecast" and torch.allclose(fc.samples, expected)

    analyse = {
        "name": "a",
        "data": cfg["data"],
        "span": "eval",
        "background": {"lag": "24h"},
        "observations": {"mode": "random", "fraction": 0.1, "withhold": 0.0},
        "assimilation": {"method": "3dvar", "background_error": {"type": "genbe", "file": str(out)},
                         "outer_loops": 2, "inner_iterations": 10},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(analyse))
    m = run_single_analysis(load_config(tmp_path / "a.yaml", AnalyseConfig), progress=False).metrics
    assert m["background_error"] == "genbe"
    assert m["normalised_wrmse"]["analysis"] < m["normalised_wrmse"]["background"]
    assert m["minimizer"]["J_final"] < m["minimizer"]["J_initial"]


def test_samples_and_statistics_record_the_truth_span_they_read(tmp_path: Path) -> None:
    import shutil

    from aivarda.artefacts import trained_on_of_genbe
    from aivarda.background.genbe.config import LearnBConfig
    from aivarda.config import validate
    from aivarda.data.fingerprint import store_identity
    from aivarda.learning.learn_b import fit_from_config, make_samples
    from aivarda.learning.nmc import NmcSamples
    from aivarda.provenance import TimeSpan

    store = tmp_path / "store.zarr"
    write_random_store(store, Grid.gaussian(8, 16))
    cfg = validate(LearnBConfig, {
        "name": "t",
        "data": {"source": "zarr", "path": str(store), "variables": list(LAYOUT.names)},
        "nmc": {"kind": "lagged_truth", "lag": "24h", "span": "train"},
    }, "cfg")
    samples = make_samples(cfg, progress=False)
    samples.save(tmp_path / "nmc.pt")
    fit_from_config(cfg, samples).save(tmp_path / "genbe.pt")
    # valid times: the train span's 6-hourly times with a state 24 h earlier, 2000-01-02T00 … 01-03T18
    truth = TimeSpan(np.datetime64("2000-01-01T00"), np.datetime64("2000-01-03T18"), "train")
    (nmc,) = trained_on_of_genbe(tmp_path / "nmc.pt")
    (genbe,) = trained_on_of_genbe(tmp_path / "genbe.pt")
    assert nmc.spans == genbe.spans == (truth,)
    assert genbe.what == "genbe.pt (GEN_BE statistics)" and genbe.verb == "fitted on"
    assert genbe.fingerprint == store_identity(store).fingerprint
    # samples written before records existed: the whole span they came from, reached back by the lag
    old = NmcSamples.load(tmp_path / "nmc.pt")
    old.metadata.pop("trained_on")
    old.save(tmp_path / "old.pt")
    (derived,) = trained_on_of_genbe(tmp_path / "old.pt")
    assert derived.spans == (TimeSpan(np.datetime64("1999-12-31T00"), np.datetime64("2000-01-03T18"), "train"),)
    assert "derived" in derived.note
    # ... and statistics fitted from such samples have unknown provenance once that store is gone
    stats = torch.load(tmp_path / "genbe.pt", weights_only=True)
    stats["metadata"]["trained_on"] = []
    stats["metadata"]["samples"].pop("trained_on")
    torch.save(stats, tmp_path / "old_genbe.pt")
    assert trained_on_of_genbe(tmp_path / "old_genbe.pt")[0].spans == derived.spans
    shutil.rmtree(store)
    (unknown,) = trained_on_of_genbe(tmp_path / "old_genbe.pt")
    assert not unknown.known and "not available" in unknown.note
