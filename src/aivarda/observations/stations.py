"""A synthetic, realistic station network (radiosondes and surface stations) and its observations.

The Held–Suarez world has no land, so the network is placed on a **synthetic continents mask**: a
handful of latitude/longitude boxes roughly where Earth's continents are (:data:`DEFAULT_CONTINENTS`,
30 % of the sphere, like Earth's 29 % of land). Each kind of station puts ``land_fraction`` of its sites uniformly (by
area) inside the boxes and the rest uniformly over the "ocean" (islands, ships, buoys), so the
density per unit area is ``(f / A_land) / ((1 − f) / A_ocean)`` times higher over land
(:meth:`StationNetwork.density_ratio`). Positions come from ``SeedSequence([seed, kind])``: the same
config always gives the same network.

Defaults (``configs/stations/network.yaml``):

- **radiosondes** (TEMP, report types 120 mass / 220 wind): 150 sites, 00 and 12 UTC; ``t``, ``u``,
  ``v``, ``z`` on the mandatory levels inside the model's range (1000 … 50 hPa) and at
  ``significant_levels`` further pressures per ascent drawn uniformly in ln p (interpolated in ln p
  between the bracketing model levels by the observation operator,
  :class:`~aivarda.observations.operators.LogPressureInterpolation`); ``q`` up to ``humidity_top``
  (300 hPa), as real hygrometers stop reporting in the cold upper troposphere;
- **surface stations** (SYNOP, report types 181 mass / 281 wind): 600 sites, 00/06/12/18 UTC;
  ``t2m``, ``u10m``, ``v10m``, ``msl``;
- instrument-like errors (state units): ``t`` 1 K, ``u``/``v`` 2 m s⁻¹, ``z`` 10 m × g₀ = 98.07
  m² s⁻², ``q`` 0.5 g kg⁻¹, ``t2m`` 1 K, ``u10m``/``v10m`` 2 m s⁻¹, ``msl`` 100 Pa.

Observation values (:func:`simulate_station_table`) are ``y = H(x_truth) + σ_o ε``, ``ε ~ N(0, 1)``
drawn from ``SeedSequence([seed, kind, minutes since 1970])``: one valid time's reports do not
depend on which window or file asks for them. A humidity below ``min_humidity`` (1e-6 kg kg⁻¹) after
the noise is reported as ``min_humidity`` (a hygrometer reports "very dry", never a negative q).

Station heights: the world is flat (no orography), every station has elevation 0 and the model's
2 m / 10 m / mean-sea-level fields are compared directly. A real setup would (i) drop or correct
surface reports whose elevation differs from the model orography at the station, e.g. a
lapse-rate correction of 2 m temperature ``T_model(z_s) = T_2m + Γ (z_model − z_s)`` with
``Γ = 6.5 K km⁻¹``, (ii) assimilate station pressure through the hypsometric equation rather than
a reduced MSLP over high ground, and (iii) drop radiosonde levels below the model surface.

Stations withheld for verification are whole stations: :func:`withheld_stations` marks a station
id when a seeded hash of ``(seed, id)`` falls below the fraction, so the same station is withheld in
every cycle, in every file and whether the observations are simulated in memory or read back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from aivarda.channels import ChannelLayout
from aivarda.config import DataConfig, StrictModel
from aivarda.errors import ObservationError
from aivarda.grid import Grid
from aivarda.observations.obsset import ObsSet
from aivarda.observations.operators import build_operator, nearest_row
from aivarda.observations.table import ObsTable, encode_station_ids
from aivarda.observations.variables import STANDARD_GRAVITY

StationKind = Literal["radiosonde", "surface"]
KINDS: tuple[StationKind, ...] = ("radiosonde", "surface")
_KIND_STREAM = {"radiosonde": 0x50D, "surface": 0x5F0}  # seed-sequence keys per kind
_ID_BASE = {"radiosonde": 50000, "surface": 60000}  # 5-digit WMO-like ids (block 50–59 / 60–69)
MANDATORY_LEVELS = (1000.0, 925.0, 850.0, 700.0, 500.0, 400.0, 300.0, 250.0, 200.0, 150.0, 100.0, 70.0, 50.0)
"""WMO mandatory pressure levels of a TEMP report (hPa)."""

# NCEP prepbufr report types: radiosonde mass / wind, surface land (SYNOP) mass / wind
REPORT_TYPE = {("radiosonde", "mass"): 120, ("radiosonde", "wind"): 220, ("surface", "mass"): 181,
               ("surface", "wind"): 281}
REPORT_KIND = {120: "radiosonde", 220: "radiosonde", 181: "surface", 281: "surface"}
WIND_VARIABLES = frozenset({"u", "v", "u10m", "v10m"})


class ContinentBox(StrictModel):
    """A latitude/longitude box of the synthetic continents mask (degrees; ``lon_min > lon_max``
    wraps through 0° E)."""

    name: str
    lat_min: float = Field(ge=-90, le=90)
    lat_max: float = Field(ge=-90, le=90)
    lon_min: float = Field(ge=-180, le=360)
    lon_max: float = Field(ge=-180, le=360)

    @model_validator(mode="after")
    def _order(self) -> ContinentBox:
        if not self.lat_min < self.lat_max:
            raise ValueError(f"continent {self.name!r}: lat_min must be < lat_max")
        return self

    def contains(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        lo, hi = self.lon_min % 360.0, self.lon_max % 360.0
        lon = np.mod(lon, 360.0)
        if self.lon_max - self.lon_min >= 360.0:  # a whole latitude band
            in_lon = np.ones(lon.shape, dtype=bool)
        else:
            in_lon = (lon >= lo) & (lon <= hi) if lo <= hi else (lon >= lo) | (lon <= hi)
        return (lat >= self.lat_min) & (lat <= self.lat_max) & in_lon

    def area_fraction(self) -> float:
        """Fraction of the sphere's area inside the box."""
        width = 360.0 if self.lon_max - self.lon_min >= 360.0 else (self.lon_max - self.lon_min) % 360.0
        return (math.sin(math.radians(self.lat_max)) - math.sin(math.radians(self.lat_min))) / 2.0 * width / 360.0


def _box(name: str, lat: tuple[float, float], lon: tuple[float, float]) -> ContinentBox:
    return ContinentBox(name=name, lat_min=lat[0], lat_max=lat[1], lon_min=lon[0], lon_max=lon[1])


DEFAULT_CONTINENTS: tuple[ContinentBox, ...] = (
    _box("North America", (25.0, 70.0), (-125.0, -65.0)),
    _box("South America", (-55.0, 10.0), (-80.0, -38.0)),
    _box("Europe", (36.0, 70.0), (-10.0, 40.0)),
    _box("Africa", (-35.0, 15.0), (10.0, 42.0)),
    _box("Sahara", (15.0, 33.0), (-15.0, 35.0)),
    _box("North Asia", (50.0, 72.0), (40.0, 135.0)),
    _box("South Asia", (10.0, 50.0), (60.0, 120.0)),
    _box("Australia", (-38.0, -14.0), (115.0, 150.0)),
    _box("Antarctica", (-90.0, -72.0), (0.0, 360.0)),
)
"""Rough continents (disjoint boxes; the mask is their union, 30 % of the sphere)."""


class StationKindConfig(StrictModel):
    """One kind of station: how many, when they report, what, and how biased to land."""

    count: int = Field(ge=1)
    hours: list[int] = Field(description="UTC hours of the reports")
    variables: list[str]
    land_fraction: float = Field(ge=0, le=1, description="fraction of the sites on the continents mask")

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: list[int]) -> list[int]:
        if not v or any(not 0 <= h < 24 for h in v) or len(set(v)) != len(v):
            raise ValueError("hours must be distinct UTC hours 0 … 23")
        return sorted(v)


class RadiosondeConfig(StationKindConfig):
    count: int = Field(default=150, ge=1)
    hours: list[int] = Field(default_factory=lambda: [0, 12])
    variables: list[str] = Field(default_factory=lambda: ["t", "q", "u", "v", "z"])
    land_fraction: float = Field(default=0.85, ge=0, le=1)
    levels: list[float] = Field(default_factory=lambda: list(MANDATORY_LEVELS), description="reported levels (hPa)")
    significant_levels: int = Field(default=4, ge=0, description="extra levels per ascent, uniform in ln p")
    humidity_top: float = Field(default=300.0, gt=0, description="q is reported at pressures ≥ this (hPa)")

    @field_validator("variables")
    @classmethod
    def _upper(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in ("t", "q", "u", "v", "z")]
        if bad or not v:
            raise ValueError(f"radiosonde variables are among t, q, u, v, z; got {v}")
        return v


class SurfaceConfig(StationKindConfig):
    count: int = Field(default=600, ge=1)
    hours: list[int] = Field(default_factory=lambda: [0, 6, 12, 18])
    variables: list[str] = Field(default_factory=lambda: ["t2m", "u10m", "v10m", "msl"])
    land_fraction: float = Field(default=0.9, ge=0, le=1)

    @field_validator("variables")
    @classmethod
    def _surface(cls, v: list[str]) -> list[str]:
        bad = [x for x in v if x not in ("t2m", "u10m", "v10m", "msl")]
        if bad or not v:
            raise ValueError(f"surface variables are among t2m, u10m, v10m, msl; got {v}")
        return v


def _default_errors() -> dict[str, float]:
    return {"t": 1.0, "u": 2.0, "v": 2.0, "z": 10.0 * STANDARD_GRAVITY, "q": 5e-4,
            "t2m": 1.0, "u10m": 2.0, "v10m": 2.0, "msl": 100.0}


class StationNetworkConfig(StrictModel):
    """A station network (``configs/stations/network.yaml``) and the truth its reports are drawn from."""

    seed: int = Field(default=0, description="positions, significant levels and noise")
    data: DataConfig = Field(default_factory=DataConfig, description="the truth (aivarda data stations)")
    continents: list[ContinentBox] = Field(default_factory=lambda: list(DEFAULT_CONTINENTS))
    radiosonde: RadiosondeConfig = Field(default_factory=RadiosondeConfig)
    surface: SurfaceConfig = Field(default_factory=SurfaceConfig)
    error_std: dict[str, float] = Field(default_factory=_default_errors, description="σ_o per variable (state units)")
    noise: bool = True
    min_humidity: float = Field(default=1e-6, gt=0, description="kg/kg; a noisier q is reported as this")

    @model_validator(mode="after")
    def _errors(self) -> StationNetworkConfig:
        needed = set(self.radiosonde.variables) | set(self.surface.variables)
        missing = sorted(needed - set(self.error_std))
        bad = sorted(k for k, v in self.error_std.items() if not v > 0)
        if missing or bad:
            raise ValueError(f"error_std: needs a positive σ_o for {missing or bad}")
        return self

    def kind(self, kind: StationKind) -> StationKindConfig:
        return self.radiosonde if kind == "radiosonde" else self.surface


def land_mask(lat: np.ndarray, lon: np.ndarray, continents: Sequence[ContinentBox] = DEFAULT_CONTINENTS) -> np.ndarray:
    """Whether each position is on the synthetic continents (the union of the boxes)."""
    lat, lon = np.asarray(lat, dtype=np.float64), np.asarray(lon, dtype=np.float64)
    out = np.zeros(np.broadcast(lat, lon).shape, dtype=bool)
    for box in continents:
        out |= box.contains(lat, lon)
    return out


def land_area_fraction(continents: Sequence[ContinentBox] = DEFAULT_CONTINENTS, n: int = 720) -> float:
    """Area fraction of the continents mask (midpoint quadrature on an ``n × 2n`` grid)."""
    lat = 90.0 - (np.arange(n) + 0.5) * 180.0 / n
    lon = (np.arange(2 * n) + 0.5) * 180.0 / n
    w = np.cos(np.radians(lat))
    return float((land_mask(lat[:, None], lon[None, :], continents) * w[:, None]).sum() / (w.sum() * 2 * n))


def withheld_stations(station_ids: Sequence[str] | np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which stations are withheld: ``u(seed, id) < fraction`` with ``u`` a uniform number from a
    BLAKE2 hash of the seed and the id (independent of the other stations, of order, of files)."""
    out = np.zeros(len(station_ids), dtype=bool)
    if fraction <= 0:
        return out
    cache: dict[str, bool] = {}
    for i, sid in enumerate(station_ids):
        sid = str(sid)
        if not sid:
            continue
        hit = cache.get(sid)
        if hit is None:
            digest = hashlib.blake2b(f"{int(seed)}:{sid}".encode(), digest_size=8).digest()
            hit = cache[sid] = int.from_bytes(digest, "little") / 2.0**64 < fraction
        out[i] = hit
    return out


@dataclass(frozen=True)
class StationNetwork:
    """Sites of a network: id (5-digit WMO-like), kind, position (degrees, float32-exact), land flag,
    elevation (m; 0 in the flat world)."""

    station: np.ndarray  # object [S]
    kind: np.ndarray  # object [S], "radiosonde" | "surface"
    lat: np.ndarray
    lon: np.ndarray
    land: np.ndarray
    elevation: np.ndarray
    continents: tuple[ContinentBox, ...] = DEFAULT_CONTINENTS

    def __len__(self) -> int:
        return len(self.station)

    def of(self, kind: StationKind) -> StationNetwork:
        m = self.kind == kind
        return StationNetwork(self.station[m], self.kind[m], self.lat[m], self.lon[m], self.land[m],
                              self.elevation[m], self.continents)

    def density_ratio(self) -> float:
        """Stations per unit area over land ÷ over ocean."""
        a = land_area_fraction(self.continents)
        n_land, n_sea = int(self.land.sum()), int((~self.land).sum())
        return math.inf if n_sea == 0 else (n_land / a) / (n_sea / (1.0 - a))

    def write_csv(self, path: Path, withheld: np.ndarray | None = None) -> Path:
        """``station,kind,lat,lon,elevation,land[,withheld]`` (atomically)."""
        from aivarda.files import atomic_write_text

        head = "station,kind,lat,lon,elevation,land" + (",withheld" if withheld is not None else "")
        lines = [head]
        for i in range(len(self)):
            row = f"{self.station[i]},{self.kind[i]},{self.lat[i]:.6f},{self.lon[i]:.6f},{self.elevation[i]:g},{int(self.land[i])}"
            lines.append(row + (f",{int(withheld[i])}" if withheld is not None else ""))
        atomic_write_text(path, "\n".join(lines) + "\n")
        return path


def _uniform_sphere(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n))), rng.uniform(0.0, 360.0, n)


def _draw(rng: np.random.Generator, n: int, on_land: bool, continents: Sequence[ContinentBox]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positions uniform by area on (or off) the continents, by rejection."""
    lat_l, lon_l, got = [], [], 0
    while got < n:
        lat, lon = _uniform_sphere(rng, max(4 * (n - got), 64))
        keep = land_mask(lat, lon, continents) == on_land
        lat_l.append(lat[keep])
        lon_l.append(lon[keep])
        got += int(keep.sum())
    return np.concatenate(lat_l)[:n], np.concatenate(lon_l)[:n]


def generate_network(cfg: StationNetworkConfig) -> StationNetwork:
    """The network of ``cfg`` (deterministic in ``cfg.seed``); radiosondes first, then surface sites."""
    parts = []
    for kind in KINDS:
        k = cfg.kind(kind)
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, _KIND_STREAM[kind]]))
        n_land = round(k.land_fraction * k.count)
        lat_a, lon_a = _draw(rng, n_land, True, cfg.continents)
        lat_b, lon_b = _draw(rng, k.count - n_land, False, cfg.continents)
        lat = np.concatenate([lat_a, lat_b])
        lon = np.concatenate([lon_a, lon_b])
        order = rng.permutation(k.count)  # ids not sorted by land/sea
        # positions to 0.01° and float32-exact (IODA stores float32 positions)
        lat = np.round(lat[order], 2).astype(np.float32).astype(np.float64)
        lon = np.round(lon[order], 2) % 360.0
        lon = lon.astype(np.float32).astype(np.float64)
        ids = np.asarray([f"{_ID_BASE[kind] + i:05d}" for i in range(k.count)], dtype=object)
        parts.append((ids, np.full(k.count, kind, dtype=object), lat, lon, land_mask(lat, lon, cfg.continents)))
    return StationNetwork(*(np.concatenate([p[i] for p in parts]) for i in range(5)),
                          elevation=np.zeros(sum(len(p[0]) for p in parts)), continents=tuple(cfg.continents))


# ---------------------------------------------------------------------------------- simulation
def _minutes(time: np.datetime64) -> int:
    return int(np.datetime64(time, "m").astype(np.int64))


def reporting(cfg: StationNetworkConfig, time: np.datetime64) -> bool:
    """Whether any station of the network reports at ``time``."""
    t = np.datetime64(time, "m")
    minute = int(t.astype(np.int64)) % 60
    hour = int(t.astype("datetime64[h]").astype(np.int64)) % 24
    return minute == 0 and any(hour in cfg.kind(kind).hours for kind in KINDS)


def simulate_station_table(
    cfg: StationNetworkConfig,
    network: StationNetwork,
    truth: Tensor,
    time: np.datetime64,
    grid: Grid,
    layout: ChannelLayout,
) -> ObsTable:
    """The reports of every station reporting at ``time`` from the truth ``[C, H, W]`` valid then,
    as an :class:`ObsTable` (IODA names and units, report types, station ids; not withheld).

    Variables or levels the layout does not have are not reported (a radiosonde level outside the
    model's pressure range cannot be simulated)."""
    t = np.datetime64(time, "s")
    hour = int(np.datetime64(time, "h").astype(np.int64)) % 24
    if np.datetime64(time, "h") != np.datetime64(time, "s") or truth.ndim != 3:
        raise ObservationError(f"station observations: need a whole-hour time and a truth [C, H, W], got {time}, "
                               f"{list(truth.shape)}")
    sets = []
    for kind in KINDS:
        k = cfg.kind(kind)
        if hour not in k.hours:
            continue
        net = network.of(kind)
        rng_levels, rng_noise = (np.random.default_rng(s) for s in np.random.SeedSequence(
            [cfg.seed, _KIND_STREAM[kind], _minutes(time)]).spawn(2))
        if kind == "radiosonde":
            sets.append(_radiosonde_rows(cfg, net, rng_levels, layout))
        else:
            sets.append(_surface_rows(cfg, net, layout))
        obs = sets[-1]
        if len(obs):
            with torch.no_grad():
                hx = build_operator(obs, grid, layout, truth.shape)(truth[None].double()).numpy()
            sigma = obs.error_std.double().numpy()
            value = hx + sigma * rng_noise.standard_normal(hx.size) if cfg.noise else hx
            is_q = np.isin(obs.channel.numpy(), _channels_of(layout, "q"))
            value = np.where(is_q, np.maximum(value, cfg.min_humidity), value)
            sets[-1] = obs.replace(value=torch.as_tensor(value))
    if not sets:
        return ObsTable.empty()
    table = ObsTable.from_obsset(ObsSet.concat(sets), layout, t)
    # values and errors as a report carries them: float32 in file units (what an IODA file keeps)
    table.value = table.value.astype(np.float32).astype(np.float64)
    table.error = table.error.astype(np.float32).astype(np.float64)
    return table


def _channels_of(layout: ChannelLayout, variable: str) -> list[int]:
    if variable in layout.upper_air:
        return list(range(layout.n_channels))[layout.variable_slice(variable)]
    return [layout.index(variable)] if variable in layout.surface else []


def _rows(network: StationNetwork, site: np.ndarray, channel: list[int], level: list[float], sigma: list[float],
          rtype: list[int]) -> ObsSet:
    site = np.asarray(site, dtype=np.int64)
    codes = encode_station_ids(network.station)
    return ObsSet.create(network.lat[site], network.lon[site], np.asarray(channel, dtype=np.int64),
                         torch.zeros(site.size, dtype=torch.float64), torch.as_tensor(sigma, dtype=torch.float64),
                         level=np.asarray(level, dtype=np.float64), station=codes[site],
                         report_type=np.asarray(rtype, dtype=np.int32))


def _radiosonde_rows(cfg: StationNetworkConfig, net: StationNetwork, rng: np.random.Generator,
                     layout: ChannelLayout) -> ObsSet:
    k = cfg.radiosonde
    if not layout.levels:
        return ObsSet.empty()
    model = np.asarray(layout.levels, dtype=np.float64)
    lo, hi = model.min(), model.max()
    mandatory = [p for p in k.levels if lo <= p <= hi]
    variables = [v for v in k.variables if v in layout.upper_air]
    site_l, chan_l, lev_l, sig_l, rt_l = [], [], [], [], []
    for s in range(len(net)):
        extra = np.round(np.exp(rng.uniform(math.log(lo), math.log(hi), k.significant_levels)), 1)
        for p in sorted(set(mandatory) | set(extra.tolist()), reverse=True):  # one value per level, surface first
            on = np.isclose(model, p, rtol=1e-9, atol=0.0)
            nearest = int(np.argmin(np.abs(np.log(model) - math.log(p))))
            for var in variables:
                if var == "q" and p < k.humidity_top:
                    continue
                site_l.append(s)
                chan_l.append(layout.variable_slice(var).start + (int(on.argmax()) if on.any() else nearest))
                lev_l.append(math.nan if on.any() else p)
                sig_l.append(cfg.error_std[var])
                rt_l.append(REPORT_TYPE[("radiosonde", "wind" if var in WIND_VARIABLES else "mass")])
    return _rows(net, np.asarray(site_l), chan_l, lev_l, sig_l, rt_l)


def _surface_rows(cfg: StationNetworkConfig, net: StationNetwork, layout: ChannelLayout) -> ObsSet:
    variables = [v for v in cfg.surface.variables if v in layout.surface]
    n = len(net)
    site = np.repeat(np.arange(n), len(variables))
    chan = [layout.index(v) for v in variables] * n
    sig = [cfg.error_std[v] for v in variables] * n
    rt = [REPORT_TYPE[("surface", "wind" if v in WIND_VARIABLES else "mass")] for v in variables] * n
    return _rows(net, site, chan, [math.nan] * len(chan), sig, rt)


# ---------------------------------------------------------------------------------- thinning
class ThinningConfig(StrictModel):
    """One report per thinning box and window time: the box is ``box × box`` model grid cells around
    the grid points; in each box the report of the station nearest to the box's centre point is
    kept, radiosonde and surface reports separately (a report is thinned whole: a radiosonde keeps
    its profile). ``method: mean`` (superobbing) replaces each value of the kept report by the mean
    of the box's reports' values of the same channel and level (other stations' levels that the kept
    report lacks are dropped); the position and σ_o stay those of the kept report (σ_o is not divided
    by √n: nearby stations share representativeness errors)."""

    box: int = Field(default=1, ge=1, description="thinning box in model grid cells per side")
    method: Literal["nearest", "mean"] = Field(default="nearest", description="nearest: thin; mean: superob")


def thin_reports(obs: ObsSet, grid: Grid, box: int, method: str = "nearest") -> tuple[ObsSet, int]:
    """``(kept observations, number of reports thinned away)``; see :class:`ThinningConfig`.

    A report is the observations of one station (or, without a station id, one position) at one
    window time and one kind (upper-air rows have a pressure level or an upper-air channel: they
    are told apart by their report type, 1xx/2xx radiosonde vs surface, or else by the position)."""
    n = len(obs)
    if n == 0:
        return obs, 0
    lat, lon = obs.lat.cpu().numpy(), obs.lon.cpu().numpy()
    station = obs.station.cpu().numpy()
    ident = np.where(station != 0, station, -(np.round(lat * 1e4).astype(np.int64) * 10_000_000
                                            + np.round(lon * 1e4).astype(np.int64)) - 1)
    rtype = obs.report_type.cpu().numpy()
    kind = np.asarray([REPORT_KIND.get(int(r), "other") for r in rtype], dtype=object)
    kind_code = np.unique(kind, return_inverse=True)[1]
    j = nearest_row(grid, lat)
    dlon = 360.0 / grid.nlon
    i = np.round((lon - grid.lon[0]) / dlon).astype(np.int64) % grid.nlon
    jb, ib = j // box, i // box
    # the centre point of a box: the grid point at its middle row/column
    jc = np.minimum(jb * box + box // 2, grid.nlat - 1)
    ic = (ib * box + box // 2) % grid.nlon
    dist = _great_circle(lat, lon, grid.lat[jc], grid.lon[ic])
    t = obs.time_index.cpu().numpy()
    group = np.stack([jb, ib, t, kind_code], axis=1)
    report = np.stack([ident, t, kind_code], axis=1)
    # per group, the report with the smallest distance (ties: smallest station id)
    order = np.lexsort((ident, dist, group[:, 3], group[:, 2], group[:, 1], group[:, 0]))
    g_sorted = group[order]
    first = np.ones(n, dtype=bool)
    first[1:] = np.any(g_sorted[1:] != g_sorted[:-1], axis=1)
    winners = {tuple(r) for r in report[order[first]].tolist()}
    keep = np.fromiter((tuple(r) in winners for r in report.tolist()), dtype=bool, count=n)
    n_reports = len({tuple(r) for r in report.tolist()})
    if method == "mean":
        obs = obs.replace(value=torch.as_tensor(_box_means(obs, group), dtype=obs.value.dtype, device=obs.device))
    return obs.select(torch.as_tensor(keep, device=obs.device)), n_reports - len(winners)


def _box_means(obs: ObsSet, group: np.ndarray) -> np.ndarray:
    """Mean value per (box, window time, kind, channel, level) at every observation."""
    level = np.nan_to_num(obs.level.cpu().numpy(), nan=-1.0)
    key = np.column_stack([group, obs.channel.cpu().numpy(), np.round(level * 100).astype(np.int64)])
    _, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    value = obs.value.double().cpu().numpy()
    return (np.bincount(inverse, weights=value) / np.bincount(inverse))[inverse]


def _great_circle(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    p1, p2, dl = np.radians(lat1), np.radians(lat2), np.radians(lon2 - lon1)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
