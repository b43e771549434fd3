"""A single 3DVar analysis on the tiny nature run (an OSSE), through the YAML/CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aivarda.assimilate import AnalyseConfig, run_single_analysis
from aivarda.cli import main
from aivarda.config import load_config


def _write_config(path: Path, store: Path, method: str = "3dvar", **extra: object) -> Path:
    cfg = {
        "name": f"test_{method}",
        "data": {"source": "zarr", "path": str(store)},
        "span": "eval",
        "background": {"lag": "24h"},
        "observations": {"mode": "random", "fraction": 0.1, "withhold": 0.15},
        "assimilation": {"method": method, "background_error": {"type": "diagonal"}, "outer_loops": 2, "inner_iterations": 10},
        **extra,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_3dvar_analysis_beats_background(tiny_nature_run: Path, tmp_path: Path) -> None:
    cfg = load_config(_write_config(tmp_path / "a.yaml", tiny_nature_run), AnalyseConfig)
    run = run_single_analysis(cfg, progress=False)
    m = run.metrics
    # analysis closer to the truth than the background, over all channels and for the headline ones
    assert m["normalised_wrmse"]["analysis"] < m["normalised_wrmse"]["background"]
    for name in ("z500", "t850", "u500", "t2m"):
        assert m["ana_wrmse"][name] < m["bg_wrmse"][name], name
    # the analysis fits the assimilated observations far better than the background did
    fit = m["observation_space"]["assimilated"]
    # (σ_b and σ_o come from the tiny world's 3-day train span, never the analysed day: 0.24 here)
    assert fit["O-A"]["rms"] < 0.3 * fit["O-B"]["rms"]
    assert m["minimizer"]["J_final"] < 0.01 * m["minimizer"]["J_initial"]
    assert not m["minimizer"]["fallback"]
    # withheld observations were simulated but not assimilated
    assert m["observations"]["withheld"] > 0
    assert m["observation_space"]["withheld"]["O-B"]["count"] == m["observations"]["withheld"]


def test_none_method_returns_background(tiny_nature_run: Path, tmp_path: Path) -> None:
    cfg = load_config(_write_config(tmp_path / "n.yaml", tiny_nature_run, method="none"), AnalyseConfig)
    m = run_single_analysis(cfg, progress=False).metrics
    assert m["ana_wrmse"] == m["bg_wrmse"]


def test_assimilate_cli_writes_outputs_and_refuses_to_overwrite(
    tiny_nature_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path / "c.yaml", tiny_nature_run)
    out = tmp_path / "out"
    assert main(["assimilate", str(config), "--out", str(out), "--json"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "3dvar"
    for name in ("states.nc", "observations.nc", "minimizer.csv", "increment_z500.png"):
        assert (out / name).stat().st_size > 0, name
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["assimilate", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert (out / "metrics.json").read_bytes() == before


def test_4dvar_without_model_is_a_config_error(tiny_nature_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path / "d.yaml", tiny_nature_run, method="4dvar")
    cfg = yaml.safe_load(config.read_text())
    cfg["assimilation"]["da_win"] = 3
    config.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out4"
    assert main(["assimilate", str(config), "--out", str(out)]) == 2
    assert "window_model: method 4dvar needs a window model" in capsys.readouterr().err
    assert not out.exists()
