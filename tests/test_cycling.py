"""Cycling experiments on the tiny nature run with a persistence model (``torch.nn.Identity`` as a
full-state network with identity normalisation: ``M(x) = x``), so that backgrounds are known."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
import torch
import yaml

from aivarda.background.registry import BACKGROUNDS, TransformConfig, TransformContext
from aivarda.background.transforms import DiagonalTransform
from aivarda.channels import ChannelLayout
from aivarda.cli import main
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.ensemble import LaggedEnsemble, initial_truth_times
from aivarda.cycling.runner import CyclingRunner
from aivarda.data.cf import read_states
from aivarda.data.sources import Wb2ZarrSource
from aivarda.evaluation.metrics import rmse

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cycling_store(request: pytest.FixtureRequest) -> Path:
    """The tiny nature run (``train``: 3 days 6-hourly from 2000-01-01, ``eval``: 2000-01-04 hourly);
    spun up from rest when the shipped spun-up state is not there yet."""
    from aivarda.data.nature_run import SPINUP_ASSET, NatureRunConfig, ensure_nature_run

    if SPINUP_ASSET.is_file():
        return request.getfixturevalue("tiny_nature_run")
    cfg = NatureRunConfig.tiny().model_copy(update={"initial_state": "rest", "spin_up_days": 5})
    return ensure_nature_run(cfg, progress=False)


def persistence(dt: str) -> dict[str, Any]:
    return {"module": "torch.nn:Identity", "dt": dt, "residual": False, "layout": ChannelLayout.fengwu69().to_dict()}


def write_config(path: Path, store: Path, out: Path, **overrides: Any) -> Path:
    cfg: dict[str, Any] = {
        "name": path.stem,
        "seed": 3,
        "data": {"source": "zarr", "path": str(store)},
        "start_time": "2000-01-02T00:00",
        "end_time": "2000-01-02T18:00",
        "dynamic_member": 2,
        "gap": 2,
        "device": "cpu",
        "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"}, "outer_loops": 2,
                         "inner_iterations": 6},
        "model": persistence("6h"),
        "forecast": {"every": 2, "lead": "18h"},
        "output_dir": str(out),
        # mechanics tests cycle the tiny world's train days (its statistics span): stamped in-sample
        "allow_in_sample": True,
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


def without_wall(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in rows]


@pytest.fixture(scope="module")
def reference_run(cycling_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 4-cycle 3DVar run: (config file, run directory)."""
    tmp = tmp_path_factory.mktemp("cycling")
    config = write_config(tmp / "ref.yaml", cycling_store, tmp / "ref")
    CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
    return config, tmp / "ref"


class AddOne:
    """``M(x) = x + 1`` per step of 6 h."""

    dt = 6.0

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1

    def forecast(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x + n


def test_lagged_ensemble_members_and_time_lagged_start(tmp_path: Path) -> None:
    K, gap = 3, 2
    store = LaggedEnsemble(tmp_path, members=K, n_cycles=5)
    times = initial_truth_times(np.datetime64("2000-01-02T00"), np.timedelta64(6, "h"), gap, K)
    assert [str(t)[:13] for t in times] == ["2000-01-01T12", "2000-01-01T06", "2000-01-01T00"]
    # truth at t_{-j-gap+1} has the value -100 (j + gap - 1) (= -100 × cycles before start)
    truth = torch.tensor([-100.0 * (j + gap - 1) for j in range(1, K + 1)]).reshape(K, 1, 1, 1)
    store.initialise(AddOne(), truth, gap, steps_per_cycle=2)
    # background of cycle 0: the truth gap cycles earlier forecast gap cycles (2 steps each)
    assert store.background(0).item() == -100 * gap + 2 * gap
    assert store.leads(0) == [1, 2, 3] and store.leads(2) == [3]
    store.put(0, torch.tensor([1002.0, 1004.0, 1006.0]).reshape(K, 1, 1, 1))  # forecasts of x_a(0) = 1000
    # cycle 1: lead 1 from the analysis of cycle 0; leads 2, 3 from the virtual analyses -1, -2
    members = store.ensemble(1).flatten().tolist()
    assert members == [1002.0, -200 + 2 * (gap - 1) + 4, -300 + 2 * (gap - 1) + 6]
    store.discard_through(0)  # the members of cycle 0 stay until cycle 1 is committed (a resume may redo 0)
    assert store.leads(0) == [1, 2, 3] and store.leads(1) == [1, 2, 3]
    assert len(list(tmp_path.rglob("*.npy"))) <= K * (K + 1) // 2 + K
    store.discard_through(1)
    assert store.leads(0) == [] and store.leads(1) == [1, 2, 3]
    store.discard_through(4)  # the last cycle: nothing is kept
    assert not list(tmp_path.rglob("*.npy"))


def test_3dvar_cycling_beats_background_and_writes_outputs(reference_run: tuple[Path, Path], cycling_store: Path) -> None:
    _, run = reference_run
    rows = read_rows(run)
    assert [int(r["cycle"]) for r in rows] == [0, 1, 2, 3]
    ana = np.array([float(r["ana_nrmse"]) for r in rows])
    bg = np.array([float(r["bg_nrmse"]) for r in rows])
    assert ana.mean() < bg.mean() and (ana <= bg).all()
    assert np.mean([float(r["ana_wrmse_z500"]) for r in rows]) < np.mean([float(r["bg_wrmse_z500"]) for r in rows])
    # with a persistence model the first background is the truth gap = 2 cycles (12 h) earlier
    truth = Wb2ZarrSource(cycling_store)
    t0 = np.datetime64("2000-01-02T00", "ns")
    expected = rmse(truth.state(t0 - np.timedelta64(12, "h")), truth.state(t0), truth.grid)
    assert float(rows[0]["bg_wrmse_z500"]) == pytest.approx(float(expected[truth.layout.index("z500")]), rel=1e-5)
    # observation space: the analysis fits the assimilated observations; withheld ones are scored too
    assert all(float(r["oma_assimilated_rms"]) < float(r["omb_assimilated_rms"]) for r in rows)
    assert all(int(r["omb_withheld_count"]) > 0 for r in rows)
    assert all(float(r["min_J_final"]) < float(r["min_J_initial"]) and r["min_fallback"] == "False" for r in rows)
    # analyses in the WB2 layout, the last one equal to last_cycle.nc
    analyses = Wb2ZarrSource(run / "analyses.zarr")
    assert analyses.times.size == 4
    import xarray as xr

    states, _, _, when = read_states(run / "last_cycle.nc")
    assert when == analyses.times[-1]
    np.testing.assert_array_equal(analyses.state(analyses.times[-1]).numpy(), states["analysis"])
    with xr.open_dataset(run / "metrics.nc", engine="h5netcdf") as ds:
        assert ds["ana_wrmse"].shape == (4, 69)
    # forecast mode: every 2nd cycle, 18 h = 3 leads
    with (run / "forecast_scores.csv").open() as fh:
        fc = list(csv.DictReader(fh))
    assert [(int(r["cycle"]), float(r["lead_hours"])) for r in fc] == [(c, h) for c in (0, 2) for h in (6.0, 12.0, 18.0)]
    # only the members still needed are kept
    assert not any((run / "ensemble").iterdir())


def test_injected_failure_then_resume_matches_uninterrupted(reference_run: tuple[Path, Path], tmp_path: Path) -> None:
    config, ref = reference_run
    cfg = load_config(config, CyclingConfig)
    out = tmp_path / "run"

    def fail(cycle: int, stage: str) -> None:
        if (cycle, stage) == (2, "forecast"):  # members for cycles 3, 4 written, cycle 2 not committed
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        CyclingRunner(cfg, out, progress=False, hook=fail).run()
    assert json.loads((out / "state.json").read_text())["next_cycle"] == 2
    CyclingRunner(cfg, out, progress=False).run(resume=True)
    assert without_wall(read_rows(out)) == without_wall(read_rows(ref))
    a, b = Wb2ZarrSource(out / "analyses.zarr"), Wb2ZarrSource(ref / "analyses.zarr")
    np.testing.assert_array_equal(a.states(a.times).numpy(), b.states(b.times).numpy())


def test_sigkill_mid_run_then_resume_matches_uninterrupted(reference_run: tuple[Path, Path], tmp_path: Path) -> None:
    config, ref = reference_run
    out = tmp_path / "killed"
    # the same number of threads as this process (which made the reference run): float reductions
    # then add up in the same order and the metrics can be compared exactly
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    cmd = [sys.executable, "-m", "aivarda.cli", "run", str(config), "--out", str(out), "--json"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "records" / "cycle_00001.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "state.json").read_text())["next_cycle"] < 4  # killed mid-run
    assert main(["run", str(config), "--out", str(out), "--resume", "--json"]) == 0
    assert without_wall(read_rows(out)) == without_wall(read_rows(ref))


def test_nonempty_run_dir_without_resume_refuses(
    reference_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, ref = reference_run
    before = (ref / "metrics.csv").read_bytes()
    assert main(["run", str(config), "--out", str(ref)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "--resume" in err[0]
    assert (ref / "metrics.csv").read_bytes() == before


def test_resume_with_a_changed_config_refuses(
    reference_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, ref = reference_run
    changed = yaml.safe_load(config.read_text())
    changed["seed"] = 4
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(changed))
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(ref), "--resume"]) == 2
    assert "seed" in capsys.readouterr().err


def test_4dvar_cycling_with_hourly_window(cycling_store: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "4d.yaml", cycling_store, tmp_path / "4d",
        start_time="2000-01-04T00:00", end_time="2000-01-04T06:00", dynamic_member=1,
        assimilation={"method": "4dvar", "da_win": 3, "background_error": {"type": "diagonal"},
                      "outer_loops": 2, "inner_iterations": 6},
        window_model=persistence("1h"), forecast={"every": 0},
    )
    CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
    rows = read_rows(tmp_path / "4d")
    assert len(rows) == 2
    for r in rows:
        assert float(r["ana_nrmse"]) < float(r["bg_nrmse"])
        assert float(r["oma_assimilated_rms"]) < float(r["omb_assimilated_rms"])


def test_missing_truth_is_one_clear_error(cycling_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "early.yaml", cycling_store, tmp_path / "early", start_time="2000-01-01T06:00",
                          end_time="2000-01-01T12:00")
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and "gap" in err[0]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("exp_*.yaml")) + sorted((ROOT / "configs" / "era5").glob("exp_*.yaml"))
                         + sorted((ROOT / "configs" / "realistic").glob("exp_*.yaml")),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_experiment_configs_validate(path: Path) -> None:
    cfg = load_config(path, CyclingConfig)
    assert len(cfg.cycle_times()) == 124
    assert cfg.observations.fraction == 0.05 or cfg.observations.mode == "fixed" or cfg.observations.source != "simulate"
    assert cfg.assimilation.method in ("none", "3dvar", "3dvar-fgat", "4dvar", "3denvar", "4denvar", "letkf")


class _RecordingConfig(TransformConfig):
    type: Literal["recording-ensemble-test"] = "recording-ensemble-test"
    needs_ensemble: ClassVar[bool] = True


class _RecordingB(DiagonalTransform):
    """A diagonal B that records the members it is given each cycle."""

    seen: ClassVar[list[torch.Tensor]] = []

    def update(self, members: torch.Tensor) -> None:
        self.seen.append(members.clone())


def test_a_b_that_needs_the_ensemble_gets_the_members_every_cycle(cycling_store: Path, tmp_path: Path) -> None:
    @BACKGROUNDS.register("recording-ensemble-test", _RecordingConfig)
    def _build(cfg: _RecordingConfig, context: TransformContext) -> _RecordingB:
        return _RecordingB(context.require_error_std("recording"), context.state_shape)

    _RecordingB.seen.clear()
    try:
        config = write_config(tmp_path / "eb.yaml", cycling_store, tmp_path / "eb", end_time="2000-01-02T06:00",
                              assimilation={"method": "3dvar", "background_error": {"type": "recording-ensemble-test"},
                                            "outer_loops": 1, "inner_iterations": 2},
                              forecast={"every": 0}, outputs={"analyses_zarr": False})
        CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
    finally:
        BACKGROUNDS.unregister("recording-ensemble-test")
    seen = _RecordingB.seen
    assert [tuple(m.shape) for m in seen] == [(2, 69, 32, 64)] * 2
    # persistence: the members of cycle 0 are the truth 2 and 3 cycles earlier
    truth = Wb2ZarrSource(cycling_store)
    t0 = np.datetime64("2000-01-02T00", "ns")
    for k, hours in ((0, 12), (1, 18)):
        np.testing.assert_array_equal(seen[0][k].numpy(), truth.state(t0 - np.timedelta64(hours, "h")).numpy())


def test_missing_default_model_is_one_error_line_before_any_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import aivarda.cycling.config as cycling_config

    monkeypatch.setattr(cycling_config, "DEFAULT_MODEL", tmp_path / "fengwu_6h.pt")
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "exp_3DVar.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model:" in err[0] and "fengwu_6h.pt" in err[0]
    assert not out.exists()


def test_free_run_forecast_scores_are_persistence_scores(cycling_store: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "fc.yaml", cycling_store, tmp_path / "fc", end_time="2000-01-02T00:00",
                          assimilation={"method": "none", "background_error": {"type": "diagonal"}},
                          forecast={"every": 1, "lead": "12h"}, outputs={"analyses_zarr": False})
    records = CyclingRunner(load_config(config, CyclingConfig), progress=False).run()
    # free run with persistence: x_a(t0) = x_b(t0) = truth(t0 - 12 h), and so is every forecast
    truth = Wb2ZarrSource(cycling_store)
    t0 = np.datetime64("2000-01-02T00", "ns")
    x_a = truth.state(t0 - np.timedelta64(12, "h"))
    fc = records[0]["forecast"]
    assert fc["lead_hours"] == [6.0, 12.0]
    for i, hours in enumerate((6, 12)):
        expected = rmse(x_a, truth.state(t0 + np.timedelta64(hours, "h")), truth.grid)
        np.testing.assert_allclose([fc["rmse"][ch][i] for ch in truth.layout.names], expected.numpy(), rtol=1e-6)
