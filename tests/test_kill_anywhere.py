"""Kill anywhere: a cycling run interrupted at a random moment, then resumed, gives exactly the
outputs of an uninterrupted run (hypothesis draws the moments).

A *moment* is one of the runner's stage hooks (after background, observations, analysis, forecast,
outputs of every cycle) or one step of an atomic file write (the temporary file written but not
renamed, or renamed but the folder not yet flushed); a run has ``N`` of them and the killed run
stops at moment ``k ∈ [1, N]`` by raising :class:`Killed` (a ``BaseException``, which nothing in
aivarda catches). In-process interruption leaves what a kill leaves except temporary files (the
writer's ``finally`` removes them), so :func:`test_sigkill_subprocess_at_random_moments` also kills
real processes with SIGKILL.

Every example kills at least twice (:data:`KILLS_PER_EXAMPLE`). Profiles (registered in
``tests/conftest.py``, chosen with ``--hypothesis-profile NAME``): ``quick`` (the default run) draws
2 examples; ``reliability`` 25 examples, at least 50 kills (about 2–3 minutes on 2 cores);
``reliability-long`` 250 examples, at least 500 kills (about 25 minutes)::

    pytest -m reliability --hypothesis-profile reliability
    pytest tests/test_kill_anywhere.py --hypothesis-profile reliability-long
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_cycling import cycling_store, read_rows, without_wall, write_config  # noqa: F401

import aivarda.files
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.runner import CyclingRunner
from aivarda.cycling.state import RunDirectory
from aivarda.data.sources import Wb2ZarrSource

pytestmark = pytest.mark.reliability


class Killed(BaseException):
    """The in-process stand-in of SIGKILL."""


class Moments:
    """Counts moments (stage hooks and atomic-write steps); raises :class:`Killed` at ``kill_at``."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.kill_at = kill_at
        self.count = 0

    def tick(self, *_: object) -> None:
        self.count += 1
        if self.count == self.kill_at:
            raise Killed

    @contextmanager
    def armed(self) -> Iterator[None]:
        real = aivarda.files.fsync_path

        def fsync(path: object) -> None:
            self.tick()
            real(path)  # type: ignore[arg-type]

        with mock.patch.object(aivarda.files, "fsync_path", fsync):
            yield


def run(config: Path, out: Path, moments: Moments | None = None, resume: bool = False) -> None:
    cfg = load_config(config, CyclingConfig)
    if moments is None:
        CyclingRunner(cfg, out, progress=False).run(resume=resume)
        return
    with moments.armed():
        CyclingRunner(cfg, out, progress=False, hook=moments.tick).run(resume=resume)


def outputs(out: Path) -> dict[str, object]:
    """Everything a run leaves that a user reads: metrics (without wall times), forecast scores,
    the analyses, the state and the records."""
    import json

    src = Wb2ZarrSource(out / "analyses.zarr")
    records = sorted((out / "records").glob("cycle_*.json"))
    no_wall = [json.loads(p.read_text()) for p in records]
    for r in no_wall:
        r["row"] = {k: v for k, v in r["row"].items() if not k.startswith("wall_")}
        r.pop("sha256", None)
    return {
        "metrics": without_wall(read_rows(out)),
        "forecast": (out / "forecast_scores.csv").read_text(),
        "analyses": src.states(src.times).numpy().tobytes(),
        "state": json.loads((out / "state.json").read_text())["next_cycle"],
        "records": no_wall,
        "members_left": sorted(p.name for p in (out / "ensemble").rglob("*.npy")),
    }


@pytest.fixture(scope="module")
def kill_setup(cycling_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], int]:
    """A fast 3-cycle 3DVar run (persistence model): (config, its outputs, number of moments)."""
    tmp = tmp_path_factory.mktemp("kill")
    config = write_config(tmp / "kill.yaml", cycling_store, tmp / "ref", end_time="2000-01-02T12:00",
                          assimilation={"method": "3dvar", "background_error": {"type": "diagonal"},
                                        "outer_loops": 1, "inner_iterations": 4},
                          forecast={"every": 2, "lead": "12h"})
    run(config, tmp / "warm")  # the first run also writes caches (statistics): not counted
    counter = Moments()
    run(config, tmp / "ref", counter)
    return config, outputs(tmp / "ref"), counter.count


KILLS_PER_EXAMPLE = 2
"""Kills that always happen in one example (a third one may): the run, then its first resume."""


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_kill_at_random_moments_then_resume_matches_uninterrupted(kill_setup, data) -> None:
    """Kill the run at moment ``k1 ∈ [1, N]``, its resume at ``k2 ∈ [1, 4]`` (every resume has at
    least 4 moments: reopening and the final metrics), and maybe the next resume at ``k3 ∈ [1, N]``
    (it may finish first); the last resume must give the uninterrupted outputs."""
    config, expected, n_moments = kill_setup
    kills = [data.draw(st.integers(1, n_moments), label="kill moment of the run"),
             data.draw(st.integers(1, 4), label="kill moment of the first resume"),
             data.draw(st.one_of(st.none(), st.integers(1, n_moments)), label="kill moment of the second resume")]
    fired = 0
    with tempfile.TemporaryDirectory(prefix="aivarda-kill-") as tmp:
        out = Path(tmp) / "run"
        for kill_at in kills:
            if kill_at is None:
                continue
            try:
                run(config, out, Moments(kill_at), resume=True)
            except Killed:
                fired += 1
            finally:
                RunDirectory(out).unlock()  # the kernel releases a killed process's lock
        run(config, out, resume=True)
        assert fired >= KILLS_PER_EXAMPLE
        event(f"{fired} kills")
        assert outputs(out) == expected


def test_moments_cover_every_stage_and_write(kill_setup) -> None:
    _, _, n_moments = kill_setup
    # 3 cycles × 5 stages, and at least 2 steps per atomic write of state/records/members
    assert n_moments >= 3 * 5 + 2 * (3 + 3 + 3)


@pytest.mark.slow
def test_sigkill_subprocess_at_random_moments(kill_setup, tmp_path: Path) -> None:
    """Real SIGKILLs (temporary files left behind, lock released by the kernel) at three random
    delays into the run, each followed by a resume in a new process that is killed again."""
    config, expected, _ = kill_setup
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "aivarda.cli", "run", str(config), "--out", str(out), "--resume", "--json"]
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    delays = []
    for _ in range(3):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (out / "state.json").exists():  # started (imports take most of the time)
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        delay = float(rng.uniform(0.0, 1.5))
        delays.append(delay)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert subprocess.run(cmd, env=env, capture_output=True, text=True).returncode == 0, delays
    assert outputs(out) == expected, delays
    shutil.rmtree(out)
