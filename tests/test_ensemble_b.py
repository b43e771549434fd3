"""Ensemble and hybrid background-error covariances: localisation, U_e, hybrid U, refits, YAML,
and the Kalman analysis of EnVar without localisation (3D and 4D)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.special import ive

from aivarda.assimilation.cost import VariationalCost
from aivarda.assimilation.minimizer import Minimizer
from aivarda.background.ensemble import (
    EnsembleTransform,
    HybridTransform,
    channel_variance,
)
from aivarda.background.genbe import FitSettings, GenBeTransform, SphereOps, fit_genbe
from aivarda.background.localisation import (
    SHAPES,
    CircleLocalisation,
    SphereLocalisation,
    channel_groups,
    correlation,
    correlation_at_length,
    legendre_coefficients,
    realised_length_scale,
)
from aivarda.background.registry import TransformContext, build_transform, parse_transform_config
from aivarda.background.transforms import DenseSqrtTransform, DiagonalTransform, LinearControlTransform
from aivarda.channels import ChannelLayout
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid

F64 = torch.float64
LAYOUT = ChannelLayout(("t2m",), ("z", "t"), (500, 850))  # 5 channels: t2m, z500, z850, t500, t850
RADIUS = 6.371e6


def smooth_members(grid: Grid, K: int, C: int, seed: int, scale: float = 1.5e6) -> torch.Tensor:
    """``[K, C, H, W]`` isotropic random fields (length ~``scale``) plus a channel-dependent mean."""
    ops = SphereOps(grid)
    gen = torch.Generator().manual_seed(seed)
    amp = ops.gaussian_amplitudes(torch.tensor(scale))
    z = torch.randn(K, C, ops.n_dofs, dtype=F64, generator=gen)
    return ops.dofs_to_field(z * amp) * (1 + torch.arange(C, dtype=F64))[:, None, None] + 3.0


def dense(U, batch: int | None = None) -> torch.Tensor:
    """The matrix of a linear transform ``[n_state, n_latent]`` (decode of every unit vector)."""
    n = math.prod(U.latent_shape)
    eye = torch.eye(n, dtype=F64).reshape(n, *U.latent_shape)
    return U.decode(eye).reshape(n, -1).T


def dot_product(U, batch: tuple[int, ...] = (2,), seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(*batch, *U.latent_shape, dtype=F64, generator=gen)
    dx = torch.randn(*batch, *U.state_shape, dtype=F64, generator=gen)
    lhs, rhs = (U.decode(z) * dx).sum(), (z * U.adjoint(dx)).sum()
    assert abs(float(lhs - rhs)) <= 1e-11 * float(lhs.abs() + rhs.abs()), (float(lhs), float(rhs))
    assert U.adjoint(dx).shape == z.shape and U.decode(z).shape == dx.shape


# ------------------------------------------------------------------------------ correlation functions
@pytest.mark.parametrize("shape", SHAPES)
def test_length_scale_is_daleys(shape: str) -> None:
    """``c(r) = 1 − r²/(2ℓ²) + o(r²)``, ``c(ℓ)`` as documented, Gaspari–Cohn continuous with compact support."""
    ell, h = 3.0, 1e-3
    c = correlation(torch.tensor([0.0, h, ell]), ell, shape)  # type: ignore[arg-type]
    assert float(c[0]) == 1.0
    assert abs((1 - float(c[1])) * 2 / h**2 * ell**2 - 1) < 1e-3
    assert float(c[2]) == pytest.approx(correlation_at_length(shape))  # type: ignore[arg-type]
    if shape == "gaspari_cohn":
        half = ell * math.sqrt(10 / 3)
        edge = correlation(torch.tensor([half - 1e-9, half + 1e-9, 2 * half - 1e-6, 2 * half + 1e-6]), ell, shape)
        assert abs(float(edge[0] - edge[1])) < 1e-7 and abs(float(edge[2])) < 1e-9 and float(edge[3]) == 0.0


def test_legendre_coefficients_of_the_gaussian_match_the_bessel_series() -> None:
    """For ``exp(−d²/(2ℓ²))`` in chordal distance, ``c_l = 4π e^{−κ} i_l(κ)``, ``κ = a²/ℓ²`` (untruncated,
    already of unit variance)."""
    ell, lmax = 1.5e6, 96
    kappa = (RADIUS / ell) ** 2
    degrees = np.arange(lmax)
    exact = 4 * math.pi * np.sqrt(np.pi / (2 * kappa)) * ive(degrees + 0.5, kappa)
    got = legendre_coefficients(ell, "gaussian", lmax, RADIUS).numpy()
    np.testing.assert_allclose(got, exact, rtol=1e-8, atol=1e-12 * exact.max())


# ------------------------------------------------------------------------------ localisation
@pytest.mark.parametrize(
    ("grid", "length_km"),
    [(Grid.gaussian(32, 64), 1500.0), (Grid.gaussian(64, 128), 800.0), (Grid.equiangular(73, 144), 1200.0)],
    ids=["gaussian32x64", "gaussian64x128", "equiangular73x144"],
)
@pytest.mark.parametrize("shape", SHAPES)
def test_realised_horizontal_length_matches_the_target(grid: Grid, length_km: float, shape: str) -> None:
    loc = SphereLocalisation(grid, 1, length_km, shape)  # type: ignore[arg-type]
    # unit diagonal: var(L_h^½ z) = 1 at every point
    ones = loc.horizontal_sqrt(loc.horizontal_sqrt_adjoint(torch.zeros(grid.shape, dtype=F64)))
    assert float(ones.abs().max()) == 0.0
    e = torch.zeros(grid.shape, dtype=F64)
    e[3, 5] = 1.0
    assert float(loc.horizontal_sqrt(loc.horizontal_sqrt_adjoint(e))[3, 5]) == pytest.approx(1.0, abs=1e-9)
    realised = realised_length_scale(loc)
    assert abs(realised / length_km - 1) < 0.10, realised


def test_realised_length_on_the_periodic_line_and_without_localisation() -> None:
    for shape in SHAPES:
        loc = CircleLocalisation(40, 4.0, shape)  # type: ignore[arg-type]
        assert torch.allclose(loc.matrix.diagonal(), torch.ones(40, dtype=F64))
        assert abs(realised_length_scale(loc) / 4.0 - 1) < 0.10
    assert realised_length_scale(CircleLocalisation(40, None)) == math.inf
    assert realised_length_scale(SphereLocalisation(Grid.gaussian(8, 16), 1, float("inf"))) == math.inf


def test_vertical_groups_and_surface_choices() -> None:
    group, R = channel_groups(LAYOUT, 0.5, "lowest")  # groups: 500, 850 hPa; t2m at 850
    assert group.tolist() == [1, 0, 1, 0, 1]
    expected = math.exp(-0.5 * (math.log(850 / 500) / 0.5) ** 2)
    assert torch.allclose(R, torch.tensor([[1, expected], [expected, 1]], dtype=F64))
    group, R = channel_groups(LAYOUT, 0.5, "independent")
    assert group.tolist() == [2, 0, 1, 0, 1] and float(R[2, :2].abs().sum()) == 0.0 and float(R[2, 2]) == 1.0
    group, R = channel_groups(LAYOUT, 0.5, 1000.0)
    assert group.tolist() == [2, 0, 1, 0, 1]
    assert float(R[1, 2]) == pytest.approx(math.exp(-0.5 * (math.log(1000 / 850) / 0.5) ** 2))
    group, R = channel_groups(LAYOUT, None, "lowest")
    assert group.tolist() == [0] * 5 and R.shape == (1, 1)
    with pytest.raises(ValueError, match="layout"):
        channel_groups(5, 0.5)


# ------------------------------------------------------------------------------ adjoints
GRID = Grid.gaussian(8, 16)


@pytest.mark.parametrize(
    "loc",
    [
        SphereLocalisation(GRID, LAYOUT, 2500.0, "gaussian", 0.5, "lowest"),
        SphereLocalisation(GRID, LAYOUT, 2500.0, "soar", 0.5, "independent"),
        SphereLocalisation(Grid.equiangular(9, 16), LAYOUT, 3000.0, "gaspari_cohn", None, "lowest"),
        SphereLocalisation(GRID, 5, None),
        SphereLocalisation(Grid.gaussian(8, 14), 5, 2500.0),  # truncation at the Nyquist order: reverse mode
        CircleLocalisation(40, 4.0, "gaspari_cohn"),
        CircleLocalisation(40, None),
    ],
    ids=["sphere-gauss", "sphere-soar-indep", "equiangular-gc", "sphere-none", "sphere-nyquist", "line-gc", "line-none"],
)
def test_dot_products_of_localisation_and_ensemble_3d_and_4d(loc) -> None:
    class _L:  # L^½ alone as a transform
        latent_shape, state_shape = loc.latent_shape, loc.state_shape
        decode, adjoint = loc.apply_sqrt, loc.apply_sqrt_adjoint

    dot_product(_L())
    S = loc.state_shape
    gen = torch.Generator().manual_seed(1)
    U = EnsembleTransform(loc, torch.randn(4, *S, dtype=F64, generator=gen))
    dot_product(U)
    dot_product(U, batch=())
    U.update(torch.randn(5, 3, *S, dtype=F64, generator=gen))  # trajectories: 4DEnVar
    assert U.state_shape == (3, *S) and U.latent_shape == (5, *loc.latent_shape)
    dot_product(U)


@pytest.mark.parametrize("grid", [GRID, Grid.equiangular(73, 144), Grid.gaussian(64, 128)], ids=str)
def test_explicit_synthesis_adjoint_equals_reverse_mode(grid: Grid) -> None:
    """The explicit ``(L_h^½)ᵀ`` (analysis with inverse quadrature weights) is used on these grids and
    equals reverse-mode differentiation of torch-harmonics' synthesis; so is the gradient of decode."""
    loc = SphereLocalisation(grid, 1, 2000.0)
    assert loc._adjoint is not None
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(2, *grid.shape, dtype=F64, generator=gen)
    z = torch.zeros(2, loc.ops.n_dofs, dtype=F64, requires_grad=True)
    (reverse,) = torch.autograd.grad(loc.ops.dofs_to_field(z * loc.amplitudes), z, f)
    assert torch.allclose(loc.horizontal_sqrt_adjoint(f), reverse, rtol=1e-10, atol=1e-12 * float(reverse.abs().max()))
    z = torch.randn(2, loc.ops.n_dofs, dtype=F64, generator=gen, requires_grad=True)
    (loc.horizontal_sqrt(z) * f).sum().backward()
    assert torch.allclose(z.grad, reverse, rtol=1e-10, atol=1e-12 * float(reverse.abs().max()))


def test_dot_products_of_hybrid_3d_and_4d() -> None:
    loc = SphereLocalisation(GRID, LAYOUT, 2500.0, "gaussian", 0.5)
    gen = torch.Generator().manual_seed(2)
    static = DiagonalTransform(torch.rand(5, dtype=F64, generator=gen) + 0.5, (5, *GRID.shape))
    H = HybridTransform(static, EnsembleTransform(loc, torch.randn(4, 5, *GRID.shape, dtype=F64, generator=gen)))
    dot_product(H)
    H.update(torch.randn(4, 3, 5, *GRID.shape, dtype=F64, generator=gen))
    dot_product(H)
    # 4D: the static increment is the same at every window time
    z = torch.zeros(H.latent_shape, dtype=F64)
    z[: math.prod(static.latent_shape)] = torch.randn(math.prod(static.latent_shape), dtype=F64, generator=gen)
    dx = H.decode(z)
    assert torch.allclose(dx[0], dx[2]) and torch.allclose(dx[0], math.sqrt(0.4) * static.decode(z[: dx[0].numel()].reshape(dx[0].shape)))


# ------------------------------------------------------------------------------ covariances
def localised_covariance(members: torch.Tensor, loc: SphereLocalisation) -> torch.Tensor:
    """``B = P_e ∘ (L_v ⊗ L_h)`` built independently of the transform: ``P_e`` from the members
    (``torch.cov``, normalised by ``K − 1``),
    ``L_h`` from the Legendre series ``Σ_l (2l+1)/(4π) c_l P_l(cos θ)`` between grid points,
    ``L_v`` from the group correlation."""
    grid = loc.grid
    lat, lon = np.meshgrid(np.deg2rad(grid.lat), np.deg2rad(grid.lon), indexing="ij")
    xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1).reshape(-1, 3)
    cos_theta = np.clip(xyz @ xyz.T, -1, 1)
    c = loc.coefficients.numpy()
    series = (2 * np.arange(c.size) + 1) / (4 * np.pi) * c
    L_h = torch.as_tensor(np.polynomial.legendre.legval(cos_theta, series))
    L_v = loc.vertical_correlation[loc.group][:, loc.group]
    return torch.cov(members.reshape(members.shape[0], -1).T) * torch.kron(L_v, L_h)


def consistent(S: torch.Tensor, B: torch.Tensor, n: int) -> bool:
    """Is ``S`` (sample covariance of ``n`` draws) consistent with ``B``? ``‖S − B‖_F`` within 1.3×
    its expected value ``√((‖B‖²_F + tr(B)²)/n)`` and every variance within 5 standard errors
    (``|S_ii/B_ii − 1| < 5 √(2/n)``)."""
    frobenius = math.sqrt((float((B**2).sum()) + float(B.trace()) ** 2) / n)
    variances = float((S.diagonal() / B.diagonal() - 1).abs().max())
    return float((S - B).norm()) < 1.3 * frobenius and variances < 5 * math.sqrt(2 / n)


def sampling_check(U, B: torch.Tensor, wrong: torch.Tensor, n: int, seed: int) -> None:
    """Draws ``U z``, ``z ~ N(0, I)``: their sample covariance is consistent with ``B`` and not with
    ``wrong`` (the check can fail)."""
    gen = torch.Generator().manual_seed(seed)
    x = U.decode(torch.randn(n, *U.latent_shape, dtype=F64, generator=gen)).reshape(n, -1)
    S = x.T @ x / n
    assert consistent(S, B, n)
    assert not consistent(S, wrong, n)


def test_ensemble_b_is_the_localised_ensemble_covariance() -> None:
    loc = SphereLocalisation(GRID, LAYOUT, 3000.0, "gaussian", 0.5)
    members = smooth_members(GRID, 6, 5, seed=3)
    U = EnsembleTransform(loc, members)
    B = localised_covariance(members, loc)
    UUt = dense(U) @ dense(U).T
    assert torch.allclose(UUt, B, atol=1e-10 * float(B.abs().max()))
    sampling_check(U, B, U.covariance(), n=4000, seed=4)


def test_hybrid_b_is_the_weighted_sum() -> None:
    loc = SphereLocalisation(GRID, LAYOUT, 3000.0, "soar", 0.5, "independent")
    members = smooth_members(GRID, 6, 5, seed=5)
    E = EnsembleTransform(loc, members)
    std = torch.linspace(0.5, 2.0, 5, dtype=F64)
    static = DiagonalTransform(std, (5, *GRID.shape))
    H = HybridTransform(static, E, static_weight=0.3, ensemble_weight=0.7)
    B_s = torch.diag((std[:, None] ** 2).expand(5, GRID.nlat * GRID.nlon).reshape(-1))
    B_e = localised_covariance(members, loc)
    B = 0.3 * B_s + 0.7 * B_e
    assert torch.allclose(dense(H) @ dense(H).T, B, atol=1e-10 * float(B.abs().max()))
    sampling_check(H, B, 0.7 * B_s + 0.3 * B_e, n=2500, seed=6)


def test_infinite_length_gives_exactly_the_raw_ensemble_covariance() -> None:
    members = smooth_members(GRID, 5, 5, seed=7)
    P_e = torch.cov(members.reshape(5, -1).T)  # (1/(K−1)) Σ (x_k − x̄)(x_k − x̄)ᵀ
    U = EnsembleTransform(SphereLocalisation(GRID, LAYOUT, float("inf"), vertical_length_lnp=None), members)
    assert torch.allclose(dense(U) @ dense(U).T, P_e, rtol=0, atol=1e-12 * float(P_e.abs().max()))
    static = DiagonalTransform(torch.ones(5, dtype=F64), (5, *GRID.shape))
    H = HybridTransform(static, U, static_weight=0.0, ensemble_weight=1.0)
    assert torch.allclose(dense(H) @ dense(H).T, P_e, rtol=0, atol=1e-12 * float(P_e.abs().max()))
    # the spectral path tends to the same covariance as ℓ → ∞
    V = EnsembleTransform(SphereLocalisation(GRID, LAYOUT, 1e7, vertical_length_lnp=None), members)
    assert torch.allclose(dense(V) @ dense(V).T, P_e, rtol=0, atol=1e-4 * float(P_e.abs().max()))
    line = torch.randn(5, 40, dtype=F64)
    W = EnsembleTransform(CircleLocalisation(40, None), line)
    assert torch.allclose(dense(W) @ dense(W).T, torch.cov(line.T), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ Kalman analysis
@dataclass
class _Obs:
    value: torch.Tensor
    error_std: torch.Tensor
    time_index: torch.Tensor


def kalman(x_b: torch.Tensor, P: torch.Tensor, H: torch.Tensor, R: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x_b + P @ H.T @ torch.linalg.solve(H @ P @ H.T + R, y - H @ x_b)


def direct_minimiser(U, background: torch.Tensor, H: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The exact minimiser of ``½‖z‖² + ½‖H(x_b + Uz) − y‖²_{R⁻¹}`` (``H`` a matrix on the flattened
    state): ``x_b + U (I + (HU)ᵀR⁻¹HU)⁻¹ (HU)ᵀR⁻¹ (y − H x_b)``, flattened."""
    HU = H @ dense(U)
    rinv = 1 / sigma**2
    z = torch.linalg.solve(torch.eye(HU.shape[1], dtype=F64) + HU.T @ (rinv[:, None] * HU),
                           HU.T @ (rinv * (y - H @ background.reshape(-1))))
    return background.reshape(-1) + dense(U) @ z


def minimise(U, background: torch.Tensor, operator, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_a`` from :class:`VariationalCost` + :class:`Minimizer` (L-BFGS, float64)."""
    obs = _Obs(y, sigma, torch.zeros(y.numel(), dtype=torch.long))
    cost = VariationalCost(background, U, operator, obs)
    return Minimizer(outer_loops=3, inner_iterations=50, tolerance=1e-13, j_tolerance=0.0).minimize(cost).x_a


def test_3denvar_without_localisation_is_the_kalman_analysis() -> None:
    """To rounding with the exact minimiser of the cost; to the minimiser's precision with L-BFGS."""
    N, K = 40, 10
    gen = torch.Generator().manual_seed(8)
    x_b = torch.randn(N, dtype=F64, generator=gen)
    members = x_b + torch.randn(K, N, dtype=F64, generator=gen) @ torch.randn(N, N, dtype=F64, generator=gen) * 0.3
    idx = torch.arange(0, N, 2)
    y = x_b[idx] + torch.randn(idx.numel(), dtype=F64, generator=gen)
    sigma = torch.full((idx.numel(),), 0.7, dtype=F64)
    H = torch.eye(N, dtype=F64)[idx]
    expected = kalman(x_b, torch.cov(members.T), H, torch.diag(sigma**2), y)
    scale = float((expected - x_b).abs().max())
    hybrid = build_transform(
        {"type": "hybrid", "static": {"type": "diagonal", "std": 1.0}, "static_weight": 0.0, "ensemble_weight": 1.0,
         "ensemble": {"localisation": {"length_scale": None}}},
        TransformContext((N,), F64, ensemble=members),
    )
    for U in (EnsembleTransform(CircleLocalisation(N, None), members), hybrid):
        assert float((direct_minimiser(U, x_b, H, sigma, y) - expected).abs().max()) < 1e-12 * scale
        assert float((minimise(U, x_b, lambda xw: xw[0, idx], y, sigma) - expected).abs().max()) < 1e-6 * scale
    # with localisation the analysis differs (the test can tell)
    U = EnsembleTransform(CircleLocalisation(N, 4.0), members)
    assert float((direct_minimiser(U, x_b, H, sigma, y) - expected).abs().max()) > 1e-2 * scale


def test_4denvar_with_a_linear_model_is_the_kalman_analysis() -> None:
    """Members and background run forward by a linear model ``M``; 4DEnVar (same α at every time,
    the members' own trajectories) equals the Kalman analysis with the ensemble covariance and the
    4D observation operator ``[H_t M^t]_t``. The cost sees the window trajectory ``[T, N]`` as its
    state (no model in the minimisation)."""
    N, K, T = 40, 8, 4
    gen = torch.Generator().manual_seed(9)
    M = torch.eye(N, dtype=F64) + 0.1 * torch.randn(N, N, dtype=F64, generator=gen) / math.sqrt(N)
    powers = torch.stack([torch.linalg.matrix_power(M, t) for t in range(T)])  # [T, N, N]
    x_b = torch.randn(N, dtype=F64, generator=gen)
    members0 = x_b + torch.randn(K, N, dtype=F64, generator=gen)
    trajectories = torch.einsum("tij,kj->kti", powers, members0)  # [K, T, N]
    background = powers @ x_b  # [T, N]
    times = torch.tensor([1, 2, 3]).repeat_interleave(10)
    points = torch.arange(0, N, 4).repeat(3)
    H4 = torch.stack([powers[t][p] for t, p in zip(times.tolist(), points.tolist(), strict=True)])  # [n_obs, N]
    y = H4 @ x_b + torch.randn(times.numel(), dtype=F64, generator=gen)
    sigma = torch.full((times.numel(),), 0.5, dtype=F64)
    expected = kalman(x_b, torch.cov(members0.T), H4, torch.diag(sigma**2), y)
    expected_window = powers @ expected  # [T, N]
    scale = float((expected - x_b).abs().max())
    U = EnsembleTransform(CircleLocalisation(N, None), trajectories)
    assert U.state_shape == (T, N)
    H_window = torch.zeros(times.numel(), T * N, dtype=F64)  # picks x_t[p] from the flattened [T, N]
    H_window[torch.arange(times.numel()), times * N + points] = 1.0
    direct = direct_minimiser(U, background, H_window, sigma, y).reshape(T, N)
    assert float((direct - expected_window).abs().max()) < 1e-12 * scale
    x_a = minimise(U, background, lambda xw: xw[0, times, points], y, sigma)
    assert float((x_a - expected_window).abs().max()) < 1e-6 * scale


# ------------------------------------------------------------------------------ refits
def test_refit_diagonal_and_rescaled_static_from_the_ensemble() -> None:
    gen = torch.Generator().manual_seed(10)
    members = 2.0 * torch.randn(8, 40, dtype=F64, generator=gen)
    pooled = float(torch.var(members, dim=0).mean())  # unbiased (K − 1) per point, pooled over the line
    E = EnsembleTransform(CircleLocalisation(40, 4.0), members)
    H = HybridTransform(DiagonalTransform(torch.ones(40, dtype=F64), (40,)), E, refit_static=True)
    assert isinstance(H.static, DiagonalTransform)
    assert torch.allclose(H.static.std**2, torch.full((40,), pooled, dtype=F64))
    cov = torch.cov(torch.randn(200, 40, dtype=F64, generator=gen).T)
    H = HybridTransform(DenseSqrtTransform(cov), EnsembleTransform(CircleLocalisation(40, 4.0)), refit_static=True)
    H.update(members)
    x = H.static.decode(torch.randn(4000, 40, dtype=F64, generator=gen))
    assert abs(float(x.var(0).mean()) / pooled - 1) < 0.10


def test_refit_genbe_on_the_ensemble(tmp_path) -> None:
    grid = Grid.gaussian(16, 32)
    samples = smooth_members(grid, 12, 5, seed=11, scale=2e6)
    settings = FitSettings(balance=False)
    static = GenBeTransform(fit_genbe(samples.float(), LAYOUT, grid, settings=settings), dtype=F64)
    members = 3.0 * smooth_members(grid, 8, 5, seed=12, scale=8e5)
    weights = torch.as_tensor(grid.weights, dtype=F64)
    E = EnsembleTransform(SphereLocalisation(grid, LAYOUT, 2000.0), members)
    H = HybridTransform(static, E, refit_static=True, weights=weights)
    refit = H.static
    assert isinstance(refit, GenBeTransform) and refit.stats.metadata["refit"] == "ensemble"
    ens_var = channel_variance(torch.var(members, dim=0), weights)  # per channel, K − 1 normalised
    for var in refit.stats.variables:
        got = refit.stats.variance[var["name"]].double()
        assert torch.allclose(got, ens_var[var["channels"]], rtol=1e-4), (var["name"], got, ens_var[var["channels"]])
    # draws of the refitted U_s have the ensemble's per-channel variances and length scales
    z = torch.randn(300, *refit.latent_shape, dtype=F64, generator=torch.Generator().manual_seed(13))
    x = refit.decode(z)
    assert torch.allclose(channel_variance((x**2).mean(0), weights), ens_var, rtol=0.10)
    ops = SphereOps(grid)
    assert torch.allclose(ops.length_scale(x), ops.length_scale(members - members.mean(0)), rtol=0.15)
    assert not torch.allclose(static.stats.variance["z"].double(), refit.stats.variance["z"].double(), rtol=0.5)
    # the same from YAML: grid and channel layout come from the GEN_BE file
    path = static.stats.save(tmp_path / "genbe.pt")
    H = build_transform(
        {"type": "hybrid", "static": {"type": "genbe", "file": str(path)}, "refit_static": True,
         "ensemble": {"localisation": {"length_scale_km": 2000, "vertical_length_lnp": 0.5}}},
        TransformContext((5, *grid.shape), F64, ensemble=members),
    )
    assert isinstance(H.static, GenBeTransform) and H.static.stats.metadata["refit"] == "ensemble"
    assert H.ensemble.localisation.group.tolist() == [1, 0, 1, 0, 1]
    dot_product(H)


# ------------------------------------------------------------------------------ YAML
def test_yaml_types_members_and_errors() -> None:
    S = (5, *GRID.shape)
    members = smooth_members(GRID, 4, 5, seed=14)
    section = {"type": "ensemble", "grid": {"kind": "gaussian", "nlat": 8, "nlon": 16},
               "channels": list(LAYOUT.names),
               "localisation": {"length_scale_km": 2500, "shape": "soar", "vertical_length_lnp": 0.5, "surface": "independent"}}
    U = build_transform(section, TransformContext(S, F64, ensemble=members))
    assert isinstance(U, EnsembleTransform) and U.latent_shape == (4, 3, 64)
    assert U.localisation.group.tolist() == [2, 0, 1, 0, 1]
    # without members: a clear error until update(members)
    U = build_transform({**section, "members": 4}, TransformContext(S, F64))
    assert U.latent_shape == (4, 3, 64) and isinstance(U, LinearControlTransform)  # K from the config
    assert not isinstance(build_transform(section, TransformContext(S, F64)), LinearControlTransform)  # K unknown
    with pytest.raises(DataError, match="update\\(members\\)"):
        U.decode(torch.zeros(4, 3, 64, dtype=F64))
    with pytest.raises(DataError, match="config says 4 members"):
        U.update(members[:3])
    U.update(members)
    assert U.decode(torch.zeros(4, 3, 64, dtype=F64)).shape == S
    with pytest.raises(DataError, match="expected \\[K, 5, 8, 16\\]"):
        U.update(members[:, :3])
    # hybrid with a registered static section and the default weights
    H = build_transform({"type": "hybrid", "static": {"type": "diagonal", "std": [1.0] * 5},
                         "ensemble": {k: v for k, v in section.items() if k != "type"}},
                        TransformContext(S, F64, ensemble=members))
    assert isinstance(H, HybridTransform) and (H.static_weight, H.ensemble_weight) == (0.4, 0.6)
    dot_product(H)
    # errors name the field
    with pytest.raises(ConfigError, match="background_error.grid"):
        build_transform({"type": "ensemble"}, TransformContext(S, F64))
    with pytest.raises(ConfigError, match="channels"):
        build_transform({"type": "ensemble", "grid": section["grid"], "localisation": {"vertical_length_lnp": 0.5}},
                        TransformContext(S, F64))
    with pytest.raises(ConfigError, match="length_scale \\(grid points\\)"):
        build_transform({"type": "ensemble", "localisation": {"length_scale_km": 500}}, TransformContext((40,), F64))
    with pytest.raises(ConfigError, match="static B"):
        build_transform({"type": "hybrid", "static": {"type": "ensemble"}}, TransformContext((40,), F64))
    with pytest.raises(ConfigError, match="background_error.channels: unknown channel name 'x500'"):
        build_transform({**section, "channels": ["t2m", "x500", "z850", "t500", "t850"]}, TransformContext(S, F64))
    with pytest.raises(ConfigError, match="variable-major"):
        build_transform({**section, "channels": ["t2m", "z500", "t500", "z850", "t850"]}, TransformContext(S, F64))
    dumped = parse_transform_config({"type": "hybrid", "static": {"type": "diagonal", "std": 2.0}}).model_dump()
    assert dumped["static"] == {"type": "diagonal", "std": 2.0, "scale": 1.0}
    with pytest.raises(ConfigError, match="shape"):
        build_transform({"type": "ensemble", "localisation": {"shape": "cosine"}}, TransformContext((40,), F64))
