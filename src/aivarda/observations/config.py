"""``observations:`` section of an experiment config (simulated observations and their QC).

Example::

    observations:
      mode: random            # random | fixed | grid | offgrid
      fraction: 0.1           # of the grid columns, per observed window time (or count: 500)
      channels: [z500, t850, u10m]   # default: every channel of the layout
      error_fraction: 0.01    # σ_o = error_fraction × scale(variable) × climatological std
      error_scale: {t: 0.25, t2m: 0.25}
      withhold: 0.15          # fraction of the columns kept for verification
      qc: {background_k: 5.0}

Where they come from (``source``): ``simulate`` (the default: the simulator above, from the truth
window), ``stations`` (the station network of ``network``, simulated in memory;
:mod:`aivarda.observations.stations`) or ``files`` (one observation file per cycle, any format of
:func:`aivarda.observations.io.read_table` by its suffix; :mod:`aivarda.observations.sources`)::

    observations:
      source: files
      path: obs/{time:%Y%m%d%H}.nc4        # or path: obs, pattern: "{time:%Y%m%d%H}.bufr"
      missing: error                       # or skip: a cycle without its file has no observations
      error_std: {t: 1.0, u: 2.0, ...}     # σ_o for files without errors (BUFR)
      withhold: 0.15                       # fraction of the station ids kept for verification
      thinning: {box: 1}                   # one report per grid box and window time
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator, model_validator

from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES, ChannelLayout
from aivarda.config import StrictModel
from aivarda.errors import AivardaError
from aivarda.observations.registry import InterpolationConfig, OperatorConfig, parse_operator_config
from aivarda.observations.stations import ThinningConfig

ObservationMode = Literal["random", "fixed", "grid", "offgrid"]
ObservationSourceName = Literal["simulate", "stations", "files"]
SIMULATION_KEYS = ("mode", "fraction", "count", "n_stations", "stations_file", "grid_stride", "mask_file", "channels",
                   "pressure_levels", "times", "error_fraction", "error_scale", "noise")
"""Keys of the grid simulator (``source: simulate``) only."""

KNOWN_VARIABLES = sorted(SURFACE_VARIABLES) + sorted(UPPER_AIR_VARIABLES)

# Gross-range limits per variable (physical units); a value outside is flagged QCFlag.GROSS.
DEFAULT_GROSS_LIMITS: dict[str, tuple[float, float]] = {
    "u10m": (-100.0, 100.0),
    "v10m": (-100.0, 100.0),
    "t2m": (170.0, 350.0),
    "msl": (85_000.0, 110_000.0),
    "sp": (40_000.0, 110_000.0),
    "tcwv": (-1.0, 100.0),
    "z": (-20_000.0, 350_000.0),
    "q": (-1e-3, 0.06),
    "u": (-200.0, 200.0),
    "v": (-200.0, 200.0),
    "t": (150.0, 350.0),
    "w": (-20.0, 20.0),
    "r": (-5.0, 150.0),
}


_FILE_KEYS = {"stations_file": ("fixed", ".csv"), "mask_file": ("grid", ".npy")}  # key → (mode, suffix)


def _check_variables(keys: list[str] | dict[str, object], what: str) -> None:
    unknown = [k for k in keys if k not in KNOWN_VARIABLES]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected variables from {KNOWN_VARIABLES}")


class QCConfig(StrictModel):
    """Quality control: gross-range check and background check |y − H(x_b)| > k·sqrt(σ_o² + σ_b²)."""

    gross_check: bool = True
    gross_limits: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="per-variable (min, max) overriding DEFAULT_GROSS_LIMITS"
    )
    background_check: bool = True
    background_k: float = Field(default=5.0, gt=0, description="rejection threshold k in units of the innovation std")

    @field_validator("gross_limits")
    @classmethod
    def _limits(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        _check_variables(v, "variables in gross_limits")
        bad = [k for k, (lo, hi) in v.items() if not lo < hi]
        if bad:
            raise ValueError(f"gross_limits of {bad} need min < max")
        return v

    def limits(self) -> dict[str, tuple[float, float]]:
        return {**DEFAULT_GROSS_LIMITS, **self.gross_limits}


class ObservationConfig(StrictModel):
    """How observations are simulated from the truth (an OSSE) and quality controlled."""

    mode: ObservationMode = Field(
        default="random",
        description="random: fresh grid columns each cycle; fixed: persistent stations; "
        "grid: every grid_stride-th point or mask_file; offgrid: random positions (bilinear H)",
    )
    fraction: float = Field(default=0.1, ge=0, le=1, description="fraction of grid columns per time (random, offgrid)")
    count: int | None = Field(default=None, ge=1, description="number of columns per time; overrides fraction")
    n_stations: int = Field(default=1000, ge=1, description="fixed mode: number of seeded stations")
    stations_file: Path | None = Field(default=None, description="fixed mode: CSV with columns lat,lon")
    grid_stride: int = Field(default=4, ge=1, description="grid mode: every k-th point in lat and lon")
    mask_file: Path | None = Field(default=None, description="grid mode: .npy boolean mask [H, W]")
    channels: list[str] | None = Field(default=None, description="observed channels; default all")
    pressure_levels: list[float] | None = Field(
        default=None,
        description="hPa; observe the upper-air variables of `channels` at these pressures "
        "(log-pressure interpolation) instead of on the model levels",
    )
    times: list[int] | None = Field(default=None, description="observed window states 0…T−1; default all")
    error_fraction: float = Field(default=0.01, gt=0, description="σ_o = error_fraction × scale × clim std")
    error_scale: dict[str, float] = Field(
        default_factory=lambda: {"t": 0.25, "t2m": 0.25}, description="per-variable factor on error_fraction"
    )
    error_std: dict[str, float] = Field(
        default_factory=dict, description="absolute per-variable σ_o (physical units), overrides the fraction"
    )
    noise: bool = Field(default=True, description="add Gaussian noise σ_o·ε (the seed code did not)")
    withhold: float = Field(default=0.0, ge=0, le=1, description="fraction of columns withheld for verification")
    qc: QCConfig = Field(default_factory=QCConfig)
    operator: SerializeAsAny[OperatorConfig] = Field(
        default_factory=InterpolationConfig, description="observation operator H: {type: interpolation, ...}"
    )
    source: ObservationSourceName = Field(
        default="simulate", description="simulate: the grid simulator; stations: the station network of `network`; "
        "files: one observation file per cycle (`path`)"
    )
    network: Path | None = Field(default=None, description="stations: the station network YAML")
    path: Path | None = Field(
        default=None, description="files: the file of a cycle with {time:%Y%m%d%H}-style fields, or the folder of `pattern`"
    )
    pattern: str | None = Field(default=None, description="files: the file name inside `path`, e.g. {time:%Y%m%d%H}.nc4")
    missing: Literal["error", "skip"] = Field(
        default="error", description="files: a missing file is an error, or (skip) a cycle without observations"
    )
    thinning: ThinningConfig | None = Field(default=None, description="stations/files: one report per box and time")

    @model_validator(mode="after")
    def _source(self) -> ObservationConfig:
        given = self.model_fields_set
        if self.source != "simulate":
            extra = [k for k in SIMULATION_KEYS if k in given]
            if extra:
                raise ValueError(f"{extra} only apply to source: simulate (the grid simulator), not source: {self.source}")
        elif self.thinning is not None:
            raise ValueError("thinning applies to station reports (source: stations or files), not source: simulate")
        if (self.network is not None) != (self.source == "stations"):
            raise ValueError("source: stations needs network: FILE (a station network YAML), and only it takes one")
        if self.source == "stations" and "error_std" in given:
            raise ValueError("source: stations takes σ_o from the network's error_std")
        files_keys = [k for k in ("path", "pattern") if getattr(self, k) is not None]
        if self.source != "files" and (files_keys or "missing" in given):
            raise ValueError(f"{files_keys or ['missing']} only apply to source: files")
        if self.source == "files":
            if self.path is None:
                raise ValueError("source: files needs path (e.g. obs/{time:%Y%m%d%H}.nc4, or a folder and a pattern)")
            template = str(self.path) if self.pattern is None else self.pattern
            template = re.sub(r"\$\{\w+\}", "", template)  # ${AIVARDA_HOME} is expanded when the config is loaded
            try:
                template.format(time=datetime(2000, 1, 1))
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"file template {template!r}: only {{time:FORMAT}} fields are allowed ({exc})") from None
            if "{time" not in template:
                raise ValueError(f"file template {template!r} needs a {{time:%Y%m%d%H}} field (one file per cycle)")
        return self

    def file_for(self, time: datetime) -> Path:
        """``source: files``: the observation file of the cycle at ``time``."""
        assert self.path is not None
        if self.pattern is None:
            return Path(str(self.path).format(time=time))
        return self.path / self.pattern.format(time=time)

    @field_validator("network")
    @classmethod
    def _network(cls, v: Path | None) -> Path | None:
        if v is not None and v.is_absolute() and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @field_validator("stations_file", "mask_file")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        # a resolved (absolute) input must exist; relative ones are resolved against the config's folder first
        if v is not None and v.is_absolute() and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @field_validator("operator", mode="before")
    @classmethod
    def _operator(cls, v: object) -> OperatorConfig:
        return parse_operator_config(v)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("give at least one channel (or omit the key for all)")
            for name in v:
                try:
                    ChannelLayout.parse(name)
                except AivardaError as exc:
                    raise ValueError(str(exc)) from None
            if len(set(v)) != len(v):
                raise ValueError("duplicate channels")
        return v

    @field_validator("pressure_levels")
    @classmethod
    def _levels(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not p > 0 for p in v)):
            raise ValueError("pressure levels must be a non-empty list of positive numbers (hPa)")
        return v

    @field_validator("times")
    @classmethod
    def _times(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(t < 0 for t in v) or len(set(v)) != len(v)):
            raise ValueError("times must be a non-empty list of distinct window indices ≥ 0")
        return v

    @field_validator("error_scale", "error_std")
    @classmethod
    def _per_variable(cls, v: dict[str, float]) -> dict[str, float]:
        _check_variables(v, "variables")
        bad = [k for k, x in v.items() if not x > 0]
        if bad:
            raise ValueError(f"values must be positive, got {bad}")
        return v

    @field_validator("stations_file", "mask_file")
    @classmethod
    def _file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return v
        mode, suffix = _FILE_KEYS[info.field_name]
        if info.data.get("mode") != mode:
            raise ValueError(f"needs mode: {mode}")
        if v.suffix.lower() != suffix:
            raise ValueError(f"expected a {suffix} file, got {v}")
        if v.is_absolute() and not v.is_file():
            raise ValueError(f"file not found: {v}")
        return v
