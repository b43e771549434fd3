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
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.errors import ConfigError, DataError
from aivarda.models.config import TrainConfig
from aivarda.paths import check_name

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


def resume_cli(config: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = main(["run", str(config), "--out", str(out), "--resume", "--json"])
    return code, capsys.readouterr().err.strip().splitlines()


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


def test_bit_flip_in_a_member_from_an_older_cycle_is_named(small_run, tmp_path, capsys) -> None:
    config, _ = small_run
    out = interrupted(small_run, tmp_path)
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
