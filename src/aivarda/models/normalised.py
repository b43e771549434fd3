"""A neural network turned into a :class:`~aivarda.models.base.ForecastModel` that owns its normalisation.

The network ``f`` sees and predicts normalised quantities only. With per-channel statistics
``μ, σ`` (state mean/std) and ``μ_Δ, σ_Δ`` (mean/std of the ``dt`` tendency ``x_{t+dt} − x_t``):

* residual prediction (default): ``x_{t+dt} = x_t + σ_Δ · f((x_t − μ)/σ) + μ_Δ``;
* full-state prediction:        ``x_{t+dt} = μ + σ · f((x_t − μ)/σ)``;
* with a linear prior ``P`` (a fitted :class:`~aivarda.models.linear_prior.SpectralLIM` on
  normalised states), the network learns what the linear model misses:
  ``x_{t+dt} = μ + σ · P((x_t − μ)/σ) + σ_Δ · f((x_t − μ)/σ)``.

States are physical-unit tensors ``[..., C, H, W]`` (any number of leading batch dimensions,
e.g. ensemble members; none for a single state). Every step is differentiable; with
``checkpoint=True`` each step of :meth:`forecast` is wrapped in :func:`torch.utils.checkpoint.checkpoint`
so that back-propagating through a long window (4DVar) stores one state per step instead of every
activation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from aivarda.channels import ChannelLayout
from aivarda.errors import DataError
from aivarda.geometry import Geometry
from aivarda.grid import Grid
from aivarda.normstats import NormStats


def as_norm_stats(stats: NormStats | Mapping[str, Any]) -> NormStats:
    """A checked :class:`~aivarda.data.stats.NormStats` from itself or its ``to_dict()`` mapping
    (``n_samples`` may be missing)."""
    if isinstance(stats, Mapping):
        try:
            stats = NormStats.from_dict({"n_samples": 0, **stats})
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"normalisation statistics: malformed mapping ({type(exc).__name__}: {exc})") from None
    vectors = [stats.mean, stats.std, stats.diff_mean, stats.diff_std]
    if any(v.ndim != 1 or v.numel() != len(stats.channels) for v in vectors):
        raise DataError(f"normalisation statistics: mean, std, diff_mean, diff_std must be [C] with C = {len(stats.channels)}")
    if not all(bool(torch.isfinite(v).all()) for v in vectors) or bool((stats.std <= 0).any()) or bool((stats.diff_std <= 0).any()):
        raise DataError("normalisation statistics: values must be finite and std, diff_std positive")
    return stats


def identity_stats(channels: tuple[str, ...] | list[str], diff_hours: float = 0.0) -> NormStats:
    """μ = μ_Δ = 0, σ = σ_Δ = 1: the network sees physical units (for wrapped modules that
    normalise themselves)."""
    zeros, ones = torch.zeros(len(channels), dtype=torch.float64), torch.ones(len(channels), dtype=torch.float64)
    return NormStats(tuple(channels), zeros, ones, zeros.clone(), ones.clone(), float(diff_hours), 0)


class NeuralForecastModel(nn.Module):
    """``ForecastModel`` around a network ``f: [B, C, H, W] → [B, C, H, W]`` acting on normalised fields.

    Args:
        net: the network (sees normalised states, returns a normalised tendency or state).
        stats: normalisation statistics (``NormStats`` or its ``to_dict()``), channels = the layout's.
        dt: step length in hours.
        grid, layout: the grid and channel layout of the states (checked against ``stats``).
        residual: residual (tendency) prediction, see the module docstring.
        checkpoint: activation checkpointing of every step in :meth:`forecast`.
        prior: optional linear prior ``P`` (normalised state → normalised state ``dt`` later).
    """

    def __init__(
        self,
        net: nn.Module,
        stats: Any,
        dt: float,
        grid: Grid | None = None,
        layout: ChannelLayout | None = None,
        *,
        residual: bool = True,
        checkpoint: bool = False,
        prior: nn.Module | None = None,
    ) -> None:
        super().__init__()
        s = as_norm_stats(stats)
        if layout is not None and tuple(s.channels) != layout.names:
            raise DataError(
                f"normalisation statistics are for channels {list(s.channels)[:6]}… ({len(s.channels)}), "
                f"the model's layout has {list(layout.names)[:6]}… ({layout.n_channels})"
            )
        self.net = net
        self.prior = prior
        self.network_enabled = True  # False: the linear prior alone (see linear_prior_only)
        self.dt = float(dt)
        self.grid = grid
        self.layout = layout
        self.residual = bool(residual)
        self.checkpoint = bool(checkpoint)
        self.stats = s
        self.architecture: dict[str, Any] | None = None  # set by checkpoint.build_forecast_model
        self.metadata: dict[str, Any] = {}
        self.geometry = Geometry(grid, layout) if grid is not None and layout is not None else None
        shape = (-1, 1, 1)
        self.register_buffer("mean", s.mean.to(torch.float32).reshape(shape))
        self.register_buffer("std", s.std.to(torch.float32).reshape(shape))
        self.register_buffer("diff_mean", s.diff_mean.to(torch.float32).reshape(shape))
        self.register_buffer("diff_std", s.diff_std.to(torch.float32).reshape(shape))

    # ------------------------------------------------------------------ normalisation
    def normalise(self, x: Tensor) -> Tensor:
        """``(x − μ)/σ`` on ``[..., C, H, W]``."""
        return (x - self.mean) / self.std

    def denormalise(self, z: Tensor) -> Tensor:
        """``μ + σ z``."""
        return self.mean + self.std * z

    def normalise_tendency(self, dx: Tensor) -> Tensor:
        """``(Δx − μ_Δ)/σ_Δ`` for a tendency ``Δx = x_{t+dt} − x_t``."""
        return (dx - self.diff_mean) / self.diff_std

    # ------------------------------------------------------------------ dynamics
    def _step(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        xb = x.reshape(-1, *x.shape[-3:])
        z = self.normalise(xb)
        if not self.network_enabled:  # linear_prior_only(): the prior exists
            return self.denormalise(self.prior(z)).reshape(*lead, *x.shape[-3:])
        y = self.net(z)
        if y.shape != xb.shape:
            raise DataError(f"forecast network returned shape {tuple(y.shape)} for input {tuple(xb.shape)}")
        y = y.to(xb.dtype)
        if self.prior is not None:
            out = self.denormalise(self.prior(z)) + self.diff_std * y
        elif self.residual:
            out = xb + self.diff_std * y + self.diff_mean
        else:
            out = self.denormalise(y)
        return out.reshape(*lead, *x.shape[-3:])

    def linear_prior_only(self) -> NeuralForecastModel:
        """Drop the network's correction: ``x_{t+dt} = μ + σ·P((x_t − μ)/σ)``, the fitted linear
        prior alone — a cheap, exactly linear(-affine) model, e.g. inside a 4DVar window on CPUs."""
        if self.prior is None:
            raise DataError("linear_prior_only: this model has no linear prior")
        self.network_enabled = False
        return self

    def linear_part(self) -> NeuralForecastModel:
        """A view of this model with the network's correction off: the fitted linear prior alone
        (shares the weights and statistics; ``self`` is unchanged). See :meth:`linear_prior_only`."""
        if self.prior is None:
            raise DataError("linear_part: this model has no linear prior")
        view = copy.copy(self)
        view.network_enabled = False
        return view

    def step(self, x: Tensor) -> Tensor:
        """One step of ``dt`` hours: ``[..., C, H, W] → [..., C, H, W]``."""
        if x.ndim < 3:
            raise DataError(f"a state must be [..., C, H, W], got shape {tuple(x.shape)}")
        return self._step(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.step(x)

    def _maybe_checkpointed(self, x: Tensor) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled():
            return _checkpoint(self.step, x, use_reentrant=False)
        return self.step(x)

    def forecast(self, x: Tensor, n: int) -> Tensor:
        """``n`` steps: the state after ``n·dt`` hours (``n = 0`` returns ``x``)."""
        for _ in range(int(n)):
            x = self._maybe_checkpointed(x)
        return x

    def rollout(self, x: Tensor, n: int) -> Tensor:
        """The trajectory ``[x_1, …, x_n]`` stacked on a new leading axis: ``[n, ..., C, H, W]``."""
        states = []
        for _ in range(int(n)):
            x = self._maybe_checkpointed(x)
            states.append(x)
        return torch.stack(states)
