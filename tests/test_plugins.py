"""A method and a B model defined in this file alone (no library file changed), registered and run
from YAML through both drivers, ``aivarda assimilate`` and ``aivarda run``; and discovery of a
component that another package declares through an entry point."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, Literal

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field
from torch import nn

from aivarda.assimilation import METHODS, AnalysisProblem, AnalysisResult
from aivarda.assimilation.methods import FGATConfig, ThreeDVarFGAT
from aivarda.background.registry import BACKGROUNDS, TransformConfig, TransformContext
from aivarda.background.transforms import DiagonalTransform
from aivarda.channels import ChannelLayout
from aivarda.cli import main
from aivarda.config import StrictModel
from aivarda.data.cf import read_states
from aivarda.errors import ConfigError
from aivarda.observations.operators import build_operator
from aivarda.observations.registry import OPERATORS, OperatorConfig
from aivarda.registry import Registry

LAYOUT = ChannelLayout.fengwu69().to_dict()


class DampedConfig(FGATConfig):
    """A toy method: FGAT, its increment multiplied by ``damping``."""

    method: Literal["toy-damped"] = "toy-damped"  # type: ignore[assignment]
    damping: float = Field(ge=0, le=1)


class Damped(ThreeDVarFGAT):
    config: DampedConfig

    def analyse(self, problem: AnalysisProblem) -> AnalysisResult:
        r = super().analyse(problem)
        increment = self.config.damping * r.increment
        return AnalysisResult(problem.background + increment, r.z, increment, r.diagnostics, r.converged, r.fallback)


class ScaledConfig(TransformConfig):
    """A toy B: the data's background-error std times ``factor``."""

    type: Literal["toy-scaled"] = "toy-scaled"
    factor: float = Field(gt=0)


@pytest.fixture
def toys():
    METHODS.register("toy-damped", DampedConfig)(Damped)

    @BACKGROUNDS.register("toy-scaled", ScaledConfig)
    def _build(cfg: ScaledConfig, context: TransformContext) -> DiagonalTransform:
        return DiagonalTransform(cfg.factor * context.require_error_std("toy-scaled"), context.state_shape)

    yield
    METHODS.unregister("toy-damped")
    BACKGROUNDS.unregister("toy-scaled")


def identity_model(dt: str) -> dict[str, Any]:
    return {"module": "torch.nn:Identity", "dt": dt, "residual": False, "layout": LAYOUT}


def assimilation(method: str, **extra: Any) -> dict[str, Any]:
    return {"method": method, "da_win": 2, "window_interval": "1h", "outer_loops": 1, "inner_iterations": 8,
            "background_error": {"type": "toy-scaled", "factor": 0.5}, **extra}


def test_toy_method_and_b_through_aivarda_assimilate(toys, tiny_nature_run: Path, tmp_path: Path) -> None:
    def run(name: str, section: dict[str, Any]) -> SimpleNamespace:
        cfg = {"name": name, "data": {"source": "zarr", "path": str(tiny_nature_run)}, "span": "eval",
               "background": {"lag": "24h"}, "observations": {"mode": "random", "fraction": 0.05, "withhold": 0.15},
               "assimilation": section, "window_model": identity_model("1h")}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["assimilate", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--json"]) == 0
        return SimpleNamespace(**read_states(tmp_path / name / "states.nc")[0])

    fgat = run("fgat", assimilation("3dvar-fgat"))
    damped = run("damped", assimilation("toy-damped", damping=0.25))
    inc_fgat = fgat.analysis - fgat.background
    inc_damped = damped.analysis - damped.background
    assert np.abs(inc_fgat).max() > 0
    # equal up to the float32 rounding of the stored states (x_a = x_b + δx)
    ulp = np.spacing(np.abs(fgat.background).astype(np.float32))
    assert np.all(np.abs(inc_damped - 0.25 * inc_fgat) <= 1e-4 * np.abs(inc_fgat) + 4 * ulp)


def test_toy_method_and_b_through_aivarda_run(toys, tiny_nature_run: Path, tmp_path: Path) -> None:
    import csv

    def run(name: str, section: dict[str, Any]) -> list[dict[str, str]]:
        cfg = {"name": name, "seed": 1, "data": {"source": "zarr", "path": str(tiny_nature_run)},
               "start_time": "2000-01-04T00:00", "end_time": "2000-01-04T06:00", "dynamic_member": 1, "gap": 2,
               "device": "cpu", "assimilation": section, "model": identity_model("6h"),
               "window_model": identity_model("1h"), "forecast": {"every": 0}, "outputs": {"analyses_zarr": False},
               "output_dir": str(tmp_path / name)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["run", str(tmp_path / f"{name}.yaml"), "--json"]) == 0
        with (tmp_path / name / "metrics.csv").open() as fh:
            return list(csv.DictReader(fh))

    undamped = run("undamped", assimilation("toy-damped", damping=1.0))
    fgat = run("fgat", assimilation("3dvar-fgat"))
    frozen = run("frozen", assimilation("toy-damped", damping=0.0))
    assert [r["method"] for r in undamped] == ["toy-damped"] * 2
    for a, b in zip(undamped, fgat, strict=True):  # damping 1 is FGAT, cycle after cycle
        assert a["ana_nrmse"] == b["ana_nrmse"] and a["bg_nrmse"] == b["bg_nrmse"]
    for r in frozen:  # damping 0 keeps the background
        assert r["ana_nrmse"] == r["bg_nrmse"]
    assert float(fgat[0]["ana_nrmse"]) < float(fgat[0]["bg_nrmse"])


def test_unknown_method_lists_the_registered_ones(toys, tiny_nature_run: Path, tmp_path: Path, capsys) -> None:
    cfg = {"data": {"source": "zarr", "path": str(tiny_nature_run)}, "assimilation": {"method": "toy-nope"}}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["assimilate", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.yaml: assimilation" in err[0] and "toy-damped" in err[0] and "toy-nope" in err[0]


def test_entry_point_of_another_package_registers_its_component(tmp_path: Path, monkeypatch) -> None:
    """A distribution on sys.path declaring ``[aivarda.background] demo = demo_b_plugin``: the
    registry imports the module on first lookup, which registers ``demo-b``."""
    (tmp_path / "demo_b_plugin.py").write_text(
        "from typing import Literal\n"
        "from aivarda.config import StrictModel\n"
        "from aivarda.tests_registry import REG\n"
        "class DemoConfig(StrictModel):\n"
        "    type: Literal['demo-b'] = 'demo-b'\n"
        "    width: int = 3\n"
        "REG.register('demo-b', DemoConfig)(lambda cfg: cfg.width)\n"
    )
    dist = tmp_path / "demo_b_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-b-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[aivarda.test-plugins]\ndemo = demo_b_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry[Any] = Registry("test component", "aivarda.test-plugins")
    fake = type(sys)("aivarda.tests_registry")
    fake.REG = registry  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "aivarda.tests_registry", fake)
    assert registry.names() == ["demo-b"]
    cfg = registry.parse({"type": "demo-b", "width": 5})
    assert registry.builder("demo-b")(cfg) == 5
    with pytest.raises(ConfigError, match="width: Input should be a valid integer"):
        registry.parse({"type": "demo-b", "width": "x"})


class CountingConfig(OperatorConfig):
    """A toy operator: the interpolation operator, counting how often it is built."""

    type: Literal["toy-counting"] = "toy-counting"
    built: ClassVar[list[int]] = []


def test_toy_operator_through_aivarda_assimilate(tiny_nature_run: Path, tmp_path: Path) -> None:
    @OPERATORS.register("toy-counting", CountingConfig)
    def _build(cfg: CountingConfig, obs: Any, geometry: Any, shape: Any) -> Any:
        cfg.built.append(len(obs))
        return build_operator(obs, geometry.grid, geometry.layout, shape)

    CountingConfig.built.clear()
    try:
        for name, operator in (("counted", {"type": "toy-counting"}), ("plain", {"type": "interpolation"})):
            cfg = {"name": name, "data": {"source": "zarr", "path": str(tiny_nature_run)}, "span": "eval",
                   "background": {"lag": "24h"},
                   "observations": {"mode": "offgrid", "fraction": 0.05, "withhold": 0.15, "operator": operator},
                   "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"},
                                    "outer_loops": 1, "inner_iterations": 4}}
            (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
            assert main(["assimilate", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / name), "--json"]) == 0
    finally:
        OPERATORS.unregister("toy-counting")
    # built for the assimilated observations, then for O−B/O−A of the assimilated and withheld ones
    assert len(CountingConfig.built) == 3
    counted = yaml.safe_load((tmp_path / "counted" / "metrics.json").read_text())
    plain = yaml.safe_load((tmp_path / "plain" / "metrics.json").read_text())
    assert counted["ana_wrmse"] == plain["ana_wrmse"]


class TinyConvConfig(StrictModel):
    """A toy forecast architecture: one 3×3 convolution over the channels."""

    name: Literal["toy-conv"] = "toy-conv"
    scale: float = 0.0

    def build(self, grid: Any, layout: Any) -> nn.Module:
        conv = nn.Conv2d(layout.n_channels, layout.n_channels, 3, padding=1)
        with torch.no_grad():
            conv.weight.mul_(self.scale)
            conv.bias.zero_()
        return conv


def test_toy_architecture_checkpoint_and_run(tiny_nature_run: Path, tmp_path: Path) -> None:
    from aivarda.data.sources import Wb2ZarrSource, store_layout
    from aivarda.models.checkpoint import build_forecast_model, checkpoint_dict, load_forecast_model, save_checkpoint
    from aivarda.models.normalised import identity_stats
    from aivarda.models.registry import ARCHITECTURES

    ARCHITECTURES.register("toy-conv", TinyConvConfig)(TinyConvConfig.build)
    try:
        source = Wb2ZarrSource(tiny_nature_run, store_layout(tiny_nature_run))
        model = build_forecast_model({"name": "toy-conv"}, identity_stats(source.layout.names, 6.0), source.grid,
                                     source.layout, 6.0)
        path = save_checkpoint(tmp_path / "toy.pt", checkpoint_dict(model))
        loaded = load_forecast_model(path)  # a registered name: rebuilt from the file, no code imported
        x = source.state(source.times[0])
        assert torch.equal(loaded.step(x), x)  # scale 0: persistence
        cfg = {"name": "toyrun", "data": {"source": "zarr", "path": str(tiny_nature_run)},
               "start_time": "2000-01-04T00:00", "end_time": "2000-01-04T06:00", "dynamic_member": 1, "gap": 2,
               "device": "cpu", "assimilation": {"method": "3dvar", "background_error": {"type": "diagonal"},
                                                 "outer_loops": 1, "inner_iterations": 4},
               "model": {"checkpoint": str(path)}, "forecast": {"every": 0}, "outputs": {"analyses_zarr": False},
               "output_dir": str(tmp_path / "toyrun")}
        (tmp_path / "toyrun.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["run", str(tmp_path / "toyrun.yaml"), "--json"]) == 0
    finally:
        ARCHITECTURES.unregister("toy-conv")
    assert (tmp_path / "toyrun" / "metrics.csv").is_file()


def test_assimilate_refuses_a_b_that_needs_members_before_reading_data(tmp_path: Path, capsys) -> None:
    cfg = {"data": {"source": "zarr", "path": str(tmp_path / "no_such_store.zarr")},
           "assimilation": {"method": "3dvar", "background_error": {"type": "ensemble"}}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["assimilate", str(tmp_path / "e.yaml"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "background_error type ensemble needs ensemble members" in err[0]
    assert not (tmp_path / "e").exists()
