"""ObsSet ⇄ JEDI IODA v3 files, and reading observations from any supported file.

``save_obs`` / ``load_obs`` keep an :class:`ObsSet` in an IODA v3 file
(:mod:`aivarda.observations.ioda`): absolute times (``MetaData/dateTime``) relative to the analysis
time, IODA variable names and units, pressure in Pa; the window's offsets are kept as a global
attribute so that ``load_obs`` gives back the same ``time_index``. What the format stores with less
precision than an ObsSet: latitude, longitude and pressure are float32 (as IODA has them), times
are whole seconds, values of converted variables (``z`` ↔ geopotentialHeight) are float32 in
file units; an observation off the model levels comes back on its variable's channel at the
nearest level (``level`` unchanged).

``read_observations(path, layout, analysis_time, window_offsets)`` reads any supported file —
IODA (``.nc``, ``.nc4``), WMO BUFR (``.bufr``, ``.bfr``), Parquet (``.parquet``, ``.pq``) or CSV
(``.csv``) — into one :class:`~aivarda.observations.table.ObsTable` (:func:`read_table`) and then
into the :class:`ObsSet` of that window (:meth:`ObsTable.to_obsset`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aivarda.channels import ChannelLayout
from aivarda.errors import ObservationError
from aivarda.observations.ioda import file_window, read_ioda, write_ioda
from aivarda.observations.obsset import ObsSet
from aivarda.observations.table import ObsTable

_UNIX_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
SUFFIXES: dict[str, str] = {
    ".nc": "ioda", ".nc4": "ioda", ".h5": "ioda",
    ".bufr": "bufr", ".bfr": "bufr",
    ".parquet": "parquet", ".pq": "parquet",
    ".csv": "csv",
}


def save_obs(
    obs: ObsSet,
    path: str | Path,
    layout: ChannelLayout,
    *,
    analysis_time: np.datetime64 | str | None = None,
    window_offsets: Sequence[np.timedelta64] | np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``obs`` (channels of ``layout``) as an IODA v3 file. ``analysis_time`` (default: the
    Unix epoch) turns ``time_offset_hours`` into ``MetaData/dateTime``; ``window_offsets`` (default:
    the offsets of the observations of each ``time_index``, when each index has one) are kept."""
    t0 = _UNIX_EPOCH if analysis_time is None else np.datetime64(analysis_time, "s")
    offsets = list(window_offsets) if window_offsets is not None else _offsets_of(obs)
    table = ObsTable.from_obsset(obs, layout, t0)
    return write_ioda(table, path, analysis_time=t0, window_offsets=offsets, overwrite=overwrite)


def _offsets_of(obs: ObsSet) -> list[np.timedelta64] | None:
    if len(obs) == 0:
        return None
    idx = obs.time_index.cpu().numpy()
    secs = np.round(obs.time_offset_hours.cpu().numpy() * 3600.0)
    out = []
    for k in range(int(idx.max()) + 1):
        s = np.unique(secs[idx == k])
        if s.size != 1 or not np.isfinite(s[0]):
            return None
        out.append(np.timedelta64(int(s[0]), "s"))
    return out if all(b > a for a, b in zip(out, out[1:], strict=False)) else None


def load_obs(
    path: str | Path,
    layout: ChannelLayout,
    device: torch.device | str | None = None,
    *,
    analysis_time: np.datetime64 | str | None = None,
    window_offsets: Sequence[np.timedelta64] | None = None,
) -> ObsSet:
    """Read an IODA file (e.g. one :func:`save_obs` wrote) into an ObsSet of ``layout``.

    The analysis time and window offsets default to those stored in the file (``datetimeReference``,
    ``aivarda_window_offsets_seconds``); a file without offsets has one window time per distinct
    observation time. A malformed file raises one ObservationError line naming the file and field.
    """
    path = Path(path)
    table = read_ioda(path)
    stored_t0, stored_offsets = file_window(path)
    t0 = np.datetime64(analysis_time, "s") if analysis_time is not None else stored_t0 or _UNIX_EPOCH
    offsets = window_offsets if window_offsets is not None else stored_offsets
    if offsets is None:
        times = np.unique(table.time[~np.isnat(table.time)])
        offsets = list(times - t0) if times.size else [np.timedelta64(0, "s")]
    # every observation of a saved set was in its window: keep all, each at its nearest window time
    try:
        return table.to_obsset(layout, t0, offsets, tolerance=np.timedelta64(36500, "D"), strict=True, device=device)
    except ObservationError as exc:
        raise ObservationError(f"{path}: {exc}") from None


def file_format(path: str | Path) -> str:
    """``"ioda" | "bufr" | "parquet" | "csv"`` from the file suffix (one clear error otherwise)."""
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ObservationError(
            f"{path}: unknown observation file type {path.suffix!r}; expected one of {sorted(SUFFIXES)}"
        )
    return fmt


def read_table(path: str | Path, **options: Any) -> ObsTable:
    """Read any supported observation file into an :class:`ObsTable` (dispatch on the suffix).

    ``options`` go to the format's reader (``preqc_good`` for IODA; ``columns`` for Parquet/CSV)."""
    fmt = file_format(path)
    if fmt == "ioda":
        return read_ioda(path, **options)
    if fmt == "bufr":
        from aivarda.observations.bufr import read_bufr

        return read_bufr(path, **options)
    from aivarda.observations.tabular import read_tabular

    return read_tabular(path, **options)


def read_observations(
    path: str | Path,
    layout: ChannelLayout,
    analysis_time: np.datetime64 | str,
    window_offsets: Sequence[np.timedelta64] | np.ndarray,
    *,
    tolerance: np.timedelta64 | None = None,
    error_std: Mapping[str, float] | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> ObsSet:
    """The observations of ``path`` that observe ``layout`` in the window ``analysis_time +
    window_offsets`` (see :meth:`ObsTable.to_obsset` for ``tolerance`` and ``error_std``)."""
    table = read_table(path, **options)
    return table.to_obsset(layout, analysis_time, window_offsets, tolerance=tolerance, error_std=error_std,
                           device=device)
