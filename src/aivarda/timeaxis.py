"""Time inside aivarda: ``numpy.datetime64`` instants and ``numpy.timedelta64`` durations.

Configs give times as ISO strings and durations as ``"6h"`` (:data:`aivarda.config.Duration`,
a ``datetime.timedelta``); they are converted here, once, at the edge. Forecast models state their
step ``dt`` in hours (a float, as the model protocol has it); :func:`steps_between` turns a duration
into whole model steps.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np

from aivarda.errors import ConfigError

HOUR = np.timedelta64(1, "h")


def to_timedelta64(value: timedelta | np.timedelta64) -> np.timedelta64:
    """A duration as ``timedelta64[s]``."""
    if isinstance(value, np.timedelta64):
        return value.astype("timedelta64[s]")
    return np.timedelta64(int(round(value.total_seconds())), "s")


def to_datetime64(value: datetime | np.datetime64 | str) -> np.datetime64:
    """An instant as ``datetime64[ns]`` (naive, UTC)."""
    return np.datetime64(value, "ns")


def hours(value: np.timedelta64 | timedelta) -> float:
    """A duration in (fractional) hours."""
    return float(to_timedelta64(value) / np.timedelta64(1, "s")) / 3600.0


def from_hours(value: float) -> np.timedelta64:
    """``value`` hours as ``timedelta64[ns]`` (rounded to the second)."""
    return np.timedelta64(int(round(float(value) * 3600)), "s").astype("timedelta64[ns]")


def steps_between(interval: np.timedelta64 | timedelta, dt_hours: float, what: str) -> int:
    """The whole number of model steps of ``dt_hours`` in ``interval`` (a ConfigError naming
    ``what`` otherwise)."""
    steps = hours(interval) / float(dt_hours)
    if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
        raise ConfigError(f"{what}: {hours(interval):g} h is not a whole number of model steps of {dt_hours:g} h")
    return int(round(steps))


def format_time(t: np.datetime64) -> str:
    """ISO string to the minute, e.g. ``2020-01-01T06:00``."""
    return str(np.datetime_as_string(np.datetime64(t, "m")))
