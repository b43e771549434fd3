"""Horizontal grids: equiangular with poles (ERA5 721×1440, 128×256) and Gaussian (the nature run).

Conventions (ERA5 / WeatherBench2 / torch-harmonics): latitude runs **north → south** (index 0 is
the northernmost row), longitude runs east from 0° to 360° (exclusive).

Area weights follow WeatherBench2: for an equiangular grid each row stands for the band between
the midpoints to its neighbours (clipped at the poles), ``w_i ∝ sin(φ_i + Δφ/2) − sin(φ_i − Δφ/2)``;
for a Gaussian grid the Gauss–Legendre quadrature weights are the band areas. Weights are
normalised to mean 1 so that ``mean(w_i · f_i)`` is an area mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from aivarda.errors import DataError

GridKind = Literal["equiangular", "gaussian"]


@dataclass(frozen=True, eq=False)
class Grid:
    """A regular latitude–longitude grid.

    Attributes:
        lat: latitudes in degrees north, shape ``[H]``, strictly decreasing (N → S).
        lon: longitudes in degrees east, shape ``[W]``, ``0 <= lon < 360``, equally spaced.
        kind: ``"equiangular"`` (rows equally spaced, poles included) or ``"gaussian"``.
    """

    lat: np.ndarray
    lon: np.ndarray
    kind: GridKind

    def __post_init__(self) -> None:
        lat = np.asarray(self.lat, dtype=np.float64)
        lon = np.asarray(self.lon, dtype=np.float64)
        if lat.ndim != 1 or lon.ndim != 1 or lat.size < 2 or lon.size < 2:
            raise DataError(f"grid: lat and lon must be 1-D with ≥ 2 points, got {lat.shape}, {lon.shape}")
        if not np.all(np.diff(lat) < 0):
            raise DataError("grid: latitudes must run strictly north → south")
        if lat[0] > 90 + 1e-9 or lat[-1] < -90 - 1e-9:
            raise DataError("grid: latitudes must lie in [-90, 90]")
        if self.kind not in ("equiangular", "gaussian"):
            raise DataError(f"grid: kind must be 'equiangular' or 'gaussian', got {self.kind!r}")
        object.__setattr__(self, "lat", lat)
        object.__setattr__(self, "lon", lon)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def equiangular(cls, nlat: int, nlon: int) -> Grid:
        """Equiangular grid with both poles, ``nlat`` rows from 90° to −90° (ERA5: 721×1440)."""
        return cls(np.linspace(90.0, -90.0, nlat), np.arange(nlon) * (360.0 / nlon), "equiangular")

    @classmethod
    def gaussian(cls, nlat: int, nlon: int) -> Grid:
        """Gaussian grid: rows at the Gauss–Legendre nodes (no poles), N → S (T42: 64×128)."""
        nodes, _ = np.polynomial.legendre.leggauss(nlat)  # ascending sin(lat)
        return cls(np.rad2deg(np.arcsin(nodes))[::-1].copy(), np.arange(nlon) * (360.0 / nlon), "gaussian")

    @classmethod
    def era5(cls) -> Grid:
        """ERA5's native 0.25° grid, 721×1440."""
        return cls.equiangular(721, 1440)

    @classmethod
    def t42(cls) -> Grid:
        """The T42 Gaussian grid of the embedded nature run, 64×128."""
        return cls.gaussian(64, 128)

    @classmethod
    def from_coords(cls, lat: Any, lon: Any) -> Grid:
        """Infer the grid kind from coordinates (already ordered N → S, lon 0…360)."""
        lat = np.asarray(lat, dtype=np.float64)
        kind: GridKind = "equiangular" if np.isclose(abs(lat[0]), 90.0) else "gaussian"
        return cls(lat, np.asarray(lon, dtype=np.float64), kind)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        """Inverse of :meth:`to_dict`."""
        kind, nlat, nlon = d["kind"], int(d["nlat"]), int(d["nlon"])
        return cls.equiangular(nlat, nlon) if kind == "equiangular" else cls.gaussian(nlat, nlon)

    # ------------------------------------------------------------------ properties
    @property
    def nlat(self) -> int:
        return int(self.lat.size)

    @property
    def nlon(self) -> int:
        return int(self.lon.size)

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (self.nlat, self.nlon)

    @property
    def sht_grid(self) -> str:
        """The torch-harmonics ``grid`` name: ``"equiangular"`` or ``"legendre-gauss"``."""
        return "equiangular" if self.kind == "equiangular" else "legendre-gauss"

    @property
    def weights(self) -> np.ndarray:
        """Area weights per row, shape ``[H]``, mean 1 (WeatherBench2 convention)."""
        if self.kind == "gaussian":
            _, w = np.polynomial.legendre.leggauss(self.nlat)
            w = w[::-1]
        else:
            phi = np.deg2rad(self.lat)
            half = 0.5 * abs(phi[0] - phi[1])
            upper = np.minimum(phi + half, np.pi / 2)
            lower = np.maximum(phi - half, -np.pi / 2)
            w = np.sin(upper) - np.sin(lower)
        return w / w.mean()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "nlat": self.nlat, "nlon": self.nlon}

    def describe(self) -> str:
        return f"{self.kind} {self.nlat}×{self.nlon}"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Grid)
            and self.kind == other.kind
            and self.shape == other.shape
            and np.allclose(self.lat, other.lat)
            and np.allclose(self.lon, other.lon)
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.shape))

    def __repr__(self) -> str:
        return f"Grid({self.describe()})"
