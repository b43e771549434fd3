"""Scores of one analysis: against the truth (per channel) and in observation space (O−B, O−A)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from aivarda.assimilation.minimizer import AnalysisResult
from aivarda.evaluation.metrics import bias, rmse
from aivarda.geometry import Geometry
from aivarda.observations.obsset import ObsSet
from aivarda.observations.registry import OperatorConfig, observation_operator

HEADLINE_CHANNELS = ("z500", "t850", "u500", "q500", "t2m")


def _obs_space_stats(obs: ObsSet, hx: Tensor) -> dict[str, float]:
    """Count, mean and RMS of ``y − H(x)`` and RMS of ``(y − H(x))/σ`` over ``obs``."""
    if len(obs) == 0:
        return {"count": 0}
    d = (obs.value - hx).double()
    return {
        "count": len(obs),
        "mean": float(d.mean()),
        "rms": float(d.pow(2).mean().sqrt()),
        "normalised_rms": float((d / obs.error_std.double()).pow(2).mean().sqrt()),
    }


def observation_space(obs: ObsSet, geometry: Geometry, windows: dict[str, Tensor], operator: OperatorConfig) -> dict[str, Any]:
    """``{"assimilated"|"withheld": {name: stats of y − H(window)}}`` for each window ``[T, C, H, W]``
    in ``windows`` (e.g. ``{"O-B": x_b window, "O-A": x_a window}``) with the configured operator;
    withheld = verification only."""
    out: dict[str, Any] = {}
    for subset_name, subset in (("assimilated", obs.active()), ("withheld", obs.verification())):
        if len(subset) == 0:
            out[subset_name] = {"count": 0}
            continue
        first = next(iter(windows.values()))
        H = observation_operator(operator, subset, geometry, tuple(first.shape))
        out[subset_name] = {name: _obs_space_stats(subset, H(w).detach()) for name, w in windows.items()}
    return out


def state_scores(geometry: Geometry, truth: Tensor, x_b: Tensor, x_a: Tensor, clim_std: Tensor) -> dict[str, Any]:
    """Latitude-weighted RMSE and bias per channel of background and analysis against the truth,
    and the channel mean of RMSE/σ_clim (``normalised_wrmse``)."""
    grid, names = geometry.grid, geometry.names
    rmse_b, rmse_a = rmse(x_b, truth, grid), rmse(x_a, truth, grid)
    clim = clim_std.to(rmse_b)
    return {
        "bg_wrmse": dict(zip(names, rmse_b.tolist(), strict=True)),
        "ana_wrmse": dict(zip(names, rmse_a.tolist(), strict=True)),
        "bg_bias": dict(zip(names, bias(x_b, truth, grid).tolist(), strict=True)),
        "ana_bias": dict(zip(names, bias(x_a, truth, grid).tolist(), strict=True)),
        "normalised_wrmse": {"background": float((rmse_b / clim).mean()), "analysis": float((rmse_a / clim).mean())},
    }


def minimizer_summary(result: AnalysisResult) -> dict[str, Any]:
    """Iterations, convergence, fallback, J at the first and last iterate."""
    return {
        "iterations": len(result.diagnostics),
        "converged": result.converged,
        "fallback": result.fallback,
        "J_initial": result.diagnostics[0]["J"] if result.diagnostics else None,
        "J_final": result.diagnostics[-1]["J"] if result.diagnostics else None,
    }
