"""NMC samples of background error (Parrish & Derber 1992; docs/genbe.md).

``kind: forecast`` — differences of two forecasts valid at the same time ``t`` with different lead
times, started from the truth:

    δx(t) = M^{n_long}(x_t(t − τ_long)) − M^{n_short}(x_t(t − τ_short)),   n = τ/dt,

by default ``τ_long = 48 h`` and ``τ_short = 24 h`` of the 6-hour model (8 minus 4 steps), with the
valid times ``t`` taken from a span of the field source, batched over initial times.

``kind: lagged_truth`` — a model-free *stand-in*: differences of truth states ``lag`` apart,
``δx(t) = x_t(t) − x_t(t − lag)`` (default 24 h). They have the spatial and multivariate structure
of the flow's day-to-day changes, not of a model's forecast error; use them to test GEN_BE without
a trained model.

Samples ``[N, C, H, W]`` (float32, physical units) are stored with their metadata in one
``torch.save`` file (:class:`NmcSamples`), optionally regridded to a coarser storage grid (e.g. the
control grid) to keep 721×1440 samples manageable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from aivarda.channels import ChannelLayout
from aivarda.data.sources import FieldSource, format_time
from aivarda.errors import DataError
from aivarda.files import load_torch_file, save_torch_file
from aivarda.grid import Grid
from aivarda.models.base import ForecastModel
from aivarda.sphere import Regrid
from aivarda.timeaxis import from_hours

FORMAT = "aivarda-nmc-samples"
VERSION = 1


@dataclass
class NmcSamples:
    """Background-error samples ``[N, C, H, W]`` on ``grid`` (``state_grid``: the source's grid)."""

    samples: Tensor
    valid_times: np.ndarray
    grid: Grid
    state_grid: Grid
    layout: ChannelLayout
    kind: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.samples.shape[0])

    def in_span(self, span: list[str] | tuple[str, str]) -> np.ndarray:
        """Mask ``[N]`` of the samples valid within ``[first, last]`` (ISO times, both included),
        e.g. a checkpoint's ``train_span``."""
        times = np.asarray(self.valid_times).astype("datetime64[s]")
        return (times >= np.datetime64(span[0])) & (times <= np.datetime64(span[1]))

    def save(self, path: str | Path) -> Path:
        """Write atomically."""
        return save_torch_file(
            path,
            {
                "format": FORMAT,
                "version": VERSION,
                "samples": self.samples.float().contiguous(),
                "valid_times": [format_time(t) for t in self.valid_times],
                "grid": self.grid.to_dict(),
                "state_grid": self.state_grid.to_dict(),
                "layout": self.layout.to_dict(),
                "kind": self.kind,
                "metadata": self.metadata,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> NmcSamples:
        d = load_torch_file(path, FORMAT, VERSION, "NMC sample file", "create it with `aivarda learn-b nmc`")
        return cls(
            d["samples"],
            np.array(d["valid_times"], dtype="datetime64[ns]"),
            Grid.from_dict(d["grid"]),
            Grid.from_dict(d["state_grid"]),
            ChannelLayout.from_dict(d["layout"]),
            str(d["kind"]),
            dict(d.get("metadata", {})),
        )


def evenly(times: np.ndarray, max_samples: int | None) -> np.ndarray:
    """At most ``max_samples`` of ``times``, evenly spread (all if ``None``)."""
    if max_samples is None or times.size <= max_samples:
        return times
    return times[np.unique(np.linspace(0, times.size - 1, max_samples).round().astype(int))]


def valid_times(candidates: np.ndarray, available: np.ndarray, offsets_hours: list[float]) -> np.ndarray:
    """Those of ``candidates`` ``t`` for which every ``t − offset`` is in ``available``."""
    ok = np.ones(candidates.size, dtype=bool)
    for h in offsets_hours:
        ok &= np.isin(candidates - from_hours(h), available)
    return candidates[ok]


def forecast_differences(
    model: ForecastModel,
    source: FieldSource,
    times: np.ndarray,
    long_lead_hours: float,
    short_lead_hours: float,
    batch_size: int = 4,
    regrid: Regrid | None = None,
    progress: bool = True,
) -> Tensor:
    """``M^{n_long}(x_t(t − τ_long)) − M^{n_short}(x_t(t − τ_short))`` for every ``t`` in ``times``
    → ``[N, C, H, W]`` (regridded if ``regrid``)."""
    n_long, n_short = _steps(long_lead_hours, model.dt), _steps(short_lead_hours, model.dt)
    param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = param.device if param is not None else torch.device("cpu")
    out = []
    for b in tqdm(range(0, times.size, batch_size), desc="NMC forecasts", unit="batch", disable=not progress):
        t = times[b : b + batch_size]
        x0 = source.states(np.concatenate([t - from_hours(long_lead_hours), t - from_hours(short_lead_hours)])).to(device)
        with torch.no_grad():
            long = model.forecast(x0[: t.size], n_long)
            short = model.forecast(x0[t.size :], n_short)
        d = (long - short).float().cpu()
        out.append(regrid(d) if regrid is not None else d)
    return torch.cat(out)


def lagged_differences(
    source: FieldSource,
    times: np.ndarray,
    lag_hours: float,
    batch_size: int = 8,
    regrid: Regrid | None = None,
    progress: bool = True,
) -> Tensor:
    """``x_t(t) − x_t(t − lag)`` for every ``t`` in ``times`` → ``[N, C, H, W]``."""
    out = []
    for b in tqdm(range(0, times.size, batch_size), desc="lagged truth", unit="batch", disable=not progress):
        t = times[b : b + batch_size]
        x = source.states(np.concatenate([t, t - from_hours(lag_hours)]))
        d = x[: t.size] - x[t.size :]
        out.append(regrid(d) if regrid is not None else d)
    return torch.cat(out)


def _steps(hours: float, dt: float) -> int:
    n = hours / float(dt)
    if abs(n - round(n)) > 1e-6 or round(n) < 1:
        raise DataError(f"NMC: lead time {hours:g} h is not a positive whole number of model steps of {dt:g} h")
    return int(round(n))
