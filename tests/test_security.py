"""No code from data: a checkpoint or covariance file can never make aivarda import or call code."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from aivarda.background.registry import DenseConfig, TransformContext, build_transform
from aivarda.channels import ChannelLayout
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid
from aivarda.models.checkpoint import build_forecast_model, checkpoint_dict, load_forecast_model, save_checkpoint
from aivarda.models.normalised import identity_stats
from aivarda.models.registry import architecture_config

GRID = Grid.gaussian(8, 16)
LAYOUT = ChannelLayout(("t2m",), ("z",), (500,))


def _hostile_checkpoint(tmp_path, marker):
    """A well-formed checkpoint whose architecture names ``os:system`` with a shell command."""
    model = build_forecast_model({"name": "sfno", "embed_dim": 4, "num_layers": 1},
                                 identity_stats(LAYOUT.names), GRID, LAYOUT, 6.0)
    payload = checkpoint_dict(model)
    payload["architecture"] = {"name": "module", "target": "os:system", "kwargs": {"command": f"touch {marker}"}}
    return save_checkpoint(tmp_path / "evil.pt", payload)


def test_checkpoint_naming_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = _hostile_checkpoint(tmp_path, marker)
    with pytest.raises(ConfigError, match="'module' .* not accepted here"):
        load_forecast_model(path)
    with pytest.raises(ConfigError, match="not accepted here"):
        load_forecast_model({"checkpoint": str(path)})
    assert not marker.exists()


def test_eval_model_cli_on_hostile_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    from aivarda.cli import main

    marker = tmp_path / "pwned"
    path = _hostile_checkpoint(tmp_path, marker)
    code = main(["eval-model", "--checkpoint", str(path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not accepted here" in err[0]
    assert not marker.exists()


def test_user_config_module_must_be_a_module_class_before_any_call(tmp_path):
    marker = tmp_path / "pwned"
    # os.system is a function, not an nn.Module subclass: refused before it is called
    cfg = {"module": "os:system", "kwargs": {"command": f"touch {marker}"}, "dt": "1h",
           "layout": LAYOUT.to_dict(), "grid": GRID.to_dict()}
    with pytest.raises(ConfigError, match="not a torch.nn.Module subclass"):
        load_forecast_model(cfg)
    assert not marker.exists()
    with pytest.raises(ConfigError, match="not a torch.nn.Module subclass"):
        architecture_config({"name": "module", "target": "builtins:eval", "kwargs": {}}, allow_module=True).build(GRID, LAYOUT)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code ran')",))


@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_covariance_file_with_pickled_code_is_refused(tmp_path, suffix):
    path = tmp_path / f"cov{suffix}"
    if suffix == ".pt":
        torch.save({"matrix": _Boom()}, path)
    else:
        np.save(path, np.array([_Boom()], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="not a readable matrix"):
        build_transform(DenseConfig(covariance=path), TransformContext((3,)))


def test_random_covariance_bytes_are_one_line(tmp_path):
    path = tmp_path / "cov.pt"
    path.write_bytes(pickle.dumps(b"garbage")[:5] + b"\x00" * 30)
    with pytest.raises(ConfigError, match="cov.pt: not a readable matrix"):
        build_transform(DenseConfig(covariance=path), TransformContext((3,)))
    np.save(tmp_path / "c.npy", np.ones((2, 3)))
    with pytest.raises(ConfigError, match="finite square matrix"):
        build_transform(DenseConfig(covariance=tmp_path / "c.npy"), TransformContext((3,)))


def test_checkpoint_with_pickled_code_is_a_data_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"format": "aivarda-forecast-model", "version": 1, "x": _Boom()}, path)
    with pytest.raises(DataError, match="not a readable torch file"):
        load_forecast_model(path)
