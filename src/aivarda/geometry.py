"""The geometry of a state: its horizontal grid and its channel layout, as one frozen value.

Field sources, forecast models, background-error models and observation operators carry a
:class:`Geometry`; a state of that geometry is a tensor ``[C, H, W]`` (``state_shape``), optionally
with leading batch dimensions. Two geometries are equal when their grids and channel names are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aivarda.channels import ChannelLayout
from aivarda.errors import ConfigError
from aivarda.grid import Grid


@dataclass(frozen=True)
class Geometry:
    """A grid (``H × W``) and a channel layout (``C`` channels)."""

    grid: Grid
    layout: ChannelLayout

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.layout.n_channels, *self.grid.shape)

    @property
    def names(self) -> tuple[str, ...]:
        return self.layout.names

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid.to_dict(), "layout": self.layout.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(Grid.from_dict(d["grid"]), ChannelLayout.from_dict(d["layout"]))

    def describe(self) -> str:
        return f"{self.layout.n_channels} channels on {self.grid.describe()}"

    def check_same(self, other: Geometry | None, what: str) -> None:
        """One ConfigError line when ``other`` (e.g. a model's geometry) differs from this one
        (the data's); ``None`` (a component without a geometry, e.g. Lorenz-96) passes."""
        if other is None or other == self:
            return
        if tuple(other.layout.names) != tuple(self.layout.names):
            raise ConfigError(
                f"{what}: its {other.layout.n_channels} channels differ from the data's {self.layout.n_channels} "
                f"(set data.variables to its channels)"
            )
        raise ConfigError(f"{what}: its grid {other.grid.shape} differs from the data's {self.grid.shape}")
