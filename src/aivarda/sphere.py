"""Spectral operators on the sphere for GEN_BE, built on torch-harmonics' spherical-harmonic transforms.

Conventions (checked by the tests):

- Fields are ``[..., H, W]`` on a :class:`~aivarda.grid.Grid` (latitude N → S, longitude 0…360);
  spectra are complex ``[..., L, L]`` (degree ``l``, order ``m``, triangular truncation ``m ≤ l < L``)
  in torch-harmonics' orthonormal convention, ``f = Σ_l Σ_{|m|≤l} f̂_lm Y_lm`` with
  ``∫ |Y_lm|² dΩ = 1`` on the unit sphere.
- Truncation: ``L = nlat`` on a Gaussian grid, ``L = (nlat + 1) // 2`` on an equiangular grid
  (Clenshaw–Curtis quadrature is exact only to about ``nlat``), and ``L ≤ nlon // 2 + 1``. The
  degrees are passed explicitly, so torch-harmonics 0.9.2 and 0.9.3 give the same transforms.
- Laplacian on the sphere of radius ``a``: ``∇²Y_lm = −l(l+1)/a² · Y_lm``.
- Winds: ``u = −(1/a) ∂ψ/∂φ + (1/(a cos φ)) ∂χ/∂λ``, ``v = (1/(a cos φ)) ∂ψ/∂λ + (1/a) ∂χ/∂φ``,
  i.e. ``(u, v) = k × ∇ψ + ∇χ``. torch-harmonics' vector transforms use the tangential components
  ``(v_θ, v_λ) = (−v, u)`` (colatitude, longitude); on the unit sphere its spheroidal coefficient is
  ``χ̂`` and its toroidal coefficient ``−ψ̂``, so on radius ``a``: ``χ̂ = a·ŝ``, ``ψ̂ = −a·t̂`` (m²/s).
- A real *spectral control vector* packs the ``L²`` real degrees of freedom of a real field's
  spectrum: ``f̂_l0 = z`` and, for ``m > 0``, ``f̂_lm = (z_re + i z_im)/√2``. With independent
  ``z ~ N(0, a_l²)`` the field is isotropic with point variance ``Σ_l (2l+1)/(4π) · a_l²``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from aivarda.grid import Grid

EARTH_RADIUS = 6.371e6
"""Mean Earth radius in metres."""


def default_truncation(grid: Grid) -> int:
    """Number of degrees ``L`` used on ``grid`` (see module docstring)."""
    lmax = grid.nlat if grid.kind == "gaussian" else (grid.nlat + 1) // 2
    return int(min(lmax, grid.nlon // 2 + 1))


class SphereOps:
    """Scalar and vector spherical-harmonic transforms, Laplacian, wind ↔ (ψ, χ) on one grid.

    The torch-harmonics modules are kept in float64 (they cast their weights to the input's dtype)
    and follow the input to its device.
    """

    def __init__(self, grid: Grid, radius: float = EARTH_RADIUS, lmax: int | None = None):
        import torch_harmonics as th

        self.grid = grid
        self.radius = float(radius)
        self.lmax = int(lmax) if lmax is not None else default_truncation(grid)
        if not 1 <= self.lmax <= default_truncation(grid):
            raise ValueError(f"SphereOps: lmax must lie in [1, {default_truncation(grid)}] on {grid.describe()}, got {lmax}")
        nlat, nlon, kind, L = grid.nlat, grid.nlon, grid.sht_grid, self.lmax
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            self._sht = th.RealSHT(nlat, nlon, lmax=L, mmax=L, grid=kind).double()
            self._isht = th.InverseRealSHT(nlat, nlon, lmax=L, mmax=L, grid=kind).double()
            self._vsht = th.RealVectorSHT(nlat, nlon, lmax=L, mmax=L, grid=kind).double()
            self._ivsht = th.InverseRealVectorSHT(nlat, nlon, lmax=L, mmax=L, grid=kind).double()
        self._device = torch.device("cpu")
        ell = torch.arange(L, dtype=torch.float64)
        self.degree = ell[:, None].expand(L, L).clone()  # [L, M]
        self._lap = -(ell * (ell + 1))[:, None] / self.radius**2  # [L, 1]
        self._build_packing()

    # ------------------------------------------------------------------ transforms
    def _on(self, x: Tensor) -> None:
        """Move the transforms to ``x``'s device (once per device change)."""
        if x.device != self._device:
            for module in (self._sht, self._isht, self._vsht, self._ivsht):
                module.to(x.device)
            self._device = x.device

    def analysis(self, x: Tensor) -> Tensor:
        """Real field ``[..., H, W]`` → complex spectrum ``[..., L, L]``."""
        self._on(x)
        return self._sht(x)

    def synthesis(self, c: Tensor) -> Tensor:
        """Complex spectrum ``[..., L, L]`` → real field ``[..., H, W]``."""
        self._on(c)
        return self._isht(c)

    def truncate(self, x: Tensor) -> Tensor:
        """Projection onto the resolved degrees: ``synthesis(analysis(x))``."""
        return self.synthesis(self.analysis(x))

    def laplacian(self, x: Tensor) -> Tensor:
        """``∇²x`` on the sphere of radius ``a`` (``[..., H, W]``, units of ``x`` per m²)."""
        c = self.analysis(x)
        return self.synthesis(c * self._lap.to(c.real))

    def wind_to_streamfunction(self, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, v) [..., H, W]`` (m/s) → streamfunction ``ψ`` and velocity potential ``χ`` (m²/s).

        Inverts ``(u, v) = k × ∇ψ + ∇χ`` up to the truncation; ψ and χ have zero global mean.
        """
        self._on(u)
        st = self._vsht(torch.stack([-v, u], dim=-3))
        chi_hat = self.radius * st[..., 0, :, :]
        psi_hat = -self.radius * st[..., 1, :, :]
        return self.synthesis(psi_hat), self.synthesis(chi_hat)

    def streamfunction_to_wind(self, psi: Tensor, chi: Tensor) -> tuple[Tensor, Tensor]:
        """``(ψ, χ) [..., H, W]`` (m²/s) → ``(u, v) = k × ∇ψ + ∇χ`` (m/s).

        The scalar analysis of ψ and χ followed by the vector synthesis, fused per zonal
        wavenumber ``m`` into two real ``[H, H]`` matrices (:class:`_SpectralMatrices`): with
        ``f_m`` the Fourier coefficients of a row, ``a·u_m = A_m ψ_m + i B_m χ_m`` and
        ``a·v_m = −A_m χ_m + i B_m ψ_m``. Equal to the two transforms to round-off."""
        if psi.shape != chi.shape or tuple(psi.shape[-2:]) != self.grid.shape:
            raise ValueError(f"SphereOps: ψ and χ must both be [..., {self.grid.nlat}, {self.grid.nlon}], "
                             f"got {tuple(psi.shape)} and {tuple(chi.shape)}")
        mats = self._matrices(psi)
        L, H, batch = self.lmax, self.grid.nlat, psi.shape[:-2]
        f = torch.fft.rfft(torch.stack([psi.reshape(-1, H, self.grid.nlon), chi.reshape(-1, H, self.grid.nlon)]),
                           dim=-1, norm="forward")[..., :L]  # [2 (ψ, χ), N, H, m]
        n = f.shape[1]
        f = torch.view_as_real(f).permute(3, 2, 0, 4, 1).reshape(L, H, 4 * n)  # [m, H, (ψ|χ, re|im, N)]
        a = torch.bmm(mats.wind_a, f).reshape(L, H, 2, 2, n)
        b = torch.bmm(mats.wind_b, f).reshape(L, H, 2, 2, n)
        u = torch.stack([a[:, :, 0, 0] - b[:, :, 1, 1], a[:, :, 0, 1] + b[:, :, 1, 0]], dim=-1)
        v = torch.stack([-a[:, :, 1, 0] - b[:, :, 0, 1], -a[:, :, 1, 1] + b[:, :, 0, 0]], dim=-1)
        uv = torch.stack([u, v]).permute(0, 3, 2, 1, 4).contiguous() / self.radius  # [2, N, H, m, 2]
        w = torch.fft.irfft(torch.view_as_complex(uv), n=self.grid.nlon, dim=-1, norm="forward")
        return w[0].reshape(*batch, H, self.grid.nlon), w[1].reshape(*batch, H, self.grid.nlon)

    # ------------------------------------------------------------------ real spectral control vectors
    def _build_packing(self) -> None:
        L = self.lmax
        re_idx = torch.full((L, L), 0, dtype=torch.long)
        im_idx = torch.full((L, L), 0, dtype=torch.long)
        scale = torch.zeros(L, L, dtype=torch.float64)
        degree_of_dof: list[int] = []
        k = 1  # index 0 of the padded vector is a zero
        for m in range(L):
            for ell in range(m, L):
                re_idx[ell, m] = k
                degree_of_dof.append(ell)
                k += 1
                if m > 0:
                    im_idx[ell, m] = k
                    degree_of_dof.append(ell)
                    k += 1
                scale[ell, m] = 1.0 if m == 0 else 1.0 / math.sqrt(2.0)
        self.n_dofs = k - 1
        assert self.n_dofs == L * L
        self._re_idx, self._im_idx, self._pack_scale = re_idx, im_idx, scale
        self.dof_degree = torch.tensor(degree_of_dof, dtype=torch.long)  # [K]

    def dofs_to_spectrum(self, z: Tensor) -> Tensor:
        """Real spectral control vector ``[..., K]`` (``K = L²``) → complex spectrum ``[..., L, L]``."""
        if z.shape[-1] != self.n_dofs:
            raise ValueError(f"SphereOps: expected {self.n_dofs} spectral degrees of freedom, got {z.shape[-1]}")
        zp = torch.nn.functional.pad(z, (1, 0))
        scale = self._pack_scale.to(z)
        re = zp[..., self._re_idx.reshape(-1)].reshape(*z.shape[:-1], self.lmax, self.lmax) * scale
        im = zp[..., self._im_idx.reshape(-1)].reshape(*z.shape[:-1], self.lmax, self.lmax) * scale
        return torch.complex(re, im)

    def dofs_to_field(self, z: Tensor) -> Tensor:
        """Real spectral control vector ``[..., K]`` → real field ``[..., H, W]``:
        ``synthesis(dofs_to_spectrum(z))`` in one gather (whose transpose is a gather too), one
        batched Legendre product over ``m`` and one inverse FFT."""
        if z.shape[-1] != self.n_dofs:
            raise ValueError(f"SphereOps: expected {self.n_dofs} spectral degrees of freedom, got {z.shape[-1]}")
        mats = self._matrices(z)
        L, H, batch = self.lmax, self.grid.nlat, z.shape[:-1]
        flat = z.reshape(-1, self.n_dofs)
        n = flat.shape[0]
        coeffs = _Pack.apply(flat.T, mats.pack_index, mats.unpack_index)  # [m·l·2, N]
        y = torch.bmm(mats.synthesis, coeffs.reshape(L, L, 2 * n))  # [m, H, (re|im, N)]
        y = y.reshape(L, H, 2, n).permute(3, 1, 0, 2).contiguous()  # [N, H, m, 2]
        field = torch.fft.irfft(torch.view_as_complex(y), n=self.grid.nlon, dim=-1, norm="forward")
        return field.reshape(*batch, H, self.grid.nlon)

    def _matrices(self, like: Tensor) -> _SpectralMatrices:
        """The fused transforms' matrices in ``like``'s dtype and device (built once each)."""
        key = (like.dtype, like.device)
        cache = self.__dict__.setdefault("_matrix_cache", {})
        if key not in cache:
            if "_matrices64" not in self.__dict__:
                self._matrices64 = _SpectralMatrices.extract(self)
            cache[key] = self._matrices64.to(like.dtype, like.device)
        return cache[key]

    # ------------------------------------------------------------------ isotropic spectra and length scales
    def gaussian_amplitudes(self, scale: Tensor | float) -> Tensor:
        """Per-dof amplitudes ``a_l`` of a unit-variance isotropic field whose correlation is close to
        ``exp(−r²/(2s²))`` for a spectral scale ``s`` (m): ``a_l² = γ_l · 4π / Σ_l (2l+1) γ_l`` with
        ``γ_l = exp(−l(l+1) s²/(2a²))`` (the heat kernel). ``scale [...]`` → ``[..., K]``."""
        s = torch.as_tensor(scale, dtype=torch.float64)[..., None]
        ell = torch.arange(self.lmax, dtype=torch.float64)
        log_g = -(ell * (ell + 1)) * s**2 / (2 * self.radius**2)  # [..., L]
        log_g = log_g - log_g.max(dim=-1, keepdim=True).values
        g = log_g.exp()
        g = g * 4 * math.pi / ((2 * ell + 1) * g).sum(-1, keepdim=True)
        return g.sqrt()[..., self.dof_degree]

    def spectral_length_scale(self, power: Tensor) -> Tensor:
        """``L = a (8 Σ(2l+1)p_l / Σ(2l+1)(l(l+1))² p_l)^¼`` of an isotropic field with per-degree
        variance ``p_l`` (``[..., L]``): the Gaussian-correlation length ``(8 var x / var ∇²x)^¼``."""
        ell = torch.arange(self.lmax, dtype=torch.float64)
        w = 2 * ell + 1
        num = (w * power).sum(-1)
        den = (w * (ell * (ell + 1)) ** 2 * power).sum(-1)
        return self.radius * (8 * num / den.clamp_min(1e-300)) ** 0.25

    def calibrate_scale(self, length_scale: Tensor, iterations: int = 80) -> Tensor:
        """Spectral scales ``s`` whose Gaussian spectrum has the length scale ``length_scale`` (m)
        by :meth:`spectral_length_scale` (bisection in log s; targets below the shortest resolvable
        scale give the white spectrum's scale)."""
        target = torch.as_tensor(length_scale, dtype=torch.float64)
        lo = torch.full_like(target, math.log(1e-4 * self.radius))
        hi = torch.full_like(target, math.log(10.0 * self.radius))
        ell = torch.arange(self.lmax, dtype=torch.float64)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            s = mid.exp()[..., None]
            log_g = -(ell * (ell + 1)) * s**2 / (2 * self.radius**2)
            power = (log_g - log_g.max(-1, keepdim=True).values).exp()
            too_short = self.spectral_length_scale(power) < target
            lo = torch.where(too_short, mid, lo)
            hi = torch.where(too_short, hi, mid)
        return (0.5 * (lo + hi)).exp()

    def length_scale(self, x: Tensor, area_weights: Tensor | None = None) -> Tensor:
        """Measured ``L = (8 var(x) / var(∇²x))^¼`` (m) of fields ``[N, ..., H, W]`` (second moments
        about zero, area-weighted, pooled over ``N`` and the grid) → ``[...]``."""
        w = self._weights(x) if area_weights is None else area_weights.to(x.dtype)
        lap = self.laplacian(x)
        var = (x**2 * w[:, None]).mean(dim=(-2, -1)).mean(0)
        var_lap = (lap**2 * w[:, None]).mean(dim=(-2, -1)).mean(0)
        return (8 * var / var_lap.clamp_min(1e-300)) ** 0.25

    def power_spectrum(self, x: Tensor) -> Tensor:
        """Horizontal power per total wavenumber ``l`` of real fields ``[..., H, W]`` → ``[..., L]``:
        ``P_l = Σ_{|m|≤l} |f̂_lm|² / (4π)`` (orders ``m > 0`` counted twice, for ``±m``), so that
        ``Σ_l P_l`` is the area mean of ``f²`` for a field resolved by the truncation (Parseval)."""
        c = self.analysis(x.double())
        p = c.real**2 + c.imag**2  # [..., L, M]
        p = torch.cat([p[..., :1], 2 * p[..., 1:]], dim=-1)
        return p.sum(-1) / (4 * math.pi)

    def _weights(self, x: Tensor) -> Tensor:
        return torch.as_tensor(np.asarray(self.grid.weights), dtype=x.dtype, device=x.device)

    def variance(self, x: Tensor) -> Tensor:
        """Area-weighted second moment of ``[N, ..., H, W]`` pooled over ``N`` and the grid → ``[...]``."""
        w = self._weights(x)
        return (x**2 * w[:, None]).mean(dim=(-2, -1)).mean(0)


class _Pack(torch.autograd.Function):
    """``out = z_pad[index]`` on the first axis, where ``z_pad = [0; z]`` and every row of ``z``
    appears exactly once in ``out``: a linear map whose transpose is the gather
    ``grad_z = grad_out[unpack]`` (no scatter-add). Double backward goes through the same pair."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, z: Tensor, index: Tensor, unpack: Tensor) -> Tensor:
        ctx.save_for_backward(index, unpack)
        return torch.nn.functional.pad(z, (0, 0, 1, 0)).index_select(0, index)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        index, unpack = ctx.saved_tensors  # type: ignore[attr-defined]
        return _Unpack.apply(grad, index, unpack), None, None


class _Unpack(torch.autograd.Function):
    """The transpose of :class:`_Pack`: ``grad_out[unpack]``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor, index: Tensor, unpack: Tensor) -> Tensor:
        ctx.save_for_backward(index, unpack)
        return grad.index_select(0, unpack)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, g: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        index, unpack = ctx.saved_tensors  # type: ignore[attr-defined]
        return _Pack.apply(g, index, unpack), None, None


class _SpectralMatrices:
    """Real matrices of the fused transforms of a :class:`SphereOps`, read off its torch-harmonics
    modules (so every torch-harmonics version gives its own transforms' numbers):

    - ``synthesis [m, H, l]``: the Legendre synthesis ``P_m`` times the packing scale (1 for
      ``m = 0``, 1/√2 else), applied to the ``[m, l, (re, im, N)]`` layout :class:`_Pack` produces;
    - ``wind_a``, ``wind_b`` ``[m, H, H]``: ``D0_m Q_m`` and ``D1_m Q_m`` with ``Q_m [l, H]`` the
      scalar analysis (quadrature) and ``D0_m, D1_m [H, l]`` the vector synthesis of a spheroidal
      coefficient (colatitude component, longitude component / i);
    - ``pack_index [m·l·2]`` into ``[0; z]`` and ``unpack_index [K]``, its inverse on the dofs.
    """

    def __init__(self, synthesis: Tensor, wind_a: Tensor, wind_b: Tensor, pack_index: Tensor, unpack_index: Tensor):
        self.synthesis, self.wind_a, self.wind_b = synthesis, wind_a, wind_b
        self.pack_index, self.unpack_index = pack_index, unpack_index

    def to(self, dtype: torch.dtype, device: torch.device) -> _SpectralMatrices:
        return _SpectralMatrices(*(m.to(dtype=dtype, device=device) for m in (self.synthesis, self.wind_a, self.wind_b)),
                                 self.pack_index.to(device), self.unpack_index.to(device))

    @staticmethod
    def extract(ops: SphereOps) -> _SpectralMatrices:
        L, H, W = ops.lmax, ops.grid.nlat, ops.grid.nlon
        cpu = torch.device("cpu")
        with torch.no_grad():
            ops._on(torch.empty(0, device=cpu))
            eye = torch.eye(L, dtype=torch.float64)
            # synthesis of one unit coefficient (l, every m) per batch entry l: rfft gives P_m(θ, l)
            f = ops._isht(eye[:, :, None].expand(L, L, L).to(torch.complex128))  # [l, H, W]
            legendre = torch.fft.rfft(f, dim=-1, norm="forward")[..., :L].real.permute(2, 1, 0)  # [m, H, l]
            # analysis of rows holding Σ_m e^{imλ}: the quadrature weights Q_m(l, θ)
            lam = torch.arange(W, dtype=torch.float64) * (2 * math.pi / W)
            m = torch.arange(1, L, dtype=torch.float64)
            row = 1 + 2 * torch.cos(m[:, None] * lam).sum(0)
            rows = torch.eye(H, dtype=torch.float64)[..., None] * row  # [k, H, W]: row k alone
            quad = ops._sht(rows).real.permute(2, 1, 0)  # [m, l, H]
            # vector synthesis of one unit spheroidal coefficient
            vs = torch.zeros(L, 2, L, L, dtype=torch.complex128)
            vs[:, 0] = eye[:, :, None].expand(L, L, L)
            vc = torch.fft.rfft(ops._ivsht(vs), dim=-1, norm="forward")[..., :L]  # [l, 2, H, m]
            d0 = vc[:, 0].real.permute(2, 1, 0)  # [m, H, l]
            d1 = vc[:, 1].imag.permute(2, 1, 0)
        # packing: coefficient (m, l, re|im) ← dof index (0: the padded zero), times 1 or 1/√2
        index = torch.stack([ops._re_idx.T, ops._im_idx.T], dim=-1)  # [m, l, 2]
        synthesis = legendre * ops._pack_scale[L - 1][:, None, None]  # the packing scale depends on m alone
        flat = index.reshape(-1)
        unpack = torch.empty(ops.n_dofs, dtype=torch.long)
        valid = flat > 0
        unpack[flat[valid] - 1] = torch.nonzero(valid).squeeze(1)
        # the padded zero's positions carry no dof: their matrix columns never meet a value
        return _SpectralMatrices(synthesis.contiguous(), (d0 @ quad).contiguous(), (d1 @ quad).contiguous(),
                                 flat.contiguous(), unpack)


class Regrid:
    """Bilinear interpolation in latitude and (periodic) longitude from ``source`` to ``target``:
    ``y[..., i, j] = Σ_{h,w} A_ih x[..., h, w] B_jw`` (rows outside the source's latitude range take
    the nearest row). Linear; ``adjoint`` is ``Aᵀ y B``. Identity when the grids are equal."""

    def __init__(self, source: Grid, target: Grid):
        self.source, self.target = source, target
        self.identity = source == target
        self.lat_matrix = torch.as_tensor(_lat_weights(source.lat, target.lat))
        self.lon_matrix = torch.as_tensor(_lon_weights(source.lon, target.lon))

    def __call__(self, x: Tensor) -> Tensor:
        if self.identity:
            return x
        a, b = self.lat_matrix.to(x), self.lon_matrix.to(x)
        return torch.einsum("ih,...hw,jw->...ij", a, x, b)

    def adjoint(self, y: Tensor) -> Tensor:
        if self.identity:
            return y
        a, b = self.lat_matrix.to(y), self.lon_matrix.to(y)
        return torch.einsum("ih,...ij,jw->...hw", a, y, b)


def _lat_weights(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``[len(dst), len(src)]`` linear weights; ``src`` strictly decreasing."""
    asc = src[::-1]
    pos = np.clip(np.searchsorted(asc, dst), 1, asc.size - 1)
    lo, hi = pos - 1, pos
    t = np.clip((dst - asc[lo]) / (asc[hi] - asc[lo]), 0.0, 1.0)
    out = np.zeros((dst.size, src.size))
    n = src.size - 1
    rows = np.arange(dst.size)
    np.add.at(out, (rows, n - lo), 1 - t)
    np.add.at(out, (rows, n - hi), t)
    return out


def _lon_weights(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``[len(dst), len(src)]`` periodic linear weights on equally spaced ``src`` starting at ``src[0]``."""
    d = 360.0 / src.size
    x = np.mod(dst - src[0], 360.0) / d
    lo = np.floor(x).astype(int) % src.size
    t = x - np.floor(x)
    out = np.zeros((dst.size, src.size))
    rows = np.arange(dst.size)
    np.add.at(out, (rows, lo), 1 - t)
    np.add.at(out, (rows, (lo + 1) % src.size), t)
    return out
