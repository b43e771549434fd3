"""``aivarda report``: table, JSON and figures of cycling runs (two 2-cycle runs on the tiny nature run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cycling import cycling_store, write_config  # noqa: F401  (the store fixture)

from aivarda.cli import main
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.runner import CyclingRunner
from aivarda.evaluation.report import HEADLINE_CHANNELS, load_run


@pytest.fixture(scope="module")
def two_runs(cycling_store: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:  # noqa: F811
    tmp = tmp_path_factory.mktemp("report")
    runs = []
    for method in ("none", "3dvar"):
        config = write_config(
            tmp / f"{method}.yaml", cycling_store, tmp / method, end_time="2000-01-02T06:00",
            assimilation={"method": method, "background_error": {"type": "diagonal"}, "outer_loops": 1,
                          "inner_iterations": 5},
            forecast={"every": 1, "lead": "12h"},
        )
        CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
        runs.append(tmp / method)
    return runs


def test_report_json_shape_and_figures(two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    assert main(["report", *map(str, two_runs), "--json", "--out", str(out), "--compare", "3dvar:none"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in report["runs"]] == ["none", "3dvar"]
    for r in report["runs"]:
        assert r["cycles"] == 2 and r["wall_seconds"] > 0
        stages = r["seconds_per_cycle"]
        assert stages["total"] == pytest.approx(r["wall_seconds"] / 2)
        assert sum(stages[s] for s in ("forecast", "observations", "minimisation", "io")) <= stages["total"]
        assert set(r["rmse"]) == set(HEADLINE_CHANNELS)
        assert set(r["forecast_rmse"]["z500"]) == {"6h", "12h"}
    none, var = report["runs"]
    # the free run's analysis is its background; 3DVar improves on its own background
    assert none["rmse"]["z500"]["analysis"] == none["rmse"]["z500"]["background"]
    assert var["normalised_rmse"]["analysis"] < var["normalised_rmse"]["background"]
    # the runner's metrics feed the paired comparison; both runs drew seed 3's observations
    (c,) = report["comparisons"]
    assert c["cycles"] == 2 and c["seeds"] == [[3, 3]] and c["block_length"] == 2
    z = c["scores"]["z500"]["analysis"]
    assert z["difference"] == pytest.approx(var["rmse"]["z500"]["analysis"] - none["rmse"]["z500"]["analysis"])
    assert report["provenance"]["aivarda_version"] and len(var["config_sha256"]) == 64
    names = {Path(f).name for f in report["figures"]}
    assert {"rmse_z500.png", "rmse_t850.png", "increment_none_z500.png", "increment_3dvar_z500.png"} <= names
    assert all(Path(f).stat().st_size > 0 for f in report["figures"])


def test_report_table(two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *map(str, two_runs), "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "z500 b/a" in lines[0] and "q500 b/a" in lines[0]
    assert lines[1].split()[:3] == ["none", "none", "2"] and lines[2].split()[:3] == ["3dvar", "3dvar", "2"]
    # the baselines the runner recorded every cycle, once for the runs' common valid times
    assert lines[3].split()[:3] == ["climatology", "-", "2"] and lines[4].split()[:3] == ["persistence", "-", "2"]
    assert lines[6].split()[:3] == ["seconds", "per", "cycle"] and "minimisation" in lines[6]
    assert lines[7].split()[0] == "none" and len(lines[8].split()) == 6


def test_report_on_a_non_run_directory_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run directory" in err[0]


def test_first_cycles_restricts_every_run(two_runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", *map(str, two_runs), "--json", "--out", str(tmp_path), "--first-cycles", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    for r in report["runs"]:
        assert r["cycles"] == 1 and r["first_time"] == r["last_time"]
        assert set(r["forecast_rmse"]["z500"]) == {"6h", "12h"}  # cycle 0's forecast only
    full = load_run(two_runs[1])
    first = load_run(two_runs[1], first_cycles=1)
    assert first.rows == full.rows[:1]
    assert main(["report", str(two_runs[0]), "--first-cycles", "0"]) == 2
    assert "--first-cycles: expected a positive number" in capsys.readouterr().err
