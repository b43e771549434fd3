"""The run directory of a cycling experiment and its resumable state.

Every file the runner writes is written atomically (to a temporary sibling, then
``os.replace``), so a run killed at any moment leaves each file either as it was or complete.
The commit point of cycle ``n`` is ``state.json`` with ``next_cycle = n + 1``, written after
everything cycle ``n`` produced (its record, the ensemble members it forecast, its outputs).
Files that a killed cycle wrote before its commit are rewritten, with the same content, when the
cycle is run again; observations are drawn from ``SeedSequence([seed, n])`` and torch is seeded
per cycle, so no random-generator state has to be saved.

Layout::

    RUN_DIR/config.json              the resolved configuration (a resume must match it)
    RUN_DIR/state.json               {"next_cycle": n, "n_cycles": N, "initialised": bool}
    RUN_DIR/records/cycle_NNNNN.json one per completed cycle: metrics row, forecast scores
    RUN_DIR/ensemble/                time-lagged members still needed (see ensemble.py)
    RUN_DIR/metrics.csv, metrics.nc, forecast_scores.csv, forecasts.nc, last_cycle.nc, *.zarr
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivarda.errors import ConfigError, DataError
from aivarda.files import atomic_write_json

STATE_VERSION = 1


@dataclass
class RunState:
    """Progress of a run: cycles ``< next_cycle`` are complete."""

    next_cycle: int
    n_cycles: int
    initialised: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "next_cycle": self.next_cycle, "n_cycles": self.n_cycles,
                "initialised": self.initialised}


class RunDirectory:
    """Creates, resumes and commits to a run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records_dir = self.path / "records"
        self.ensemble_dir = self.path / "ensemble"
        self.state_file = self.path / "state.json"
        self.config_file = self.path / "config.json"

    def record_file(self, cycle: int) -> Path:
        return self.records_dir / f"cycle_{cycle:05d}.json"

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def check(self, resume: bool) -> None:
        """Refuse a non-empty directory unless resuming (completed outputs are never overwritten)."""
        if not resume and not self.is_empty():
            raise DataError(
                f"{self.path}: run directory is not empty; continue it with --resume or choose another output_dir"
            )

    def open(self, config: dict[str, Any], n_cycles: int, resume: bool) -> tuple[RunState, list[dict[str, Any]]]:
        """Start a fresh run (the directory must be empty or absent) or resume one.

        Returns the state and the records of the completed cycles. ``resume`` on an empty or
        absent directory starts afresh.
        """
        self.check(resume)
        if self.is_empty():
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.config_file, config)
            state = RunState(0, n_cycles)
            atomic_write_json(self.state_file, state.to_dict())
            return state, []
        if not self.config_file.is_file():
            raise DataError(f"{self.path}: not an aivarda run directory (no config.json); cannot --resume")
        saved = json.loads(self.config_file.read_text())
        wanted = json.loads(json.dumps(config, default=str))
        saved["output_dir"] = wanted.get("output_dir")  # the directory may be given another way, or moved
        if saved != wanted:
            keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise ConfigError(f"{self.path}: the configuration differs from the run's config.json in {keys}; cannot --resume")
        if not self.state_file.is_file():  # killed while the run directory was being created
            state = RunState(0, n_cycles)
            atomic_write_json(self.state_file, state.to_dict())
            return state, []
        raw = json.loads(self.state_file.read_text())
        state = RunState(int(raw["next_cycle"]), int(raw["n_cycles"]), bool(raw.get("initialised", False)))
        records = [json.loads(self.record_file(n).read_text()) for n in range(state.next_cycle)]
        return state, records

    def commit(self, state: RunState, record: dict[str, Any] | None = None, cycle: int | None = None) -> None:
        """Write cycle ``cycle``'s record (if given), then the state (the commit point)."""
        if record is not None:
            assert cycle is not None
            atomic_write_json(self.record_file(cycle), record)
        atomic_write_json(self.state_file, state.to_dict())
