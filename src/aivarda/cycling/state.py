"""The run directory of a cycling experiment and its resumable state.

Every file the runner writes is written atomically (to a temporary sibling, flushed, then
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
    RUN_DIR/b_state/cycle_NNNNN.pt   the state of a B with per-cycle state after cycle NNNNN
                                     (``StatefulTransform``, e.g. fine-tuned VAE adapters), the last two
    RUN_DIR/run.lock                 held (``flock``) by the process running or resuming the run
    RUN_DIR/metrics.csv, metrics.nc, forecast_scores.csv, forecasts.nc, last_cycle.nc, *.zarr

Integrity. ``config.json``, ``state.json`` and the records embed the SHA-256 of their content, the
ensemble members have ``.sha256`` sidecars (:mod:`aivarda.files`). ``--resume`` verifies every
file it reads back before any computation and

* names a damaged file in one :class:`~aivarda.errors.DataError` line when the run cannot go on;
* rolls back one cycle when the damage is confined to what the last committed cycle ``n − 1``
  wrote (its record, or a member it forecast): the members valid at ``n − 1`` are kept on disk
  until cycle ``n`` is committed, so cycle ``n − 1`` is simply run again;
* rolls back one cycle too when the B state of the last committed cycle is damaged or missing
  (while the run keeps B states), and restores the B from the state of the cycle it resumes after;
* rebuilds a damaged ``state.json`` from the verified records (a record is written after
  everything else of its cycle, so a complete record means a complete cycle);
* removes temporary files of killed writers and the members of uncommitted cycles.

A second process resuming (or starting) the same run directory while one runs is refused with one
line; the lock of a killed process is released by the kernel and taken over.
"""

from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aivarda.errors import ConfigError, DataError
from aivarda.files import (
    check_writable_dir,
    checksum_file,
    load_torch_file,
    read_checked_json,
    remove_stale_tmp,
    save_torch_file,
    verify_checksum,
    write_checked_json,
    write_checksum,
)

STATE_VERSION = 2
"""2: checksummed state, records and members (1: none; still resumable, without verification)."""

LOCK_NAME = "run.lock"
B_STATE_FORMAT, B_STATE_VERSION = "aivarda-b-state", 1

_LOCKS: dict[Path, int] = {}
"""Run directories this process holds the lock of → the locked file descriptor (a resume in the
same process, e.g. after an exception, re-enters its own lock)."""


@dataclass
class RunState:
    """Progress of a run: cycles ``< next_cycle`` are complete."""

    next_cycle: int
    n_cycles: int
    initialised: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "next_cycle": self.next_cycle, "n_cycles": self.n_cycles,
                "initialised": self.initialised}


def _member_origin(path: Path) -> int:
    """The cycle whose analysis a member ``valid_VVVVV/lead_KK.npy`` was forecast from: ``V − K``."""
    return int(path.parent.name.split("_")[1]) - int(path.stem.split("_")[1])


class RunDirectory:
    """Creates, resumes and commits to a run directory (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records_dir = self.path / "records"
        self.ensemble_dir = self.path / "ensemble"
        self.b_state_dir = self.path / "b_state"
        self.state_file = self.path / "state.json"
        self.config_file = self.path / "config.json"
        self.lock_file = self.path / LOCK_NAME

    def record_file(self, cycle: int) -> Path:
        return self.records_dir / f"cycle_{cycle:05d}.json"

    def b_state_file(self, cycle: int) -> Path:
        return self.b_state_dir / f"cycle_{cycle:05d}.pt"

    def load_b_state(self, cycle: int) -> dict[str, Any]:
        """The B state saved with cycle ``cycle`` (verified against its checksum)."""
        path = self.b_state_file(cycle)
        what = f"the background-error state of cycle {cycle}"
        if not path.is_file():
            raise DataError(f"{path}: {what} not found; the B has per-cycle state and cannot be resumed without it "
                            f"(start the run again in a new directory)")
        verify_checksum(path, what)
        return load_torch_file(path, B_STATE_FORMAT, B_STATE_VERSION, what)["state"]

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(p.name != LOCK_NAME for p in self.path.iterdir())

    # ------------------------------------------------------------------ lock
    def lock(self) -> None:
        """Hold ``run.lock`` until the run is finished or this process ends; refuse (one line) a
        directory another live process holds. Re-entrant within one process."""
        key = self.path.resolve()
        if key in _LOCKS:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataError(
                f"{self.path}: the run directory is in use by process {holder}; wait for it to finish "
                f"(two runs must not write one directory)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _LOCKS[key] = fd

    def unlock(self) -> None:
        fd = _LOCKS.pop(self.path.resolve(), None)
        if fd is not None:
            os.close(fd)  # releases the flock

    # ------------------------------------------------------------------ open
    def check(self, resume: bool) -> None:
        """Refuse a non-empty directory unless resuming (completed outputs are never overwritten),
        an output that names a file or cannot be written, and a directory another run holds."""
        check_writable_dir(self.path, "the run directory")
        if not resume and not self.is_empty():
            raise DataError(
                f"{self.path}: run directory is not empty; continue it with --resume or choose another output_dir"
            )
        if resume and self.path.is_dir():
            self.lock()

    def open(self, config: dict[str, Any], n_cycles: int, resume: bool) -> tuple[RunState, list[dict[str, Any]]]:
        """Start a fresh run (the directory must be empty or absent) or resume one.

        Returns the state and the records of the completed cycles. ``resume`` on an empty or
        absent directory starts afresh. A resume verifies what it reads back and may roll back
        one cycle (see the module docstring).
        """
        self.check(resume)
        self.lock()
        remove_stale_tmp(self.path)
        if self.is_empty():
            write_checked_json(self.config_file, config)
            state = RunState(0, n_cycles)
            write_checked_json(self.state_file, state.to_dict())
            return state, []
        if not self.config_file.is_file():
            raise DataError(f"{self.path}: not an aivarda run directory (no config.json); cannot --resume")
        saved = read_checked_json(self.config_file, "the run's configuration", required=False)
        wanted = json_plain(config)
        saved["output_dir"] = wanted.get("output_dir")  # the directory may be given another way, or moved
        if saved != wanted:
            keys = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
            raise ConfigError(f"{self.path}: the configuration differs from the run's config.json in {keys}; cannot --resume")
        if not self.state_file.is_file():  # killed while the run directory was being created
            state = RunState(0, n_cycles)
            write_checked_json(self.state_file, state.to_dict())
            return state, []
        state, records = self._verified_state(n_cycles)
        write_checked_json(self.state_file, state.to_dict())
        return state, records

    def _verified_state(self, n_cycles: int) -> tuple[RunState, list[dict[str, Any]]]:
        """The state and records to resume from, after verifying them and the members."""
        try:
            raw = read_checked_json(self.state_file, "the run state", required=False)
            state = RunState(int(raw["next_cycle"]), int(raw["n_cycles"]), bool(raw.get("initialised", False)))
            checked = int(raw.get("version", 1)) >= 2
        except (DataError, KeyError, TypeError, ValueError) as exc:
            state, checked = self._state_from_records(n_cycles), True
            _notice(f"{self.state_file}: damaged ({_reason(exc)}); resuming after the last complete "
                    f"record, cycle {state.next_cycle - 1}")
        records: list[dict[str, Any]] = []
        for n in range(state.next_cycle):
            try:
                records.append(read_checked_json(self.record_file(n), f"the record of cycle {n}", required=checked))
            except DataError as exc:
                if n != state.next_cycle - 1:
                    raise DataError(f"{exc}; cycle {n} is older than the last one and cannot be redone "
                                    f"(start the run again in a new directory)") from None
                state = self._roll_back(state, exc)
        if state.initialised:
            state = self._verify_members(state, checked)
        else:
            self._remove_members(lambda origin: True)
        state = self._verify_b_states(state)
        for path in self.records_dir.glob("cycle_*.json"):  # records of cycles not committed
            if int(path.stem.split("_")[1]) >= state.next_cycle:
                path.unlink()
        return state, records[: state.next_cycle]

    def _state_from_records(self, n_cycles: int) -> RunState:
        n = 0
        while n < n_cycles:
            try:
                read_checked_json(self.record_file(n), "record")
            except DataError:
                break
            n += 1
        return RunState(n, n_cycles, initialised=n > 0)

    def _roll_back(self, state: RunState, cause: DataError) -> RunState:
        """Redo the last committed cycle ``n − 1`` (its members are still on disk), else explain."""
        last = state.next_cycle - 1
        needed = sorted((self.ensemble_dir / f"valid_{last:05d}").glob("lead_*.npy"))
        try:
            if not needed:
                raise DataError(f"{self.ensemble_dir}: the members of cycle {last} are no longer kept")
            for path in needed:
                verify_checksum(path, f"ensemble member of cycle {last}")
        except DataError as exc:
            raise DataError(f"{cause}; cannot redo cycle {last} either ({_reason(exc)})") from None
        _notice(f"{_reason(cause, full=True)}; rolled back to redo cycle {last}")
        return RunState(last, state.n_cycles, state.initialised)

    def _verify_members(self, state: RunState, checked: bool) -> RunState:
        """Remove the members of uncommitted cycles; verify the others (rolling back one cycle when
        a member the last cycle forecast is damaged)."""
        self._remove_members(lambda origin: origin >= state.next_cycle)
        if not checked:
            return state
        for path in sorted(self.ensemble_dir.glob("valid_*/lead_*.npy")):
            if int(path.parent.name.split("_")[1]) < state.next_cycle - 1:
                continue  # no longer needed (removed by the runner)
            try:
                verify_checksum(path, "ensemble member")
            except DataError as exc:
                if _member_origin(path) != state.next_cycle - 1:
                    raise DataError(f"{exc}; it was forecast before the last cycle and cannot be remade "
                                    f"(start the run again in a new directory)") from None
                state = self._roll_back(state, exc)
                self._remove_members(lambda origin: origin >= state.next_cycle)
                return state
        return state

    def _b_state_cycles(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.b_state_dir.glob("cycle_*.pt"))

    def _remove_b_states(self, select: Any) -> None:
        for cycle in self._b_state_cycles():
            if select(cycle):
                path = self.b_state_file(cycle)
                path.unlink()
                checksum_file(path).unlink(missing_ok=True)

    def _verify_b_states(self, state: RunState) -> RunState:
        """Remove the B states of uncommitted cycles; when the run keeps B states, verify the last
        committed cycle's (rolling back one cycle when it is damaged or missing)."""
        self._remove_b_states(lambda cycle: cycle >= state.next_cycle)
        if state.next_cycle == 0 or not self._b_state_cycles():
            return state
        last = state.next_cycle - 1
        path = self.b_state_file(last)
        try:
            if not path.is_file():
                raise DataError(f"{path}: the background-error state of cycle {last} is missing")
            verify_checksum(path, f"background-error state of cycle {last}")
        except DataError as exc:
            state = self._roll_back(state, exc)
            self._remove_b_states(lambda cycle: cycle >= state.next_cycle)
            self._remove_members(lambda origin: origin >= state.next_cycle)
            if state.next_cycle > 0:
                self.load_b_state(state.next_cycle - 1)  # the cycle before must be intact
        return state

    def _remove_members(self, select: Any) -> None:
        for path in self.ensemble_dir.glob("valid_*/lead_*.npy"):
            if select(_member_origin(path)):
                path.unlink()
                checksum_file(path).unlink(missing_ok=True)

    # ------------------------------------------------------------------ commit
    def commit(self, state: RunState, record: dict[str, Any] | None = None, cycle: int | None = None,
               b_state: dict[str, Any] | None = None) -> None:
        """Write cycle ``cycle``'s B state (if given; with a checksum), its record (if given), then
        the state (the commit point); B states older than the cycle before are removed. The lock is
        released once the last cycle is committed."""
        if b_state is not None:
            assert cycle is not None
            path = self.b_state_file(cycle)
            save_torch_file(path, {"format": B_STATE_FORMAT, "version": B_STATE_VERSION, "cycle": cycle, "state": b_state})
            write_checksum(path)
        if record is not None:
            assert cycle is not None
            write_checked_json(self.record_file(cycle), record)
        write_checked_json(self.state_file, state.to_dict())
        if b_state is not None:
            self._remove_b_states(lambda c: c < cycle - 1)
        if state.next_cycle >= state.n_cycles:
            self.unlock()


def json_plain(data: Any) -> Any:
    """``data`` as it reads back from JSON (tuples → lists, paths and times → strings)."""
    import json

    return json.loads(json.dumps(data, default=str))


def _reason(exc: BaseException, full: bool = False) -> str:
    text = str(exc)
    return text if full else text.split(": ", 1)[-1] if isinstance(exc, DataError) else f"{type(exc).__name__}: {text}"


def _notice(line: str) -> None:
    print(f"aivarda: {line}", file=sys.stderr)
