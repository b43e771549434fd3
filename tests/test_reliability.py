"""Faults a hostile but fair user can cause: names that would escape their folder, damaged run
directories, corrupt values, and user errors that must be one line with exit status 2.

Every test here failed before the fault was handled (a traceback, exit 0 with wrong results, or a
file written outside its folder). Run them alone with ``pytest -m reliability``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from aivarda.background.genbe.config import LearnBConfig
from aivarda.config import check_name, load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.errors import ConfigError, DataError
from aivarda.models.config import TrainConfig

pytestmark = pytest.mark.reliability


# ----------------------------------------------------------------------------------- names in paths
@pytest.mark.parametrize("name", ["x/../../../y", "..", "../up", "a\\b", "", " ", ".hidden", "a\0b", "a\nb"])
def test_names_that_would_leave_their_folder_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_name(name)


@pytest.mark.parametrize("name", ["exp_3DVar", "genbe-t42", "run 1", "fengwu_6h.v2"])
def test_ordinary_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("model", [LearnBConfig, CyclingConfig, TrainConfig])
def test_config_name_with_dotdot_is_one_config_error(model: type, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x/../../../y"}))
    with pytest.raises(ConfigError, match=r"c\.yaml: name: .*must not contain") as err:
        load_config(path, model)
    assert "\n" not in str(err.value)


def test_report_refuses_a_run_named_with_dotdot(tmp_path: Path) -> None:
    from aivarda.evaluation.report import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "../../escaped"}))
    (run / "metrics.csv").write_text("cycle,time,method\n0,2000-01-01T00:00,3dvar\n")
    with pytest.raises(DataError, match=r"config\.json: name: "):
        load_run(run)


# ------------------------------------------------------------------------ damaged run directories
from test_cycling import cycling_store, read_rows, without_wall, write_config  # noqa: E402,F401

from aivarda.cli import main  # noqa: E402
from aivarda.cycling.runner import CyclingRunner  # noqa: E402
from aivarda.cycling.state import RunDirectory  # noqa: E402


class Interrupt(Exception):
    pass


def run_until(config: Path, out: Path, stop: tuple[int, str] | None) -> None:
    """Run in this process, raising at ``stop = (cycle, stage)``; the lock is then released as the
    kernel would on a kill."""

    def hook(cycle: int, stage: str) -> None:
        if (cycle, stage) == stop:
            raise Interrupt

    try:
        CyclingRunner(load_config(config, CyclingConfig), out, progress=False, hook=hook).run(resume=True)
    except Interrupt:
        pass
    finally:
        getattr(RunDirectory(out), "unlock", lambda: None)()  # (absent before run directories had locks)


@pytest.fixture(scope="module")
def small_run(cycling_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted 4-cycle 3DVar run of the tiny nature run: (config, run directory)."""
    tmp = tmp_path_factory.mktemp("reliab")
    config = write_config(tmp / "small.yaml", cycling_store, tmp / "ref", outputs={"analyses_zarr": True})
    run_until(config, tmp / "ref", None)
    return config, tmp / "ref"


def interrupted(small_run: tuple[Path, Path], tmp_path: Path, stop: tuple[int, str] = (2, "background")) -> Path:
    config, _ = small_run
    out = tmp_path / "run"
    run_until(config, out, stop)
    return out


def not_warnings(stderr: str) -> list[str]:
    """The stderr lines other than warnings (e.g. the in-sample stamp of the test runs)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("warning:")]


def resume_cli(config: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["run", str(config), "--out", str(out), "--resume", "--json"])
    return code, not_warnings(capsys.readouterr().err)


def assert_same_as(ref: Path, out: Path) -> None:
    assert without_wall(read_rows(out)) == without_wall(read_rows(ref))
    from aivarda.data.sources import Wb2ZarrSource

    a, b = Wb2ZarrSource(out / "analyses.zarr"), Wb2ZarrSource(ref / "analyses.zarr")
    assert (a.states(a.times).numpy() == b.states(b.times).numpy()).all()


def test_truncated_state_json_is_rebuilt_from_the_records(small_run, tmp_path, capsys) -> None:
    config, ref = small_run
    out = interrupted(small_run, tmp_path)
    state = out / "state.json"
    state.write_text(state.read_text()[:20])
    code, err = resume_cli(config, out, capsys)
    assert code == 0 and any("state.json: damaged" in line for line in err)
    assert_same_as(ref, out)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_record_of_the_last_cycle_is_redone(small_run, tmp_path, capsys, damage: str) -> None:
    config, ref = small_run
    out = interrupted(small_run, tmp_path)
    record = out / "records" / "cycle_00001.json"
    text = record.read_text()
    record.write_text(text[: len(text) // 2] if damage == "truncate" else text.replace('"cycle": 1', '"cycle": 7', 1))
    code, err = resume_cli(config, out, capsys)
    assert code == 0 and any("cycle_00001.json" in line and "redo cycle 1" in line for line in err)
    assert_same_as(ref, out)


def test_damaged_older_record_is_one_line_naming_it(small_run, tmp_path, capsys) -> None:
    config, _ = small_run
    out = interrupted(small_run, tmp_path)
    (out / "records" / "cycle_00000.json").write_text("{")
    code, err = resume_cli(config, out, capsys)
    assert code == 2 and len(err) == 1 and "cycle_00000.json" in err[0] and "damaged" in err[0]


def flip_member(path: Path, value: float) -> None:
    """Overwrite the first value of an ``.npy`` member (a bit flip: 301 K → 9e-37 K)."""
    import numpy as np

    a = np.load(path)
    a.reshape(-1)[0] = value
    np.save(path, a)


def test_bit_flip_in_a_member_from_an_older_cycle_is_named(cycling_store, tmp_path, capsys) -> None:
    # a method that uses the time-lagged members (3DVar keeps only the background, lead 1)
    config = write_config(tmp_path / "envar.yaml", cycling_store, tmp_path / "unused",
                          assimilation={"method": "3denvar", "background_error": {"type": "ensemble", "localisation":
                                        {"length_scale": None}}, "outer_loops": 1, "inner_iterations": 4})
    out = tmp_path / "run"
    run_until(config, out, (2, "background"))
    member = out / "ensemble" / "valid_00002" / "lead_02.npy"  # forecast from cycle 0
    flip_member(member, 9e-37)
    code, err = resume_cli(config, out, capsys)
    assert code == 2 and len(err) == 1 and "valid_00002/lead_02.npy" in err[0] and "damaged" in err[0]


def test_bit_flip_in_a_member_of_the_last_cycle_redoes_it(small_run, tmp_path, capsys) -> None:
    config, ref = small_run
    out = interrupted(small_run, tmp_path)
    flip_member(out / "ensemble" / "valid_00002" / "lead_01.npy", 9e-37)  # forecast from cycle 1
    code, err = resume_cli(config, out, capsys)
    assert code == 0 and any("lead_01.npy" in line and "redo cycle 1" in line for line in err)
    assert_same_as(ref, out)


def test_member_out_of_range_without_checksum_is_refused_with_file_and_variable(tmp_path) -> None:
    import numpy as np
    import torch

    from aivarda.channels import ChannelLayout
    from aivarda.cycling.ensemble import LaggedEnsemble

    layout = ChannelLayout.fengwu69()
    store = LaggedEnsemble(tmp_path, members=1, n_cycles=2, layout=layout)
    state = torch.full((69, 2, 3), 1.0e3)
    state[layout.index("t2m")] = 301.0
    for ch in layout.channels:
        lo, hi = __import__("aivarda.ranges", fromlist=["PLAUSIBLE_RANGE"]).PLAUSIBLE_RANGE[ch.variable.short]
        state[layout.index(ch.name)] = (lo + hi) / 2 if ch.name != "t2m" else 301.0
    store.put(0, state[None])
    path = tmp_path / "valid_00001" / "lead_01.npy"
    assert torch.equal(store.background(1), state)
    a = np.load(path)
    a[layout.index("t2m"), 0, 0] = 9e-37
    np.save(path, a)
    (path.parent / "lead_01.npy.sha256").unlink()  # no checksum to catch it: the range must
    with pytest.raises(DataError, match=r"lead_01\.npy: ensemble member of cycle 1: t2m = 9e-37 K is outside"):
        store.background(1)


def test_stale_tmp_files_are_removed_at_resume(small_run, tmp_path, capsys) -> None:
    config, ref = small_run
    out = interrupted(small_run, tmp_path)
    leftovers = [out / ".state.tmp4242.json", out / "ensemble" / "valid_00002" / ".lead_01.tmp4242.npy",
                 out / ".metrics.tmp99.csv"]
    for p in leftovers:
        p.write_text("partial")
    (out / ".analyses.zarr.tmp").mkdir()
    code, _ = resume_cli(config, out, capsys)
    assert code == 0 and not any(p.exists() for p in leftovers) and not (out / ".analyses.zarr.tmp").exists()
    assert_same_as(ref, out)


def test_truncated_config_json_is_one_line(small_run, tmp_path, capsys) -> None:
    config, _ = small_run
    out = interrupted(small_run, tmp_path)
    (out / "config.json").write_text('{"name": ')
    code, err = resume_cli(config, out, capsys)
    assert code == 2 and len(err) == 1 and "config.json" in err[0] and "damaged" in err[0]


def test_second_resume_while_one_runs_is_refused_and_a_dead_holder_is_taken_over(small_run, tmp_path, capsys) -> None:
    import subprocess
    import sys

    config, ref = small_run
    out = interrupted(small_run, tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from aivarda.cycling.state import RunDirectory; "
         f"RunDirectory({str(out)!r}).lock(); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        code, err = resume_cli(config, out, capsys)
        assert code == 2 and len(err) == 1 and f"in use by process {holder.pid}" in err[0]
    finally:
        holder.kill()
        holder.wait()
    code, _ = resume_cli(config, out, capsys)  # the killed holder's lock file is taken over
    assert code == 0
    assert_same_as(ref, out)


# ------------------------------------------------------------------------------------------ values
from test_stats import change_one_value  # noqa: E402


@pytest.fixture
def mini_copy(tmp_path: Path):
    from conftest import write_mini_store

    return write_mini_store(tmp_path / "mini.zarr")


def test_nan_in_the_truth_names_variable_time_and_chunk(mini_copy) -> None:
    from aivarda.data.sources import Wb2ZarrSource

    change_one_value(mini_copy.path / "temperature", float("nan"))
    src = Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout)
    src.states(src.times[1:3])  # other times are unaffected
    with pytest.raises(DataError) as err:
        src.states(src.times[:2])
    msg = str(err.value)
    assert "\n" not in msg and "1 NaN/Inf values in temperature (t500 first)" in msg
    chunk = src.chunk_file("temperature", (0, 0, 0, 0))
    assert chunk.is_file() and "2020-01-01T00:00" in msg and f"chunk {chunk.relative_to(src.path)}" in msg


def test_missing_chunk_file_read_as_nan_fill_is_named(mini_copy) -> None:
    from aivarda.data.sources import Wb2ZarrSource

    src = Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout)
    chunk = src.chunk_file("2m_temperature", (2, 0, 0))
    chunk.unlink()
    with pytest.raises(DataError, match=rf"2m_temperature \(t2m first\) at .*{chunk.name} \(missing"):
        src.states(src.times[:4])


def test_truncated_zarr_chunk_names_the_file(mini_copy) -> None:
    from aivarda.data.sources import Wb2ZarrSource

    src = Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout)
    chunk = src.chunk_file("geopotential", (1, 0, 0, 0))
    chunk.write_bytes(chunk.read_bytes()[:20])
    src = Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout)
    with pytest.raises(DataError) as err:
        src.states(src.times[:3])
    assert "\n" not in str(err.value) and f"{chunk.relative_to(src.path)} (20 bytes)" in str(err.value)


def test_nan_statistics_in_the_cache_are_not_used(mini_copy) -> None:
    import math

    from aivarda.data import stats as stats_mod
    from aivarda.data.sources import Wb2ZarrSource

    src = Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout, span="train")
    first = stats_mod.load_or_compute_norm_stats(src, progress=False)
    (cached,) = (Path(__import__("os").environ["AIVARDA_HOME"]) / "stats").glob("norm_mini_*.json")
    data = json.loads(cached.read_text())
    data["std"][0] = math.nan
    cached.write_text(json.dumps(data))
    again = stats_mod.load_or_compute_norm_stats(src, progress=False)
    assert again.finite() and again.std.tolist() == first.std.tolist()


def test_statistics_cache_follows_a_repair_of_the_store(mini_copy) -> None:
    """A NaN in the store, then the chunk restored byte for byte: statistics of the repaired
    content, never the NaN ones."""
    from aivarda.data import stats as stats_mod
    from aivarda.data.sources import Wb2ZarrSource

    src = Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout, span="train")
    chunk = src.chunk_file("temperature", (0, 0, 0, 0))
    good = chunk.read_bytes()
    change_one_value(mini_copy.path / "temperature", float("nan"))
    with pytest.raises(DataError, match="NaN"):
        stats_mod.load_or_compute_norm_stats(Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout, span="train"),
                                             progress=False)
    chunk.write_bytes(good)
    stats = stats_mod.load_or_compute_norm_stats(Wb2ZarrSource(mini_copy.path, layout=mini_copy.layout, span="train"),
                                                 progress=False)
    assert stats.finite()


def test_check_state_names_a_nan_and_an_implausible_value() -> None:
    import torch

    from aivarda.channels import ChannelLayout
    from aivarda.ranges import PLAUSIBLE_RANGE, check_state

    layout = ChannelLayout.fengwu69()
    x = torch.stack([torch.full((4, 8), sum(PLAUSIBLE_RANGE[ch.variable.short]) / 2) for ch in layout.channels])
    assert check_state(x, layout, "forecast") is x
    y = x.clone()
    y[layout.index("q850"), 1, 2] = float("nan")
    with pytest.raises(DataError, match=r"^forecast of cycle 3: 1 NaN/Inf values in q850"):
        check_state(y[None], layout, "forecast of cycle 3")
    y = x.clone()
    y[layout.index("z500"), 0, 0] = 3.0e38
    with pytest.raises(DataError, match=r"z500 = 3e\+38 m\*\*2 s\*\*-2 is outside the plausible range"):
        check_state(y, layout, "analysis")


# ------------------------------------------------------------------- one line and exit status 2
def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = not_warnings(capsys.readouterr().err)
    assert len(err) == 1, err
    return err[0]


def test_binary_config_is_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "binary.yaml"
    config.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(config)]) == 2
    line = one_error_line(capsys)
    assert "binary.yaml: not a text (UTF-8) YAML file" in line


def test_binary_stations_csv_is_one_error(tmp_path) -> None:
    from aivarda.errors import ObservationError
    from aivarda.observations.simulator import read_stations

    csv = tmp_path / "stations.csv"
    csv.write_bytes(b"lat,lon\n\xff\xfe\x00\x81\n")
    with pytest.raises(ObservationError, match=r"stations\.csv: not a text \(UTF-8\) CSV file"):
        read_stations(csv)


def test_empty_mask_file_is_one_error(tmp_path) -> None:
    from aivarda.errors import ObservationError
    from aivarda.observations.simulator import read_mask

    mask = tmp_path / "mask.npy"
    mask.write_bytes(b"")
    with pytest.raises(ObservationError, match=r"mask\.npy: cannot read the observation mask \(EOFError"):
        read_mask(mask, (4, 8))


def test_run_out_naming_a_file_is_refused_before_any_computation(small_run, tmp_path, capsys, monkeypatch) -> None:
    config, _ = small_run
    monkeypatch.setattr(CyclingRunner, "_setup", lambda self: pytest.fail("computed before checking --out"))
    target = tmp_path / "a_file"
    target.write_text("x")
    assert main(["run", str(config), "--out", str(target)]) == 2
    assert "a_file: the run directory names a file, expected a folder" in one_error_line(capsys)
    assert main(["run", str(config), "--out", str(target / "sub")]) == 2
    assert "cannot be created" in one_error_line(capsys)


def test_read_only_output_is_refused_before_any_computation(small_run, tmp_path, capsys, monkeypatch) -> None:
    import os

    import aivarda.files

    config, _ = small_run
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(aivarda.files.os, "access",  # a read-only folder even for root
                        lambda p, mode: False if Path(p) == read_only else real_access(p, mode))
    monkeypatch.setattr(CyclingRunner, "_setup", lambda self: pytest.fail("computed before checking --out"))
    assert main(["run", str(config), "--out", str(read_only / "run")]) == 2
    assert "is not writable" in one_error_line(capsys)


def test_report_out_naming_a_file_is_one_line(small_run, tmp_path, capsys) -> None:
    _, ref = small_run
    target = tmp_path / "figures.png"
    target.write_text("x")
    assert main(["report", str(ref), "--out", str(target)]) == 2
    assert "figures.png: --out (the figure folder) names a file" in one_error_line(capsys)


def test_learn_b_out_naming_a_folder_is_refused_before_computing(tmp_path, capsys) -> None:
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"name": "b", "data": {"source": "zarr", "path": str(tmp_path / "none.zarr")}}))
    assert main(["learn-b", "genbe", str(config), "--out", str(tmp_path)]) == 2
    assert "names a folder, expected a file" in one_error_line(capsys)


def test_nmc_lag_of_zero_is_a_config_error(tmp_path) -> None:
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump({"nmc": {"kind": "lagged_truth", "lag": "0h"}}))
    with pytest.raises(ConfigError, match=r"b\.yaml: nmc: .*lag must be positive"):
        load_config(config, LearnBConfig)


def test_empty_assimilate_config_does_not_start_a_nature_run(tmp_path, capsys, monkeypatch) -> None:
    import aivarda.data.nature_run as nature_run

    monkeypatch.setattr(nature_run, "ensure_nature_run", lambda *a, **k: pytest.fail("nature run started"))
    config = tmp_path / "empty.yaml"
    config.write_text("")
    assert main(["assimilate", str(config)]) == 2
    assert "empty.yaml: data: required key is missing" in one_error_line(capsys)


def test_os_errors_escaping_a_handler_are_one_line(small_run, tmp_path, capsys, monkeypatch) -> None:
    import errno

    import aivarda.evaluation.report as report

    _, ref = small_run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "rmse_z500.png"))

    monkeypatch.setattr(report, "plot_report", full)
    assert main(["report", str(ref), "--out", str(tmp_path / "fig")]) == 2
    assert one_error_line(capsys).endswith("rmse_z500.png: No space left on device")


def test_partial_store_of_a_killed_nature_run_is_removed(tmp_path, monkeypatch) -> None:
    import subprocess
    import sys

    import aivarda.data.nature_run as nature_run

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "nr.zarr"
    stale = tmp_path / f".nr.zarr.tmp-{dead_pid}-123"
    live = tmp_path / f".nr.zarr.tmp-{__import__('os').getpid()}-456"  # a generator still running
    for d in (stale, live):
        (d / "temperature").mkdir(parents=True)
    monkeypatch.setattr(nature_run, "build_model", lambda cfg: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        nature_run.generate_nature_run(nature_run.NatureRunConfig.tiny(), out, progress=False)
    assert not stale.exists() and live.exists()


# ---------------------------------------------------------------- checkpoints, device, lag (one line each)
def _small_checkpoint(tmp_path):
    from aivarda.channels import ChannelLayout
    from aivarda.grid import Grid
    from aivarda.models.checkpoint import build_forecast_model, checkpoint_dict
    from aivarda.models.normalised import identity_stats

    layout = ChannelLayout(("t2m",), ("z",), (500,))
    model = build_forecast_model({"name": "sfno", "embed_dim": 4, "num_layers": 1}, identity_stats(layout.names),
                                 Grid.gaussian(8, 16), layout, 6.0)
    return checkpoint_dict(model)


@pytest.mark.parametrize("damage", ["other_size", "no_state_dict"])
def test_checkpoint_of_another_size_or_without_weights_is_one_line(tmp_path, capsys, damage) -> None:
    from aivarda.cli import main
    from aivarda.models.checkpoint import save_checkpoint

    payload = _small_checkpoint(tmp_path)
    if damage == "other_size":
        payload["architecture"] = {**payload["architecture"], "embed_dim": 8}
    else:
        payload.pop("state_dict")
    path = save_checkpoint(tmp_path / "m.pt", payload)
    assert main(["eval-model", "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = "weights do not fit" if damage == "other_size" else "without ['state_dict']"
    assert len(err) == 1 and str(path) in err[0] and expected in err[0]


def test_device_cuda_without_a_gpu_is_a_config_error(monkeypatch) -> None:
    import torch

    from aivarda.config import validate
    from aivarda.cycling.config import CyclingConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = validate(CyclingConfig, {"data": {"source": "nature_run"}, "start_time": "2000-08-01T00:00",
                                   "end_time": "2000-08-01T06:00", "device": "cuda"}, "exp.yaml")
    with pytest.raises(ConfigError, match="device: cuda requested but no CUDA GPU"):
        cfg.torch_device()


def test_assimilate_lag_of_zero_is_a_config_error(tmp_path) -> None:
    from aivarda.assimilate import AnalyseConfig
    from aivarda.config import load_config

    config = tmp_path / "a.yaml"
    config.write_text(yaml.safe_dump({"data": {"source": "nature_run"}, "background": {"lag": "0h"}}))
    with pytest.raises(ConfigError, match=r"a\.yaml: background\.lag: Value error, must be a positive duration"):
        load_config(config, AnalyseConfig)


def test_every_input_path_is_relative_to_the_config_and_outputs_to_the_working_directory(tmp_path, monkeypatch) -> None:
    """One rule at any depth (data.path, window_model.checkpoint, background_error.file/covariance,
    observations.stations_file): inputs from the config's folder, output_dir from the working directory."""
    from aivarda.config import load_config
    from aivarda.cycling.config import CyclingConfig

    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "st.csv").write_text("lat,lon\n10,20\n")
    cfg = {"data": {"source": "zarr", "path": "store.zarr"}, "start_time": "2000-08-01T00:00",
           "end_time": "2000-08-01T06:00", "observations": {"mode": "fixed", "stations_file": "st.csv"},
           "assimilation": {"method": "4dvar", "da_win": 2, "background_error": {"type": "genbe", "file": "b/genbe.pt"}},
           "model": {"checkpoint": "m6.pt"}, "window_model": {"checkpoint": "${AIVARDA_ASSETS}/fengwu_1h.pt"},
           "output_dir": "runs/x"}
    (folder / "exp.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    c = load_config(folder / "exp.yaml", CyclingConfig)
    assert c.data.path == folder / "store.zarr"
    assert c.observations.stations_file == folder / "st.csv"
    assert c.assimilation.background_error.file == folder / "b" / "genbe.pt"
    assert c.model.checkpoint == folder / "m6.pt"
    assert c.window_model.checkpoint.name == "fengwu_1h.pt" and "${" not in str(c.window_model.checkpoint)
    assert c.output_dir == tmp_path / "runs" / "x"
