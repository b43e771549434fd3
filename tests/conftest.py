"""Shared fixtures: a temporary ``$AIVARDA_HOME``, tiny WeatherBench2-layout stores with known
values, the tiny nature run and the Lorenz-96 benchmark script as a module."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES, ChannelLayout
from aivarda.grid import Grid

try:  # hypothesis profiles (select with --hypothesis-profile NAME); see tests/test_kill_anywhere.py
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("quick", max_examples=2, deadline=None, database=None)
    _hypothesis_settings.register_profile("reliability", max_examples=25, deadline=None, database=None)
    _hypothesis_settings.register_profile("reliability-long", max_examples=250, deadline=None, database=None)
    _hypothesis_settings.load_profile("quick")
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    pass

MINI_LEVELS = (500, 850, 1000)
MINI_SURFACE = ("u10m", "v10m", "t2m", "msl")
MINI_UPPER = ("z", "q", "u", "v", "t")
MINI_VARIABLES = MINI_SURFACE + MINI_UPPER


@pytest.fixture(scope="session", autouse=True)
def _aivarda_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test runs with ``$AIVARDA_HOME`` in a temporary directory (never ~/.cache)."""
    old = os.environ.get("AIVARDA_HOME")
    home = tmp_path_factory.mktemp("aivarda_home")
    os.environ["AIVARDA_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("AIVARDA_HOME", None)
    else:
        os.environ["AIVARDA_HOME"] = old


def mini_value(variable: str, level: int | None, hours: float, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """The known field of the mini store: ``1000 k + p + hours/4 + φ + λ/100`` (λ in 0…360).

    ``k`` is the variable's position in :data:`MINI_VARIABLES`, ``p`` the level in hPa (0 for surface
    variables), ``φ``/``λ`` latitude/longitude in degrees. Returns ``[len(lat), len(lon)]``.
    """
    k = MINI_VARIABLES.index(variable)
    lam = np.mod(lon, 360.0)
    base = 1000.0 * k + (level or 0) + hours / 4.0
    return (base + lat[:, None] + lam[None, :] / 100.0).astype(np.float32)


@dataclass
class MiniStore:
    """A tiny WB2-layout store: 9×16 equiangular grid with poles, 3 levels, 15 times."""

    path: Path
    grid: Grid
    layout: ChannelLayout
    times: np.ndarray
    spans: dict

    def expected(self, time: np.datetime64, layout: ChannelLayout | None = None) -> np.ndarray:
        """The exact ``[C, H, W]`` state at ``time`` (N → S, lon 0…360) from :func:`mini_value`."""
        layout = layout or self.layout
        hours = (np.datetime64(time, "ns") - self.times[0]) / np.timedelta64(1, "h")
        return np.stack(
            [mini_value(ch.variable.short, ch.level, hours, self.grid.lat, self.grid.lon) for ch in layout.channels]
        )


def write_mini_store(path: Path, flipped: bool = False) -> MiniStore:
    """Write the mini store. ``flipped``: latitude S → N and longitude −180…180, no ``aivarda_grid``
    or ``aivarda_spans`` attributes (readers must normalise and infer the grid from coordinates)."""
    import pandas as pd
    import xarray as xr

    grid = Grid.equiangular(9, 16)
    six_hourly = pd.date_range("2020-01-01T00", "2020-01-02T18", freq="6h")
    hourly = pd.date_range("2020-01-03T00", "2020-01-03T06", freq="1h")
    times = np.concatenate([six_hourly.values, hourly.values]).astype("datetime64[ns]")
    spans = {
        "train": {"start": "2020-01-01T00:00", "end": "2020-01-02T18:00", "interval_hours": 6},
        "hourly": {"start": "2020-01-03T00:00", "end": "2020-01-03T06:00", "interval_hours": 1},
    }
    lat = grid.lat[::-1].copy() if flipped else grid.lat
    lon = np.where(grid.lon >= 180.0, grid.lon - 360.0, grid.lon) if flipped else grid.lon
    lon_order = np.argsort(lon)
    lon = lon[lon_order]
    hours = (times - times[0]) / np.timedelta64(1, "h")

    def field(variable: str, level: int | None) -> np.ndarray:
        return np.stack([mini_value(variable, level, h, lat, lon) for h in hours])

    data_vars = {}
    for short in MINI_SURFACE:
        var = SURFACE_VARIABLES[short]
        data_vars[var.wb2_name] = (
            ("time", "latitude", "longitude"),
            field(short, None),
            {"units": var.units, "long_name": var.long_name, "short_name": short},
        )
    for short in MINI_UPPER:
        var = UPPER_AIR_VARIABLES[short]
        data_vars[var.wb2_name] = (
            ("time", "level", "latitude", "longitude"),
            np.stack([field(short, p) for p in MINI_LEVELS], axis=1),
            {"units": var.units, "long_name": var.long_name, "short_name": short},
        )
    attrs = {"source": "aivarda test mini store", "seed": 0}
    if not flipped:
        attrs["aivarda_grid"] = json.dumps(grid.to_dict())
        attrs["aivarda_spans"] = json.dumps(spans)
    ds = xr.Dataset(
        data_vars,
        coords={"time": times, "level": np.array(MINI_LEVELS, dtype=np.int64), "latitude": lat, "longitude": lon},
        attrs=attrs,
    )
    # the canonical store is Zarr v3 without consolidated metadata; the flipped one is Zarr v2 with
    # consolidated metadata, like the public WeatherBench2 stores
    ds.to_zarr(path, mode="w", consolidated=flipped, zarr_format=2 if flipped else 3)
    layout = ChannelLayout(MINI_SURFACE, MINI_UPPER, MINI_LEVELS)
    return MiniStore(path, grid, layout, times, spans if not flipped else {})


@pytest.fixture(scope="session")
def mini_wb2_store(tmp_path_factory: pytest.TempPathFactory) -> MiniStore:
    """The mini store in the canonical layout (N → S, lon 0…360, with aivarda attributes)."""
    return write_mini_store(tmp_path_factory.mktemp("mini") / "mini.zarr")


@pytest.fixture(scope="session")
def mini_wb2_store_flipped(tmp_path_factory: pytest.TempPathFactory) -> MiniStore:
    """The same fields stored S → N with longitudes −180…180 and no aivarda attributes."""
    return write_mini_store(tmp_path_factory.mktemp("mini_flipped") / "mini_flipped.zarr", flipped=True)


@pytest.fixture(scope="session")
def tiny_nature_run(_aivarda_home: Path) -> Path:
    """Path of the tiny nature run, generated once per test session into the session's
    ``$AIVARDA_HOME`` (so ``aivarda quickstart --tiny`` finds it cached)."""
    from aivarda.data.nature_run import NatureRunConfig, ensure_nature_run

    return ensure_nature_run(NatureRunConfig.tiny(), progress=False)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny models are fastest single-threaded, and the test machine's cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def lorenz96_benchmark() -> ModuleType:
    """``benchmarks/lorenz96.py`` imported as a module (it is a script, not a package module)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lorenz96.py"
    spec = importlib.util.spec_from_file_location("l96_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
