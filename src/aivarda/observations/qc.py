"""Quality control of observations. Checks only flag (``qc``); the first failing check is kept.

- malformed observations: :meth:`ObsSet.validate` with ``qc_reject=True`` → ``QCFlag.INVALID``;
- gross-range check: ``value`` outside the physical range of its variable → ``QCFlag.GROSS``;
- background check: ``|y − H(x_b)| > k·sqrt(σ_o² + σ_b²)`` → ``QCFlag.BACKGROUND``.

The background check is given ``H(x_b)`` and the background error std in observation space;
it has no access to the truth (the seed code's real-data QC compared with the truth).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from aivarda.errors import ObservationError
from aivarda.observations.config import DEFAULT_GROSS_LIMITS, QCConfig
from aivarda.observations.obsset import ObsSet, QCFlag

if TYPE_CHECKING:
    from aivarda.channels import ChannelLayout
    from aivarda.grid import Grid

__all__ = ["QCFlag", "background_check", "channel_std_at_obs", "gross_check", "quality_control"]


def gross_check(obs: ObsSet, layout: ChannelLayout, limits: dict[str, tuple[float, float]] | None = None) -> ObsSet:
    """Flag ``QCFlag.GROSS`` where ``value`` lies outside ``limits[variable]`` (default
    :data:`~aivarda.observations.config.DEFAULT_GROSS_LIMITS`); variables without limits pass."""
    limits = DEFAULT_GROSS_LIMITS if limits is None else limits
    lo = torch.full((layout.n_channels,), -torch.inf, dtype=torch.float64)
    hi = torch.full((layout.n_channels,), torch.inf, dtype=torch.float64)
    for c, ch in enumerate(layout.channels):
        if ch.variable.short in limits:
            lo[c], hi[c] = limits[ch.variable.short]
    lo, hi = lo.to(obs.device), hi.to(obs.device)
    channel = obs.channel.clamp(0, layout.n_channels - 1)
    value = obs.value.double()
    bad = (value < lo[channel]) | (value > hi[channel])
    return obs.flag(bad, QCFlag.GROSS)


def background_check(obs: ObsSet, hx_background: Tensor, sigma_b: Tensor | float, k: float = 5.0) -> ObsSet:
    """Flag ``QCFlag.BACKGROUND`` where ``|y − H(x_b)| > k·sqrt(σ_o² + σ_b²)``.

    Args:
        obs: N observations.
        hx_background: ``H(x_b)`` ``[N]``, the background in observation space.
        sigma_b: background error std in observation space, ``[N]`` or a scalar
            (e.g. :func:`channel_std_at_obs` of B's per-channel std).
        k: threshold in units of the expected innovation std.
    """
    hx = torch.as_tensor(hx_background, device=obs.device)
    if hx.shape != (len(obs),):
        raise ObservationError(f"background check: H(x_b) has shape {list(hx.shape)}, expected [{len(obs)}]")
    if not k > 0:
        raise ObservationError(f"background check: k must be positive, got {k}")
    sigma_b = torch.as_tensor(sigma_b, device=obs.device, dtype=torch.float64)
    innovation = obs.value.double() - hx.double()
    limit = k * torch.sqrt(obs.error_std.double() ** 2 + sigma_b**2)
    bad = ~(innovation.abs() <= limit)  # a NaN innovation is rejected as well
    return obs.flag(bad, QCFlag.BACKGROUND)


def channel_std_at_obs(obs: ObsSet, channel_std: Tensor) -> Tensor:
    """Per-channel std ``[C]`` gathered at the observations' channels → ``[N]``."""
    return torch.as_tensor(channel_std, device=obs.device)[obs.channel]


def quality_control(
    obs: ObsSet,
    grid: Grid,
    layout: ChannelLayout,
    config: QCConfig | None = None,
    *,
    background: Tensor | None = None,
    background_std: Tensor | float | None = None,
) -> ObsSet:
    """Validity (flag malformed) → gross-range → background check.

    Args:
        background: the background window ``x_b`` ``[T, C, H, W]``; when given, ``H(x_b)`` is
            computed with :func:`~aivarda.observations.operators.build_operator` on the
            observations that are still good, and the background check runs.
        background_std: σ_b per channel ``[C]`` (e.g. the diagonal of B) or a scalar.
    """
    from aivarda.observations.operators import build_operator

    config = QCConfig() if config is None else config
    n_times = None if background is None else int(background.shape[0])
    obs = obs.validate(grid, layout, n_times=n_times, qc_reject=True)
    if config.gross_check:
        obs = gross_check(obs, layout, config.limits())
    if config.background_check and background is not None:
        if background_std is None:
            raise ObservationError("background check: give background_std (σ_b per channel or a scalar)")
        good = torch.nonzero(obs.qc == QCFlag.GOOD).squeeze(1)
        subset = obs.select(good)
        with torch.no_grad():
            hx = build_operator(subset, grid, layout, tuple(background.shape))(background)
        std = torch.as_tensor(background_std, device=obs.device)
        sigma_b = channel_std_at_obs(subset, std) if std.ndim == 1 else std
        checked = background_check(subset, hx, sigma_b, config.background_k)
        obs = obs.replace(qc=obs.qc.index_copy(0, good, checked.qc))
    return obs
