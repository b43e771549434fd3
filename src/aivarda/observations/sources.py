"""Where a window's observations come from: one role, three sources.

The drivers ask ``source.observe(truth_window, analysis_time, window_offsets, cycle)`` for the
:class:`ObsSet` of a window and never look at which source it is
(:func:`build_observation_source`, chosen by ``observations.source``):

- ``simulate`` — :class:`SimulatedObservations`: the grid simulator
  (:class:`~aivarda.observations.simulator.ObservationSimulator`) on the truth window;
- ``stations`` — :class:`StationObservations`: the reports of a station network
  (:mod:`aivarda.observations.stations`) valid at the window's times, simulated in memory from the
  truth window;
- ``files`` — :class:`FileObservations`: the file of the cycle, ``path.format(time=analysis time)``
  (or ``path / pattern.format(...)``), read by its suffix (IODA ``.nc4``/``.nc``, BUFR ``.bufr``,
  Parquet, CSV; :func:`aivarda.observations.io.read_table`). A missing file is one
  :class:`~aivarda.errors.ObservationError` naming it, or with ``missing: skip`` a cycle without
  observations, counted in the metrics (``obs_file_missing``).

The two station sources share the window step (:func:`station_window`), so a file written from the
network and read back gives the observations simulated in memory: every report is mapped to the
**nearest window time** of the method (:meth:`ObsTable.to_obsset`, within half the spacing of the
window times, or 3 h for a one-time window such as 3DVar's) and keeps its own time in
``time_offset_hours``; the reports are put in one canonical order (time, station, level, variable),
so the order of a file does not matter; σ_o is the file's, else ``observations.error_std``; whole stations are
withheld for verification by :func:`~aivarda.observations.stations.withheld_stations` (fraction
``observations.withhold``, seeded by the experiment's seed; a file's own withheld marks are kept);
then the optional thinning (one report per box and window time).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from aivarda.channels import ChannelLayout
from aivarda.errors import ObservationError
from aivarda.grid import Grid
from aivarda.observations.config import ObservationConfig
from aivarda.observations.obsset import ObsSet
from aivarda.observations.simulator import ObservationSimulator
from aivarda.observations.stations import (
    StationNetwork,
    StationNetworkConfig,
    generate_network,
    reporting,
    simulate_station_table,
    thin_reports,
    withheld_stations,
)
from aivarda.observations.table import ObsTable, decode_station_ids
from aivarda.timeaxis import hours


class ObservationSource(Protocol):
    """Gives the observations of one window (see the module docstring)."""

    def observe(self, truth_window: Tensor, analysis_time: np.datetime64, window_offsets: Sequence[np.timedelta64],
                cycle: int) -> ObsSet: ...

    def cycle_metrics(self) -> dict[str, float]:
        """Extra metrics of the last :meth:`observe` (e.g. ``obs_file_missing``), for the cycle's row."""
        ...


def _hours(offsets: Sequence[np.timedelta64]) -> list[float]:
    return [hours(o) for o in offsets]


class SimulatedObservations:
    """``source: simulate``: the grid simulator (:class:`ObservationSimulator`)."""

    def __init__(self, simulator: ObservationSimulator) -> None:
        self.simulator = simulator

    def observe(self, truth_window: Tensor, analysis_time: np.datetime64, window_offsets: Sequence[np.timedelta64],
                cycle: int) -> ObsSet:
        return self.simulator.simulate(truth_window, _hours(window_offsets), cycle=cycle)

    def cycle_metrics(self) -> dict[str, float]:
        return {}


def station_window(
    table: ObsTable,
    config: ObservationConfig,
    layout: ChannelLayout,
    grid: Grid,
    analysis_time: np.datetime64,
    window_offsets: Sequence[np.timedelta64],
    seed: int,
    device: torch.device | str,
) -> tuple[ObsSet, dict[str, float]]:
    """The ObsSet of a window from station reports: nearest window time, σ_o fallback, station
    withholding, thinning (the module docstring). Returns it and its metrics."""
    # one canonical order (time, station, surface first then pressure descending, variable): a file
    # written in any report order gives the same ObsSet
    pressure = np.where(np.isfinite(table.pressure), table.pressure, np.inf)
    order = np.lexsort((table.variable.astype(str), -pressure, table.station.astype(str),
                        table.time.astype(np.int64)))
    table = table.select(order)
    obs = table.to_obsset(layout, np.datetime64(analysis_time, "s"), window_offsets,
                          error_std=config.error_std or None, device="cpu")
    if config.withhold > 0 and len(obs):
        held = withheld_stations(decode_station_ids(obs.station), config.withhold, seed)
        obs = obs.replace(withheld=obs.withheld | torch.as_tensor(held))
    metrics: dict[str, float] = {}
    if config.thinning is not None:
        obs, thinned = thin_reports(obs, grid, config.thinning.box, config.thinning.method)
        metrics["obs_reports_thinned"] = float(thinned)
    return obs.to(device), metrics


class StationObservations:
    """``source: stations``: the network's reports at the window times, simulated from the truth."""

    def __init__(self, config: ObservationConfig, network_config: StationNetworkConfig, grid: Grid,
                 layout: ChannelLayout, seed: int) -> None:
        self.config, self.network_config, self.grid, self.layout, self.seed = config, network_config, grid, layout, seed
        self.network: StationNetwork = generate_network(network_config)
        self._metrics: dict[str, float] = {}

    def table(self, truth_window: Tensor, times: Sequence[np.datetime64]) -> ObsTable:
        """The reports of every window time at which stations report."""
        tables = [simulate_station_table(self.network_config, self.network, truth_window[k].cpu(), t, self.grid,
                                         self.layout)
                  for k, t in enumerate(times) if reporting(self.network_config, t)]
        return ObsTable.concat(tables)

    def observe(self, truth_window: Tensor, analysis_time: np.datetime64, window_offsets: Sequence[np.timedelta64],
                cycle: int) -> ObsSet:
        t0 = np.datetime64(analysis_time, "s")
        times = [t0 + np.timedelta64(o, "s") for o in window_offsets]
        obs, self._metrics = station_window(self.table(truth_window, times), self.config, self.layout, self.grid, t0,
                                            window_offsets, self.seed, truth_window.device)
        return obs

    def cycle_metrics(self) -> dict[str, float]:
        return dict(self._metrics)


class FileObservations:
    """``source: files``: the observation file of each cycle (see the module docstring)."""

    def __init__(self, config: ObservationConfig, grid: Grid, layout: ChannelLayout, seed: int) -> None:
        self.config, self.grid, self.layout, self.seed = config, grid, layout, seed
        self._metrics: dict[str, float] = {}

    def path(self, analysis_time: np.datetime64) -> Path:
        return self.config.file_for(np.datetime64(analysis_time, "s").item())

    def observe(self, truth_window: Tensor, analysis_time: np.datetime64, window_offsets: Sequence[np.timedelta64],
                cycle: int) -> ObsSet:
        from aivarda.observations.io import read_table

        path = self.path(analysis_time)
        if not path.is_file():
            if self.config.missing == "error":
                raise ObservationError(
                    f"{path}: observation file of cycle {cycle} ({np.datetime_as_string(np.datetime64(analysis_time, 's'))}) "
                    "not found (observations.path; set observations.missing: skip to cycle without it)"
                )
            self._metrics = {"obs_file_missing": 1.0}
            return ObsSet.empty(truth_window.device).replace(
                value=torch.zeros(0, dtype=truth_window.dtype, device=truth_window.device),
                error_std=torch.zeros(0, dtype=truth_window.dtype, device=truth_window.device))
        try:
            table = read_table(path)
        except ObservationError as exc:
            text = str(exc)
            raise ObservationError(text if str(path) in text else f"{path}: {text}") from None
        obs, metrics = station_window(table, self.config, self.layout, self.grid, analysis_time, window_offsets,
                                      self.seed, truth_window.device)
        self._metrics = {"obs_file_missing": 0.0, **metrics}
        return obs

    def cycle_metrics(self) -> dict[str, float]:
        return dict(self._metrics)


def _simulate(config: ObservationConfig, grid: Grid, layout: ChannelLayout, clim_std: Any, seed: int) -> ObservationSource:
    return SimulatedObservations(ObservationSimulator(config, grid, layout, clim_std, seed=seed))


def _stations(config: ObservationConfig, grid: Grid, layout: ChannelLayout, clim_std: Any, seed: int) -> ObservationSource:
    from aivarda.config import load_config

    assert config.network is not None
    return StationObservations(config, load_config(config.network, StationNetworkConfig), grid, layout, seed)


def _files(config: ObservationConfig, grid: Grid, layout: ChannelLayout, clim_std: Any, seed: int) -> ObservationSource:
    return FileObservations(config, grid, layout, seed)


OBSERVATION_SOURCES = {"simulate": _simulate, "stations": _stations, "files": _files}
"""``observations.source`` → builder ``(config, grid, layout, clim_std, seed) → ObservationSource``."""


def build_observation_source(config: ObservationConfig, grid: Grid, layout: ChannelLayout, clim_std: Any,
                             seed: int) -> ObservationSource:
    """The observation source of ``observations.source``."""
    return OBSERVATION_SOURCES[config.source](config, grid, layout, clim_std, seed)
