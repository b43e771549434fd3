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
