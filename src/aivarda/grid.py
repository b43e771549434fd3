"""Horizontal grids: equiangular with poles (ERA5 721×1440, WB2 240×121), equiangular without poles
(WB2 64×32 at 5.625°, rows at ±(90 − Δφ/2)) and Gaussian (the nature run).

Conventions (ERA5 / WeatherBench2 / torch-harmonics): latitude runs **north → south** (index 0 is
the northernmost row), longitude runs east from 0° to 360° (exclusive).

Area weights follow WeatherBench2: for an equiangular grid each row stands for the band between
the midpoints to its neighbours (clipped at the poles), ``w_i ∝ sin(φ_i + Δφ/2) − sin(φ_i − Δφ/2)``;
for a Gaussian grid the Gauss–Legendre quadrature weights are the band areas. Weights are
normalised to mean 1 so that ``mean(w_i · f_i)`` is an area mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
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
        kind: ``"equiangular"`` (rows equally spaced, ``φ_i = 90° − iΔφ`` with both poles, or
            ``φ_i = 90° − (i + ½)Δφ`` without them) or ``"gaussian"`` (rows at the Gauss–Legendre nodes).
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
    def equiangular(cls, nlat: int, nlon: int, poles: bool = True) -> Grid:
        """Equiangular grid of ``nlat`` rows N → S: with both poles, ``φ_i = 90° − i·180°/(nlat − 1)``
        (ERA5: 721×1440); without, ``φ_i = 90° − (i + ½)·180°/nlat`` (WB2 5.625°: 32×64)."""
        if poles:
            lat = np.linspace(90.0, -90.0, nlat)
        else:
            lat = 90.0 - (np.arange(nlat) + 0.5) * (180.0 / nlat)
        return cls(lat, np.arange(nlon) * (360.0 / nlon), "equiangular")

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
    def from_coords(cls, lat: Any, lon: Any, tol: float = 1e-6) -> Grid:
        """Infer the grid kind from coordinates (already ordered N → S, lon 0…360).

        Equiangular when the rows are the equiangular ones (with or without poles) to ``tol``
        degrees; Gaussian only when they are the Gauss–Legendre nodes ``φ_i = asin(x_i)``,
        ``P_nlat(x_i) = 0``, to ``tol`` degrees; anything else is a DataError (the area weights and
        quadrature of either kind would be wrong for it). Coordinates stored in single precision
        are compared to their own resolution (``180° · eps_float32`` ≈ 2e-5°) instead.
        """
        lat = np.asarray(lat)
        if np.issubdtype(lat.dtype, np.floating):
            tol = max(tol, 180.0 * float(np.finfo(lat.dtype).eps))
        lat = lat.astype(np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        n = lat.size
        if n >= 2:
            for kind, candidate in (
                ("equiangular", lambda: cls.equiangular(n, 2, poles=True).lat),
                ("equiangular", lambda: cls.equiangular(n, 2, poles=False).lat),
                ("gaussian", lambda: cls.gaussian(n, 2).lat),
            ):
                if np.max(np.abs(candidate() - lat)) <= tol:
                    return cls(lat, lon, kind)  # type: ignore[arg-type]
        spacing = np.diff(lat)
        raise DataError(
            f"grid: {n} latitudes {lat[0]:g} … {lat[-1]:g} (spacing {-spacing.max():g} … {-spacing.min():g}°) are "
            f"neither equiangular (equally spaced, from ±90° or ±(90° − Δφ/2)) nor the Gauss–Legendre nodes "
            f"(to {tol:g}°)"
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        """Inverse of :meth:`to_dict` (a dict without ``poles`` is an equiangular grid with poles)."""
        kind, nlat, nlon = d["kind"], int(d["nlat"]), int(d["nlon"])
        if kind == "equiangular":
            return cls.equiangular(nlat, nlon, poles=bool(d.get("poles", True)))
        return cls.gaussian(nlat, nlon)

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
    def poles(self) -> bool:
        """Whether the first and last rows are the poles (±90°)."""
        return bool(np.isclose(self.lat[0], 90.0) and np.isclose(self.lat[-1], -90.0))

    @property
    def sht_grid(self) -> str:
        """The torch-harmonics ``grid`` name: ``"equiangular"`` or ``"legendre-gauss"``.

        torch-harmonics has no quadrature for an equiangular grid without poles: such a grid is a
        DataError here (regrid it to a Gaussian grid or one with poles for spectral transforms).
        """
        if self.kind == "gaussian":
            return "legendre-gauss"
        if not self.poles:
            raise DataError(
                f"grid {self.describe()}: spectral transforms need an equiangular grid with poles or a Gaussian "
                "grid (torch-harmonics has no quadrature for equiangular rows without poles)"
            )
        return "equiangular"

    @property
    def weights(self) -> np.ndarray:
        """Area weights per row, shape ``[H]``, mean 1 (WeatherBench2 convention); a fresh copy
        of the weights computed once per grid."""
        return self._row_weights.copy()

    @cached_property
    def _row_weights(self) -> np.ndarray:
        # computed once: numpy's Gauss–Legendre nodes solve an eigenproblem, and the BLAS threads
        # it wakes keep spinning for a while, halving the speed of the torch work that follows
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
        """``{kind, nlat, nlon}``, plus ``poles: False`` for an equiangular grid without poles (so the
        dicts of every other grid, and the caches keyed by them, are unchanged)."""
        d: dict[str, Any] = {"kind": self.kind, "nlat": self.nlat, "nlon": self.nlon}
        if self.kind == "equiangular" and not self.poles:
            d["poles"] = False
        return d

    def describe(self) -> str:
        poles = " without poles" if self.kind == "equiangular" and not self.poles else ""
        return f"{self.kind} {self.nlat}×{self.nlon}{poles}"

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
