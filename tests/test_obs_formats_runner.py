"""The cycling runner's ``outputs.observations`` files are IODA v3 and load back (uses the tiny
nature run, a session fixture shared with the other run tests)."""

from __future__ import annotations

import csv
from pathlib import Path

import netCDF4
from test_cycling import write_config

from aivarda.channels import ChannelLayout
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.runner import CyclingRunner
from aivarda.observations import load_obs


def test_cycling_runner_writes_ioda_files_that_load_back(tiny_nature_run: Path, tmp_path: Path):
    """``outputs.observations`` writes each cycle's ObsSet as IODA v3 at the cycle's analysis time."""
    cfg = write_config(tmp_path / "c.yaml", tiny_nature_run, tmp_path / "out", end_time="2000-01-02T06:00",
                       outputs={"observations": True, "analyses_zarr": False}, forecast={"every": 0})
    CyclingRunner(load_config(cfg, CyclingConfig), progress=False).run()
    with (tmp_path / "out" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    layout = ChannelLayout.fengwu69()
    for n, row in enumerate(rows):
        path = tmp_path / "out" / "observations" / f"cycle_{n:05d}.nc"
        obs = load_obs(path, layout)
        counts = obs.counts()
        assert {k: int(row[f"obs_{k}"]) for k in ("good", "invalid", "gross", "background", "withheld", "active")} == {
            k: counts[k] for k in ("good", "invalid", "gross", "background", "withheld", "active")}
        with netCDF4.Dataset(path) as ds:
            assert ds.getncattr("datetimeReference") == row["time"] + "Z"
        assert (obs.time_offset_hours == 0).all()
