"""Fitting WRFDA-GEN_BE-style static background-error statistics from NMC samples (docs/genbe.md).

Given samples ``δx_n`` (``n = 1 … N``, ``[C, H, W]`` on the state grid, physical units):

1. **Control grid and mean**: regrid bilinearly to the control grid and remove the sample mean at
   every grid point.
2. **ψ, χ**: on every level, ``(u, v) → (ψ, χ)`` with the vector spherical-harmonic transform
   (:meth:`SphereOps.wind_to_streamfunction`, m²/s). The control variables are ψ, χ and the other
   upper-air variables (z, q, t) on the ``P`` levels, and the surface fields.
3. **Balance** (regression on ψ, per latitude band ``b``): for a balanced variable ``v`` (default z,
   t, χ and the surface fields) with ``P_v`` levels,
   ``v_b(φ, λ) = R_v(b) ψ(φ, λ)`` with ``R_v(b) = C_vψ(b) (C_ψψ(b) + ε I)⁻¹`` ``[P_v, P]``, the
   covariances pooled over the samples and the grid points of band ``b`` and
   ``ε = ridge · tr(C_ψψ(b))/P``. The unbalanced part is ``v_u = v − R_v ψ``; ψ and the unbalanced
   variables are treated as uncorrelated.
4. **Vertical modes**: per variable, the area-weighted vertical covariance of the unbalanced part,
   ``V_ij = ⟨v_u,i v_u,j⟩`` (empirical), or the release's parametric ``√(σ_i σ_j) exp(−|i−j|)``
   with ``σ_i = V_ii`` (``vertical: parametric``); eigenpairs ``V = E Λ Eᵀ``. Surface fields are
   single-level variables: ``E = 1``, ``Λ = σ²``.
5. **Length scales**: the unbalanced part projected onto the modes, ``h_k = e_kᵀ v_u / √λ_k``, has
   per-mode length scale ``L_k = (8 var(h_k) / var(∇² h_k))^¼`` (spectral Laplacian on the sphere);
   the transform's Gaussian spectral correlation gets the scale ``s_k`` whose spectrum has exactly
   this ``L_k`` (:meth:`SphereOps.calibrate_scale`), so that draws of ``U z`` reproduce ``L_k``.

Everything is saved in one ``torch.save`` dict (:class:`GenBeStatistics`) with its metadata.
Memory: the control-variable fields are held in float32 (``4·N·C·H_c·W_c`` bytes); transforms and
moments are computed in float64, a few samples at a time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from aivarda.sphere import EARTH_RADIUS, Regrid, SphereOps
from aivarda.channels import ChannelLayout
from aivarda.errors import DataError
from aivarda.files import load_torch_file, save_torch_file
from aivarda.grid import Grid

FORMAT = "aivarda-genbe"
VERSION = 1


@dataclass
class FitSettings:
    """Choices of the fit (all stored with the statistics)."""

    vertical: Literal["empirical", "parametric"] = "empirical"
    balance: bool = True
    balanced: tuple[str, ...] = ("chi", "z", "t", "surface")
    bands: int | None = None  # latitude bands of the regression; None: one per control-grid row
    ridge: float = 1e-3
    lmax: int | None = None
    radius: float = EARTH_RADIUS


@dataclass
class GenBeStatistics:
    """Fitted GEN_BE statistics.

    ``variables``: control variables in latent order, each ``{"name", "levels", "channels"}`` where
    ``channels`` are the state channel indices it stands for (ψ and χ stand for u and v together).
    Per variable ``name``: ``eigenvectors[name] [P, P]`` (columns = modes), ``eigenvalues[name] [P]``,
    ``length_scale[name] [P]`` (measured, m), ``spectral_scale[name] [P]`` (calibrated, m);
    ``regression[name] [H_c, P_v, P_ψ]`` for balanced variables; ``variance`` holds the fitted
    per-level variance of every control variable's unbalanced part (``[P]``).
    """

    state_grid: Grid
    control_grid: Grid
    layout: ChannelLayout
    lmax: int
    radius: float
    variables: list[dict[str, Any]]
    eigenvectors: dict[str, Tensor]
    eigenvalues: dict[str, Tensor]
    length_scale: dict[str, Tensor]
    spectral_scale: dict[str, Tensor]
    regression: dict[str, Tensor]
    variance: dict[str, Tensor]
    settings: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def wind(self) -> bool:
        return any(v["name"] == "psi" for v in self.variables)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "state_grid": self.state_grid.to_dict(),
            "control_grid": self.control_grid.to_dict(),
            "layout": self.layout.to_dict(),
            "lmax": self.lmax,
            "radius": self.radius,
            "variables": self.variables,
            "eigenvectors": self.eigenvectors,
            "eigenvalues": self.eigenvalues,
            "length_scale": self.length_scale,
            "spectral_scale": self.spectral_scale,
            "regression": self.regression,
            "variance": self.variance,
            "settings": self.settings,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenBeStatistics:
        return cls(
            Grid.from_dict(d["state_grid"]),
            Grid.from_dict(d["control_grid"]),
            ChannelLayout.from_dict(d["layout"]),
            int(d["lmax"]),
            float(d["radius"]),
            list(d["variables"]),
            dict(d["eigenvectors"]),
            dict(d["eigenvalues"]),
            dict(d["length_scale"]),
            dict(d["spectral_scale"]),
            dict(d["regression"]),
            dict(d["variance"]),
            dict(d["settings"]),
            dict(d.get("metadata", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        return save_torch_file(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> GenBeStatistics:
        return cls.from_dict(
            load_torch_file(path, FORMAT, VERSION, "GEN_BE statistics file", "create it with `aivarda learn-b genbe`")
        )


def control_variables(layout: ChannelLayout) -> list[dict[str, Any]]:
    """The control variables of ``layout``: ψ, χ (if u and v are present), the other upper-air
    variables, then each surface field."""
    out: list[dict[str, Any]] = []
    levels = len(layout.levels)
    wind = "u" in layout.upper_air and "v" in layout.upper_air
    if wind:
        ch = list(range(layout.variable_slice("u").start, layout.variable_slice("u").stop))
        ch += list(range(layout.variable_slice("v").start, layout.variable_slice("v").stop))
        out += [{"name": "psi", "levels": levels, "channels": ch}, {"name": "chi", "levels": levels, "channels": ch}]
    for var in layout.upper_air:
        if wind and var in ("u", "v"):
            continue
        s = layout.variable_slice(var)
        out.append({"name": var, "levels": levels, "channels": list(range(s.start, s.stop))})
    for var in layout.surface:
        out.append({"name": var, "levels": 1, "channels": [layout.index(var)]})
    return out


def _is_balanced(name: str, layout: ChannelLayout, settings: FitSettings) -> bool:
    if name == "psi":
        return False
    return name in settings.balanced or ("surface" in settings.balanced and name in layout.surface)


def _band_rows(nlat: int, bands: int | None) -> list[np.ndarray]:
    if bands is None or bands >= nlat:
        return [np.array([i]) for i in range(nlat)]
    return [a for a in np.array_split(np.arange(nlat), bands) if a.size]


def to_control_fields(
    samples: Tensor, layout: ChannelLayout, ops: SphereOps, regrid: Regrid, chunk: int = 16
) -> dict[str, Tensor]:
    """State-grid samples ``[N, C, H_s, W_s]`` → control-variable fields ``{name: [N, P, H, W]}``
    (sample mean removed, winds as ψ and χ). Computed in float64 ``chunk`` samples at a time and
    stored in float32 (the moments below are accumulated in float64)."""
    mean = regrid(samples.mean(0, dtype=torch.float64))
    names = [v["name"] for v in control_variables(layout)]
    out: dict[str, list[Tensor]] = {name: [] for name in names}
    for n0 in range(0, samples.shape[0], chunk):
        x = regrid(samples[n0 : n0 + chunk]).double() - mean
        for var in control_variables(layout):
            name = var["name"]
            if name == "psi":
                psi, chi = ops.wind_to_streamfunction(x[:, layout.variable_slice("u")], x[:, layout.variable_slice("v")])
                out["psi"].append(psi.float())
                out["chi"].append(chi.float())
            elif name != "chi":
                out[name].append(x[:, var["channels"]].float())
    return {name: torch.cat(parts) for name, parts in out.items()}


def fit_regression(target: Tensor, psi: Tensor, rows: list[np.ndarray], ridge: float) -> Tensor:
    """Least-squares balance coefficients ``R [H, P_v, P]`` (float64) of ``target [N, P_v, H, W]``
    on ``psi [N, P, H, W]``, one matrix per latitude band (rows of a band share it)."""
    H = psi.shape[-2]
    P, Pv = psi.shape[1], target.shape[1]
    R = torch.zeros(H, Pv, P, dtype=torch.float64)
    for band in rows:
        X = psi[:, :, band, :].double().permute(0, 2, 3, 1).reshape(-1, P)  # [n, P]
        Y = target[:, :, band, :].double().permute(0, 2, 3, 1).reshape(-1, Pv)
        cxx = X.T @ X
        eps = ridge * torch.trace(cxx) / P + 1e-300
        coef = torch.linalg.solve(cxx + eps * torch.eye(P, dtype=cxx.dtype), X.T @ Y)  # [P, Pv]
        R[band] = coef.T
    return R


def apply_regression(R: Tensor, psi: Tensor) -> Tensor:
    """``Σ_j R[h, i, j] ψ[..., j, h, w]`` → ``[..., P_v, H, W]``."""
    return torch.einsum("hij,...jhw->...ihw", R.to(psi), psi)


def vertical_covariance(x: Tensor, weights: Tensor, kind: str, chunk: int = 16) -> Tensor:
    """Area-weighted covariance over levels ``[P, P]`` (float64) of ``x [N, P, H, W]`` (zero-mean)."""
    w = weights.double()[:, None]
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
    for n0 in range(0, x.shape[0], chunk):
        xc = x[n0 : n0 + chunk].double()
        cov += torch.einsum("nihw,njhw->ij", xc * w, xc)
    cov /= x.shape[0] * x.shape[2] * x.shape[3]
    if kind == "parametric":
        sigma = cov.diagonal().clamp_min(0)
        idx = torch.arange(cov.shape[0], dtype=torch.float64)
        cov = torch.sqrt(sigma[:, None] * sigma[None, :]) * torch.exp(-(idx[:, None] - idx[None, :]).abs())
    return 0.5 * (cov + cov.T)


def mode_length_scales(
    x: Tensor, eigenvectors: Tensor, eigenvalues: Tensor, ops: SphereOps, weights: Tensor, chunk: int = 16
) -> Tensor:
    """``L_k = (8 var h_k / var ∇²h_k)^¼`` of the modes ``h_k = e_kᵀ x / √λ_k`` of ``x [N, P, H, W]``."""
    w = weights.double()[:, None]
    var = torch.zeros(eigenvalues.shape[0], dtype=torch.float64)
    var_lap = torch.zeros_like(var)
    for n0 in range(0, x.shape[0], chunk):
        h = torch.einsum("ik,nihw->nkhw", eigenvectors, x[n0 : n0 + chunk].double()) / eigenvalues.sqrt()[:, None, None]
        var += (h**2 * w).sum(dim=(0, 2, 3))
        var_lap += (ops.laplacian(h) ** 2 * w).sum(dim=(0, 2, 3))
    return (8 * var / var_lap.clamp_min(1e-300)) ** 0.25


def fit_genbe(
    samples: Tensor,
    layout: ChannelLayout,
    grid: Grid,
    control_grid: Grid | None = None,
    settings: FitSettings | None = None,
    metadata: dict[str, Any] | None = None,
    state_grid: Grid | None = None,
    progress: bool = False,
) -> GenBeStatistics:
    """Fit GEN_BE statistics (module docstring) from NMC samples ``[N, C, H, W]`` on ``grid``.

    ``control_grid`` (default ``grid``) carries the statistics; ``state_grid`` (default ``grid``) is
    the grid of the analysis states the transform ``U`` will produce; ``progress``: a tqdm bar over
    the control variables."""
    settings = settings or FitSettings()
    control_grid = control_grid or grid
    state_grid = state_grid or grid
    if samples.ndim != 4 or samples.shape[1] != len(layout) or tuple(samples.shape[2:]) != grid.shape:
        raise DataError(
            f"GEN_BE: samples must be [N, {len(layout)}, {grid.nlat}, {grid.nlon}], got {list(samples.shape)}"
        )
    if samples.shape[0] < 2:
        raise DataError(f"GEN_BE: need at least 2 samples, got {samples.shape[0]}")
    ops = SphereOps(control_grid, settings.radius, settings.lmax)
    fields = to_control_fields(samples, layout, ops, Regrid(grid, control_grid))
    weights = torch.as_tensor(np.asarray(control_grid.weights), dtype=torch.float64)
    variables = control_variables(layout)
    regression: dict[str, Tensor] = {}
    rows = _band_rows(control_grid.nlat, settings.bands)
    eigenvectors, eigenvalues, length_scale, spectral_scale, variance = {}, {}, {}, {}, {}
    for var in tqdm(variables, desc="GEN_BE", unit="variable", disable=not progress):
        name = var["name"]
        if settings.balance and "psi" in fields and _is_balanced(name, layout, settings):
            regression[name] = fit_regression(fields[name], fields["psi"], rows, settings.ridge)
            fields[name] = fields[name] - apply_regression(regression[name], fields["psi"])
        x = fields[name]
        cov = vertical_covariance(x, weights, settings.vertical)
        variance[name] = vertical_covariance(x, weights, "empirical").diagonal().clone()
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)
        evals, evecs = evals[order].clamp_min(0), evecs[:, order]
        tiny = 1e-12 * float(evals.max().clamp_min(1e-300))
        safe = torch.where(evals > tiny, evals, torch.ones_like(evals))
        L = mode_length_scales(x, evecs, safe, ops, weights)
        L = torch.where((evals > tiny) & torch.isfinite(L), L, torch.full_like(L, float(ops.radius)))
        eigenvectors[name], eigenvalues[name] = evecs, evals
        length_scale[name], spectral_scale[name] = L, ops.calibrate_scale(L)
    meta = {"n_samples": int(samples.shape[0]), **(metadata or {})}
    return GenBeStatistics(
        state_grid,
        control_grid,
        layout,
        ops.lmax,
        ops.radius,
        variables,
        eigenvectors,
        eigenvalues,
        length_scale,
        spectral_scale,
        regression,
        variance,
        {**asdict(settings), "balanced": list(settings.balanced)},
        meta,
    )
