"""Localisation of an ensemble covariance: correlation operators ``L = L^½ (L^½)ᵀ``.

An ensemble-estimated covariance ``P_e = X'X'ᵀ/(K − 1)`` is localised by a Schur (element-wise)
product with a correlation matrix ``L``: ``B_e = P_e ∘ L``. The ensemble transform
(:mod:`aivarda.background.ensemble`) never forms ``L``; it applies a square root ``L^½`` to one
control field per member. This module provides those square roots.

**Correlation functions** ``c(r; ℓ)`` of a distance ``r`` (:func:`correlation`), all with
``c(0) = 1`` and the **length scale** ``ℓ`` defined as Daley's (1991) length,
``ℓ = (−c''(0))^{-½}``, i.e. ``c(r) = 1 − r²/(2ℓ²) + o(r²)`` near ``r = 0``:

- ``gaussian``: ``c = exp(−r²/(2ℓ²))``; ``c(ℓ) = exp(−½) ≈ 0.607``;
- ``soar`` (second-order auto-regressive): ``c = (1 + r/ℓ) exp(−r/ℓ)``; ``c(ℓ) = 2/e ≈ 0.736``;
- ``gaspari_cohn``: the compactly supported 5th-order piecewise rational function of Gaspari &
  Cohn (1999, eq. 4.10) with half-width ``h = ℓ √(10/3)`` (zero beyond ``2h``); this is DAPPER's
  ``GC`` with ``radius = ℓ``.

The **realised length** of an implemented operator is measured (tests, ``docs/envar.md``) as the
distance at which its correlation with a point first falls to ``c(ℓ)`` of the target shape (e.g.
``exp(−½)`` for the Gaussian). It equals ``ℓ`` when the operator reproduces ``c``.

**On the sphere** (:class:`SphereLocalisation`, states ``[C, H, W]``): ``L = L_v ⊗ L_h``.

- Horizontal ``L_h``: the isotropic correlation ``c(d)`` of the chordal distance
  ``d = 2a sin(θ/2)`` between two points (``θ`` their angular separation, ``a`` the Earth's radius;
  ``d ≈ aθ`` for ``θ ≪ 1``, and a function that is a correlation in 3-D space is one on the
  sphere in chordal distance). By the Funk–Hecke theorem ``L_h`` is diagonal in spherical harmonics:
  ``c(θ) = Σ_l (2l+1)/(4π) c_l P_l(cos θ)`` with ``c_l = 2π ∫₀^π c(d(θ)) P_l(cos θ) sin θ dθ``
  (computed by Gauss–Legendre quadrature in ``θ``). The series is truncated at the grid's degree
  ``L`` (:func:`~aivarda.sphere.default_truncation`), negative round-off ``c_l``
  are set to 0 and the ``c_l`` are rescaled so that ``Σ_{l<L} (2l+1)/(4π) c_l = 1`` (unit
  diagonal). ``L_h^½`` maps a real spectral control vector ``z`` (``L²`` degrees of freedom, the
  packing of :class:`~aivarda.sphere.SphereOps`) to the field
  ``Σ_lm √c_l z_lm Y_lm``, whose covariance is exactly the truncated ``c(θ)``. Length scales that
  the truncation cannot resolve (``ℓ`` comparable to ``πa/L``) give a broader realised correlation.
  ``length_scale_km = None`` (or ``inf``): no horizontal localisation (``L_h = 1 1ᵀ``; the control is
  one number per member and level group, broadcast over the grid).
- Vertical ``L_v`` ``[C, C]``: the correlation ``c(|ln p_i − ln p_j|; ℓ_v)`` between the pressures
  of the channels' levels (``ℓ_v`` = ``vertical_length_lnp``, dimensionless, in ln p). All variables
  on the same level are fully correlated (the localisation keeps multivariate covariances on a
  level). Surface channels: ``surface="lowest"`` puts them on the layout's highest pressure (the
  lowest level), a number puts them at that pressure (hPa), ``"independent"`` correlates them with
  each other (1) and not with any upper-air channel (0). ``vertical_length_lnp = None``: no vertical
  localisation (all levels fully correlated). ``L_v = G R Gᵀ`` with ``G`` ``[C, P']`` the one-hot map
  of each channel to its level group (``P'`` distinct pressures, plus one group for independent
  surface channels) and ``R`` ``[P', P']`` the group correlation, so ``L_v^½ = G R^½`` acts on
  ``P'`` control fields per member, not ``C``.

The control of one member is ``[P', D]`` with ``D = L²`` (``1`` without horizontal localisation);
``L^½ α = G R^½ L_h^½ α`` → ``[C, H, W]``.

**On a periodic line** (:class:`CircleLocalisation`, Lorenz-96 states ``[N]``): ``L_ij = c(d_ij)``
with ``d_ij = min(|i − j|, N − |i − j|)`` in grid points; ``L^½`` is the symmetric square root
(negative round-off eigenvalues of the circulant ``L`` set to 0, then rescaled to a unit diagonal).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from aivarda.sphere import EARTH_RADIUS, SphereOps
from aivarda.background.transforms import _batch_shape, symmetric_sqrt
from aivarda.channels import ChannelLayout
from aivarda.grid import Grid

Shape = Literal["gaussian", "soar", "gaspari_cohn"]
SurfaceChoice = Literal["lowest", "independent"] | float
SHAPES: tuple[str, ...] = ("gaussian", "soar", "gaspari_cohn")
_GC_HALF_WIDTH = math.sqrt(10.0 / 3.0)  # Gaspari–Cohn half-width h = ℓ √(10/3)


def _check_shape(shape: str) -> None:
    if shape not in SHAPES:
        raise ValueError(f"localisation shape must be one of {list(SHAPES)}, got {shape!r}")


def _finite(length: float | None) -> float | None:
    """``None`` for no localisation (``None`` or ``inf``); otherwise a positive length."""
    if length is None or math.isinf(float(length)):
        return None
    if not float(length) > 0:
        raise ValueError(f"localisation length scale must be > 0 (or None/inf for none), got {length}")
    return float(length)


def correlation(distance: Tensor, length_scale: float, shape: Shape = "gaussian") -> Tensor:
    """``c(r; ℓ)`` (module docstring) of distances ``r ≥ 0`` (same units as ``ℓ``)."""
    _check_shape(shape)
    x = torch.as_tensor(distance, dtype=torch.float64).abs() / float(length_scale)
    if shape == "gaussian":
        return torch.exp(-0.5 * x**2)
    if shape == "soar":
        return (1 + x) * torch.exp(-x)
    r = x / _GC_HALF_WIDTH  # r = distance / h
    inner = 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 1 / 2 * r**4 - 1 / 4 * r**5
    rs = r.clamp_min(1e-300)
    outer = 4 - 5 * r + 5 / 3 * r**2 + 5 / 8 * r**3 - 1 / 2 * r**4 + 1 / 12 * r**5 - 2 / (3 * rs)
    return torch.where(r <= 1, inner, torch.where(r <= 2, outer, torch.zeros_like(r)))


def correlation_at_length(shape: Shape) -> float:
    """``c(ℓ; ℓ)``: the value at which the realised length is read off (``exp(−½)``, ``2/e``, …)."""
    return float(correlation(torch.tensor(1.0), 1.0, shape))


def legendre_coefficients(
    length_scale: float, shape: Shape, lmax: int, radius: float = EARTH_RADIUS
) -> Tensor:
    """``c_l`` (``l < lmax``, float64) of the correlation ``c(2a sin(θ/2); ℓ)`` on the sphere,
    truncated and normalised to unit variance (module docstring); ``length_scale`` in metres."""
    _check_shape(shape)
    ell = float(length_scale)
    # Gauss–Legendre nodes in θ on [0, θ_end] (split at Gaspari–Cohn's knots), dense enough to
    # resolve both the correlation (width ℓ/a) and P_l for l < lmax.
    if shape == "gaspari_cohn":
        h = ell * _GC_HALF_WIDTH
        knots = [2 * math.asin(min(1.0, k * h / (2 * radius))) for k in (1.0, 2.0)]
        edges = [0.0, *sorted(set(knots))]
    else:
        edges = [0.0, math.pi]
    nodes, weights = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        n = int(min(20000, max(64, 4 * lmax * (hi - lo) / math.pi, 16 * (hi - lo) * radius / ell)))
        t, w = np.polynomial.legendre.leggauss(n)
        nodes.append(0.5 * (hi - lo) * t + 0.5 * (hi + lo))
        weights.append(0.5 * (hi - lo) * w)
    theta = torch.as_tensor(np.concatenate(nodes))
    w = torch.as_tensor(np.concatenate(weights))
    c = correlation(2 * radius * torch.sin(theta / 2), ell, shape)
    integrand = 2 * math.pi * c * torch.sin(theta) * w
    cos_t = torch.cos(theta)
    out = torch.empty(lmax, dtype=torch.float64)
    p_prev, p = torch.ones_like(cos_t), cos_t
    out[0] = (integrand * p_prev).sum()
    if lmax > 1:
        out[1] = (integrand * p).sum()
    for n in range(1, lmax - 1):  # three-term recurrence (n+1) P_{n+1} = (2n+1) t P_n − n P_{n−1}
        p_prev, p = p, ((2 * n + 1) * cos_t * p - n * p_prev) / (n + 1)
        out[n + 1] = (integrand * p).sum()
    out = out.clamp_min(0)
    degrees = torch.arange(lmax, dtype=torch.float64)
    return out / ((2 * degrees + 1) / (4 * math.pi) * out).sum()


@runtime_checkable
class Localisation(Protocol):
    """A correlation operator ``L = S Sᵀ`` given by its square root ``S = L^½``.

    ``latent_shape``: the control of one member; ``state_shape``: the state ``S``.
    ``apply_sqrt: [..., *latent_shape] → [..., *state_shape]`` (may return a broadcast view) and
    ``apply_sqrt_adjoint: [..., *state_shape] → [..., *latent_shape]`` (``Sᵀ``).
    """

    latent_shape: tuple[int, ...]
    state_shape: tuple[int, ...]

    def apply_sqrt(self, a: Tensor) -> Tensor: ...

    def apply_sqrt_adjoint(self, f: Tensor) -> Tensor: ...


class CircleLocalisation:
    """``L^½`` on a periodic line of ``n`` points (module docstring); ``length_scale`` in grid
    points, ``None``/``inf``: no localisation (latent ``[1]``, broadcast over the line)."""

    def __init__(self, n: int, length_scale: float | None, shape: Shape = "gaussian"):
        _check_shape(shape)
        self.n = int(n)
        self.length_scale = _finite(length_scale)
        self.shape = shape
        self.state_shape = (self.n,)
        if self.length_scale is None:
            self.sqrt = None
            self.latent_shape = (1,)
            return
        i = torch.arange(self.n, dtype=torch.float64)
        d = (i[:, None] - i[None, :]).abs()
        d = torch.minimum(d, self.n - d)
        sqrt = symmetric_sqrt(correlation(d, self.length_scale, shape))
        self.sqrt = sqrt / (sqrt**2).sum(1, keepdim=True).sqrt()  # unit diagonal of S Sᵀ (circulant: one scalar)
        self.latent_shape = (self.n,)

    @property
    def matrix(self) -> Tensor:
        """The realised ``L = S Sᵀ`` ``[n, n]`` (float64)."""
        if self.sqrt is None:
            return torch.ones(self.n, self.n, dtype=torch.float64)
        return self.sqrt @ self.sqrt.T

    def apply_sqrt(self, a: Tensor) -> Tensor:
        _batch_shape(a, self.latent_shape, "CircleLocalisation.apply_sqrt")
        if self.sqrt is None:
            return a.expand(*a.shape[:-1], self.n)
        return a @ self.sqrt.to(a).T

    def apply_sqrt_adjoint(self, f: Tensor) -> Tensor:
        _batch_shape(f, self.state_shape, "CircleLocalisation.apply_sqrt_adjoint")
        if self.sqrt is None:
            return f.sum(-1, keepdim=True)
        return f @ self.sqrt.to(f)


def channel_groups(
    channels: ChannelLayout | int, vertical_length_lnp: float | None, surface: SurfaceChoice = "lowest"
) -> tuple[Tensor, Tensor]:
    """The level groups of the vertical localisation (module docstring).

    Returns ``group [C]`` (long: the group of each channel) and ``R [P', P']`` (float64: the
    correlation between groups). Without a layout (``channels`` an int) every channel is in one
    group, which requires ``vertical_length_lnp = None``."""
    vertical = _finite(vertical_length_lnp)
    if isinstance(channels, int):
        if vertical is not None:
            raise ValueError("vertical localisation needs the channel layout (the pressure of every channel)")
        return torch.zeros(channels, dtype=torch.long), torch.ones(1, 1, dtype=torch.float64)
    layout = channels
    if isinstance(surface, str) and surface not in ("lowest", "independent"):
        raise ValueError(f"surface must be 'lowest', 'independent' or a pressure in hPa, got {surface!r}")
    if not isinstance(surface, str) and not float(surface) > 0:
        raise ValueError(f"surface pressure must be > 0 hPa, got {surface}")
    lowest = float(max(layout.levels)) if layout.levels else 1000.0
    surface_p = lowest if surface in ("lowest", "independent") else float(surface)  # type: ignore[arg-type]
    # per-channel coordinate ln p (NaN marks an independent surface channel)
    coord = [
        (math.nan if surface == "independent" else math.log(surface_p)) if ch.level is None else math.log(ch.level)
        for ch in layout.channels
    ]
    x = torch.tensor(coord, dtype=torch.float64)
    if vertical is None:  # every finite coordinate in one group
        x = torch.where(torch.isnan(x), x, torch.zeros_like(x))
    finite = torch.unique(x[~torch.isnan(x)])
    values = torch.cat([finite, torch.tensor([math.nan], dtype=torch.float64)]) if bool(torch.isnan(x).any()) else finite
    group = torch.empty(len(coord), dtype=torch.long)
    group[~torch.isnan(x)] = torch.searchsorted(finite, x[~torch.isnan(x)])
    group[torch.isnan(x)] = finite.numel()
    n_f = finite.numel()
    R = torch.eye(values.numel(), dtype=torch.float64)
    if n_f:
        dist = (finite[:, None] - finite[None, :]).abs()
        R[:n_f, :n_f] = torch.ones_like(dist) if vertical is None else correlation(dist, vertical, "gaussian")
    return group, R


class _SynthesisAdjoint:
    """Explicit transpose of the real spectral synthesis ``S: z ↦ Σ_lm f̂_lm(z) Y_lm`` on the grid.

    The analysis of torch-harmonics is ``A(f)_lm = Σ_ij q_i f_ij conj(Y_lm(φ_i, λ_j))`` with the
    quadrature weight ``q_i`` of row ``i``, so ``Σ_ij f_ij conj(Y_lm) = A(f/q)_lm``. With the real
    packing ``f̂_l0 = z``, ``f̂_lm = (z_re + i z_im)/√2`` (``m > 0``, the field holds ``Y_lm`` and its
    conjugate): ``Sᵀf = Re A(f/q)_l0`` for ``m = 0`` and ``√2 (Re, Im) A(f/q)_lm`` for ``m > 0``.
    ``q_i = √(4π) A(1_i)_00 / W`` from the analysis of row indicators. :meth:`build` checks the
    identity ``⟨S z, f⟩ = ⟨z, Sᵀ f⟩`` once on random vectors and returns ``None`` where it does not hold
    (e.g. a truncation that reaches the Nyquist order), so that reverse mode is used instead. It
    costs one analysis instead of a synthesis and its reverse pass."""

    def __init__(self, ops: SphereOps):
        H, W = ops.grid.shape
        L = ops.lmax
        rows = torch.eye(H, dtype=torch.float64)[:, :, None].expand(H, H, W)
        a00 = ops.analysis(rows)[:, 0, 0].real
        self.ops = ops
        self.inv_weight = (W / (math.sqrt(4 * math.pi) * a00))[:, None]  # 1/q_i [H, 1]
        re_idx, im_idx, scale = ops._re_idx, ops._im_idx, ops._pack_scale  # dof k + 1 at (l, m); 0: none
        flat = torch.zeros(ops.n_dofs, dtype=torch.long)
        imag = torch.zeros(ops.n_dofs, dtype=torch.bool)
        factor = torch.zeros(ops.n_dofs, dtype=torch.float64)
        lm = torch.arange(L * L).reshape(L, L)
        for idx, is_imag in ((re_idx, False), (im_idx, True)):
            present = idx > 0
            k = idx[present] - 1
            flat[k] = lm[present]
            imag[k] = is_imag
            factor[k] = 1.0 / scale[present]
        self.flat, self.imag, self.factor = flat, imag, factor

    def __call__(self, f: Tensor) -> Tensor:
        a = self.ops.analysis(f * self.inv_weight.to(f)).flatten(-2)  # [..., L²] complex
        flat = self.flat.to(f.device)
        parts = torch.where(self.imag.to(f.device), a.imag[..., flat], a.real[..., flat])
        return parts * self.factor.to(parts)

    @classmethod
    def build(cls, ops: SphereOps) -> _SynthesisAdjoint | None:
        if not bool(torch.isfinite(torch.as_tensor(np.asarray(ops.grid.weights))).all()):
            return None
        adjoint = cls(ops)
        if not bool(torch.isfinite(adjoint.inv_weight).all()):
            return None
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(2, ops.n_dofs, dtype=torch.float64, generator=gen)
        f = torch.randn(2, *ops.grid.shape, dtype=torch.float64, generator=gen)
        lhs, rhs = (ops.dofs_to_field(z) * f).sum(), (z * adjoint(f)).sum()
        return adjoint if abs(float(lhs - rhs)) <= 1e-9 * float(lhs.abs() + rhs.abs()) else None


class _Synthesis(torch.autograd.Function):
    """``L_h^½ a`` whose reverse pass is the explicit adjoint (and differentiable again)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, loc: SphereLocalisation) -> Tensor:  # type: ignore[override]
        ctx.loc = loc
        assert loc.ops is not None
        return loc.ops.dofs_to_field(a * loc.amplitudes.to(a))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.loc.horizontal_sqrt_adjoint(grad), None


class SphereLocalisation:
    """``L^½ = L_v^½ ⊗ L_h^½`` for states ``[C, H, W]`` on ``grid`` (module docstring).

    Args:
        grid: the state grid (Gaussian or equiangular).
        channels: the :class:`~aivarda.channels.ChannelLayout` (needed for vertical localisation) or
            the number of channels ``C``.
        length_scale_km: horizontal ``ℓ`` (km) of ``shape``; ``None``/``inf``: none.
        shape: ``gaussian``, ``soar`` or ``gaspari_cohn``.
        vertical_length_lnp: vertical ``ℓ_v`` in ln p (Gaussian); ``None``/``inf``: none.
        surface: ``"lowest"``, ``"independent"`` or a pressure (hPa) for the surface channels.
        radius: sphere radius (m); ``lmax``: spectral truncation (default: the grid's).

    Latent of one member: ``[P', D]``; ``apply_sqrt: [..., P', D] → [..., C, H, W]``.
    """

    def __init__(
        self,
        grid: Grid,
        channels: ChannelLayout | int,
        length_scale_km: float | None,
        shape: Shape = "gaussian",
        vertical_length_lnp: float | None = None,
        surface: SurfaceChoice = "lowest",
        radius: float = EARTH_RADIUS,
        lmax: int | None = None,
    ):
        _check_shape(shape)
        self.grid = grid
        self.shape = shape
        self.radius = float(radius)
        length = _finite(length_scale_km)
        self.length_scale = None if length is None else 1e3 * length  # metres
        self.vertical_length_lnp = _finite(vertical_length_lnp)
        n_channels = channels if isinstance(channels, int) else len(channels)
        self.group, R = channel_groups(channels, self.vertical_length_lnp, surface)
        self.vertical_sqrt = symmetric_sqrt(R)  # R^½ [P', P']
        self.vertical_correlation = R
        self.n_groups = int(R.shape[0])
        self.state_shape = (int(n_channels), *grid.shape)
        if self.length_scale is None:
            self.ops = None
            self.coefficients = None
            self.latent_shape = (self.n_groups, 1)
        else:
            self.ops = SphereOps(grid, self.radius, lmax)
            self.coefficients = legendre_coefficients(self.length_scale, shape, self.ops.lmax, self.radius)
            self.amplitudes = self.coefficients.sqrt()[self.ops.dof_degree]  # √c_l per dof [D]
            self.latent_shape = (self.n_groups, self.ops.n_dofs)
        self._adjoint = None if self.ops is None else _SynthesisAdjoint.build(self.ops)
        self._identity_vertical = self.n_groups == 1

    # ------------------------------------------------------------------ pieces
    def horizontal_sqrt(self, a: Tensor) -> Tensor:
        """``L_h^½``: ``[..., D] → [..., H, W]`` (a broadcast view without horizontal localisation)."""
        if self.ops is None:
            return a[..., None].expand(*a.shape[:-1], *self.grid.shape)
        if self._adjoint is None:
            return self.ops.dofs_to_field(a * self.amplitudes.to(a))
        return _Synthesis.apply(a, self)

    def horizontal_sqrt_adjoint(self, f: Tensor) -> Tensor:
        """``(L_h^½)ᵀ``: ``[..., H, W] → [..., D]`` (explicit, see :class:`_SynthesisAdjoint`; reverse
        mode through the synthesis where that is not available)."""
        if self.ops is None:
            return f.sum(dim=(-2, -1))[..., None]
        if self._adjoint is not None:
            return self._adjoint(f) * self.amplitudes.to(f)
        with torch.enable_grad():
            z0 = torch.zeros(*f.shape[:-2], self.ops.n_dofs, dtype=f.dtype, device=f.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.horizontal_sqrt(z0), z0, f, create_graph=f.requires_grad)
        return g

    def _vertical(self, a: Tensor, transpose: bool) -> Tensor:
        if self._identity_vertical:
            return a
        R = self.vertical_sqrt.to(a)
        return torch.einsum("ji,...jd->...id" if transpose else "ij,...jd->...id", R, a)

    # ------------------------------------------------------------------ L^½ and its adjoint
    def apply_sqrt(self, a: Tensor) -> Tensor:
        """``L^½ a``: ``[..., P', D] → [..., C, H, W]``."""
        _batch_shape(a, self.latent_shape, "SphereLocalisation.apply_sqrt")
        fields = self.horizontal_sqrt(self._vertical(a, transpose=False))  # [..., P', H, W]
        group = self.group.to(a.device)
        if self.ops is None:  # keep the broadcast: [..., C, 1, 1] viewed as [..., C, H, W]
            return fields[..., :1, :1].index_select(-3, group).expand(*a.shape[:-2], *self.state_shape)
        return fields.index_select(-3, group)

    def apply_sqrt_adjoint(self, f: Tensor) -> Tensor:
        """``(L^½)ᵀ f``: ``[..., C, H, W] → [..., P', D]``."""
        batch = _batch_shape(f, self.state_shape, "SphereLocalisation.apply_sqrt_adjoint")
        group = self.group.to(f.device)
        if self.ops is None:
            f = f.sum(dim=(-2, -1), keepdim=True)
        g = f.new_zeros(*batch, self.n_groups, *f.shape[-2:]).index_add(-3, group, f)
        return self._vertical(self.horizontal_sqrt_adjoint(g), transpose=True)


def _first_crossing(distance: Tensor, value: Tensor, level: float) -> float:
    """Distance where ``value`` (starting at ``distance[0]``) first falls to ``level`` (linear
    interpolation between neighbours; ``inf`` if it never does)."""
    below = torch.nonzero(value <= level).flatten()
    if below.numel() == 0:
        return math.inf
    j = int(below[0])
    if j == 0:
        return float(distance[0])
    d0, d1, v0, v1 = (float(t) for t in (distance[j - 1], distance[j], value[j - 1], value[j]))
    return d0 + (d1 - d0) * (v0 - level) / (v0 - v1)


def realised_length_scale(localisation: SphereLocalisation | CircleLocalisation) -> float:
    """The realised length of the implemented horizontal correlation: the distance at which the
    correlation with a reference point first falls to ``c(ℓ)`` of the target shape (``exp(−½)`` for
    the Gaussian), read off the operator's column ``L_h e`` by linear interpolation between grid
    points. Sphere: reference = the grid point nearest the equator at longitude 0, along its
    meridian towards both poles (mean of the two), chordal distance, in km. Periodic line: from
    point 0, in grid points. ``inf`` without localisation."""
    level = correlation_at_length(localisation.shape)  # type: ignore[arg-type]
    if isinstance(localisation, CircleLocalisation):
        col = localisation.matrix[0]
        half = localisation.n // 2 + 1
        return _first_crossing(torch.arange(half, dtype=torch.float64), col[:half] / col[0], level)
    grid = localisation.grid
    i0 = int(np.argmin(np.abs(grid.lat)))
    e = torch.zeros(grid.shape, dtype=torch.float64)
    e[i0, 0] = 1.0
    col = localisation.horizontal_sqrt(localisation.horizontal_sqrt_adjoint(e))[:, 0]
    col = col / col[i0]
    phi = torch.as_tensor(np.deg2rad(grid.lat))
    chord = 2 * localisation.radius * torch.sin((phi - phi[i0]).abs() / 2) / 1e3
    north = _first_crossing(chord[: i0 + 1].flip(0), col[: i0 + 1].flip(0), level)
    south = _first_crossing(chord[i0:], col[i0:], level)
    return 0.5 * (north + south)
