"""``aivarda sweep``: a grid of cycling runs on the tiny nature run (persistence model, 2 cycles)."""

from __future__ import annotations

import csv
import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from aivarda.channels import ChannelLayout
from aivarda.cli import main
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.errors import ConfigError
from aivarda.sweep import Sweep, expand, parse_set, run_finished

GRID = ["--set", "assimilation.inner_iterations=4,6", "--set", "observations.fraction=0.05,0.1"]


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest) -> Path:
    """The tiny nature run (spun up from rest when the shipped spun-up state is not there yet)."""
    from aivarda.data.nature_run import SPINUP_ASSET, NatureRunConfig, ensure_nature_run

    if SPINUP_ASSET.is_file():
        return request.getfixturevalue("tiny_nature_run")
    return ensure_nature_run(NatureRunConfig.tiny().model_copy(update={"initial_state": "rest", "spin_up_days": 5}),
                             progress=False)


def write_config(path: Path, store: Path, **overrides: Any) -> Path:
    """A 2-cycle 3DVar run of the tiny world with a persistence model (``M(x) = x``)."""
    cfg: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {"source": "zarr", "path": str(store)},
        "start_time": "2000-01-02T00:00",
        "end_time": "2000-01-02T06:00",
        "dynamic_member": 2,
        "gap": 2,
        "device": "cpu",
        "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"}, "outer_loops": 1,
                         "inner_iterations": 4},
        "model": {"module": "torch.nn:Identity", "dt": "6h", "residual": False,
                  "layout": ChannelLayout.fengwu69().to_dict()},
        "forecast": {"every": 0},
        "outputs": {"analyses_zarr": False},
        "output_dir": str(path.parent / "single"),
        "allow_in_sample": True,  # the tiny world's train days are its statistics span
    }
    cfg.update(overrides)
    path.write_text(yaml.safe_dump(cfg))
    return path


def rows_without_wall(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in csv.DictReader(fh)]


def sweep_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(config), *GRID, "--out", str(out), "--threads-per-run", "1", *extra]


# ------------------------------------------------------------------------------ the grid
def test_set_values_are_yaml_and_commas_inside_brackets_do_not_split() -> None:
    axis = parse_set("observations.channels=[z500, t850],[t2m], observations.fraction=x")
    assert axis.key == "observations.channels"
    assert axis.values == (["z500", "t850"], ["t2m"], "observations.fraction=x")
    assert parse_set("a.b=10,0.5,true,6h").values == (10, 0.5, True, "6h")
    for bad in ("a.b", "a.b=", "=1,2", "a..b=1", "a.b=1,,2", "a.b=1,1", "seed=1,2", "output_dir=x"):
        with pytest.raises(ConfigError, match=r"^--set"):
            parse_set(bad)


def test_grid_expands_every_combination_and_seed_into_validated_configs(store: Path, tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    stations = tmp_path / "cfg" / "stations.csv"
    stations.write_text("lat,lon\n10,20\n")
    config = write_config(tmp_path / "cfg" / "base.yaml", store, observations={"mode": "fixed"})
    sweep_dir, specs = expand(config, ["assimilation.inner_iterations=4,6", "observations.fraction=0.05,0.1",
                                       "observations.stations_file=stations.csv"], seeds=2, out=tmp_path / "sw")
    assert sweep_dir == (tmp_path / "sw").resolve() and len(specs) == 2 * 2 * 1 * 2
    expected = [(it, fr, seed) for it in (4, 6) for fr in (0.05, 0.1) for seed in (3, 4)]
    assert [(s.config.assimilation.inner_iterations, s.config.observations.fraction, s.config.seed)  # type: ignore[attr-defined]
            for s in specs] == expected
    assert specs[0].name == "tiny__assimilation.inner_iterations=4__observations.fraction=0.05__observations.stations_file=stations.csv__seed=3"
    for s in specs:
        assert s.config.name == s.name and s.config.output_dir == sweep_dir / "runs" / s.name
        # a relative input is relative to the base config's folder, written absolute
        assert s.raw["observations"]["stations_file"] == str(stations.resolve())
        # the expanded YAML, read from elsewhere, is the same configuration
        s.config_file.parent.mkdir(parents=True, exist_ok=True)
        s.config_file.write_text(yaml.safe_dump(s.raw))
        again = load_config(s.config_file, CyclingConfig)
        assert again.model_dump(mode="json") == s.config.model_dump(mode="json")
    assert len({s.digest for s in specs}) == len(specs)


def test_a_typo_fails_at_once_with_one_line_and_writes_nothing(store: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "base.yaml", store)
    out = tmp_path / "sw"
    assert main(["sweep", str(config), "--set", "assimilation.inner_iterations=4,6",
                 "--set", "observations.fractoin=0.05", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"aivarda: error: {config} (--set assimilation.inner_iterations=4, observations.fractoin=0.05): "
                          "observations.fractoin: unknown key")
    assert main(["sweep", str(config), "--set", "assimilation.inner_iterations=4,-1", "--out", str(out)]) == 2
    assert "(--set assimilation.inner_iterations=-1): assimilation" in capsys.readouterr().err
    assert not out.exists()


def test_missing_optional_engines_are_one_clear_line(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "base.yaml", store)
    for engine, module in (("ray", "ray"), ("slurm", "submitit"), ("dask", "distributed")):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
        assert main(["sweep", str(config), "--out", str(tmp_path / engine), "--executor", engine]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--executor {engine}: the Python package '{module}' is not installed" in err


# ------------------------------------------------------------------------------ acceptance
def test_sweep_on_a_local_dask_cluster_is_resumable_when_killed(store: Path, tmp_path: Path) -> None:
    """A 2×2 grid: an uninterrupted sweep (local processes), then the same grid on a local Dask
    cluster killed (SIGKILL) once its first run has finished and re-run with the same command: all
    four runs finish, the finished one is not recomputed, and every result equals the
    uninterrupted sweep's."""
    config = write_config(tmp_path / "base.yaml", store)
    ref = tmp_path / "ref"
    assert main(sweep_cmd(config, ref, "--workers", "2", "--json")) == 0
    names = sorted(p.name for p in (ref / "runs").iterdir())
    assert len(names) == 4 and all(run_finished(ref / "runs" / n) for n in names)
    report = json.loads((ref / "report" / "report.json").read_text())
    assert sorted(r["name"] for r in report["runs"]) == names

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "aivarda.cli", *sweep_cmd(config, out, "--executor", "dask", "--workers", "2")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(run_finished(p) for p in (out / "runs").glob("*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: (p / "metrics.nc").stat().st_mtime_ns for p in (out / "runs").glob("*") if run_finished(p)}
    assert 1 <= len(finished) < 4  # killed mid-way
    # the runs die with the sweep: within a few seconds no process holds a run directory
    for run in (out / "runs").glob("*"):
        if not (run / "run.lock").is_file():
            continue
        held = True
        for _ in range(100):
            fd = os.open(run / "run.lock", os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = False
                break
            except OSError:
                time.sleep(0.1)
            finally:
                os.close(fd)
        assert not held, f"{run.name}: still held after the sweep was killed"

    assert main(sweep_cmd(config, out, "--executor", "dask", "--workers", "2", "--json")) == 0
    manifest = json.loads((out / "sweep.json").read_text())
    assert [e["status"] for e in manifest["runs"]] == ["finished"] * 4
    for e in manifest["runs"]:
        assert e["attempts"] == (1 if e["name"] in finished else 2)
        assert e["cycles_done"] == e["n_cycles"] == 2
        if e["name"] not in finished:
            assert e["host"] and e["wall_seconds"] > 0 and e["threads"] == 1
    for name, stamp in finished.items():  # not recomputed
        assert (out / "runs" / name / "metrics.nc").stat().st_mtime_ns == stamp
    for name in names:  # the same results as the uninterrupted sweep
        assert rows_without_wall(out / "runs" / name) == rows_without_wall(ref / "runs" / name)
    resumed = json.loads((out / "report" / "report.json").read_text())
    key = ("name", "rmse", "normalised_rmse", "cycles", "seed")
    assert [{k: r[k] for k in key} for r in resumed["runs"]] == [{k: r[k] for k in key} for r in report["runs"]]

    # once more: everything is finished, nothing runs (no cluster is started)
    stamps = {n: (out / "runs" / n / "metrics.nc").stat().st_mtime_ns for n in names}
    stamps["report"] = (out / "report" / "report.json").stat().st_mtime_ns
    tic = time.monotonic()
    assert main(sweep_cmd(config, out, "--executor", "dask", "--workers", "2", "--json")) == 0
    assert {n: (out / "runs" / n / "metrics.nc").stat().st_mtime_ns for n in names} == {n: stamps[n] for n in names}
    assert (out / "report" / "report.json").stat().st_mtime_ns == stamps["report"]  # the same runs: kept
    assert all(e["attempts"] <= 2 for e in json.loads((out / "sweep.json").read_text())["runs"])
    assert time.monotonic() - tic < 30


def test_a_different_grid_in_the_same_directory_is_refused(store: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "base.yaml", store)
    out = tmp_path / "sw"
    sweep = Sweep(config, ["assimilation.inner_iterations=4"], out=out, quiet=True)
    sweep.dir.mkdir(parents=True)
    sweep._save(sweep._fresh_manifest())
    with pytest.raises(ConfigError, match=r"sweep.json: this sweep differs from the one in the directory \(sets, runs\)"):
        Sweep(config, ["assimilation.inner_iterations=4,6"], out=out, quiet=True).run()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(Exception, match=r"not empty and has no sweep.json"):
        Sweep(config, ["assimilation.inner_iterations=4"], out=tmp_path / "other", quiet=True).run()
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"


def test_local_worker_slots_get_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--gpus 0,1`` with two workers: runs that overlap in time never share a GPU."""
    import threading

    import aivarda.sweep as sweep

    seen: list[tuple[str, float, float]] = []
    lock = threading.Lock()

    def fake(task: dict[str, Any]) -> dict[str, Any]:
        tic = time.monotonic()
        time.sleep(0.05)
        with lock:
            seen.append((task["gpu"], tic, time.monotonic()))
        return {"name": task["name"], "returncode": 0}

    monkeypatch.setattr(sweep, "execute_run", fake)
    done: list[str] = []
    sweep.run_local([{"name": f"r{i}"} for i in range(6)], lambda t, o: done.append(t["name"]), workers=2, gpus=["0", "1"])
    assert sorted(done) == [f"r{i}" for i in range(6)] and {g for g, _, _ in seen} == {"0", "1"}
    for (g1, a1, b1), (g2, a2, b2) in itertools.combinations(seen, 2):
        if a1 < b2 and a2 < b1:  # ran at the same time
            assert g1 != g2


@pytest.mark.slow
def test_submitit_jobs_and_a_failing_run(store: Path, tmp_path: Path) -> None:
    """The SLURM path through submitit's local cluster: a run that fails (its truth is not in the
    store) is recorded as failed with its error line while the other finishes; the report covers
    the finished one."""
    pytest.importorskip("submitit")
    config = write_config(tmp_path / "base.yaml", store)
    sweep = Sweep(config, ["end_time=2000-01-02T06:00,2000-01-09T00:00"], out=tmp_path / "sw", executor="slurm",
                  threads_per_run=1, slurm={"timeout_min": 10}, slurm_cluster="local", quiet=True)
    manifest = sweep.run()
    status = {e["overrides"]["end_time"]: e for e in manifest["runs"]}
    assert status["2000-01-02T06:00"]["status"] == "finished"
    failed = status["2000-01-09T00:00"]
    assert failed["status"] == "failed" and "truth times the run needs are missing" in failed["error"]
    report = json.loads((sweep.dir / "report" / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == [status["2000-01-02T06:00"]["name"]]


def test_a_held_run_is_waited_for_and_left_alone_when_it_finished(tmp_path: Path) -> None:
    """A run directory still held (a process of an earlier sweep) is waited for; once released and
    finished, the run is not started again."""
    import threading

    from aivarda.files import write_checked_json
    from aivarda.sweep import execute_run

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    fd = os.open(run / "run.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def finish() -> None:
        time.sleep(1.5)
        write_checked_json(run / "state.json", {"version": 2, "next_cycle": 2, "n_cycles": 2, "initialised": True})
        (run / "metrics.nc").write_bytes(b"")
        os.close(fd)  # releases the lock

    threading.Thread(target=finish).start()
    tic = time.monotonic()
    outcome = execute_run({"name": "r", "config": str(tmp_path / "missing.yaml"), "run_dir": str(run),
                           "log": str(tmp_path / "r.log"), "threads": 1})
    assert time.monotonic() - tic >= 1.4
    assert outcome["returncode"] == 0 and outcome["wall_seconds"] == 0.0
    assert not (tmp_path / "r.log").exists() or "aivarda.cli run" not in (tmp_path / "r.log").read_text()


def test_a_second_driver_of_the_same_sweep_is_refused(store: Path, tmp_path: Path) -> None:
    from aivarda.errors import DataError

    config = write_config(tmp_path / "base.yaml", store)
    first = Sweep(config, ["assimilation.inner_iterations=4"], out=tmp_path / "sw", quiet=True)
    with first._lock(), pytest.raises(DataError, match=rf"^{tmp_path / 'sw'}: the sweep is being run by process {os.getpid()}"):
        Sweep(config, ["assimilation.inner_iterations=4"], out=tmp_path / "sw", quiet=True).run()
