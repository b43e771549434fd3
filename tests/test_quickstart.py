"""``aivarda quickstart --tiny``: the main job end to end on the tiny world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aivarda.cli import main


def test_quickstart_tiny_runs_every_stage(tiny_nature_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--tiny", "--json", "--out", str(tmp_path)]) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report) == {"none", "3dvar_diagonal", "3dvar_genbe"}
    none, diagonal, genbe = report["none"], report["3dvar_diagonal"], report["3dvar_genbe"]
    # the same observations in every experiment
    assert none["observations"] == diagonal["observations"] == genbe["observations"]
    b = none["normalised_wrmse"]["background"]
    assert none["normalised_wrmse"]["analysis"] == b
    assert diagonal["normalised_wrmse"]["analysis"] < b
    # a spatially correlated, balanced B spreads the observations' information: far better than diagonal
    assert genbe["normalised_wrmse"]["analysis"] < diagonal["normalised_wrmse"]["analysis"]
    assert genbe["ana_wrmse"]["z500"] < 0.8 * genbe["bg_wrmse"]["z500"]
    for name in report:
        assert (run_dir / name / "metrics.json").is_file()
    # a second run (the same second, possibly) writes a new directory and leaves the first untouched
    before = (run_dir / "report.json").read_bytes()
    assert main(["quickstart", "--tiny", "--json", "--out", str(tmp_path)]) == 0
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    assert (run_dir / "report.json").read_bytes() == before
