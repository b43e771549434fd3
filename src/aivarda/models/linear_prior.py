"""A spectral linear inverse model (LIM): the linear part of a forecast model, fitted by least squares.

The embedded world (and the atmosphere) is statistically invariant under rotations in longitude,
so the best linear ``dt``-step predictor of the anomaly is block-diagonal in the zonal wavenumber
``m``. This module fits one such predictor on normalised states ``z = (x − μ)/σ``
(``[B, C, H, W]``, ``C`` channels) and applies it:

1. anomaly from the climatological zonal mean: ``a = z − z̄`` (``z̄`` ``[C, H, 1]``, the time and
   zonal mean of the training states);
2. spectrum ``â = SHT(a)`` (torch-harmonics, orthonormal, degrees ``l < L``, orders ``m < L``);
3. for each order ``m`` the vector ``v_m = (â_{c,l,m})_{c, l ≥ m}`` (length ``D_m = C·(L − m)``)
   is projected on its ``K`` leading EOFs ``E_m`` ``[D_m, K]`` (orthonormal columns):
   ``p_m = E_mᴴ v_m``; the principal components advance by the fitted operator ``A_m`` ``[K, K]``
   (complex: a rotation-equivariant real operator is complex-linear on each ``m > 0``):
   ``p_m ← A_m p_m``;
4. the part of ``a`` outside the EOF subspace (small scales, unresolved structures)
   ``r = a − SHT⁻¹(E p)`` is damped per channel: ``r ← ρ_c r``;
5. ``z_{t+dt} = z̄ + SHT⁻¹(E A p) + ρ ⊙ r``.

Fit (:func:`fit_linear_prior`, from ``N`` pairs ``(z_t, z_{t+dt})``): ``E_m`` = leading right
singular vectors of the ``[N, D_m]`` matrix of ``v_m(z_t)``;
``A_mᵀ = (P_0ᴴ P_0 + ε·tr(P_0ᴴ P_0)/K · I)⁻¹ P_0ᴴ P_1`` (ridge regression of the next principal
components on the current ones, the classic LIM ``A = C_τ C_0⁻¹``); eigenvalues of ``A_m`` with
modulus above ``max_growth`` are shrunk to it, so that rollouts of any length stay bounded;
``ρ_c`` = the area-weighted regression coefficient of ``r_{t+dt}`` on ``r_t``, clipped to [0, 1].

The result is linear in ``z`` (affine), differentiable (4DVar), and small: ``K·Σ_m D_m`` complex
numbers (``L = 32``, ``K = 32``, 69 channels: 2.3 M, 9.3 MB in float32).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from tqdm import tqdm

from aivarda.config import StrictModel
from aivarda.errors import DataError
from aivarda.grid import Grid


class LinearPriorConfig(StrictModel):
    """``model.linear_prior`` of a training config: the spectral LIM under the network."""

    lmax: int = Field(32, ge=2, description="spectral truncation L (degrees and orders < L)")
    modes: int = Field(32, ge=1, description="EOFs K kept per zonal wavenumber")
    ridge: float = Field(1e-3, ge=0, description="relative Tikhonov regularisation ε of the regression")
    max_growth: float = Field(1.0, gt=0, description="largest eigenvalue modulus allowed per step")


class SpectralLIM(nn.Module):
    """Normalised state ``[B, C, H, W]`` → normalised state ``dt`` later (see the module docstring).

    Built unfitted (``fitted`` is 0); :func:`fit_linear_prior` fills the buffers, or
    ``load_state_dict`` does from a checkpoint.
    """

    def __init__(self, cfg: LinearPriorConfig | dict[str, Any], grid: Grid, n_channels: int) -> None:
        super().__init__()
        self.cfg = cfg if isinstance(cfg, LinearPriorConfig) else LinearPriorConfig(**cfg)
        from aivarda.sphere import default_truncation

        self.L = min(self.cfg.lmax, default_truncation(grid))
        self.grid, self.C = grid, int(n_channels)
        self.dims = [self.C * (self.L - m) for m in range(self.L)]
        self.K = [min(self.cfg.modes, d) for d in self.dims]
        self.register_buffer("fitted", torch.zeros((), dtype=torch.uint8))
        self.register_buffer("zonal_mean", torch.zeros(self.C, grid.nlat, 1))
        self.register_buffer("rho", torch.zeros(self.C, 1, 1))
        for m, (d, k) in enumerate(zip(self.dims, self.K)):
            self.register_buffer(f"eof_{m}", torch.zeros(d, k, dtype=torch.complex64))
            self.register_buffer(f"op_{m}", torch.zeros(k, k, dtype=torch.complex64))
        self._transforms: dict[str, Any] = {}

    # ------------------------------------------------------------------ transforms (not in the state dict)
    def _sht(self, device: torch.device) -> tuple[nn.Module, nn.Module]:
        key = str(device)
        if key not in self._transforms:
            import torch_harmonics as th

            g, L = self.grid, self.L
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                # float64 weights: torch-harmonics casts them to the input's dtype
                fwd = th.RealSHT(g.nlat, g.nlon, lmax=L, mmax=L, grid=g.sht_grid).double().to(device)
                inv = th.InverseRealSHT(g.nlat, g.nlon, lmax=L, mmax=L, grid=g.sht_grid).double().to(device)
            self._transforms[key] = (fwd, inv)
        return self._transforms[key]

    def eofs(self, m: int) -> Tensor:
        return getattr(self, f"eof_{m}")

    def operator(self, m: int) -> Tensor:
        return getattr(self, f"op_{m}")

    def spectrum_vectors(self, spec: Tensor) -> list[Tensor]:
        """``[B, C, L, L]`` spectrum → per order ``m`` the vectors ``v_m`` ``[B, C·(L−m)]``."""
        return [spec[:, :, m:, m].reshape(spec.shape[0], -1) for m in range(self.L)]

    def vectors_spectrum(self, vectors: list[Tensor]) -> Tensor:
        """Inverse of :meth:`spectrum_vectors` (zeros where ``l < m``)."""
        cols = []
        for m, v in enumerate(vectors):
            col = v.reshape(v.shape[0], self.C, self.L - m)
            cols.append(torch.nn.functional.pad(col, (m, 0)))
        return torch.stack(cols, dim=-1)

    # ------------------------------------------------------------------ dynamics
    def _components(self, a: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per order ``m`` of the anomaly ``a`` ``[B, C, H, W]``: the principal components
        ``p_m = E_mᴴ v_m`` ``[B, K]`` and the EOFs ``E_m`` (in ``a``'s complex dtype)."""
        cplx = torch.complex128 if a.dtype == torch.float64 else torch.complex64
        fwd, _ = self._sht(a.device)
        eofs = [self.eofs(m).to(cplx) for m in range(self.L)]
        pcs = [v @ e.conj() for v, e in zip(self.spectrum_vectors(fwd(a)), eofs)]
        return pcs, eofs

    def unresolved(self, a: Tensor) -> Tensor:
        """``a − SHT⁻¹(E Eᴴ v(a))``: the part of an anomaly ``[B, C, H, W]`` outside the EOF subspace."""
        pcs, eofs = self._components(a)
        _, inv = self._sht(a.device)
        return a - inv(self.vectors_spectrum([p @ e.T for p, e in zip(pcs, eofs)]))

    def forward(self, z: Tensor) -> Tensor:
        if not bool(self.fitted):
            raise DataError("linear prior: not fitted (train the model with `aivarda train-model`)")
        with torch.autocast(z.device.type, enabled=False):
            real = torch.float64 if z.dtype == torch.float64 else torch.float32
            _, inv = self._sht(z.device)
            a = z.to(real) - self.zonal_mean.to(real)
            pcs, eofs = self._components(a)
            pred = [(p @ self.operator(m).to(e.dtype).T) @ e.T for m, (p, e) in enumerate(zip(pcs, eofs))]
            proj = [p @ e.T for p, e in zip(pcs, eofs)]
            both = inv(torch.cat([self.vectors_spectrum(pred), self.vectors_spectrum(proj)]))
            pred_field, proj_field = both.split(z.shape[0])
            out = self.zonal_mean.to(real) + pred_field + self.rho.to(real) * (a - proj_field)
        return out.to(z.dtype)

    def extra_repr(self) -> str:
        return f"L={self.L}, modes={self.cfg.modes}, channels={self.C}, fitted={bool(self.fitted)}"


@torch.no_grad()
def fit_linear_prior(
    prior: SpectralLIM,
    pairs: Iterable[tuple[Tensor, Tensor]],
    weights: Tensor,
    progress: bool = True,
) -> dict[str, float]:
    """Fit ``prior`` in place from batches of normalised pairs ``(z_t, z_{t+dt})`` ``[B, C, H, W]``
    (held in memory: the fit passes over them four times). ``weights`` ``[H]``: area weights (mean 1).

    Returns fit diagnostics: pairs used, the explained fraction of the tendency variance
    ``1 − ‖z_{t+dt} − ẑ_{t+dt}‖²/‖z_{t+dt} − z_t‖²`` (area-weighted, on the training pairs) and the
    largest eigenvalue modulus before shrinking.
    """
    pairs = list(pairs)
    if not pairs:
        raise DataError("linear prior: no training pairs")
    n = sum(z0.shape[0] for z0, _ in pairs)
    if n < max(prior.K):
        raise DataError(f"linear prior: {n} training pairs, fewer than modes = {max(prior.K)}")
    fwd, _ = prior._sht(torch.device("cpu"))
    # 1. zonal-mean climatology
    total = sum(z0.double().sum(dim=(0, 3)) for z0, _ in pairs)
    prior.zonal_mean.copy_((total / (n * prior.grid.nlon))[..., None].float())
    # 2. spectra of the anomalies, per order m
    v0: list[list[Tensor]] = [[] for _ in range(prior.L)]
    v1: list[list[Tensor]] = [[] for _ in range(prior.L)]
    for z0, z1 in tqdm(pairs, desc="linear prior: spectra", unit="batch", disable=not progress):
        for store, z in ((v0, z0), (v1, z1)):
            for m, v in enumerate(prior.spectrum_vectors(fwd(z.double() - prior.zonal_mean.double()))):
                store[m].append(v.to(torch.complex128))
    # 3. EOFs and the regression of the principal components, per m
    max_eig = 0.0
    for m in range(prior.L):
        x0, x1 = torch.cat(v0[m]), torch.cat(v1[m])
        k = prior.K[m]
        _, _, vh = torch.linalg.svd(x0, full_matrices=False)
        e = vh[:k].T  # [D, K], orthonormal columns spanning the rows of x0 (x0 = U S Vh)
        p0, p1 = x0 @ e.conj(), x1 @ e.conj()
        gram = p0.conj().T @ p0
        reg = prior.cfg.ridge * gram.diagonal().real.sum() / k
        a_t = torch.linalg.solve(gram + reg * torch.eye(k, dtype=gram.dtype), p0.conj().T @ p1)
        op = a_t.T
        eig, vec = torch.linalg.eig(op)
        max_eig = max(max_eig, float(eig.abs().max()))
        if float(eig.abs().max()) > prior.cfg.max_growth:
            shrunk = torch.where(eig.abs() > prior.cfg.max_growth, eig / eig.abs() * prior.cfg.max_growth, eig)
            op = vec @ torch.diag(shrunk) @ torch.linalg.inv(vec)
        prior.eofs(m).copy_(e.to(torch.complex64))
        prior.operator(m).copy_(op.to(torch.complex64))
    # 4. damping of the unresolved part, per channel
    prior.rho.fill_(1.0)
    prior.fitted.fill_(1)
    w = weights.reshape(1, 1, -1, 1).to(torch.float64)
    num = torch.zeros(prior.C, dtype=torch.float64)
    den = torch.zeros(prior.C, dtype=torch.float64)
    for z0, z1 in pairs:
        r0 = prior.unresolved(z0.float() - prior.zonal_mean).double()
        r1 = prior.unresolved(z1.float() - prior.zonal_mean).double()
        num += (w * r1 * r0).sum(dim=(0, 2, 3))
        den += (w * r0 * r0).sum(dim=(0, 2, 3))
    prior.rho.copy_((num / den.clamp_min(1e-30)).clamp(0.0, 1.0).float().reshape(-1, 1, 1))
    # diagnostics
    err = ten = 0.0
    wf = w.float()
    for z0, z1 in pairs:
        err += float((wf * (prior(z0.float()) - z1.float()).square()).sum())
        ten += float((wf * (z1.float() - z0.float()).square()).sum())
    return {
        "pairs": float(n),
        "explained_tendency_variance": 1.0 - err / max(ten, 1e-30),
        "max_eigenvalue_modulus": max_eig,
        "rho_mean": float(prior.rho.mean()),
    }
