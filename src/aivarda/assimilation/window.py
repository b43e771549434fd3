"""The assimilation window and how a method carries an increment through it.

A :class:`Window` is computed once per analysis from the method's config and its window model:
the analysis time ``t_0``, the observation times ``t_0 + offsets[k]`` (``k = 0 … T−1``) and the
whole number of model steps between consecutive times.

A :class:`Propagation` maps the background ``x_b`` (``[*S]``, at ``t_0``) and an increment ``δx``
to the window trajectory ``[T, *S]`` that the observation operator sees — the one place where
3D, 4D strong-constraint and FGAT/ensemble-4D methods differ inside the cost:

- :class:`ModelPropagation` (strong-constraint 4DVar): ``x_t = M_{0→t}(x_b + δx)``, the forecast
  model stepped through the window (differentiable: its adjoint is autograd's);
- :class:`BackgroundTrajectory`: ``x_t = x^b_t + δx`` (or ``+ δx_t`` when the increment has a time
  axis, as a 4D ensemble transform gives) — 3DVar is its ``T = 1`` case, 3DVar-FGAT the
  ``T > 1`` case with the background trajectory of the window model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from aivarda.models.base import ForecastModel, trajectory
from aivarda.timeaxis import hours


@dataclass(frozen=True)
class Window:
    """Analysis time ``start`` (``datetime64``), observation offsets ``[T]`` (``timedelta64``,
    ``offsets[0] = 0``) and the model steps between consecutive window times (``()`` for a
    window without a model)."""

    start: np.datetime64
    offsets: np.ndarray
    steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets).astype("timedelta64[s]")
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != np.timedelta64(0, "s") or np.any(np.diff(offsets) <= np.timedelta64(0, "s")):
            raise ValueError(f"Window: offsets must start at 0 and increase, got {offsets}")
        if self.steps and len(self.steps) != offsets.size - 1:
            raise ValueError(f"Window: {len(self.steps)} step counts for {offsets.size} window times")
        object.__setattr__(self, "start", np.datetime64(self.start, "ns"))
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))

    @property
    def n_times(self) -> int:
        return int(self.offsets.size)

    @property
    def times(self) -> np.ndarray:
        """``[T]`` ``datetime64[ns]`` window times."""
        return (self.start + self.offsets).astype("datetime64[ns]")

    @property
    def offset_hours(self) -> list[float]:
        return [hours(o) for o in self.offsets]

    def at(self, start: np.datetime64) -> Window:
        """The same window shape starting at ``start`` (the next cycle's window)."""
        return Window(start, self.offsets, self.steps)


class Propagation(Protocol):
    """``(x_b [*S], δx [*S] or [T, *S]) → x_window [T, *S]``, differentiable in ``δx``."""

    n_times: int

    def __call__(self, background: Tensor, increment: Tensor) -> Tensor: ...

    def analysis_window(self, analysis: Tensor, background: Tensor) -> Tensor:
        """The analysis trajectory ``[T, *S]`` from the analysis ``x_a`` at the window start."""
        ...


class BackgroundTrajectory:
    """``x_t = x^b_t + δx`` over a fixed background trajectory ``[T, *S]`` (3DVar: ``T = 1``)."""

    def __init__(self, background_window: Tensor) -> None:
        self.window = background_window.detach()
        self.n_times = int(background_window.shape[0])

    def __call__(self, background: Tensor, increment: Tensor) -> Tensor:
        if increment.ndim == self.window.ndim:  # a 4D increment [T, *S]
            return self.window + increment
        return self.window + increment.unsqueeze(0)

    def analysis_window(self, analysis: Tensor, background: Tensor) -> Tensor:
        out = self.window + (analysis - background).unsqueeze(0)
        out[0] = analysis  # x^b_0 = x_b: the window start is the analysis itself
        return out


class ModelPropagation:
    """Strong constraint: ``x_t = M_{0→t}(x_b + δx)`` with ``steps`` model steps between window
    times (each step a checkpointed segment when ``checkpoint``, see
    :func:`aivarda.models.base.iterate_trajectory`)."""

    def __init__(self, model: ForecastModel, steps: Sequence[int], *, checkpoint: bool = True) -> None:
        if any(int(s) < 1 for s in steps):
            raise ValueError(f"ModelPropagation: steps must be positive, got {list(steps)}")
        self.model = model
        self.steps = tuple(int(s) for s in steps)
        self.checkpoint = checkpoint
        self.n_times = len(self.steps) + 1

    def __call__(self, background: Tensor, increment: Tensor) -> Tensor:
        return trajectory(self.model, background + increment, self.steps, checkpoint=self.checkpoint)

    def analysis_window(self, analysis: Tensor, background: Tensor) -> Tensor:
        with torch.no_grad():
            return trajectory(self.model, analysis, self.steps)
