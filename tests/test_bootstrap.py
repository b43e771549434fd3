"""Moving-block bootstrap of paired differences: resample weights, nominal coverage on AR(1) series,
identical runs, a clearly better run, seeds as replicates."""

from __future__ import annotations

import numpy as np
import pytest

from aivarda.evaluation.bootstrap import block_resample_weights, paired_difference


def ar1(rng: np.random.Generator, n: int, phi: float, k: int = 1) -> np.ndarray:
    """Stationary AR(1) series ``[n, k]`` with unit variance and lag-1 correlation ``phi``."""
    x = np.empty((n, k))
    x[0] = rng.normal(size=k)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + np.sqrt(1 - phi**2) * rng.normal(size=k)
    return x


def test_block_resample_weights():
    rng = np.random.default_rng(0)
    w = block_resample_weights(10, 4, 500, rng)
    assert w.shape == (500, 10)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    # every resample is 3 blocks of 4 consecutive cycles cut to 10: counts are multiples of 1/10
    np.testing.assert_allclose(w * 10, np.round(w * 10))
    # the end cycles can only be drawn by the blocks that start at 0 or 6: rarer than the middle ones
    mean = w.mean(axis=0)
    assert mean[0] < mean[4] and mean[9] < mean[5]
    # a block as long as the series: every resample is the series itself
    np.testing.assert_allclose(block_resample_weights(5, 8, 3, rng), np.full((3, 5), 0.2))
    with pytest.raises(ValueError, match="block length must be"):
        block_resample_weights(5, 0, 3, rng)


def test_interval_covers_the_true_difference_at_the_nominal_rate():
    """200 pairs of 124-cycle MSE series, log-normal with AR(1) logs (lag-1 correlation 0.3) and a
    common "weather" part (A and B correlated at equal times); the population difference of
    sqrt(mean MSE) is known. The 95 % moving-block intervals cover it in [0.88, 0.99] of the cases
    (an unpaired bootstrap would give ≈ 1, an interval from one block of all cycles 0), and the
    interval's width is that of the estimate's spread over the replicates."""
    rng = np.random.default_rng(2026)
    s, covered = 0.3, 0
    true = np.sqrt(100 * np.exp(s * s / 2)) - np.sqrt(90 * np.exp(s * s / 2))
    widths, estimates = [], []
    for r in range(200):
        weather = ar1(rng, 124, 0.3)
        x = 0.8 * weather + 0.6 * ar1(rng, 124, 0.3)
        y = 0.8 * weather + 0.6 * ar1(rng, 124, 0.3)
        d = paired_difference(100 * np.exp(s * x), 90 * np.exp(s * y), np.sqrt, block_length=4, resamples=1000, seed=r)
        covered += bool(d.low[0] <= true <= d.high[0])
        widths.append(d.high[0] - d.low[0])
        estimates.append(d.difference[0])
    assert 0.88 <= covered / 200 <= 0.99
    # the width matches the spread of the estimate over the replicates (2 × 1.96 σ for a normal one)
    assert 0.8 < np.median(widths) / (2 * 1.96 * np.std(estimates)) < 1.1


def test_identical_runs_give_zero_interval_and_not_significant():
    rng = np.random.default_rng(1)
    a = np.exp(rng.normal(size=(3, 40, 5)))  # 3 seeds, 40 cycles, 5 quantities
    d = paired_difference(a, a.copy(), np.sqrt)
    assert np.all(d.difference == 0) and np.all(d.low == 0) and np.all(d.high == 0)
    assert not d.significant.any()


def test_clearly_better_run_is_significant_and_deterministic():
    rng = np.random.default_rng(4)
    weather = np.exp(0.3 * ar1(rng, 60, 0.5, 2))
    a, b = 0.8 * weather, weather * np.exp(0.01 * rng.normal(size=weather.shape))
    d = paired_difference(a, b, np.sqrt, block_length=4, resamples=500, seed=7)
    assert np.all(d.high < 0) and d.significant.all()
    np.testing.assert_allclose(d.difference, np.sqrt(a.mean(0)) - np.sqrt(b.mean(0)))
    again = paired_difference(a, b, np.sqrt, block_length=4, resamples=500, seed=7)
    np.testing.assert_array_equal(again.low, d.low)
    # a run that is better on one quantity only: significant there, not where they are the same
    b2 = b.copy()
    b2[:, 1] = a[:, 1]
    d2 = paired_difference(a, b2, np.sqrt, resamples=500)
    assert d2.significant.tolist() == [True, False]


def test_seeds_are_replicates_at_each_valid_time():
    rng = np.random.default_rng(5)
    a = np.exp(rng.normal(size=(3, 30, 2)))
    b = np.exp(rng.normal(size=(1, 30, 2)))
    d = paired_difference(a, b, np.sqrt, resamples=200)
    # the pooled score: the root of the mean over seeds and cycles; one B run paired with every seed
    np.testing.assert_allclose(d.a, np.sqrt(a.mean(axis=(0, 1))))
    np.testing.assert_allclose(d.b, np.sqrt(b.mean(axis=(0, 1))))
    with pytest.raises(ValueError, match="equal T and K"):
        paired_difference(a, b[:, :20], np.sqrt)
