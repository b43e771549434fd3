"""The spectral linear inverse model (linear prior of forecast models): it recovers a known
rotation-equivariant linear dynamics, is differentiable, bounded, and round-trips through checkpoints."""

from __future__ import annotations

import pytest
import torch

from aivarda.errors import DataError
from aivarda.grid import Grid
from aivarda.models.linear_prior import LinearPriorConfig, SpectralLIM, fit_linear_prior

GRID = Grid.gaussian(16, 32)
C = 3

pytestmark = pytest.mark.usefixtures("one_thread")


def band_limited(n: int, lmax: int, seed: int) -> torch.Tensor:
    """Random fields ``[n, C, H, W]`` with degrees ``< lmax`` only (plus a zonal-mean offset per channel)."""
    import torch_harmonics as th

    g = torch.Generator().manual_seed(seed)
    spec = torch.randn(n, C, lmax, lmax, 2, generator=g, dtype=torch.float64)
    spec = torch.view_as_complex(spec).tril()  # m ≤ l
    spec[..., 0] = spec[..., 0].real
    isht = th.InverseRealSHT(*GRID.shape, lmax=lmax, mmax=lmax, grid=GRID.sht_grid).double()
    offset = torch.arange(C, dtype=torch.float64)[:, None, None]
    return isht(spec) + offset


def rotate(x: torch.Tensor, cells: int = 1) -> torch.Tensor:
    """Solid-body rotation eastward by ``cells`` grid columns: a linear, rotation-equivariant map."""
    return torch.roll(x, shifts=cells, dims=-1)


def fitted(lmax: int = 6, modes: int | None = None, n: int = 80, **cfg) -> SpectralLIM:
    modes = modes if modes is not None else C * lmax
    prior = SpectralLIM(LinearPriorConfig(lmax=lmax, modes=modes, ridge=1e-9, **cfg), GRID, C)
    x = band_limited(n, lmax, seed=0)
    pairs = [(x[i : i + 20], rotate(x[i : i + 20])) for i in range(0, n, 20)]
    fit_linear_prior(prior, pairs, torch.as_tensor(GRID.weights, dtype=torch.float32), progress=False)
    return prior


def test_recovers_solid_body_rotation_on_unseen_fields():
    prior = fitted()
    x = band_limited(5, 6, seed=1).float()
    err = (prior(x) - rotate(x)).abs().max()
    persistence = (x - rotate(x)).abs().max()
    assert err < 1e-3 * persistence
    # ten steps stay exact (eigenvalues on the unit circle, nothing shrunk)
    y = x
    for _ in range(10):
        y = prior(y)
    assert (y - rotate(x, 10)).abs().max() < 1e-2 * persistence


def test_one_mode_per_wavenumber_suffices_for_a_rotating_pattern():
    """Rotated copies of one pattern are rank 1 per order m: a single complex EOF holds them."""
    pattern = band_limited(1, 6, seed=6)
    x = torch.cat([rotate(pattern, k) for k in range(0, 32, 1)])
    prior = SpectralLIM(LinearPriorConfig(lmax=6, modes=1, ridge=1e-9), GRID, C)
    fit_linear_prior(prior, [(x, rotate(x))], torch.as_tensor(GRID.weights, dtype=torch.float32), progress=False)
    y = rotate(pattern, 5).float()
    assert (prior(y) - rotate(y)).abs().max() < 1e-3 * (y - rotate(y)).abs().max()


def test_truncated_modes_and_unresolved_part_are_damped_not_amplified():
    prior = fitted(lmax=6, modes=4)  # the EOF subspace misses most of the variance
    assert bool(((prior.rho >= 0) & (prior.rho <= 1)).all())
    x = band_limited(5, 6, seed=2).float()
    a = x - prior.zonal_mean
    y = x
    for _ in range(50):
        y = prior(y)
    assert (y - prior.zonal_mean).square().mean() <= 1.01 * a.square().mean()


def test_eigenvalues_are_shrunk_to_max_growth():
    prior = fitted(max_growth=0.8)
    for m in range(prior.L):
        assert float(torch.linalg.eigvals(prior.operator(m).to(torch.complex128)).abs().max()) <= 0.8 + 1e-4


def test_gradient_matches_finite_differences_and_is_linear():
    prior = fitted()
    x = band_limited(1, 6, seed=3)  # float64 path
    dx = band_limited(1, 6, seed=4) - torch.arange(C, dtype=torch.float64)[:, None, None]
    w = torch.randn_like(x)
    x.requires_grad_(True)
    (prior(x) * w).sum().backward()
    eps = 1e-4
    fd = ((prior(x.detach() + eps * dx) - prior(x.detach() - eps * dx)) * w).sum() / (2 * eps)
    assert float((x.grad * dx).sum()) == pytest.approx(float(fd), rel=1e-6)
    # affine: P(x + dx) − P(x) = P(x0 + dx) − P(x0)
    x0 = torch.zeros_like(x)
    assert torch.allclose(prior(x.detach() + dx) - prior(x.detach()), prior(x0 + dx) - prior(x0), atol=1e-9)


def test_unfitted_prior_and_too_few_pairs_are_clear_errors():
    prior = SpectralLIM(LinearPriorConfig(lmax=4, modes=8), GRID, C)
    with pytest.raises(DataError, match="not fitted"):
        prior(torch.zeros(1, C, *GRID.shape))
    x = band_limited(4, 4, seed=0).float()
    with pytest.raises(DataError, match="fewer than modes"):
        fit_linear_prior(prior, [(x, rotate(x))], torch.ones(GRID.nlat), progress=False)


def test_state_dict_round_trip():
    prior = fitted()
    again = SpectralLIM(prior.cfg, GRID, C)
    again.load_state_dict(prior.state_dict())
    x = band_limited(2, 6, seed=5).float()
    assert torch.equal(again(x), prior(x))
