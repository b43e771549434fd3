"""YAML configuration: every user mistake is one ConfigError line naming the file and key path."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from aivarda.config import (
    DataConfig,
    ExperimentConfig,
    load_config,
    parse_duration,
    read_yaml,
)
from aivarda.errors import ConfigError


def _write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_valid_config_and_relative_paths(tmp_path):
    path = _write(tmp_path, "name: demo\ndata:\n  source: zarr\n  path: stores/era5.zarr\ncycle_time: 12h\n")
    cfg = load_config(path, ExperimentConfig)
    assert cfg.name == "demo" and cfg.cycle_time == timedelta(hours=12)
    assert cfg.data.path == (tmp_path / "stores" / "era5.zarr").resolve()  # relative to the YAML file
    assert load_config(_write(tmp_path, "data: {}\n", "default.yaml"), ExperimentConfig).data == DataConfig()
    with pytest.raises(ConfigError, match=r"empty\.yaml: data: required key is missing"):  # never a silent nature run
        load_config(_write(tmp_path, "", "empty.yaml"), ExperimentConfig)


def test_unknown_key_names_file_and_key_path(tmp_path):
    path = _write(tmp_path, "data:\n  source: zarr\n  pathh: x.zarr\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ExperimentConfig)
    msg = _one_line(err)
    assert msg.startswith(str(path)) and "data.pathh: unknown key" in msg


def test_wrong_type_names_key(tmp_path):
    path = _write(tmp_path, "seed: many\ndata:\n  source: era6\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ExperimentConfig)
    msg = _one_line(err)
    assert msg.startswith(f"{path}: ") and "seed: Input should be a valid integer" in msg and "data.source:" in msg
    bad_duration = _write(tmp_path, "data: {}\ncycle_time: 6x\n", "dur.yaml")
    with pytest.raises(ConfigError, match=r"dur.yaml: cycle_time: .*expected a duration like '6h'"):
        load_config(bad_duration, ExperimentConfig)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "nope.yaml", ExperimentConfig)
    assert _one_line(err) == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_malformed_yaml_names_line(tmp_path):
    path = _write(tmp_path, "data:\n  source: [zarr,\nseed: 1\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    msg = _one_line(err)
    assert msg.startswith(f"{path}: malformed YAML (line ")
    with pytest.raises(ConfigError, match="expected a mapping of keys at the top level, got list"):
        read_yaml(_write(tmp_path, "- a\n- b\n", "list.yaml"))


def test_a_key_given_twice_is_an_error_not_the_last_one_silently(tmp_path):
    path = _write(tmp_path, "name: a\ndata:\n  source: zarr\n  source: nature_run\n", "dup.yaml")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    assert _one_line(err) == f"{path}: malformed YAML (line 4, column 3): key 'source' given twice"
    assert read_yaml(_write(tmp_path, "a: {x: 1}\nb: {x: 2}\n", "ok.yaml")) == {"a": {"x": 1}, "b": {"x": 2}}


def test_parse_duration():
    assert parse_duration("6h") == timedelta(hours=6)
    assert parse_duration("1h30min") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration(3) == timedelta(hours=3)
    for bad in ("6 hours", "h6", "", "6h x"):
        with pytest.raises(ValueError, match="expected a duration"):
            parse_duration(bad)
