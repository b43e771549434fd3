"""``ObsSet``: a sparse set of observations inside one assimilation window.

Each observation ``n`` is one scalar: channel ``channel[n]`` of the state (an index into the
state's :class:`~aivarda.channels.ChannelLayout`) at position ``(lat[n], lon[n])``, valid at the
window state ``time_index[n]`` (0 … T−1, ``time_offset_hours[n]`` hours from the analysis time).
``level[n]`` is the pressure (hPa) of an upper-air observation that is *not* on a model level
(vertical interpolation in ln p, ``channel`` is then any channel of the observed variable); it is
NaN for channel observations (surface channels and observations on a model level).

``value[n] = y_n`` and ``error_std[n] = σ_o,n`` (the diagonal of R^½); ``qc[n]`` is a
:class:`QCFlag` (0 = good); ``withheld[n]`` keeps it out of the analysis for verification.
Two optional fields describe where an observation came from (both 0 when unknown):
``station[n]``, the station identifier packed into an int64 (:func:`aivarda.observations.table.encode_station_ids`,
up to 9 ASCII characters), and ``report_type[n]``, an NCEP prepbufr report type (e.g. 120 radiosonde
mass, 220 radiosonde wind, 181 / 281 surface land mass / wind).

Nothing malformed is used silently: :meth:`ObsSet.validate` raises one
:class:`~aivarda.errors.ObservationError` line naming the field, how many are bad and an example,
or (``qc_reject=True``) flags them ``QCFlag.INVALID`` so that :meth:`ObsSet.active` drops them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from aivarda.errors import ObservationError

if TYPE_CHECKING:
    from aivarda.channels import ChannelLayout
    from aivarda.grid import Grid


class QCFlag(IntEnum):
    """Quality-control outcome of one observation (the first failing check is kept)."""

    GOOD = 0
    INVALID = 1  # malformed: outside the grid, NaN value, non-positive error std, unknown channel/level
    GROSS = 2  # value outside the physical range of its variable
    BACKGROUND = 3  # |y − H(x_b)| > k·sqrt(σ_o² + σ_b²)


_DTYPES: dict[str, torch.dtype | None] = {
    "time_index": torch.int64,
    "time_offset_hours": torch.float64,
    "lat": torch.float64,
    "lon": torch.float64,
    "channel": torch.int64,
    "level": torch.float64,
    "value": None,  # floating, float32 unless given as float64
    "error_std": None,
    "qc": torch.int8,
    "withheld": torch.bool,
    "station": torch.int64,
    "report_type": torch.int32,
}


def _as_tensor(name: str, data: Any, device: torch.device | None) -> Tensor:
    t = torch.as_tensor(data, device=device)
    dtype = _DTYPES[name]
    if dtype is None:
        dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    if t.ndim != 1:
        raise ObservationError(f"observations: field {name!r} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(dtype)


@dataclass(eq=False)
class ObsSet:
    """Observations of one window; every field is a 1-D tensor of length N on one device.

    Use :meth:`create` to fill the optional fields with their defaults.
    """

    time_index: Tensor  # int64 [N], window state 0 … T−1
    time_offset_hours: Tensor  # float64 [N], hours from the analysis time
    lat: Tensor  # float64 [N], degrees north
    lon: Tensor  # float64 [N], degrees east in [0, 360)
    channel: Tensor  # int64 [N], index into the ChannelLayout
    level: Tensor  # float64 [N], hPa; NaN for channel observations
    value: Tensor  # float [N], y
    error_std: Tensor  # float [N], σ_o
    qc: Tensor  # int8 [N], QCFlag
    withheld: Tensor  # bool [N], kept out of the analysis (verification)
    station: Tensor | None = None  # int64 [N], packed station id (0 = none); default zeros
    report_type: Tensor | None = None  # int32 [N], prepbufr report type (0 = unknown); default zeros

    def __post_init__(self) -> None:
        device = torch.as_tensor(self.lat).device if isinstance(self.lat, Tensor) else None
        n = len(torch.as_tensor(self.lat).reshape(-1))
        for name in ("station", "report_type"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, torch.zeros(n, dtype=_DTYPES[name], device=device))
        lengths = {}
        for f in fields(self):
            t = _as_tensor(f.name, getattr(self, f.name), device)
            object.__setattr__(self, f.name, t)
            lengths[f.name] = t.shape[0]
        if len(set(lengths.values())) > 1:
            raise ObservationError(f"observations: fields have different lengths {lengths}")
        devices = {str(getattr(self, f.name).device) for f in fields(self)}
        if len(devices) > 1:
            raise ObservationError(f"observations: fields are on different devices {sorted(devices)}")
        lon = torch.remainder(self.lon, 360.0)
        self.lon = torch.where(lon >= 360.0, lon - 360.0, lon)  # remainder(-1e-20, 360) rounds to 360

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        lat: Any,
        lon: Any,
        channel: Any,
        value: Any,
        error_std: Any,
        *,
        time_index: Any = None,
        time_offset_hours: Any = None,
        level: Any = None,
        qc: Any = None,
        withheld: Any = None,
        station: Any = None,
        report_type: Any = None,
        device: torch.device | str | None = None,
    ) -> ObsSet:
        """Build an ObsSet; omitted fields default to time 0, offset 0 h, NaN level, QC good, not withheld,
        no station, unknown report type."""
        lat_t = torch.as_tensor(lat, dtype=torch.float64, device=device).reshape(-1)
        n, dev = lat_t.shape[0], lat_t.device
        error_std = torch.as_tensor(error_std, device=dev)
        if error_std.ndim == 0:
            error_std = error_std.expand(n).clone()
        return cls(
            time_index=torch.zeros(n, dtype=torch.int64, device=dev) if time_index is None else time_index,
            time_offset_hours=torch.zeros(n, device=dev) if time_offset_hours is None else time_offset_hours,
            lat=lat_t,
            lon=lon,
            channel=channel,
            level=torch.full((n,), math.nan, device=dev) if level is None else level,
            value=value,
            error_std=error_std,
            qc=torch.zeros(n, dtype=torch.int8, device=dev) if qc is None else qc,
            withheld=torch.zeros(n, dtype=torch.bool, device=dev) if withheld is None else withheld,
            station=station,
            report_type=report_type,
        )

    @classmethod
    def empty(cls, device: torch.device | str | None = None) -> ObsSet:
        z = torch.zeros(0, device=device)
        return cls.create(z, z, torch.zeros(0, dtype=torch.int64), z, z, device=device)

    @classmethod
    def concat(cls, sets: Sequence[ObsSet]) -> ObsSet:
        """Concatenate observation sets (same device)."""
        if not sets:
            return cls.empty()
        return cls(**{f.name: torch.cat([getattr(s, f.name) for s in sets]) for f in fields(cls)})

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return int(self.lat.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lat.device

    def select(self, mask: Tensor | np.ndarray) -> ObsSet:
        """Subset by a boolean mask ``[N]`` or an index tensor (keeps order)."""
        m = torch.as_tensor(mask, device=self.device)
        if m.dtype == torch.bool and m.shape != (len(self),):
            raise ObservationError(f"observations: select mask has shape {tuple(m.shape)}, expected ({len(self)},)")
        return ObsSet(**{f.name: getattr(self, f.name)[m] for f in fields(self)})

    def active_mask(self) -> Tensor:
        """``qc == 0 and not withheld``: the observations the analysis may use."""
        return (self.qc == QCFlag.GOOD) & ~self.withheld

    def active(self) -> ObsSet:
        """Observations used by the analysis (QC good, not withheld)."""
        return self.select(self.active_mask())

    def verification(self) -> ObsSet:
        """Withheld observations that passed QC (for verifying the analysis)."""
        return self.select((self.qc == QCFlag.GOOD) & self.withheld)

    def to(self, device: torch.device | str) -> ObsSet:
        return ObsSet(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def replace(self, **changes: Tensor) -> ObsSet:
        """A copy with some fields replaced."""
        return ObsSet(**{f.name: changes.get(f.name, getattr(self, f.name)) for f in fields(self)})

    def flag(self, mask: Tensor, flag: QCFlag) -> ObsSet:
        """Set ``qc = flag`` where ``mask`` is true and the observation is still good."""
        mask = torch.as_tensor(mask, device=self.device, dtype=torch.bool)
        qc = torch.where(mask & (self.qc == QCFlag.GOOD), torch.full_like(self.qc, int(flag)), self.qc)
        return self.replace(qc=qc)

    def __repr__(self) -> str:
        counts = self.counts()
        return (
            f"ObsSet(n={len(self)}, active={counts['active']}, withheld={counts['withheld']}, "
            f"flagged={len(self) - counts['good']}, device={self.device})"
        )

    def channel_names(self, layout: ChannelLayout) -> list[str]:
        names = layout.names
        return [names[c] for c in self.channel.tolist()]

    def counts(self) -> dict[str, int]:
        """Number of observations per QC flag and withheld, e.g. for logs."""
        out = {flag.name.lower(): int((self.qc == flag).sum()) for flag in QCFlag}
        out["withheld"] = int(self.withheld.sum())
        out["active"] = int(self.active_mask().sum())
        return out

    # ------------------------------------------------------------------ validation
    def invalid_masks(
        self, grid: Grid | None, layout: ChannelLayout | None, n_times: int | None = None
    ) -> dict[str, tuple[Tensor, str]]:
        """Per field, a mask of malformed observations and what was expected.

        A global grid covers every finite latitude in [−90, 90] (rows beyond a Gaussian grid's
        first/last latitude are interpolated towards the pole, see :mod:`.operators`).
        """
        del grid  # global grids: the latitude range is the only horizontal limit
        checks: dict[str, tuple[Tensor, str]] = {
            "lat": (~torch.isfinite(self.lat) | (self.lat.abs() > 90.0), "outside the grid (finite, in [-90, 90])"),
            "lon": (~torch.isfinite(self.lon), "outside the grid (finite longitude)"),
            "value": (~torch.isfinite(self.value), "not finite (NaN/inf value)"),
            "error_std": (
                ~torch.isfinite(self.error_std) | (self.error_std <= 0),
                "not positive and finite",
            ),
            "time_offset_hours": (~torch.isfinite(self.time_offset_hours), "not finite"),
        }
        t_bad = self.time_index < 0
        if n_times is not None:
            t_bad |= self.time_index >= n_times
        checks["time_index"] = (t_bad, f"outside the window (0 … {n_times - 1 if n_times else 'T-1'})")
        if layout is not None:
            c_bad = (self.channel < 0) | (self.channel >= layout.n_channels)
            checks["channel"] = (c_bad, f"outside the channel layout (0 … {layout.n_channels - 1})")
            checks["level"] = (self._bad_levels(layout, c_bad), _level_expectation(layout))
        return checks

    def _bad_levels(self, layout: ChannelLayout, channel_bad: Tensor) -> Tensor:
        """A finite level must be > 0, on an upper-air channel, inside the layout's level range."""
        has_level = ~torch.isnan(self.level)
        if not bool(has_level.any()):
            return torch.zeros_like(has_level)
        surface = torch.zeros(layout.n_channels + 1, dtype=torch.bool, device=self.device)
        surface[: len(layout.surface)] = True
        channel = torch.where(channel_bad, torch.full_like(self.channel, layout.n_channels), self.channel)
        lo, hi = (min(layout.levels), max(layout.levels)) if layout.levels else (math.inf, -math.inf)
        out_of_range = ~torch.isfinite(self.level) | (self.level < lo * (1 - 1e-9)) | (self.level > hi * (1 + 1e-9))
        return has_level & ~channel_bad & (surface[channel] | out_of_range)

    def validate(
        self,
        grid: Grid | None,
        layout: ChannelLayout | None,
        *,
        n_times: int | None = None,
        qc_reject: bool = False,
    ) -> ObsSet:
        """Check every observation; raise one ObservationError line, or flag them ``QCFlag.INVALID``.

        Returns ``self`` when all are valid, or (``qc_reject=True``) a copy with the malformed ones
        flagged.
        """
        checks = self.invalid_masks(grid, layout, n_times)
        bad_any = torch.zeros(len(self), dtype=torch.bool, device=self.device)
        problems = []
        for name, (bad, expected) in checks.items():
            n_bad = int(bad.sum())
            if n_bad:
                bad_any |= bad
                i = int(torch.nonzero(bad)[0])
                example = getattr(self, name)[i].item()
                problems.append(f"{name}: {n_bad} of {len(self)} {expected} (e.g. observation {i}: {name}={example})")
        if not problems:
            return self
        if qc_reject:
            return self.flag(bad_any, QCFlag.INVALID)
        raise ObservationError("observations: " + "; ".join(problems))


def _level_expectation(layout: ChannelLayout) -> str:
    if not layout.levels:
        return "must be NaN (this layout has no pressure levels)"
    return f"must be NaN or a pressure in [{min(layout.levels)}, {max(layout.levels)}] hPa on an upper-air channel"
