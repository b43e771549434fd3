"""Deterministic verification scores following WeatherBench2 (Rasp et al. 2024).

All scores act on fields ``[..., C, H, W]`` and return ``[..., C]`` (one value per channel and per
leading index, e.g. time). With the area weights ``w_i`` of :attr:`aivarda.grid.Grid.weights`
(mean 1 over rows) the spatial mean is ``⟨f⟩ = (1 / H W) Σ_ij w_i f_ij`` and

    MSE  = ⟨(f − t)²⟩,      RMSE = sqrt(MSE),      bias = ⟨f − t⟩,      MAE = ⟨|f − t|⟩
    ACC  = ⟨f' t'⟩ / sqrt(⟨f'²⟩ ⟨t'²⟩),   f' = f − c,  t' = t − c   (c: climatology)

(WB2's ACC is the uncentred anomaly correlation. WB2's headline RMSE is the root of the time-mean
MSE, ``sqrt((1/N) Σ_n MSE(t_n))``, not the time mean of per-time RMSEs (its
``RMSESqrtBeforeTimeAvg``); :mod:`aivarda.evaluation.report` aggregates cycles that way.)

On an equiangular grid the weights are WB2's ``get_lat_weights`` (cell areas between the latitude
midpoints, clipped at the poles, mean 1) and every score equals WB2's to rounding
(``tests/test_metrics.py`` checks it against an independent implementation of WB2's formulas). On a
Gaussian grid (the T42 nature run) the weights are the Gauss–Legendre quadrature weights, the exact
band areas; WB2's midpoint rule differs from them by up to 6 % in the polar rows.

:func:`baseline_scores` scores the two reference forecasts every cycling report shows: the
climatological mean state and persistence of the truth one cycle earlier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from aivarda.grid import Grid

Score = Callable[[torch.Tensor, torch.Tensor, Grid], torch.Tensor]


def _weights(grid: Grid, like: torch.Tensor) -> torch.Tensor:
    """Area weights ``[H, 1]`` on ``like``'s device and dtype."""
    if tuple(like.shape[-2:]) != grid.shape:
        raise ValueError(f"field shape {tuple(like.shape)} does not end with the grid shape {grid.shape}")
    return torch.as_tensor(grid.weights, dtype=like.dtype, device=like.device)[:, None]


def spatial_mean(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Area-weighted mean over the sphere: ``[..., H, W] → [...]``."""
    return (x * _weights(grid, x)).mean(dim=(-2, -1))


def mse(forecast: torch.Tensor, truth: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Area-weighted mean squared error ``⟨(f − t)²⟩``, ``[..., C]``."""
    return spatial_mean((forecast - truth) ** 2, grid)


def rmse(forecast: torch.Tensor, truth: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Latitude-weighted RMSE ``sqrt⟨(f − t)²⟩``, ``[..., C]``."""
    return mse(forecast, truth, grid).sqrt()


def bias(forecast: torch.Tensor, truth: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Area-weighted mean error ``⟨f − t⟩``, ``[..., C]``."""
    return spatial_mean(forecast - truth, grid)


def mae(forecast: torch.Tensor, truth: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Area-weighted mean absolute error ``⟨|f − t|⟩``, ``[..., C]``."""
    return spatial_mean((forecast - truth).abs(), grid)


def acc(forecast: torch.Tensor, truth: torch.Tensor, climatology: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Anomaly correlation coefficient ``⟨f' t'⟩ / sqrt(⟨f'²⟩⟨t'²⟩)`` with anomalies from
    ``climatology`` (``[C, H, W]`` or broadcastable to the inputs), ``[..., C]``."""
    climatology = climatology.to(device=forecast.device, dtype=forecast.dtype)
    fa, ta = forecast - climatology, truth - climatology
    return spatial_mean(fa * ta, grid) / (spatial_mean(fa**2, grid) * spatial_mean(ta**2, grid)).sqrt()


def time_mean_rmse(per_time_rmse: np.ndarray | Sequence[float], axis: int = 0) -> np.ndarray:
    """WeatherBench2's headline RMSE from per-time RMSEs ``r_n``: ``sqrt((1/N) Σ_n r_n²)`` (the root
    of the time-mean MSE, not the time mean of ``r_n``)."""
    r = np.asarray(per_time_rmse, dtype=np.float64)
    return np.sqrt(np.mean(r**2, axis=axis))


SCORES: dict[str, Score] = {"rmse": rmse, "bias": bias, "mae": mae, "mse": mse}
"""Scores that compare a forecast with the truth (name → function); ``acc`` also needs a climatology."""


def evaluate(
    forecast: torch.Tensor,
    truth: torch.Tensor,
    grid: Grid,
    climatology: torch.Tensor | None = None,
    scores: Sequence[str] = ("rmse", "bias"),
) -> dict[str, torch.Tensor]:
    """Several scores at once: ``{name: [..., C]}``; ``"acc"`` is added when a climatology is given."""
    unknown = [s for s in scores if s not in SCORES and s != "acc"]
    if unknown:
        raise ValueError(f"unknown scores {unknown}; available {sorted([*SCORES, 'acc'])}")
    out = {name: SCORES[name](forecast, truth, grid) for name in scores if name != "acc"}
    if climatology is not None:
        out["acc"] = acc(forecast, truth, climatology, grid)
    return out


def per_channel(values: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """``[C]`` → ``{channel: value}``."""
    if values.ndim != 1 or values.shape[0] != len(names):
        raise ValueError(f"expected a [C] tensor with C = {len(names)}, got shape {tuple(values.shape)}")
    return {name: float(v) for name, v in zip(names, values.tolist(), strict=True)}


def scores_per_channel(scores: dict[str, torch.Tensor], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{score: [C]}`` → ``{score: {channel: value}}``."""
    return {score: per_channel(values, names) for score, values in scores.items()}


def baseline_scores(
    grid: Grid,
    truth: torch.Tensor,
    previous_truth: torch.Tensor,
    climatology: torch.Tensor,
    names: Sequence[str],
    clim_std: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Scores of the reference forecasts valid at the analysis time ``t`` (states ``[C, H, W]``):

        climatology   f = c               (the climatological mean state, ``[C, H, W]``)
        persistence   f = x_t(t − Δt)      (the truth one cycle earlier, ``previous_truth``)

    Returns ``{"clim_wrmse": {ch: RMSE}, "pers_wrmse": {ch: RMSE}}`` (latitude-weighted, per cycle);
    with ``clim_std`` (σ_clim ``[C]``, the runner's ``stats.std``) also ``"sigma_clim": {ch: σ}``,
    ``"clim_nrmse"`` and ``"pers_nrmse"`` (channel mean of RMSE/σ_clim, as the runs' ``bg_nrmse``).
    :func:`aivarda.cycling.outputs.metrics_row` stores the result as ``clim_wrmse_<ch>`` …
    columns."""
    if truth.shape != previous_truth.shape or truth.shape[-3] != len(names):
        raise ValueError(f"truth {tuple(truth.shape)} and previous truth {tuple(previous_truth.shape)} must both be "
                         f"[C, H, W] with C = {len(names)} channels")
    climatology = climatology.to(device=truth.device, dtype=truth.dtype).expand_as(truth)
    rmse_c, rmse_p = rmse(climatology, truth, grid), rmse(previous_truth.to(truth), truth, grid)
    out: dict[str, Any] = {"clim_wrmse": per_channel(rmse_c, names), "pers_wrmse": per_channel(rmse_p, names)}
    if clim_std is not None:
        sigma = clim_std.to(rmse_c)
        out["sigma_clim"] = per_channel(sigma, names)
        out["clim_nrmse"] = float((rmse_c / sigma).mean())
        out["pers_nrmse"] = float((rmse_p / sigma).mean())
    return out
