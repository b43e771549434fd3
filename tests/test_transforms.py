"""Control transforms: dot-product (adjoint) tests, B = U Uᵀ, and the YAML registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aivarda.background import (
    ControlTransform,
    DenseSqrtTransform,
    DiagonalTransform,
    IdentityTransform,
    LinearControlTransform,
    TransformContext,
    build_transform,
    parse_transform_config,
    transform_names,
)
from aivarda.errors import ConfigError

F64 = torch.float64  # tests run in float64 (explicitly: the default dtype is left alone)


def random_spd(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=F64)
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=F64)


def matrix_of(transform: LinearControlTransform) -> torch.Tensor:
    """U as a dense [n_state, n_latent] matrix, column k = decode(e_k)."""
    n_latent = int(np.prod(transform.latent_shape))
    eye = torch.eye(n_latent, dtype=F64).reshape(n_latent, *transform.latent_shape)
    return transform.decode(eye).reshape(n_latent, -1).T


def transforms() -> list[LinearControlTransform]:
    shape = (3, 4, 5)
    n = int(np.prod(shape))
    return [
        IdentityTransform(shape),
        DiagonalTransform(torch.tensor([1.0, 2.0, 0.5], dtype=F64), shape),
        DiagonalTransform(torch.rand(shape) + 0.1, shape),
        DenseSqrtTransform(random_spd(n), shape, "symmetric"),
        DenseSqrtTransform(random_spd(n), shape, "cholesky"),
        DenseSqrtTransform(random_spd(40), None, "symmetric"),
    ]


@pytest.mark.parametrize("transform", transforms(), ids=lambda t: f"{type(t).__name__}{list(t.state_shape)}")
def test_dot_product(transform: LinearControlTransform) -> None:
    """⟨U z, δx⟩ = ⟨z, Uᵀ δx⟩ for random z and δx, also for a batch."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, *transform.latent_shape, generator=g, dtype=F64)
    dx = torch.randn(2, *transform.state_shape, generator=g, dtype=F64)
    lhs = (transform.decode(z) * dx).flatten(1).sum(1)
    rhs = (z * transform.adjoint(dx)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert isinstance(transform, LinearControlTransform)


@pytest.mark.parametrize("method", ["symmetric", "cholesky"])
def test_dense_sqrt_reproduces_covariance(method: str) -> None:
    b = random_spd(24, seed=3)
    t = DenseSqrtTransform(b, (2, 3, 4), method)
    u = matrix_of(t)
    torch.testing.assert_close(u @ u.T, b, rtol=1e-10, atol=1e-10)
    if method == "symmetric":
        torch.testing.assert_close(t.sqrt, t.sqrt.T)
    else:
        torch.testing.assert_close(t.sqrt, torch.tril(t.sqrt))


def test_diagonal_covariance_per_channel() -> None:
    std = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    t = DiagonalTransform(std, (3, 2, 2))
    u = matrix_of(t)
    expected = torch.repeat_interleave(std**2, 4)
    torch.testing.assert_close(u @ u.T, torch.diag(expected))


def test_shape_errors() -> None:
    t = DenseSqrtTransform(random_spd(6), (2, 3))
    with pytest.raises(ValueError, match="trailing shape"):
        t.decode(torch.zeros(5, dtype=F64))
    with pytest.raises(ValueError, match="does not fit"):
        DenseSqrtTransform(random_spd(6), (4, 2))
    with pytest.raises(ValueError, match="per channel"):
        DiagonalTransform(torch.ones(4, dtype=F64), (3, 2, 2))


def test_nonlinear_transform_fits_protocol() -> None:
    class Tanh:
        latent_shape = (4,)
        state_shape = (4,)

        def decode(self, z: torch.Tensor) -> torch.Tensor:
            return torch.tanh(z)

    assert isinstance(Tanh(), ControlTransform)
    assert not isinstance(Tanh(), LinearControlTransform)


def test_registry_builds_from_config(tmp_path) -> None:
    assert {"identity", "diagonal", "dense"} <= set(transform_names())
    ctx = TransformContext((3, 2, 2), torch.float64, error_std=torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert isinstance(build_transform({"type": "identity"}, ctx), IdentityTransform)

    diag = build_transform({"type": "diagonal", "scale": 2.0}, ctx)
    torch.testing.assert_close(diag.decode(torch.ones(3, 2, 2, dtype=F64))[:, 0, 0], torch.tensor([2.0, 4.0, 6.0], dtype=F64))
    diag = build_transform({"type": "diagonal", "std": 0.5}, ctx)
    torch.testing.assert_close(diag.decode(torch.ones(3, 2, 2, dtype=F64)), torch.full((3, 2, 2), 0.5, dtype=F64))

    b = random_spd(12, seed=4)
    np.save(tmp_path / "b.npy", b.numpy())
    dense = build_transform({"type": "dense", "covariance": str(tmp_path / "b.npy"), "scale": 0.5}, ctx)
    u = matrix_of(dense)
    torch.testing.assert_close(u @ u.T, 0.5 * b)


def test_registry_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown background_error type"):
        parse_transform_config({"type": "nope"})
    with pytest.raises(ValueError):
        parse_transform_config({"type": "diagonal", "unknown_key": 1})
    ctx = TransformContext((3,), torch.float64)
    with pytest.raises(ConfigError, match="std"):
        build_transform({"type": "diagonal"}, ctx)
    with pytest.raises(ConfigError, match="not found"):
        build_transform({"type": "dense", "covariance": str(tmp_path / "missing.npy")}, ctx)
