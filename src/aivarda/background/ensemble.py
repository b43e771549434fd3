"""Ensemble and hybrid background-error covariances as control-variable transforms (EnVar).

**Ensemble B** (:class:`EnsembleTransform`, ``background_error: {type: ensemble}``). With members
``x_k`` (``k = 1 … K``), mean ``x̄`` and scaled deviations ``X'_k = (x_k − x̄)/√(K − 1)``,

    δx = U_e α = Σ_k X'_k ∘ (L^½ α_k),      B_e = U_e U_eᵀ = (Σ_k X'_k X'_kᵀ) ∘ L = P_e ∘ L,

``∘`` the element-wise (Schur) product and ``L = L^½ (L^½)ᵀ`` a localisation correlation
(:mod:`aivarda.background.localisation`: spectral on the sphere × ln p in the vertical for
``[C, H, W]`` states, a periodic line for Lorenz-96 ``[N]`` states). Without localisation
(``L = 1 1ᵀ``) ``B_e = P_e = X'X'ᵀ``, the raw ensemble covariance, of rank ``K − 1``.

Shapes (``S`` the state shape, ``[P', D]`` the localisation's control of one member):

- members ``[K, *S]`` (3DEnVar): latent ``[K, P', D]``, ``decode → [*S]``;
- members as trajectories ``[K, T, *S]`` (4DEnVar, the members at the ``T`` window times):
  ``decode → [T, *S]``, ``δx_t = Σ_k X'_{k,t} ∘ (L^½ α_k)`` with the **same** ``α`` at every time,
  so the increment evolves with the ensemble's own trajectories (no tangent-linear model). The
  transform's ``state_shape`` is then ``(T, *S)``.

Leading batch dimensions of ``α``/``δx`` pass through. ``update(members)`` sets a new ensemble
(each cycle); the latent shape follows its ``K``.

**Hybrid B** (:class:`HybridTransform`, ``background_error: {type: hybrid}``): the concatenated
control ``z = [z_s, α]`` (flat, ``[n_s + n_e]``) and

    δx = √β_s U_s z_s + √β_e U_e α,      B = β_s B_s + β_e B_e,

with any linear static ``U_s`` (GEN_BE, diagonal, dense, …; released weights ``β_s, β_e = 0.4, 0.6``).
In 4D the static increment is the same at every window time (it is not propagated).

**Refitting the static part on the ensemble** (``refit_static: true``), at every ``update``, from
the members at the window start (deviations ``x_k − x̄``, normalised by ``K − 1``):

- GEN_BE: the whole GEN_BE fit (:func:`~aivarda.background.genbe.fit.fit_genbe`: balance
  regressions on ψ, vertical modes, variances, horizontal length scales) with the ensemble
  deviations as the samples, on the same grids and settings as the static file;
- diagonal/identity: ``B_s = diag(σ_c²)``, ``σ_c²`` the ensemble variance of channel ``c`` (area
  mean over the grid; one value for all points of a ``[N]`` state);
- any other linear ``U_s``: rescaled per channel, ``U_s ← diag(σ_c^ens/σ_c^s) U_s``, with ``σ_c^s``
  the static transform's own per-channel std, measured once from 64 draws ``U_s z``, ``z ~ N(0, I)``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, SerializeAsAny, field_validator, model_validator
from torch import Tensor

from aivarda.background.genbe.config import GridSection
from aivarda.background.genbe.fit import FitSettings, fit_genbe
from aivarda.background.genbe.transform import GenBeTransform
from aivarda.background.localisation import (
    CircleLocalisation,
    Localisation,
    Shape,
    SphereLocalisation,
)
from aivarda.background.registry import (
    TransformConfig,
    TransformContext,
    build_transform,
    parse_transform_config,
    register_transform,
)
from aivarda.background.transforms import (
    ControlTransform,
    DiagonalTransform,
    IdentityTransform,
    LinearControlTransform,
    _batch_shape,
)
from aivarda.config import StrictModel
from aivarda.channels import ChannelLayout
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid


class MissingEnsembleError(DataError, AttributeError):
    """An ensemble transform used before it has members. Also an ``AttributeError``, so that the
    shape attributes it guards count as absent (``hasattr``, protocol ``isinstance`` checks)."""


class EnsembleTransform:
    """``U_e α = Σ_k X'_k ∘ (L^½ α_k)`` (module docstring).

    ``localisation``: a :class:`~aivarda.background.localisation.Localisation` for states ``S``;
    ``members``: ``[K, *S]`` or trajectories ``[K, T, *S]`` (or ``None``: call :meth:`update`
    before the first ``decode``); ``members_expected``: if given, every ensemble must have this
    ``K``; ``dtype``: of the stored deviations (default: the members').
    """

    def __init__(
        self,
        localisation: Localisation,
        members: Tensor | None = None,
        *,
        members_expected: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.localisation = localisation
        self.base_shape = tuple(localisation.state_shape)
        self.members_expected = members_expected
        self.dtype = dtype
        self.deviations: Tensor | None = None  # X' [K, (T,) *S], scaled by 1/√(K−1)
        self.window: int | None = None
        if members is not None:
            self.update(members)

    # ------------------------------------------------------------------ ensemble
    def update(self, members: Tensor) -> None:
        """Set the ensemble: ``[K, *S]`` (3D) or trajectories ``[K, T, *S]`` (4D)."""
        m = torch.as_tensor(members)
        n = len(self.base_shape)
        if m.ndim == n + 1 and tuple(m.shape[1:]) == self.base_shape:
            window = None
        elif m.ndim == n + 2 and tuple(m.shape[2:]) == self.base_shape:
            window = int(m.shape[1])
        else:
            raise DataError(
                f"ensemble members: expected [K, {', '.join(map(str, self.base_shape))}] or trajectories "
                f"[K, T, {', '.join(map(str, self.base_shape))}], got {list(m.shape)}"
            )
        K = int(m.shape[0])
        if K < 2:
            raise DataError(f"ensemble members: need at least 2 members for a covariance, got {K}")
        if self.members_expected is not None and K != self.members_expected:
            raise DataError(f"ensemble members: the config says {self.members_expected} members, got {K}")
        if not bool(torch.isfinite(m).all()):
            raise DataError("ensemble members: contain NaN or Inf")
        dtype = self.dtype or (m.dtype if m.is_floating_point() else torch.float32)
        mean = m.mean(0, keepdim=True, dtype=torch.float64)
        self.deviations = ((m.double() - mean) / math.sqrt(K - 1)).to(dtype)
        self.window = window

    def _require(self) -> Tensor:
        if self.deviations is None:
            raise MissingEnsembleError(
                "ensemble B has no members: give them as TransformContext.ensemble [K, *S] "
                "or call update(members) before the first decode"
            )
        return self.deviations

    @property
    def n_members(self) -> int:
        """``K``: of the current ensemble, or the configured one before the first :meth:`update`."""
        if self.deviations is None and self.members_expected is not None:
            return int(self.members_expected)
        return int(self._require().shape[0])

    @property
    def latent_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self.n_members, *self.localisation.latent_shape)

    @property
    def state_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.base_shape if self.window is None else (self.window, *self.base_shape)

    def covariance(self) -> Tensor:
        """The raw ensemble covariance ``P_e = X'X'ᵀ`` ``[n, n]`` of the (first-time) state (small
        states only; for tests and diagnostics)."""
        X = self._require()
        X = (X if self.window is None else X[:, 0]).reshape(X.shape[0], -1).double()
        return X.T @ X

    # ------------------------------------------------------------------ U and Uᵀ
    def decode(self, z: Tensor) -> Tensor:
        """``δx = U_e α``: ``[..., K, P', D] → [..., *S]`` (or ``[..., T, *S]`` for trajectories)."""
        X = self._require().to(z)
        batch = _batch_shape(z, self.latent_shape, "EnsembleTransform.decode")
        h = self.localisation.apply_sqrt(z)  # [..., K, *S]
        h = h.reshape(-1, *h.shape[len(batch) :])
        out = torch.einsum("k...,bk...->b..." if self.window is None else "kt...,bk...->bt...", X, h)
        return out.reshape(*batch, *self.state_shape)

    def adjoint(self, dx: Tensor) -> Tensor:
        """``U_eᵀ δx``: ``[..., *S]`` (``[..., T, *S]``) ``→ [..., K, P', D]``."""
        X = self._require().to(dx)
        batch = _batch_shape(dx, self.state_shape, "EnsembleTransform.adjoint")
        d = dx.reshape(-1, *self.state_shape)
        g = torch.einsum("k...,b...->bk..." if self.window is None else "kt...,bt...->bk...", X, d)
        return self.localisation.apply_sqrt_adjoint(g).reshape(*batch, *self.latent_shape)


# ---------------------------------------------------------------------------------------- refit
def channel_variance(variance: Tensor, weights: Tensor | None = None) -> Tensor:
    """Pool a pointwise variance ``[*S]`` per channel: ``[C, H, W] → [C]`` (area-weighted mean with
    row weights ``[H]`` of mean 1, or a plain mean), ``[N] → [N]`` (one value repeated)."""
    if variance.ndim == 1:
        return variance.mean().expand(variance.shape[0]).clone()
    if variance.ndim != 3:
        raise ValueError(f"channel_variance: expected [N] or [C, H, W], got {list(variance.shape)}")
    w = variance.new_ones(variance.shape[-2]) if weights is None else weights.to(variance)
    return (variance * w[:, None]).mean(dim=(-2, -1))


class ChannelScaledTransform:
    """``U = diag(r) U_base`` with one factor per channel (``[C]``; ``[N]`` for a 1-D state)."""

    def __init__(self, base: LinearControlTransform, factor: Tensor):
        self.base = base
        self.latent_shape = tuple(base.latent_shape)
        self.state_shape = tuple(base.state_shape)
        f = torch.as_tensor(factor)
        self.factor = f.reshape(f.shape[0], *([1] * (len(self.state_shape) - 1)))

    def decode(self, z: Tensor) -> Tensor:
        return self.base.decode(z) * self.factor.to(z)

    def adjoint(self, dx: Tensor) -> Tensor:
        return self.base.adjoint(dx * self.factor.to(dx))


def _sampled_channel_std(U: LinearControlTransform, weights: Tensor | None, draws: int = 64) -> Tensor:
    """Per-channel std of ``U z``, ``z ~ N(0, I)``, from ``draws`` draws (fixed seed, float64)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(draws, *U.latent_shape, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        x = U.decode(z).double()
    return channel_variance((x**2).mean(0), weights).sqrt()


class StaticRefit:
    """Refits a static transform on the ensemble deviations (module docstring)."""

    def __init__(self, static: LinearControlTransform, weights: Tensor | None = None):
        self.base = static
        self.weights = weights
        self._base_std: Tensor | None = None

    def __call__(self, deviations: Tensor) -> LinearControlTransform:
        """``deviations`` ``[K, *S]``: ``(x_k − x̄)/√(K − 1)`` at the window start."""
        static, K = self.base, int(deviations.shape[0])
        if isinstance(static, GenBeTransform):
            stats = static.stats
            settings = {**stats.settings, "balanced": tuple(stats.settings["balanced"])}
            samples = deviations.detach().double().cpu() * math.sqrt(K)  # the fit divides by K: this makes it K − 1
            fitted = fit_genbe(
                samples, stats.layout, stats.state_grid, stats.control_grid, FitSettings(**settings),
                metadata={"refit": "ensemble", "members": K}, state_grid=stats.state_grid,
            )
            return GenBeTransform(fitted, static.scale, static.dtype)
        std = channel_variance((deviations.double() ** 2).sum(0), self.weights).sqrt()
        if isinstance(static, DiagonalTransform | IdentityTransform):
            return DiagonalTransform(std, static.state_shape)
        if self._base_std is None:
            self._base_std = _sampled_channel_std(static, self.weights)
        return ChannelScaledTransform(static, std / self._base_std.to(std).clamp_min(1e-300))


class HybridTransform:
    """``U = [√β_s U_s, √β_e U_e]`` over the flat control ``[n_s + n_e]`` (module docstring).

    ``refit_static``: refit ``U_s`` on the ensemble at every :meth:`update` (``weights``: the grid's
    row area weights ``[H]`` for the per-channel variances of ``[C, H, W]`` states)."""

    def __init__(
        self,
        static: LinearControlTransform,
        ensemble: EnsembleTransform,
        static_weight: float = 0.4,
        ensemble_weight: float = 0.6,
        *,
        refit_static: bool = False,
        weights: Tensor | None = None,
    ):
        if static_weight < 0 or ensemble_weight < 0 or static_weight + ensemble_weight <= 0:
            raise ValueError(
                f"HybridTransform: weights must be >= 0 and not both 0, got {static_weight}, {ensemble_weight}"
            )
        if tuple(static.state_shape) != ensemble.base_shape:
            raise ValueError(
                f"HybridTransform: static state shape {list(static.state_shape)} != ensemble state shape {list(ensemble.base_shape)}"
            )
        self.static = static
        self.ensemble = ensemble
        self.static_weight, self.ensemble_weight = float(static_weight), float(ensemble_weight)
        self.refit = StaticRefit(static, weights) if refit_static else None
        if self.refit is not None and ensemble.deviations is not None:
            self._refit()

    def _refit(self) -> None:
        assert self.refit is not None
        X = self.ensemble._require()
        self.static = self.refit(X if self.ensemble.window is None else X[:, 0])

    def update(self, members: Tensor) -> None:
        """New ensemble (``[K, *S]`` or ``[K, T, *S]``); refits the static part if asked."""
        self.ensemble.update(members)
        if self.refit is not None:
            self._refit()

    @property
    def _n_static(self) -> int:
        return math.prod(self.static.latent_shape)

    @property
    def latent_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return (self._n_static + math.prod(self.ensemble.latent_shape),)

    @property
    def state_shape(self) -> tuple[int, ...]:  # type: ignore[override]
        return self.ensemble.state_shape

    def decode(self, z: Tensor) -> Tensor:
        """``δx = √β_s U_s z_s + √β_e U_e α`` (``[..., n_s + n_e] → [..., *state_shape]``)."""
        batch = _batch_shape(z, self.latent_shape, "HybridTransform.decode")
        n_s = self._n_static
        dx_s = self.static.decode(z[..., :n_s].reshape(*batch, *self.static.latent_shape))
        dx_e = self.ensemble.decode(z[..., n_s:].reshape(*batch, *self.ensemble.latent_shape))
        if self.ensemble.window is not None:
            dx_s = dx_s.unsqueeze(len(batch))  # the same static increment at every window time
        return math.sqrt(self.static_weight) * dx_s + math.sqrt(self.ensemble_weight) * dx_e

    def adjoint(self, dx: Tensor) -> Tensor:
        """``[√β_s U_sᵀ δx, √β_e U_eᵀ δx]`` flattened (4D: ``U_sᵀ`` of the sum over window times)."""
        batch = _batch_shape(dx, self.state_shape, "HybridTransform.adjoint")
        d_s = dx if self.ensemble.window is None else dx.sum(len(batch))
        a_s = self.static.adjoint(d_s).reshape(*batch, -1)
        a_e = self.ensemble.adjoint(dx).reshape(*batch, -1)
        return torch.cat([math.sqrt(self.static_weight) * a_s, math.sqrt(self.ensemble_weight) * a_e], dim=-1)


# ---------------------------------------------------------------------------------------- YAML
class LocalisationConfig(StrictModel):
    """``localisation:`` of an ensemble B (see :mod:`aivarda.background.localisation`).

    ``length_scale_km`` (``[C, H, W]`` states) / ``length_scale`` (``[N]`` states, grid points):
    Daley's length ``ℓ`` of ``shape`` (Gaussian: the distance where the correlation is ``exp(−½)``);
    ``null`` or ``.inf``: none. ``vertical_length_lnp``: Gaussian in ln p; ``surface``: ``lowest``,
    ``independent`` or a pressure in hPa."""

    length_scale_km: float | None = Field(default=None, gt=0, description="horizontal length (km); null: none")
    length_scale: float | None = Field(default=None, gt=0, description="[N] states: length in grid points")
    shape: Shape = "gaussian"
    vertical_length_lnp: float | None = Field(default=None, gt=0, description="vertical length in ln p; null: none")
    surface: Literal["lowest", "independent"] | Annotated[float, Field(gt=0)] = "lowest"
    lmax: int | None = Field(default=None, ge=1, description="spectral truncation (default: the grid's)")


class EnsembleConfig(TransformConfig):
    """``background_error: {type: ensemble, localisation: {...}}``.

    Members come from ``TransformContext.ensemble`` (``[K, *S]`` or ``[K, T, *S]``) or, every
    cycle, from ``update(members)`` (the config declares ``needs_ensemble``). ``grid`` and ``channels`` are needed for ``[C, H, W]`` states
    when the context does not carry them (``channels`` only for vertical localisation; a 69-channel
    state defaults to FengWu's layout, the data default)."""

    type: Literal["ensemble"] = "ensemble"
    needs_ensemble: ClassVar[bool] = True
    localisation: LocalisationConfig = Field(default_factory=LocalisationConfig)
    members: int | None = Field(default=None, ge=2, description="K, checked against every ensemble")
    grid: GridSection | None = Field(default=None, description="the state grid, e.g. {kind: gaussian, nlat: 64, nlon: 128}")
    channels: list[str] | None = Field(default=None, description="channel names of the state (e.g. z500, t2m)")


class HybridConfig(TransformConfig):
    """``background_error: {type: hybrid, static: {...}, static_weight, ensemble_weight, ensemble: {...},
    refit_static}``; ``static`` is any linear ``background_error`` section."""

    type: Literal["hybrid"] = "hybrid"
    needs_ensemble: ClassVar[bool] = True
    static: SerializeAsAny[TransformConfig]
    static_weight: float = Field(default=0.4, ge=0, description="β_s")
    ensemble_weight: float = Field(default=0.6, ge=0, description="β_e")
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    refit_static: bool = Field(default=False, description="refit the static statistics on the ensemble every update")

    @field_validator("static", mode="before")
    @classmethod
    def _parse_static(cls, value: Any) -> TransformConfig:
        cfg = parse_transform_config(value)
        if cfg.type in ("ensemble", "hybrid"):
            raise ValueError(f"the static part must be a static B, not {cfg.type!r}")
        return cfg

    @model_validator(mode="after")
    def _weights(self) -> HybridConfig:
        if self.static_weight + self.ensemble_weight <= 0:
            raise ValueError("static_weight + ensemble_weight must be > 0")
        return self


def _layout_from_names(names: list[str], section: str) -> ChannelLayout:
    try:
        parsed = [ChannelLayout.parse(n) for n in names]
        upper = list(dict.fromkeys(v for v, p in parsed if p is not None))
        levels = list(dict.fromkeys(p for v, p in parsed if p is not None and v == upper[0]))
        layout = ChannelLayout(tuple(v for v, p in parsed if p is None), tuple(upper), tuple(levels))
    except DataError as err:
        raise ConfigError(f"{section}.channels: {err}") from None
    if layout.names != tuple(names):
        raise ConfigError(
            f"{section}.channels: expected surface channels first, then each upper-air variable on the same "
            f"levels (variable-major), e.g. {list(layout.names)[:6]}…; got {names[:6]}…"
        )
    return layout


def build_localisation(
    cfg: EnsembleConfig,
    context: TransformContext,
    section: str = "background_error",
    grid: Grid | None = None,
    layout: ChannelLayout | None = None,
) -> Localisation:
    """The localisation of ``cfg`` for the context's state shape (``grid``/``layout``: hints, e.g.
    from a GEN_BE static part, used when neither the context nor the config gives them)."""
    loc, S = cfg.localisation, tuple(context.state_shape)
    where = f"{section}.localisation"
    if len(S) == 1:
        if loc.length_scale_km is not None or loc.vertical_length_lnp is not None:
            raise ConfigError(
                f"{where}: a [N] state is localised along its periodic line: give length_scale (grid points), "
                "not length_scale_km / vertical_length_lnp"
            )
        return CircleLocalisation(S[0], loc.length_scale, loc.shape)
    if len(S) != 3:
        raise ConfigError(f"{section}: ensemble B supports [N] and [C, H, W] states, got {list(S)}")
    if loc.length_scale is not None:
        raise ConfigError(f"{where}.length_scale: a [C, H, W] state takes length_scale_km")
    geometry = context.geometry
    grid = (geometry.grid if geometry is not None else None) or (cfg.grid.grid() if cfg.grid is not None else None) or grid
    if grid is None:
        raise ConfigError(f"{section}.grid: needed for a [C, H, W] state, e.g. {{kind: gaussian, nlat: {S[1]}, nlon: {S[2]}}}")
    if tuple(grid.shape) != S[1:]:
        raise ConfigError(f"{section}.grid: {grid.describe()} does not match the state {list(S)}")
    channels: ChannelLayout | int = S[0]
    if loc.vertical_length_lnp is not None:
        layout = (
            (geometry.layout if geometry is not None else None)
            or (_layout_from_names(cfg.channels, section) if cfg.channels else None)
            or layout
            or (ChannelLayout.fengwu69() if S[0] == 69 else None)
        )
        if layout is None:
            raise ConfigError(f"{section}.channels: vertical localisation needs the channel names of the {S[0]} channels")
        if len(layout) != S[0]:
            raise ConfigError(f"{section}.channels: {len(layout)} channels given, the state has {S[0]}")
        channels = layout
    try:
        return SphereLocalisation(grid, channels, loc.length_scale_km, loc.shape, loc.vertical_length_lnp, loc.surface, lmax=loc.lmax)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _ensemble_from_config(
    cfg: EnsembleConfig, context: TransformContext, section: str, grid: Grid | None = None, layout: ChannelLayout | None = None
) -> EnsembleTransform:
    localisation = build_localisation(cfg, context, section, grid, layout)
    members = context.ensemble
    return EnsembleTransform(localisation, members, members_expected=cfg.members, dtype=context.dtype)


def _row_weights(localisation: Localisation) -> Tensor | None:
    grid = getattr(localisation, "grid", None)
    return None if grid is None else torch.as_tensor(np.asarray(grid.weights), dtype=torch.float64)


@register_transform("ensemble", EnsembleConfig)
def _build_ensemble(cfg: EnsembleConfig, context: TransformContext) -> ControlTransform:
    return _ensemble_from_config(cfg, context, "background_error")


@register_transform("hybrid", HybridConfig)
def _build_hybrid(cfg: HybridConfig, context: TransformContext) -> ControlTransform:
    static = build_transform(cfg.static, context)
    if not isinstance(static, LinearControlTransform):
        raise ConfigError(f"background_error.static: type {cfg.static.type!r} is not linear (no adjoint); hybrid B needs a static B")
    grid = layout = None
    if isinstance(static, GenBeTransform):
        grid, layout = static.stats.state_grid, static.layout
    ensemble = _ensemble_from_config(cfg.ensemble, context, "background_error.ensemble", grid, layout)
    return HybridTransform(
        static, ensemble, cfg.static_weight, cfg.ensemble_weight,
        refit_static=cfg.refit_static, weights=_row_weights(ensemble.localisation),
    )
