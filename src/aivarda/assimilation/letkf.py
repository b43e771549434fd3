"""Local ensemble transform Kalman filter (LETKF; Hunt, Kostelich & Szunyogh 2007).

Notation. ``K`` forecast members ``x_f,k`` (the *background ensemble*), mean ``x̄_f`` and
anomalies ``X'_k = x_f,k − x̄_f``; ``Y_f,k = H(x_f,k)`` the members' model equivalents of the ``N``
observations ``y`` (any operator, also a 4D window: only ``Y_f`` enters), mean ``ȳ``, anomalies
``Y'_k``; ``R = diag(σ_o²)``.

Local domains. The state ``[K, *V, *D]`` is split into local domains along its trailing
``domain_ndim`` dimensions ``D``: one grid column ``(lat, lon)`` of a ``[C, H, W]`` atmosphere
(every channel of the column shares the domain's weights), one variable (or DAPPER's batch of
adjacent variables) of Lorenz-96. Each domain ``d`` sees the observations within the cutoff of its
:class:`LocalObs`, with a Gaspari–Cohn taper ``ρ_loc,dn ∈ (0, 1]``.

R-localisation: the local observation error variance is ``σ_o,n² / ρ_loc,dn``, i.e.
``R_d⁻¹ = diag(ρ_loc,dn / σ_o,n²)`` (DAPPER multiplies ``R^{-½} Y'`` and ``R^{-½}(y − ȳ)`` by
``√ρ_loc``, the same thing). With the standardised local quantities
``S = R_d^{-½} Y' [K, L]`` and ``δ = R_d^{-½}(y − ȳ) [L]`` the analysis in ensemble space is

    P̃a = [(K−1) I / ρ + S Sᵀ]⁻¹                 (K × K)
    W_a = [(K−1) P̃a]^½                           (symmetric square root)
    w̄  = P̃a S δ
    x_a,k = x̄_f + Σ_j X'_j (w̄_j + W_a,jk)

with ``ρ`` the multiplicative *prior* covariance inflation of Hunt et al. (``P_f → ρ P_f``). One
batched ``eigh`` of the ``(K−1) I/ρ + S Sᵀ = V Λ Vᵀ`` matrices of all domains gives
``P̃a = V Λ⁻¹ Vᵀ`` and ``W_a = √(K−1) V Λ^{-½} Vᵀ``. Since ``Y'ᵀ 1 = 0``, ``W_a 1 = √ρ 1``: the
transform's anomalies keep zero mean, the analysis mean is ``x̄_f + X' w̄``.

After the update, per state variable (in this order; each optional):

- RTPP (Zhang et al. 2004): ``X'_a ← (1 − α) X'_a + α X'_f``;
- RTPS (Whitaker & Hamill 2012): ``X'_a ← X'_a · (α σ_f + (1 − α) σ_a) / σ_a`` with ``σ`` the
  ensemble standard deviations (``α = 1`` restores the forecast spread);
- posterior multiplicative inflation ``X'_a ← λ X'_a`` (DAPPER's ``infl``, applied after the
  analysis in ``post_process``);
- a random mean-preserving rotation ``X'_a ← X'_a Tᵀ`` with ``T = V diag(1, Q) Vᵀ``, ``V`` an
  orthonormal basis whose first vector is ``1/√K`` and ``Q`` a random orthogonal ``(K−1)²``
  matrix (DAPPER's ``rot=True``, ``genOG_1``); mean and covariance are unchanged.

Localisation convention (DAPPER's ``loc_rad``): a *length scale* ``ℓ`` gives the Gaspari–Cohn
(1999, eq. 4.10) taper ``GC(d / c)`` with half-width ``c = 1.82 ℓ`` (DAPPER's rounding of
``√(10/3)``, which makes the taper's curvature at 0 that of ``exp(−d²/(2ℓ²))``); the taper is zero
beyond the cutoff ``2c = 3.64 ℓ``, and observations with a taper ``≤ min_taper`` (DAPPER: 1e-3)
are dropped. No vertical localisation: a column sees every observation (any channel/level) within
the horizontal cutoff.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from pydantic import Field, model_validator
from torch import Tensor

from aivarda.sphere import EARTH_RADIUS
from aivarda.config import StrictModel
from aivarda.errors import DataError, ObservationError
from aivarda.grid import Grid
from aivarda.observations.obsset import ObsSet

GC_HALF_WIDTH_PER_LENGTH_SCALE = 1.82
"""Gaspari–Cohn half-width ``c`` per length scale ``ℓ`` (DAPPER's ``dist2coeff``, ``R = 1.82 ·
radius``); the taper vanishes beyond ``2c``."""

DEFAULT_MIN_TAPER = 1e-3  # DAPPER's inds_and_coeffs(cutoff=1e-3)


class LETKFConfig(StrictModel):
    """Settings of the LETKF analysis (see the module docstring for the equations)."""

    length_scale_km: float = Field(
        1000.0,
        gt=0,
        description="horizontal localisation length scale ℓ (km): Gaspari–Cohn half-width 1.82 ℓ, zero beyond 3.64 ℓ",
    )
    inflation: float = Field(1.0, ge=1.0, description="prior multiplicative covariance inflation ρ (P_f → ρ P_f)")
    posterior_inflation: float = Field(1.0, gt=0, description="factor on the analysis anomalies after the update")
    rtps: float = Field(0.0, ge=0.0, le=1.0, description="relaxation to prior spread α (Whitaker & Hamill 2012)")
    rtpp: float = Field(0.0, ge=0.0, le=1.0, description="relaxation to prior perturbations α (Zhang et al. 2004)")
    random_rotation: bool = Field(False, description="random mean-preserving rotation of the analysis anomalies")
    min_taper: float = Field(DEFAULT_MIN_TAPER, ge=0.0, lt=1.0, description="drop observations with a taper ≤ this")
    float64: bool = Field(True, description="compute in float64 (the result has the forecast's dtype)")

    @model_validator(mode="after")
    def _one_relaxation(self) -> LETKFConfig:
        if self.rtps > 0 and self.rtpp > 0:
            raise ValueError(f"use either rtps or rtpp, not both (got rtps={self.rtps}, rtpp={self.rtpp})")
        return self

    @property
    def cutoff_km(self) -> float:
        """Distance beyond which an observation has no weight: ``2 · 1.82 · ℓ``."""
        return 2.0 * GC_HALF_WIDTH_PER_LENGTH_SCALE * self.length_scale_km


# ---------------------------------------------------------------------------------- taper
def gaspari_cohn(r: Tensor) -> Tensor:
    """Gaspari & Cohn (1999) eq. 4.10, the compactly supported 5th-order piecewise rational
    function of ``r = d / c``: 1 at 0, zero for ``r ≥ 2``.

    ``0 ≤ r ≤ 1``: ``−r⁵/4 + r⁴/2 + 5r³/8 − 5r²/3 + 1``;
    ``1 < r < 2``: ``r⁵/12 − r⁴/2 + 5r³/8 + 5r²/3 − 5r + 4 − 2/(3r)``.
    """
    r = r.abs()
    inner = 1 + r**2 * (-(r**3) / 4 + r**2 / 2) + r**3 * (5 / 8) - r**2 * (5 / 3)
    ro = r.clamp(1.0, 2.0)
    outer = ro**2 * (ro**3 / 12 - ro**2 / 2) + ro**3 * (5 / 8) + ro**2 * (5 / 3) - 5 * ro + 4 - (2 / 3) / ro
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    return torch.where(r <= 1, inner, torch.where(r < 2, outer.clamp_min(0), zero))


# ---------------------------------------------------------------------------------- local observations
@dataclass(frozen=True, eq=False)
class LocalObs:
    """The observations each local domain sees, padded to a common length ``L``.

    ``index[d, l]`` is an observation (0 … N−1) and ``taper[d, l] ∈ (0, 1]`` its Gaspari–Cohn
    weight for domain ``d``; padding entries have taper 0 (and index 0), so they contribute
    nothing. ``n_obs`` is ``N``, the length of the observation vector the indices refer to.
    """

    index: Tensor  # int64 [D, L]
    taper: Tensor  # float64 [D, L]
    n_obs: int

    def __post_init__(self) -> None:
        if self.index.ndim != 2 or self.index.shape != self.taper.shape:
            raise ObservationError(
                f"LocalObs: index and taper must be [D, L] of one shape, got {list(self.index.shape)} and {list(self.taper.shape)}"
            )
        if self.index.numel() and (int(self.index.min()) < 0 or int(self.index.max()) >= self.n_obs):
            raise ObservationError(f"LocalObs: an observation index is outside 0 … {self.n_obs - 1}")

    @property
    def n_domains(self) -> int:
        return int(self.index.shape[0])

    def counts(self) -> Tensor:
        """Number of observations each domain sees, ``[D]``."""
        return (self.taper > 0).sum(1)

    def to(self, device: torch.device | str) -> LocalObs:
        return LocalObs(self.index.to(device), self.taper.to(device), self.n_obs)

    @classmethod
    def everywhere(cls, n_domains: int, n_obs: int, device: torch.device | str | None = None) -> LocalObs:
        """No localisation: every domain sees every observation with weight 1 (global ETKF)."""
        index = torch.arange(n_obs, device=device).expand(n_domains, n_obs).contiguous()
        return cls(index, torch.ones(n_domains, n_obs, dtype=torch.float64, device=device), n_obs)

    @classmethod
    def from_distances(cls, distance: Tensor, half_width: float, min_taper: float = DEFAULT_MIN_TAPER) -> LocalObs:
        """From dense distances ``[D, N]`` (small problems): taper ``GC(distance / half_width)``;
        ``half_width = inf`` means no localisation."""
        obs_index = torch.arange(distance.shape[1], device=distance.device)
        return cls._from_candidates(distance.to(torch.float64), obs_index, half_width, min_taper, distance.shape[1])

    @classmethod
    def _from_candidates(
        cls, distance: Tensor, obs_index: Tensor, half_width: float, min_taper: float, n_obs: int, near: Tensor | None = None
    ) -> LocalObs:
        """``distance [D, M]`` to the candidate observations ``obs_index`` (``[M]``, or ``[D, M]``
        per domain); the taper is only evaluated where ``near`` (default: ``distance < 2·half_width``)."""
        obs_index = obs_index.expand(distance.shape) if obs_index.ndim == 1 else obs_index
        cols, valid = _compact(distance < 2 * half_width if near is None else near)
        taper = torch.where(valid, gaspari_cohn(torch.gather(distance, 1, cols) / half_width), 0.0)
        keep_cols, keep = _compact(taper > min_taper)
        chosen = torch.gather(cols, 1, keep_cols)
        return cls(
            torch.where(keep, torch.gather(obs_index, 1, chosen), 0),
            torch.where(keep, torch.gather(taper, 1, keep_cols), 0.0),
            n_obs,
        )

    @classmethod
    def concat_padded(cls, parts: list[LocalObs]) -> LocalObs:
        """Stack the domains of several ``LocalObs`` (same ``n_obs``), padding to the widest."""
        width = max(p.index.shape[1] for p in parts)
        index = torch.cat([torch.nn.functional.pad(p.index, (0, width - p.index.shape[1])) for p in parts])
        taper = torch.cat([torch.nn.functional.pad(p.taper, (0, width - p.taper.shape[1])) for p in parts])
        return cls(index, taper, parts[0].n_obs)


def _compact(mask: Tensor) -> tuple[Tensor, Tensor]:
    """The columns where ``mask [R, M]`` is true, left-aligned: ``cols [R, width]`` and
    ``valid [R, width]`` (``width`` the largest count; padding has column 0, valid false)."""
    counts = mask.sum(1)
    width = int(counts.max()) if mask.numel() else 0
    cols = torch.zeros(mask.shape[0], width, dtype=torch.int64, device=mask.device)
    rows, m = mask.nonzero(as_tuple=True)
    cols[rows, (mask.cumsum(1) - 1)[rows, m]] = m
    return cols, torch.arange(width, device=mask.device) < counts[:, None]


def periodic_local_obs(
    n_points: int,
    obs_position: Tensor,
    length_scale: float,
    *,
    batch: int = 1,
    min_taper: float = DEFAULT_MIN_TAPER,
) -> LocalObs:
    """Local observations on a periodic 1-D domain of ``n_points`` (Lorenz-96), DAPPER's way.

    Domain ``d`` holds the state points ``d·batch … (d+1)·batch − 1``; its distance to an
    observation at position ``p`` is the mean over those points of the periodic distance
    ``min(|i − p|, n − |i − p|)`` (DAPPER's ``nd_Id_localization`` with ``batch_shape=(batch,)``,
    whose ``obs_taperer`` averages the distances of the batch). ``length_scale`` is DAPPER's
    ``loc_rad`` (``inf``: no localisation). Use with ``domain_ndim=1`` on a state reshaped to
    ``[K, batch, n_points // batch]`` (see :func:`batched_domains`).
    """
    if n_points % batch:
        raise DataError(f"periodic_local_obs: {n_points} points do not split into batches of {batch}")
    pos = torch.as_tensor(obs_position, dtype=torch.float64)
    points = torch.arange(n_points, dtype=torch.float64, device=pos.device).reshape(-1, batch)  # [D, batch]
    diff = (points[:, :, None] - pos[None, None, :]).abs()
    distance = torch.minimum(diff, n_points - diff).mean(1)  # [D, N]
    return LocalObs.from_distances(distance, GC_HALF_WIDTH_PER_LENGTH_SCALE * length_scale, min_taper)


def batched_domains(x: Tensor, batch: int) -> Tensor:
    """``[..., n] → [..., batch, n // batch]``: variable ``d·batch + b`` goes to ``[..., b, d]``,
    so that domain ``d`` (trailing dimension) is DAPPER's batch ``d`` of :func:`periodic_local_obs`."""
    return x.reshape(*x.shape[:-1], -1, batch).transpose(-1, -2)


def unbatched_domains(x: Tensor) -> Tensor:
    """Inverse of :func:`batched_domains`: ``[..., batch, D] → [..., batch·D]``."""
    return x.transpose(-1, -2).reshape(*x.shape[:-2], -1)


def great_circle(lat1: Tensor, lon1: Tensor, lat2: Tensor, lon2: Tensor) -> Tensor:
    """Central angle (radians) between points given in degrees (haversine formula; broadcasts)."""
    p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
    dlat, dlon = p2 - p1, torch.deg2rad(lon2 - lon1)
    h = torch.sin(dlat / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dlon / 2) ** 2
    return 2 * torch.asin(h.clamp(0.0, 1.0).sqrt())


def sphere_local_obs(
    grid: Grid, obs_lat: Tensor, obs_lon: Tensor, length_scale_km: float, *,
    min_taper: float = DEFAULT_MIN_TAPER, radius: float = EARTH_RADIUS, chunk_elements: int = 1 << 22,
) -> LocalObs:
    """Local observations of every grid column (domain ``d = j·W + i``, row-major ``[H, W]``).

    Taper ``GC(a·θ / (1.82 ℓ))`` of the great-circle distance ``a·θ`` (``a = radius``). No dense
    ``[H·W, N]`` matrix: the observations are sorted by latitude, and a grid row only looks at
    those within the cutoff in latitude (a lower bound of the great-circle distance),
    ``chunk_elements`` pairs at a time; among them, ``cos θ = sin φ sin φ_o + cos φ cos φ_o cos Δλ``
    selects those within the cutoff, and only these get the haversine distance and the taper.
    """
    lat = torch.as_tensor(obs_lat, dtype=torch.float64)
    lon = torch.as_tensor(obs_lon, dtype=torch.float64, device=lat.device)
    if lat.shape != lon.shape or lat.ndim != 1:
        raise ObservationError(f"sphere_local_obs: obs lat/lon must be 1-D of one length, got {list(lat.shape)}, {list(lon.shape)}")
    n_obs, device = int(lat.shape[0]), lat.device
    half_width = GC_HALF_WIDTH_PER_LENGTH_SCALE * length_scale_km * 1e3 / radius  # radians
    cutoff_deg = math.degrees(2.0 * half_width)
    cos_cutoff = math.cos(2.0 * half_width) - 1e-9 if 2.0 * half_width < math.pi else -math.inf  # margin: round-off
    order = torch.argsort(lat)
    lat_sorted = lat[order]
    grid_lon = torch.as_tensor(grid.lon, dtype=torch.float64, device=device)
    parts = []
    for row_lat in grid.lat.tolist():
        bounds = torch.tensor([row_lat - cutoff_deg, row_lat + cutoff_deg], dtype=torch.float64, device=device)
        lo, hi = int(torch.searchsorted(lat_sorted, bounds[0])), int(torch.searchsorted(lat_sorted, bounds[1], right=True))
        band = order[lo:hi]
        b_lat, b_lon = lat[band][None, :], lon[band][None, :]
        b_sin, b_cos = torch.sin(torch.deg2rad(b_lat)), torch.cos(torch.deg2rad(b_lat))
        r_sin, r_cos = math.sin(math.radians(row_lat)), math.cos(math.radians(row_lat))
        step = max(1, chunk_elements // max(1, band.numel()))
        for i0 in range(0, grid.nlon, step):
            col_lon = grid_lon[i0 : i0 + step, None]
            near = r_sin * b_sin + r_cos * b_cos * torch.cos(torch.deg2rad(b_lon - col_lon)) > cos_cutoff
            cols, valid = _compact(near)
            theta = great_circle(torch.full_like(col_lon, row_lat), col_lon, lat[band][cols], lon[band][cols])
            parts.append(LocalObs._from_candidates(theta, band[cols], half_width, min_taper, n_obs, near=valid))
    return LocalObs.concat_padded(parts)


# ---------------------------------------------------------------------------------- analysis
def ensemble_transform(S: Tensor, delta: Tensor, inflation: float = 1.0) -> tuple[Tensor, Tensor]:
    """Batched ensemble-space analysis: ``S [..., K, L] = R^{-½} Y'`` (rows = members),
    ``δ [..., L] = R^{-½}(y − ȳ)``; returns ``w̄ [..., K]`` and ``W_a [..., K, K]`` with
    ``P̃a = [(K−1) I/ρ + S Sᵀ]⁻¹``, ``W_a = [(K−1) P̃a]^½``, ``w̄ = P̃a S δ``."""
    k = S.shape[-2]
    eye = torch.eye(k, dtype=S.dtype, device=S.device)
    evals, evecs = torch.linalg.eigh(S @ S.mT + ((k - 1) / inflation) * eye)
    p_a = (evecs / evals[..., None, :]) @ evecs.mT
    w_a = (evecs * ((k - 1) / evals).sqrt()[..., None, :]) @ evecs.mT
    w_mean = (p_a @ (S @ delta[..., None]))[..., 0]
    return w_mean, w_a


def random_rotation(k: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """A random orthogonal ``K × K`` matrix ``T`` with ``T 1 = 1`` (DAPPER's ``genOG_1``):
    ``T = V diag(1, Q) Vᵀ``, ``V`` orthonormal with first column ``1/√K``, ``Q`` Haar-random."""
    basis = torch.eye(k, dtype=dtype)
    basis[:, 0] = 1.0
    v, _ = torch.linalg.qr(basis)  # first column ∝ 1
    q, r = torch.linalg.qr(torch.randn(k - 1, k - 1, generator=generator, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r))
    block = torch.eye(k, dtype=dtype)
    block[1:, 1:] = q
    return v @ block @ v.T


def letkf_update(
    X_f: Tensor,
    Y_f: Tensor,
    y: Tensor,
    error_std: Tensor,
    local: LocalObs,
    config: LETKFConfig,
    *,
    domain_ndim: int,
    generator: torch.Generator | None = None,
    chunk_elements: int = 1 << 24,
) -> Tensor:
    """The LETKF analysis ensemble ``[K, *S]`` (module docstring).

    Args:
        X_f: forecast members ``[K, *V, *D]``; the trailing ``domain_ndim`` dimensions index the
            local domains (``prod(D) = local.n_domains``), ``V`` the variables of a domain.
        Y_f: ``[K, N]`` model equivalents of the observations per member (``H`` already applied).
        y, error_std: ``[N]`` observation values and error standard deviations ``σ_o > 0``.
        local: the observations of each domain and their tapers.
        config: inflation, relaxation and precision settings (``length_scale_km`` is not read
            here: ``local`` carries the localisation).
        generator: random numbers for ``config.random_rotation``.
        chunk_elements: domains are processed in chunks of about this many ``K·L`` entries.
    """
    K = int(X_f.shape[0])
    if K < 2 or X_f.ndim < 1 + domain_ndim:
        raise DataError(f"LETKF: need a forecast ensemble [K ≥ 2, ..., {domain_ndim} domain dims], got {list(X_f.shape)}")
    domain_shape = tuple(X_f.shape[X_f.ndim - domain_ndim :])
    n_domains = math.prod(domain_shape)
    if n_domains != local.n_domains:
        raise DataError(f"LETKF: the ensemble has {n_domains} local domains {list(domain_shape)}, the localisation {local.n_domains}")
    n_obs = local.n_obs
    if Y_f.shape != (K, n_obs) or y.shape != (n_obs,) or error_std.shape != (n_obs,):
        raise ObservationError(
            f"LETKF: expected Y_f [{K}, {n_obs}], y [{n_obs}] and error_std [{n_obs}], "
            f"got {list(Y_f.shape)}, {list(y.shape)}, {list(error_std.shape)}"
        )
    if n_obs and not bool((error_std > 0).all()):
        raise ObservationError("LETKF: error_std must be positive")
    dtype = torch.float64 if config.float64 else X_f.dtype
    xf = X_f.to(dtype).reshape(K, -1, n_domains)
    x_mean = xf.mean(0)
    xf_anom = xf - x_mean
    dev = X_f.device
    sigma = error_std.to(device=dev, dtype=dtype)
    y_f = Y_f.to(device=dev, dtype=dtype)
    y_mean = y_f.mean(0)
    s_full = (y_f - y_mean) / sigma  # [K, N]
    d_full = (y.to(device=dev, dtype=dtype) - y_mean) / sigma  # [N]

    # Increments, so that a domain without observations (w̄ = 0, W_a = √ρ I) keeps its members
    # bit for bit when ρ = 1: x_a,k = x_f,k + X'w̄ + X'(W_a − I)_k.
    d_mean = torch.empty_like(x_mean)
    xa_anom = torch.empty_like(xf_anom)
    width = max(1, int(local.index.shape[1]))
    chunk = max(1, chunk_elements // (K * width))
    index, taper = local.index.to(X_f.device), local.taper.to(device=X_f.device, dtype=dtype)
    eye = torch.eye(K, dtype=dtype, device=X_f.device)
    for c0 in range(0, n_domains, chunk):
        idx, tap = index[c0 : c0 + chunk], taper[c0 : c0 + chunk]
        sq = tap.sqrt()
        S = s_full[:, idx].permute(1, 0, 2) * sq[:, None, :]  # [c, K, L]
        w_mean, w_a = ensemble_transform(S, d_full[idx] * sq, config.inflation)
        unseen = (tap == 0).all(1)  # no observation within the cutoff
        w_mean = torch.where(unseen[:, None], 0.0, w_mean)
        w_a = torch.where(unseen[:, None, None], math.sqrt(config.inflation) * eye, w_a) - eye
        anom = xf_anom[:, :, c0 : c0 + chunk]  # [K, M, c]
        d_mean[:, c0 : c0 + chunk] = torch.einsum("jmc,cj->mc", anom, w_mean)
        xa_anom[:, :, c0 : c0 + chunk] = anom + torch.einsum("jmc,cjk->kmc", anom, w_a)

    xa_anom = relax(xa_anom, xf_anom, rtps=config.rtps, rtpp=config.rtpp)
    if config.posterior_inflation != 1.0:
        xa_anom = config.posterior_inflation * xa_anom
    if config.random_rotation:
        rot = random_rotation(K, generator, dtype).to(xa_anom.device)
        xa_anom = torch.einsum("kj,jmc->kmc", rot, xa_anom)
    return (xf + d_mean + (xa_anom - xf_anom)).reshape(X_f.shape).to(X_f.dtype)


def relax(xa_anom: Tensor, xf_anom: Tensor, *, rtps: float = 0.0, rtpp: float = 0.0) -> Tensor:
    """Relaxation of the analysis anomalies ``[K, ...]`` towards the forecast's, per variable.

    RTPP: ``X'_f + (1 − α)(X'_a − X'_f)``. RTPS: ``X'_a [1 + α (σ_f − σ_a) / σ_a]``
    (``σ`` the ensemble standard deviation; where ``σ_a = 0`` the anomalies stay as they are).
    Written so that unchanged anomalies stay exactly unchanged.
    """
    if rtpp:
        xa_anom = xf_anom + (1.0 - rtpp) * (xa_anom - xf_anom)
    if rtps:
        sd_a, sd_f = xa_anom.std(0), xf_anom.std(0)
        factor = 1.0 + torch.where(sd_a > 0, rtps * (sd_f - sd_a) / sd_a.where(sd_a > 0, 1.0), 0.0)
        xa_anom = xa_anom * factor
    return xa_anom


def letkf_grid_analysis(
    X_f: Tensor,
    Y_f: Tensor,
    obs: ObsSet,
    grid: Grid,
    config: LETKFConfig,
    *,
    local: LocalObs | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """LETKF on a lat–lon grid: members ``[K, *V, H, W]``, one local domain per grid column.

    ``obs`` are the observations the analysis uses (e.g. ``ObsSet.active()``), in the order of
    ``Y_f [K, N]``'s columns; their ``lat``/``lon`` localise and their ``value``/``error_std``
    are ``y`` and ``σ_o``. ``local`` may be passed to reuse a localisation (a fixed network);
    otherwise :func:`sphere_local_obs` builds it with ``config.length_scale_km``.
    """
    if tuple(X_f.shape[-2:]) != grid.shape:
        raise DataError(f"LETKF: members {list(X_f.shape)} do not end with the grid's {list(grid.shape)}")
    if local is None:
        local = sphere_local_obs(grid, obs.lat, obs.lon, config.length_scale_km, min_taper=config.min_taper)
    return letkf_update(X_f, Y_f, obs.value, obs.error_std, local, config, domain_ndim=2, generator=generator)
