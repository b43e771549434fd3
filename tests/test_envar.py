"""3DEnVar, 4DEnVar and the LETKF as methods: the Kalman analysis through the method classes, the
build-time check of the B, and short cycling runs through ``aivarda run`` on the tiny world."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from test_ensemble_b import _Obs, kalman
from test_plugins import identity_model

import aivarda.assimilation.envar  # registers 3denvar, 4denvar (before the entry points are installed)
import aivarda.assimilation.letkf_method  # noqa: F401  (registers letkf)
from aivarda.assimilation import AnalysisProblem, Window, build_method
from aivarda.background.registry import TransformContext, build_transform
from aivarda.cli import main
from aivarda.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64


class LinearModel:
    """``x_{k+1} = M x_k`` (batched over leading dimensions)."""

    def __init__(self, M: torch.Tensor) -> None:
        self.M, self.dt, self.geometry = M, 1.0, None

    def step(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.M.T

    def forecast(self, x: torch.Tensor, n: int) -> torch.Tensor:
        for _ in range(n):
            x = self.step(x)
        return x


def _linear_problem(seed: int, N: int = 40, K: int = 8, T: int = 4):
    gen = torch.Generator().manual_seed(seed)
    M = torch.eye(N, dtype=F64) + 0.1 * torch.randn(N, N, dtype=F64, generator=gen) / math.sqrt(N)
    powers = torch.stack([torch.linalg.matrix_power(M, t) for t in range(T)])  # M^t [T, N, N]
    x_b = torch.randn(N, dtype=F64, generator=gen)
    members = x_b + torch.randn(K, N, dtype=F64, generator=gen)
    times = torch.tensor([0, 1, 2, 3]).repeat_interleave(8)
    points = torch.arange(0, N, 5).repeat(T)
    H4 = torch.stack([powers[t][p] for t, p in zip(times.tolist(), points.tolist(), strict=True)])  # [H_t M^t]
    y = H4 @ x_b + torch.randn(times.numel(), dtype=F64, generator=gen)
    sigma = torch.full((times.numel(),), 0.5, dtype=F64)
    window = Window(np.datetime64(0, "s"), np.arange(T) * np.timedelta64(1, "h"), (1,) * (T - 1))
    obs = _Obs(y, sigma, times)
    return LinearModel(M), powers, x_b, members, H4, y, sigma, window, obs, (times, points)


def _analyse(section: dict[str, Any], model, x_b, members, window, obs, index):
    method = build_method({"outer_loops": 3, "inner_iterations": 60, "tolerance": 1e-12, "j_tolerance": 0.0,
                           **section})
    U = build_transform(method.config.background_error, TransformContext(tuple(x_b.shape), F64))
    method.update_background_error(U, members, window, model)
    times, points = index
    problem = AnalysisProblem(x_b, method.background_window(x_b, window, model), U,
                              lambda xw: xw[times, points], obs, window, model, members)
    result = method.analyse(problem)
    return result, method.analysis_window(problem, result)


UNLOCALISED = {"type": "ensemble", "localisation": {"length_scale": None}}


def test_4denvar_method_with_a_linear_model_is_the_kalman_analysis() -> None:
    """No localisation, β_e = 1 (ensemble B, and hybrid with β_s = 0): x_a = x_b + P_e H4ᵀ(H4 P_e H4ᵀ +
    R)⁻¹(y − H4 x_b) with H4 = [H_t M^t]_t and the analysis window M^t x_a; the members are run
    through the window by the method itself."""
    model, powers, x_b, members, H4, y, sigma, window, obs, index = _linear_problem(21)
    expected = kalman(x_b, torch.cov(members.T), H4, torch.diag(sigma**2), y)
    scale = float((expected - x_b).abs().max())
    hybrid = {"type": "hybrid", "static": {"type": "diagonal", "std": 1.0}, "static_weight": 0.0,
              "ensemble_weight": 1.0, "ensemble": {"localisation": {"length_scale": None}}}
    for b in (UNLOCALISED, hybrid):
        result, an_window = _analyse({"method": "4denvar", "da_win": 4, "background_error": b},
                                     model, x_b, members, window, obs, index)
        assert not result.fallback
        assert float((result.x_a - expected).abs().max()) < 1e-6 * scale
        assert float((an_window - powers @ expected).abs().max()) < 1e-6 * scale
    # 3DEnVar (members at t_0 only, increment constant through the window) is a different analysis
    result, _ = _analyse({"method": "3denvar", "background_error": UNLOCALISED}, model, x_b, members,
                         Window(window.start, window.offsets[:1]), _Obs(y[:8], sigma[:8], obs.time_index[:8]),
                         (index[0][:8], index[1][:8]))
    assert float((result.x_a - expected).abs().max()) > 1e-2 * scale


def test_ensemble_outer_loops_with_a_linear_model_keep_the_kalman_analysis() -> None:
    """Gauss–Newton on a quadratic cost: re-centring the members on x_i and minimising
    ½‖z‖² + ½‖H(M(x_i) + U(z − z_i)) − y‖² from z_i leaves the Kalman analysis unchanged (a wrong
    origin or a missing re-centring moves it by O(increment))."""
    model, powers, x_b, members, H4, y, sigma, window, obs, index = _linear_problem(23)
    expected = kalman(x_b, torch.cov(members.T), H4, torch.diag(sigma**2), y)
    scale = float((expected - x_b).abs().max())
    result, an_window = _analyse({"method": "4denvar", "da_win": 4, "ensemble_outer_loops": 2,
                                  "background_error": UNLOCALISED}, model, x_b, members, window, obs, index)
    assert len(result.diagnostics) > 3 and not result.fallback
    assert float((result.x_a - expected).abs().max()) < 1e-6 * scale
    assert float((an_window - powers @ expected).abs().max()) < 1e-6 * scale


def test_no_cost_smoother_gives_earlier_times_the_same_weights(lorenz96_benchmark) -> None:
    """The benchmark's LETKF with the members at earlier times stacked as extra variables: a stacked
    copy of the forecast gets exactly the forecast's analysis, a linear map of it the same map of
    the analysis (the weights act on the ensemble index only)."""
    bench = lorenz96_benchmark
    gen = torch.Generator().manual_seed(5)
    forecast = torch.randn(10, 40, dtype=F64, generator=gen)
    y, sigma = torch.randn(40, dtype=F64, generator=gen), torch.ones(40, dtype=F64)
    local = bench.periodic_local_obs(40, torch.arange(40), 4.0, batch=2)
    cfg = bench.LETKFConfig(posterior_inflation=1.02)
    alone = bench.letkf_analysis(forecast, forecast, y, sigma, local, cfg, 2, gen)
    stacked = bench.letkf_analysis(torch.stack([forecast, 2 * forecast + 1], 1), forecast, y, sigma, local, cfg, 2, gen)
    assert torch.allclose(stacked[:, 0], alone, atol=1e-12)
    assert torch.allclose(stacked[:, 1], 2 * alone + 1, atol=1e-12)


def test_3denvar_method_is_the_kalman_analysis() -> None:
    _, _, x_b, members, H4, y, sigma, window, _, (times, points) = _linear_problem(22)
    first = times == 0
    H = H4[first]
    expected = kalman(x_b, torch.cov(members.T), H, torch.diag(sigma[first] ** 2), y[first])
    win = Window(window.start, window.offsets[:1])
    result, an_window = _analyse({"method": "3denvar", "background_error": UNLOCALISED}, None, x_b, members, win,
                                 _Obs(y[first], sigma[first], times[first]), (times[first], points[first]))
    scale = float((expected - x_b).abs().max())
    assert float((result.x_a - expected).abs().max()) < 1e-6 * scale
    assert torch.allclose(an_window[0], result.x_a)


@pytest.mark.parametrize("method", ["3denvar", "4denvar"])
def test_envar_with_a_static_b_is_one_config_error(method: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_method({"method": method, "background_error": {"type": "genbe", "file": "x.pt"}})
    text = str(err.value)
    assert "\n" not in text and "background_error" in text and "genbe" in text and f"method {method}" in text


# ------------------------------------------------------------------------------ cycling, tiny world
ENSEMBLE_B = {"type": "ensemble", "localisation": {"length_scale_km": 2000, "vertical_length_lnp": 0.5}}
HYBRID_B = {"type": "hybrid", "static": {"type": "diagonal"}, "static_weight": 0.4, "ensemble_weight": 0.6,
            "ensemble": {"localisation": {"length_scale_km": 2000, "vertical_length_lnp": 0.5}}}


def run_tiny(tmp_path: Path, tiny: Path, name: str, section: dict[str, Any]) -> list[dict[str, str]]:
    """Two 6-hour cycles with K = 8 time-lagged members and identity stand-in models."""
    cfg = {"name": name, "seed": 1, "data": {"source": "zarr", "path": str(tiny)},
           "start_time": "2000-01-04T00:00", "end_time": "2000-01-04T06:00", "dynamic_member": 8, "gap": 1,
           "device": "cpu", "assimilation": section, "model": identity_model("6h"), "window_model": identity_model("1h"),
           "observations": {"mode": "random", "fraction": 0.2, "withhold": 0.15},
           "forecast": {"every": 0}, "outputs": {"analyses_zarr": False}, "output_dir": str(tmp_path / name)}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / f"{name}.yaml"), "--json"]) == 0
    with (tmp_path / name / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    "section",
    [
        {"method": "3denvar", "background_error": ENSEMBLE_B},
        {"method": "4denvar", "da_win": 2, "window_interval": "1h", "background_error": HYBRID_B},
        {"method": "4dvar", "da_win": 2, "window_interval": "1h", "background_error": HYBRID_B},  # hybrid-4DVar
    ],
    ids=["3denvar", "hybrid-4denvar", "hybrid-4dvar"],
)
def test_envar_cycles_through_aivarda_run(section: dict[str, Any], tiny_nature_run: Path, tmp_path: Path) -> None:
    rows = run_tiny(tmp_path, tiny_nature_run, section["method"],
                    {"outer_loops": 1, "inner_iterations": 10, **section})
    assert [r["method"] for r in rows] == [section["method"]] * 2
    for r in rows:
        assert float(r["ana_nrmse"]) < float(r["bg_nrmse"])


def test_letkf_cycles_its_own_ensemble_through_aivarda_run(tiny_nature_run: Path, tmp_path: Path, monkeypatch) -> None:
    """The runner forecasts the LETKF's analysis members (K distinct members every cycle) and the
    analysis (their mean) beats the background (the forecast members' mean)."""
    from aivarda.assimilation import letkf_method

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    analyse = letkf_method.LETKFMethod.analyse

    def spy(self, problem):
        result = analyse(self, problem)
        seen.append((problem.members.clone(), result.members.clone()))
        assert torch.allclose(problem.background, problem.members.mean(0), atol=1e-5)
        return result

    monkeypatch.setattr(letkf_method.LETKFMethod, "analyse", spy)
    rows = run_tiny(tmp_path, tiny_nature_run, "letkf",
                    {"method": "letkf", "letkf": {"length_scale_km": 1200, "rtps": 0.5}})
    assert [r["method"] for r in rows] == ["letkf"] * 2
    for r in rows:
        assert float(r["ana_nrmse"]) < float(r["bg_nrmse"])
    assert len(seen) == 2
    for forecast, analysis in seen:
        K = analysis.shape[0]
        assert K == 8 and not torch.equal(forecast, analysis)
        flat = analysis.reshape(K, -1)
        assert float(torch.cdist(flat, flat).add(torch.eye(K) * 1e9).min()) > 0  # K distinct members
    # identity models: cycle 1's members are cycle 0's analysis members (stored as float32)
    assert torch.allclose(seen[1][0], seen[0][1].float(), atol=1e-6)


@pytest.mark.parametrize(
    "section",
    [
        {"method": "3denvar", "background_error": ENSEMBLE_B},
        {"method": "4dvar", "da_win": 2, "window_interval": "1h", "background_error": HYBRID_B},
    ],
    ids=["3denvar", "hybrid-4dvar"],
)
def test_envar_cycles_an_letkf_ensemble_through_aivarda_run(section: dict[str, Any], tiny_nature_run: Path,
                                                           tmp_path: Path, monkeypatch) -> None:
    """``ensemble_letkf``: the background is the mean of the cycled members, the B is updated from
    them, and the analysis members are the LETKF's anomalies recentred on the variational analysis;
    the next cycle's members are their forecasts (identity models: the members themselves)."""
    from aivarda.assimilation import letkf_ensemble
    from aivarda.assimilation.analysis import analyse_window as real_analyse_window
    from aivarda.cycling import runner as runner_module

    raw: list[torch.Tensor] = []
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    letkf_members = letkf_ensemble.letkf_members

    def spy_letkf(problem, config, where):
        out = letkf_members(problem, config, where)
        raw.append(out.clone())
        return out

    def spy_window(method, x_b, *args, members=None, **kwargs):
        wa = real_analyse_window(method, x_b, *args, members=members, **kwargs)
        seen.append((x_b.clone(), members.clone(), wa.result.x_a.detach().clone(), wa.result.members.clone()))
        return wa

    monkeypatch.setattr(letkf_ensemble, "letkf_members", spy_letkf)
    monkeypatch.setattr(runner_module, "analyse_window", spy_window)
    letkf = {"length_scale_km": 1200, "rtps": 0.5}
    rows = run_tiny(tmp_path, tiny_nature_run, section["method"],
                    {"outer_loops": 1, "inner_iterations": 10, **section, "ensemble_letkf": letkf})
    assert [r["method"] for r in rows] == [section["method"]] * 2
    for r in rows:
        assert float(r["ana_nrmse"]) < float(r["bg_nrmse"])
    assert len(seen) == len(raw) == 2
    for (x_b, forecast, x_a, analysis), letkf_out in zip(seen, raw, strict=True):
        assert torch.allclose(x_b, forecast.mean(0), atol=1e-5)  # the background: the members' mean
        assert torch.allclose(analysis.mean(0), x_a, atol=1e-5)  # recentred on the variational analysis
        scale = x_a.abs().amax(dim=(1, 2))  # [C]: float32 round-off of a channel ~ its magnitude
        error = (analysis - x_a - (letkf_out - letkf_out.mean(0))).abs().amax(dim=(0, 2, 3))
        assert bool((error <= 1e-6 * scale).all())  # the LETKF's anomalies, channel by channel
        assert float((analysis - x_a).abs().max()) > 0 and not torch.equal(forecast, analysis)
    assert torch.allclose(seen[1][1], seen[0][3].float(), atol=1e-6)  # identity model: members carried


def test_letkf_ensemble_with_a_static_b_is_one_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        build_method({"method": "4dvar", "background_error": {"type": "diagonal"}, "ensemble_letkf": {}})
    text = str(err.value)
    assert "\n" not in text and "ensemble_letkf" in text and "'diagonal'" in text
    plain = build_method({"method": "3denvar", "background_error": ENSEMBLE_B})
    own = build_method({"method": "3denvar", "background_error": ENSEMBLE_B, "ensemble_letkf": {}})
    assert plain.needs.ensemble_source == "lagged" and own.needs.ensemble_source == "own"


ENVAR_CONFIGS = {"exp_3DEnVar": ("3denvar", "ensemble"), "exp_4DEnVar": ("4denvar", "ensemble"),
                 "exp_Hybrid-3DEnVar": ("3denvar", "hybrid"), "exp_Hybrid-4DEnVar": ("4denvar", "hybrid"),
                 "exp_LETKF": ("letkf", "identity")}


@pytest.mark.parametrize("name", sorted(ENVAR_CONFIGS))
def test_shipped_envar_and_letkf_configs_validate(name: str) -> None:
    from aivarda.config import load_config
    from aivarda.cycling.config import CyclingConfig

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml", CyclingConfig)
    method, b = ENVAR_CONFIGS[name]
    assert cfg.name == name and len(cfg.cycle_times()) == 124 and cfg.observations.fraction == 0.05
    assert cfg.assimilation.method == method and cfg.assimilation.background_error.type == b
    assert cfg.dynamic_member == 8 and cfg.gap == 8
    built = build_method(cfg.assimilation)
    assert built.needs.ensemble and (built.needs.window_model == (method == "4denvar"))
    if b == "hybrid":  # the weights and localisation chosen on the tuning world (configs/tuning/README.md)
        import json

        chosen = json.loads((Path(__file__).resolve().parents[1] / "docs/results/tuning_hybrid.json").read_text())["chosen"]
        be = cfg.assimilation.background_error
        assert [be.static_weight, be.ensemble.localisation.length_scale_km] == chosen
        assert be.static_weight + be.ensemble_weight == pytest.approx(1.0)
    if method == "4denvar":
        assert cfg.window_model is not None and cfg.window_model.linear_prior_only


@pytest.mark.slow
def test_lorenz96_envar_rows_run(lorenz96_benchmark) -> None:
    """Short 3DEnVar and 4DEnVar runs of the benchmark (EnVar on the LETKF's ensemble): the analysis
    error stays well below the observation error (1)."""
    bench = lorenz96_benchmark
    config = {"outer_loops": 1, "inner_iterations": 30, "tolerance": 1e-4}
    for exp in bench.EXPERIMENTS:
        if exp.method in ("3denvar", "4denvar"):
            row = bench.run_experiment(exp, 100, 3000, config, progress=False)
            assert row["fallbacks"] == 0 and row["rmse_a"] < 0.5, row
