"""Normalisation statistics and climatology of a field source.

Per channel ``c``, over sample times ``t_k`` (k = 1…N) and grid points (i, j) with the area weights
``w_i`` of :attr:`aivarda.grid.Grid.weights` (mean 1):

    mean_c      = (1 / N H W) Σ_k Σ_ij w_i x_c(t_k)_ij
    std_c       = sqrt((1 / N H W) Σ_k Σ_ij w_i (x_c(t_k)_ij − mean_c)²)
    diff_mean_c, diff_std_c: the same for d = x(t_k + Δ) − x(t_k), Δ = ``diff_hours``

The state statistics normalise inputs; the difference statistics normalise the residual a
``Δ``-hour forecast model predicts (6 h for the cycling model, 1 h for the 4DVar window model).
``span`` records the first and last time the statistics read (``t_1`` … ``t_N + Δ``; ``None`` in
files written before it was recorded).
Results are cached under ``$AIVARDA_HOME/stats/`` keyed by the store path, the time selection,
the channels, Δ and a SHA-256 of the chunk files the sample states are read from (content, not
modification times): computed once, then read. Non-finite statistics are never cached nor used.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from aivarda.data.sources import FieldSource
from aivarda.errors import DataError
from aivarda.files import atomic_write
from aivarda.normstats import NormStats
from aivarda.paths import cache_dir
from aivarda.timeaxis import from_hours

DEFAULT_MAX_SAMPLES = 512
"""Sample times used for the statistics (evenly spread over the source); enough for 4 digits."""


@dataclass
class SourceSummary:
    """Normalisation statistics plus the per-channel extremes seen in the same samples."""

    stats: NormStats
    minimum: torch.Tensor
    maximum: torch.Tensor


class WeightedMoments:
    """Running area-weighted first and second moments per channel of batches ``[N, C, H, W]``.

    Values are shifted by a reference (the weighted mean of the first sample) before squaring and
    the sums are accumulated in float64, so that e.g. geopotential (~5·10⁴ with std ~10³) keeps
    its precision in float32 inputs.
    """

    def __init__(self, weights: np.ndarray) -> None:
        self.w = torch.as_tensor(weights, dtype=torch.float32)[:, None]  # [H, 1]
        self.ref: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.minimum: torch.Tensor | None = None
        self.maximum: torch.Tensor | None = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.float()
        n, c, h, w = x.shape
        if self.ref is None:
            self.ref = (torch.sum(x[0] * self.w, dim=(-2, -1), dtype=torch.float64) / (h * w)).float()
            self.s1 = torch.zeros(c, dtype=torch.float64)
            self.s2 = torch.zeros(c, dtype=torch.float64)
            self.minimum = torch.full((c,), float("inf"))
            self.maximum = torch.full((c,), float("-inf"))
        d = x - self.ref[:, None, None]
        self.s1 += torch.sum(d * self.w, dim=(-2, -1), dtype=torch.float64).sum(0)
        self.s2 += torch.sum(d * d * self.w, dim=(-2, -1), dtype=torch.float64).sum(0)
        self.minimum = torch.minimum(self.minimum, x.amin(dim=(0, 2, 3)))
        self.maximum = torch.maximum(self.maximum, x.amax(dim=(0, 2, 3)))
        self.count += n * h * w

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted mean and (population) standard deviation, ``[C]`` float64."""
        if self.count == 0 or self.ref is None:
            raise ValueError("no samples were added")
        m1 = self.s1 / self.count
        var = (self.s2 / self.count - m1**2).clamp_min(0.0)
        return self.ref.double() + m1, var.sqrt()


def _evenly(n: int, k: int | None) -> np.ndarray:
    """``min(n, k)`` indices spread evenly over ``range(n)``."""
    if k is None or n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def difference_pairs(times: np.ndarray, diff_hours: float) -> np.ndarray:
    """Times ``t`` of ``times`` such that ``t + diff_hours`` is also in ``times``."""
    delta = from_hours(diff_hours)
    return times[np.isin(times + delta, times)]


def sample_times(
    source: FieldSource, diff_hours: float, max_samples: int | None, require_pairs: bool = True
) -> tuple[np.ndarray, bool]:
    """The sample times ``t_k`` of :func:`summarise` (starts of ``diff_hours`` pairs, evenly spread)
    and whether they are pairs."""
    starts = difference_pairs(source.times, diff_hours)
    has_pairs = starts.size > 0
    if not has_pairs:
        if require_pairs:
            raise DataError(
                f"{getattr(source, 'path', 'source')}: no two times {diff_hours:g} h apart among its "
                f"{source.times.size} times; cannot compute {diff_hours:g}-hour difference statistics"
            )
        starts = source.times
    return starts[_evenly(starts.size, max_samples)], has_pairs


def summarise(
    source: FieldSource,
    diff_hours: float = 6,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    progress: bool = True,
    require_pairs: bool = True,
    batch_size: int = 8,
) -> SourceSummary:
    """Statistics of ``source`` over at most ``max_samples`` evenly spread sample times ``t_k``
    (the starts of the ``diff_hours`` pairs; state statistics and extremes are taken at ``t_k``).

    With ``require_pairs=False`` a source without any ``diff_hours`` pair (one time, or an interval
    that does not divide Δ) gives NaN difference statistics instead of a DataError.
    """
    delta = from_hours(diff_hours)
    starts, has_pairs = sample_times(source, diff_hours, max_samples, require_pairs)
    states = WeightedMoments(source.grid.weights)
    diffs = WeightedMoments(source.grid.weights)
    batches = range(0, starts.size, batch_size)
    for b in tqdm(batches, desc="statistics", unit="batch", disable=not progress, leave=False):
        t0 = starts[b : b + batch_size]
        if has_pairs:
            x = source.states(np.concatenate([t0, t0 + delta]))
            x0, x1 = x[: t0.size], x[t0.size :]
            diffs.add(x1 - x0)
        else:
            x0 = source.states(t0)
        states.add(x0)
    mean, std = states.mean_std()
    if has_pairs:
        diff_mean, diff_std = diffs.mean_std()
    else:
        diff_mean = diff_std = torch.full_like(mean, float("nan"))
    last = starts[-1] + delta if has_pairs else starts[-1]
    span = (str(np.datetime64(starts[0], "s")), str(np.datetime64(last, "s")))
    stats = NormStats(
        tuple(source.layout.names), mean, std, diff_mean, diff_std, float(diff_hours), int(starts.size), span
    )
    return SourceSummary(stats, states.minimum.double(), states.maximum.double())


def compute_norm_stats(
    source: FieldSource,
    diff_hours: float = 6,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    progress: bool = True,
) -> NormStats:
    """Area-weighted per-channel mean/std of states and of ``diff_hours``-hour differences."""
    return summarise(source, diff_hours, max_samples, progress).stats


def _cache_file(source: FieldSource, kind: str, times: np.ndarray, **params: Any) -> Path | None:
    """The cache file of statistics ``kind`` computed from the states at ``times``: keyed on the
    content of the chunks they are read from (``source.content_hash``), so a rewritten or repaired
    store never reuses statistics of its old content."""
    content = getattr(source, "content_hash", None)
    if not callable(content):
        return None
    key = hashlib.sha1(json.dumps({"content": content(times), "kind": kind, **params}, sort_keys=True).encode())
    stem = Path(getattr(source, "path", "source")).name.removesuffix(".zarr")
    return cache_dir("stats") / f"{kind}_{stem}_{key.hexdigest()[:16]}"


def load_or_compute_norm_stats(
    source: FieldSource,
    diff_hours: float = 6,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    refresh: bool = False,
    progress: bool = True,
) -> NormStats:
    """:func:`compute_norm_stats`, cached under ``$AIVARDA_HOME/stats`` (sources with a
    ``cache_token()``, e.g. :class:`~aivarda.data.sources.Wb2ZarrSource`; others are computed)."""
    starts, _ = sample_times(source, diff_hours, max_samples)
    times = np.concatenate([starts, starts + from_hours(diff_hours)])
    base = _cache_file(source, "norm", times, diff_hours=float(diff_hours), max_samples=max_samples)
    path = None if base is None else base.with_suffix(".json")
    if path is not None and path.is_file() and not refresh:
        stats = NormStats.load(path)
        if stats.channels == tuple(source.layout.names) and stats.finite():
            return stats
    stats = compute_norm_stats(source, diff_hours, max_samples, progress)
    if not stats.finite():
        raise DataError(f"{getattr(source, 'path', 'source')}: the statistics are not finite in channels "
                        f"{stats.nonfinite_channels()[:5]}; refusing to use or cache them")
    if path is not None:
        stats.save(path)
    return stats


def climatology(
    source: FieldSource,
    max_samples: int | None = 1024,
    refresh: bool = False,
    progress: bool = True,
    batch_size: int = 8,
) -> torch.Tensor:
    """Time mean of the source at every grid point, ``float32 [C, H, W]`` (the reference of ACC).

    ``clim = (1/N) Σ_k x(t_k)`` over at most ``max_samples`` evenly spread times; cached like the
    normalisation statistics.
    """
    times = source.times[_evenly(source.times.size, max_samples)]
    base = _cache_file(source, "clim", times, max_samples=max_samples)
    path = None if base is None else base.with_suffix(".npy")
    if path is not None and path.is_file() and not refresh:
        clim = np.load(path)
        if clim.shape == (len(source.layout), *source.grid.shape) and np.isfinite(clim).all():
            return torch.from_numpy(clim)
    total = torch.zeros((len(source.layout), *source.grid.shape), dtype=torch.float64)
    batches = range(0, times.size, batch_size)
    for b in tqdm(batches, desc="climatology", unit="batch", disable=not progress, leave=False):
        total += source.states(times[b : b + batch_size]).double().sum(0)
    clim = (total / times.size).float()
    if path is not None:
        atomic_write(path, lambda tmp: np.save(tmp, clim.numpy()))
    return clim


# --------------------------------------------------------------------------------------- CLI
def stats_rows(stats: NormStats, units: dict[str, str]) -> list[dict[str, Any]]:
    """One dict per channel: name, units, mean, std, diff_mean, diff_std."""
    return [
        {
            "channel": name,
            "units": units.get(name, ""),
            "mean": float(stats.mean[k]),
            "std": float(stats.std[k]),
            "diff_mean": float(stats.diff_mean[k]),
            "diff_std": float(stats.diff_std[k]),
        }
        for k, name in enumerate(stats.channels)
    ]


def main(args: argparse.Namespace) -> int:
    """``aivarda data stats STORE [--span S] [--diff-hours H] [--refresh] [--json]``."""
    from aivarda.data.sources import Wb2ZarrSource, store_layout
    from aivarda.tables import format_table

    source = Wb2ZarrSource(args.store, layout=store_layout(args.store), span=args.span)
    diff_hours = float(args.diff_hours)
    stats = load_or_compute_norm_stats(source, diff_hours=diff_hours, refresh=args.refresh, progress=not args.json)
    units = {ch.name: ch.units for ch in source.layout.channels}
    rows = stats_rows(stats, units)
    if args.json:
        print(json.dumps({"store": str(source.path), "span": source.span, "diff_hours": diff_hours,
                          "n_samples": stats.n_samples, "channels": rows}, indent=1))
    else:
        print(f"{source.path}: {stats.n_samples} samples, {diff_hours:g}-hour differences"
              f"{'' if source.span is None else f', span {source.span}'}")
        print(format_table(rows, ["channel", "units", "mean", "std", "diff_mean", "diff_std"]))
    return 0
