"""Channel layouts: surface variables + upper-air variables × pressure levels.

Channel names follow earth2studio (``u10m``, ``t2m``, ``msl``, ``z500``, ``t850`` …); each variable
maps to its WeatherBench2/ERA5 Zarr name and SI units. FengWu's 69-channel layout is
``u10m, v10m, t2m, msl`` then ``z, q, u, v, t`` on the 13 WeatherBench2 levels 50 … 1000 hPa
(variable-major, levels ascending in pressure).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aivarda.errors import DataError

WB2_LEVELS: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)


@dataclass(frozen=True)
class Variable:
    """A physical variable: short name (earth2studio), WeatherBench2/ERA5 name, units, long name and
    CF standard name (the table every field writer uses, :mod:`aivarda.data.cf`)."""

    short: str
    wb2_name: str
    units: str
    long_name: str
    standard_name: str


SURFACE_VARIABLES: dict[str, Variable] = {
    v.short: v
    for v in (
        Variable("u10m", "10m_u_component_of_wind", "m s**-1", "10 metre U wind component", "eastward_wind"),
        Variable("v10m", "10m_v_component_of_wind", "m s**-1", "10 metre V wind component", "northward_wind"),
        Variable("t2m", "2m_temperature", "K", "2 metre temperature", "air_temperature"),
        Variable("msl", "mean_sea_level_pressure", "Pa", "Mean sea level pressure", "air_pressure_at_mean_sea_level"),
        Variable("sp", "surface_pressure", "Pa", "Surface pressure", "surface_air_pressure"),
        Variable("tcwv", "total_column_water_vapour", "kg m**-2", "Total column water vapour",
                 "atmosphere_mass_content_of_water_vapor"),
    )
}

UPPER_AIR_VARIABLES: dict[str, Variable] = {
    v.short: v
    for v in (
        Variable("z", "geopotential", "m**2 s**-2", "Geopotential", "geopotential"),
        Variable("q", "specific_humidity", "kg kg**-1", "Specific humidity", "specific_humidity"),
        Variable("u", "u_component_of_wind", "m s**-1", "U component of wind", "eastward_wind"),
        Variable("v", "v_component_of_wind", "m s**-1", "V component of wind", "northward_wind"),
        Variable("t", "temperature", "K", "Temperature", "air_temperature"),
        Variable("w", "vertical_velocity", "Pa s**-1", "Vertical velocity", "lagrangian_tendency_of_air_pressure"),
        Variable("r", "relative_humidity", "%", "Relative humidity", "relative_humidity"),
    )
}

_CHANNEL_RE = re.compile(r"^([a-z]+?)(\d+)$")


@dataclass(frozen=True)
class Channel:
    """One channel of a state tensor. ``level`` is in hPa, ``None`` for surface channels."""

    name: str
    variable: Variable
    level: int | None

    @property
    def units(self) -> str:
        return self.variable.units


@dataclass(frozen=True)
class ChannelLayout:
    """Order of the channels of a ``[C, H, W]`` state: surface first, then each upper-air variable
    on every level (levels in the given order)."""

    surface: tuple[str, ...]
    upper_air: tuple[str, ...]
    levels: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "surface", tuple(self.surface))
        object.__setattr__(self, "upper_air", tuple(self.upper_air))
        object.__setattr__(self, "levels", tuple(int(p) for p in self.levels))
        for name in self.surface:
            if name not in SURFACE_VARIABLES:
                raise DataError(
                    f"channel layout: unknown surface variable {name!r}; expected one of {sorted(SURFACE_VARIABLES)}"
                )
        for name in self.upper_air:
            if name not in UPPER_AIR_VARIABLES:
                raise DataError(
                    f"channel layout: unknown upper-air variable {name!r}; expected one of {sorted(UPPER_AIR_VARIABLES)}"
                )
        if self.upper_air and not self.levels:
            raise DataError("channel layout: upper-air variables need at least one pressure level")
        if len(set(self.names)) != len(self.names):
            raise DataError("channel layout: duplicate channels")

    @classmethod
    def fengwu69(cls) -> ChannelLayout:
        """FengWu's 69 channels: u10m v10m t2m msl + z q u v t × 13 WeatherBench2 levels."""
        return cls(("u10m", "v10m", "t2m", "msl"), ("z", "q", "u", "v", "t"), WB2_LEVELS)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ChannelLayout:
        return cls(tuple(d["surface"]), tuple(d["upper_air"]), tuple(d["levels"]))

    def to_dict(self) -> dict[str, Any]:
        return {"surface": list(self.surface), "upper_air": list(self.upper_air), "levels": list(self.levels)}

    @property
    def names(self) -> tuple[str, ...]:
        """Channel names in tensor order, e.g. ``("u10m", …, "z50", …, "t1000")``."""
        return self.surface + tuple(f"{v}{p}" for v in self.upper_air for p in self.levels)

    @property
    def n_channels(self) -> int:
        return len(self.surface) + len(self.upper_air) * len(self.levels)

    def __len__(self) -> int:
        return self.n_channels

    @property
    def channels(self) -> tuple[Channel, ...]:
        out = [Channel(s, SURFACE_VARIABLES[s], None) for s in self.surface]
        out += [Channel(f"{v}{p}", UPPER_AIR_VARIABLES[v], p) for v in self.upper_air for p in self.levels]
        return tuple(out)

    def index(self, name: str) -> int:
        """Index of a channel by name; a clear error lists what exists."""
        try:
            return self.names.index(name)
        except ValueError:
            raise DataError(
                f"unknown channel {name!r}; this layout has {self.n_channels} channels "
                f"(surface {list(self.surface)}, upper-air {list(self.upper_air)} on levels {list(self.levels)} hPa)"
            ) from None

    def indices(self, names: list[str] | tuple[str, ...]) -> list[int]:
        return [self.index(n) for n in names]

    def variable_slice(self, variable: str) -> slice:
        """Channels of one upper-air variable (all levels), or of one surface variable."""
        if variable in self.surface:
            i = self.surface.index(variable)
            return slice(i, i + 1)
        if variable not in self.upper_air:
            raise DataError(f"variable {variable!r} is not in this layout ({list(self.surface + self.upper_air)})")
        start = len(self.surface) + self.upper_air.index(variable) * len(self.levels)
        return slice(start, start + len(self.levels))

    def channel(self, name: str) -> Channel:
        return self.channels[self.index(name)]

    @staticmethod
    def parse(name: str) -> tuple[str, int | None]:
        """Split a channel name into ``(variable, level)``: ``"z500" → ("z", 500)``, ``"t2m" → ("t2m", None)``."""
        if name in SURFACE_VARIABLES:
            return name, None
        m = _CHANNEL_RE.match(name)
        if m and m.group(1) in UPPER_AIR_VARIABLES:
            return m.group(1), int(m.group(2))
        raise DataError(
            f"unknown channel name {name!r}; expected a surface variable {sorted(SURFACE_VARIABLES)} "
            f"or an upper-air variable {sorted(UPPER_AIR_VARIABLES)} followed by a level in hPa (e.g. 'z500')"
        )
