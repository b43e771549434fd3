"""Configuration of ``aivarda learn-b nmc|genbe`` (one YAML with ``data``, ``nmc`` and ``genbe``
sections; see ``configs/learn_b_genbe.yaml``)."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from aivarda.config import DataConfig, Duration, SafeName, StrictModel
from aivarda.grid import Grid
from aivarda.models.config import ModelConfig


class GridSection(StrictModel):
    """A grid by kind and size, e.g. ``{kind: equiangular, nlat: 128, nlon: 256}``."""

    kind: Literal["equiangular", "gaussian"] = "equiangular"
    nlat: int = Field(ge=4)
    nlon: int = Field(ge=8)

    def grid(self) -> Grid:
        return Grid.from_dict(self.model_dump())


class NmcSection(StrictModel):
    """How NMC samples are made."""

    kind: Literal["forecast", "lagged_truth"] = Field(
        default="forecast", description="forecast differences (needs `model`) or the model-free lagged-truth stand-in"
    )
    span: str | None = Field(default="train", description="span of the source the valid times come from (None: all)")
    long_lead: Duration = Field(default=timedelta(hours=48))
    short_lead: Duration = Field(default=timedelta(hours=24))
    lag: Duration = Field(default=timedelta(hours=24), description="lagged_truth: x(t) − x(t − lag)")
    max_samples: int | None = Field(default=200, ge=2, description="at most this many valid times, evenly spread")
    batch_size: int = Field(default=4, ge=1)
    grid: GridSection | None = Field(default=None, description="store the samples regridded to this grid (default: the source grid)")
    model: ModelConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> NmcSection:
        if self.kind == "forecast" and self.model is None:
            raise ValueError("kind 'forecast' needs a 'model' section (or use kind: lagged_truth)")
        if self.long_lead <= self.short_lead:
            raise ValueError("long_lead must be longer than short_lead")
        if self.short_lead <= timedelta(0) or self.lag <= timedelta(0):
            raise ValueError("short_lead and lag must be positive durations (e.g. '24h')")
        return self


class GenBeSection(StrictModel):
    """How GEN_BE statistics are fitted (:class:`~aivarda.background.genbe.fit.FitSettings`)."""

    control_grid: GridSection | None = Field(default=None, description="default: the grid of the samples")
    vertical: Literal["empirical", "parametric"] = "empirical"
    balance: bool = True
    balanced: list[str] = Field(default_factory=lambda: ["chi", "z", "t", "surface"])
    bands: int | None = Field(default=None, ge=1, description="latitude bands of the regression (None: every row)")
    ridge: float = Field(default=1e-3, ge=0)
    lmax: int | None = Field(default=None, ge=2, description="spectral truncation (default: the grid's)")


class LearnBConfig(StrictModel):
    """``aivarda learn-b nmc|genbe CONFIG``."""

    name: SafeName = "genbe"
    data: DataConfig = Field(default_factory=DataConfig)
    nmc: NmcSection = Field(default_factory=lambda: NmcSection(kind="lagged_truth"))
    genbe: GenBeSection = Field(default_factory=GenBeSection)
    samples: Path | None = Field(default=None, description="NMC sample file (default: the cache of the nmc section)")
    output: Path | None = Field(default=None, description="statistics file (default: $AIVARDA_HOME/b/genbe_<name>.pt)")

    def nmc_key(self, source_token: str) -> str:
        """16 hex digits identifying the samples the ``nmc`` section makes from a source."""
        nmc = json.loads(self.nmc.model_dump_json())
        if self.nmc.model is not None and self.nmc.model.checkpoint is not None:
            ckpt = Path(self.nmc.model.checkpoint)
            nmc["checkpoint_stat"] = [ckpt.stat().st_size, ckpt.stat().st_mtime_ns] if ckpt.is_file() else None
        text = json.dumps({"source": source_token, "nmc": nmc}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]
