"""Plausible physical ranges of the ERA5/WeatherBench2 variables, and the check of a state.

A state read from disk or produced by a model is refused when it holds a NaN/Inf or a value outside
the range of its variable: a flipped bit in a stored float (301 K → 9e-37 K) or a diverging model
must stop the run with one line naming the variable, never reach an analysis or a metric. The
ranges are wide on purpose (all levels and seasons of ERA5, and the Held–Suarez nature run, lie
well inside); they catch corruption, not weather.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aivarda.channels import ChannelLayout
from aivarda.errors import DataError

PLAUSIBLE_RANGE: dict[str, tuple[float, float]] = {
    # variable: (lowest, highest) in the units of aivarda.channels (SI, as in ERA5)
    "u10m": (-150.0, 150.0),  # m s**-1
    "v10m": (-150.0, 150.0),  # m s**-1
    "t2m": (150.0, 380.0),  # K
    "msl": (8.0e4, 1.2e5),  # Pa (records: 870 … 1084 hPa)
    "sp": (3.0e4, 1.2e5),  # Pa (Everest ≈ 330 hPa)
    "tcwv": (-1.0, 150.0),  # kg m**-2
    "z": (-1.5e4, 2.6e5),  # m**2 s**-2 (z1000 in deep lows … z50 ≈ 2.1e5)
    "q": (-1.0e-2, 0.1),  # kg kg**-1 (ERA5 has tiny negative values; Gaussian increments where the background is dry take analyses a few g/kg below 0)
    "u": (-250.0, 250.0),  # m s**-1
    "v": (-250.0, 250.0),  # m s**-1
    "t": (120.0, 380.0),  # K
    "w": (-100.0, 100.0),  # Pa s**-1
    "r": (-10.0, 200.0),  # %
}
"""Per variable (short name, all levels): values outside are refused by :func:`check_state`."""


def check_finite(x: Tensor, layout: ChannelLayout, what: str) -> None:
    """One DataError line naming the first channel of ``x`` (``[..., C, H, W]``) with a NaN/Inf."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        per_channel = bad.movedim(-3, 0).reshape(x.shape[-3], -1).sum(1)
        c = int(torch.nonzero(per_channel)[0])
        raise DataError(f"{what}: {int(per_channel[c])} NaN/Inf values in {layout.names[c]}"
                        f" ({int(bad.sum())} in all channels)")


def check_state(x: Tensor, layout: ChannelLayout, what: str) -> Tensor:
    """Return ``x`` (``[..., C, H, W]``) if every value is finite and inside :data:`PLAUSIBLE_RANGE`
    of its variable; otherwise one DataError line starting with ``what`` (e.g. ``"forecast of cycle
    12"`` or a file name) and naming the channel and the offending value."""
    check_finite(x, layout, what)
    flat = x.detach().movedim(-3, 0).reshape(x.shape[-3], -1)
    lo_all, hi_all = flat.min(1).values, flat.max(1).values
    lower, upper = _bounds(layout)
    lower, upper = lower.to(lo_all.device), upper.to(lo_all.device)
    if not bool(((lo_all.double() < lower) | (hi_all.double() > upper)).any()):  # every channel in one check
        return x
    for c, ch in enumerate(layout.channels):
        bounds = PLAUSIBLE_RANGE.get(ch.variable.short)
        if bounds is None:
            continue
        lo, hi = float(lo_all[c]), float(hi_all[c])
        if lo < bounds[0] or hi > bounds[1]:
            value = lo if lo < bounds[0] else hi
            raise DataError(f"{what}: {ch.name} = {value:.6g} {ch.units} is outside the plausible range "
                            f"{bounds[0]:g} … {bounds[1]:g} (corrupt data or a diverging model)")
    return x


_BOUNDS: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}


def _bounds(layout: ChannelLayout) -> tuple[Tensor, Tensor]:
    """Per-channel ``(lowest, highest)`` of :data:`PLAUSIBLE_RANGE` (±inf where a variable has none)."""
    if layout.names not in _BOUNDS:
        inf = float("inf")
        ranges = [PLAUSIBLE_RANGE.get(ch.variable.short, (-inf, inf)) for ch in layout.channels]
        _BOUNDS[layout.names] = (torch.tensor([r[0] for r in ranges], dtype=torch.float64),
                                 torch.tensor([r[1] for r in ranges], dtype=torch.float64))
    return _BOUNDS[layout.names]
