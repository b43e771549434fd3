"""Paired differences of time-mean scores with a moving-block bootstrap over cycles.

Two runs ``A`` and ``B`` scored at the same valid times ``t_1 … t_T`` give per-cycle values
``a_t, b_t ∈ R^K`` (e.g. the MSE of K channels). A headline score is a smooth function ``g`` of the
time mean, e.g. WeatherBench2's RMSE ``g(m) = sqrt(m)`` of the mean MSE ``m = (1/T) Σ_t a_t``, so the
difference and its resampled copies are

    D   = g(ā) − g(b̄),                     ā = (1/T) Σ_t a_t
    D*_r = g(Σ_t π_rt a_t) − g(Σ_t π_rt b_t),  r = 1 … R

where ``π_rt`` is the fraction of the ``r``-th resample that is cycle ``t``. The resample is a moving-
block bootstrap (Künsch 1989): ``⌈T/L⌉`` blocks of ``L`` consecutive cycles with starts drawn uniformly
from ``0 … T − L``, concatenated and cut to ``T`` cycles; the same cycles are drawn for ``A`` and ``B``
(paired), so the weather both runs saw cancels in ``D*``. Consecutive cycles of a cycled analysis
are correlated (a background is the forecast of the previous analysis; the flow changes over a day
or two), which blocks keep and an i.i.d. bootstrap would ignore; the default ``L = 4`` cycles is one
day of 6-hour cycles. The 95 % interval is the percentile interval ``[q_2.5(D*), q_97.5(D*)]``; it
"contains 0" (not significant) when ``low ≤ 0 ≤ high``. Identical runs give ``D* = 0`` for every
resample: the interval ``[0, 0]``.

Several seeds (runs of one configuration that differ only in ``seed``, i.e. in the observation
draws) are replicates at every valid time: ``a_t`` is the mean over seeds of the per-seed values at
``t`` before the time mean, and the blocks resample valid times, jointly for all seeds (the seeds
share the weather of each cycle, so their errors are correlated at equal times). The pooled score
``g((1/ST) Σ_s Σ_t a_st)`` is then the WB2 score over all forecasts of all seeds.

Resampling uses ``numpy.random.default_rng(seed)`` (default 0): the same inputs give the same
interval on every machine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK_LENGTH = 4
"""Cycles per block: one day of 6-hour cycles."""
DEFAULT_RESAMPLES = 2000
DEFAULT_CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedDifference:
    """``g(ā) − g(b̄)`` per output of ``g``, with its bootstrap interval (arrays ``[M]``)."""

    a: np.ndarray
    b: np.ndarray
    difference: np.ndarray
    low: np.ndarray
    high: np.ndarray
    confidence: float
    block_length: int
    resamples: int
    cycles: int

    @property
    def significant(self) -> np.ndarray:
        """True where the interval excludes 0."""
        return (self.low > 0) | (self.high < 0)


def block_resample_weights(n: int, block_length: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``π [resamples, n]``: the fraction of each moving-block resample of ``n`` cycles that is cycle
    ``t`` (rows sum to 1). A block longer than the series is cut to ``n`` (then every resample is the
    series itself)."""
    if n < 1:
        raise ValueError("block bootstrap: no cycles to resample")
    if block_length < 1:
        raise ValueError(f"block bootstrap: block length must be ≥ 1 cycle, got {block_length}")
    length = min(block_length, n)
    n_blocks = -(-n // length)
    starts = rng.integers(0, n - length + 1, size=(resamples, n_blocks))
    index = (starts[:, :, None] + np.arange(length)).reshape(resamples, -1)[:, :n]
    counts = np.zeros((resamples, n))
    np.add.at(counts, (np.arange(resamples)[:, None], index), 1.0)
    return counts / n


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    g: Callable[[np.ndarray], np.ndarray],
    block_length: int = DEFAULT_BLOCK_LENGTH,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PairedDifference:
    """Paired difference ``g(ā) − g(b̄)`` and its moving-block bootstrap interval.

    ``a``, ``b``: per-cycle values ``[S, T, K]`` (S seeds, T common cycles, K quantities) or
    ``[T, K]``; a ``b`` with one seed is paired with every seed of ``a`` (and vice versa).
    ``g`` maps time means ``[..., K]`` to scores ``[..., M]`` (e.g. ``np.sqrt``)."""
    a, b = (np.asarray(x, dtype=np.float64) for x in (a, b))
    a, b = (x[None] if x.ndim == 2 else x for x in (a, b))
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"paired difference: expected [S, T, K] arrays with equal T and K, got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"paired difference: confidence must lie in (0, 1), got {confidence}")
    a_t, b_t = a.mean(axis=0), b.mean(axis=0)  # seeds are replicates at each valid time
    n = a_t.shape[0]
    weights = block_resample_weights(n, block_length, resamples, np.random.default_rng(seed))
    ga, gb = np.asarray(g(a_t.mean(axis=0))), np.asarray(g(b_t.mean(axis=0)))
    star = np.asarray(g(weights @ a_t)) - np.asarray(g(weights @ b_t))
    alpha = 1.0 - confidence
    low, high = np.quantile(star, [alpha / 2, 1 - alpha / 2], axis=0)
    return PairedDifference(ga, gb, ga - gb, low, high, confidence, min(block_length, n), resamples, n)
