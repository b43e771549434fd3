"""Training (single process, resume, torchrun/DDP) and evaluation of forecast models on a tiny
synthetic WeatherBench2-layout store with learnable dynamics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aivarda.channels import SURFACE_VARIABLES, UPPER_AIR_VARIABLES, ChannelLayout
from aivarda.cli import main as cli_main
from aivarda.config import validate
from aivarda.data.sources import Wb2ZarrSource
from aivarda.grid import Grid
from aivarda.learning.eval_model import evaluate, initial_times
from aivarda.learning.train_model import lr_lambda, train, trajectory_starts, weighted_mse
from aivarda.models.checkpoint import load_forecast_model, read_checkpoint
from aivarda.models.config import EvalConfig, TrainConfig

GRID = Grid.gaussian(16, 32)
LAYOUT = ChannelLayout(("t2m",), ("z", "t"), (500, 850))
VARIABLES = list(LAYOUT.names)
BASE = {"t2m": 280.0, "z500": 5.5e4, "z850": 1.4e4, "t500": 250.0, "t850": 270.0}
AMP = {"t2m": 5.0, "z500": 800.0, "z850": 300.0, "t500": 4.0, "t850": 6.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_field(name: str, hours: float) -> np.ndarray:
    """Waves travelling east by 7.5° per 6 h plus a standing pattern: ``[H, W]`` float32."""
    lat, lon = np.deg2rad(GRID.lat)[:, None], np.deg2rad(GRID.lon)[None, :]
    k = VARIABLES.index(name)
    phase = lon - np.deg2rad(7.5) * hours / 6.0
    wave = np.cos(lat) ** 2 * (np.cos(3 * phase + k) + 0.5 * np.sin(2 * phase - k) * np.sin(lat))
    slow = 0.3 * np.cos(2 * lat) * np.cos(2 * np.pi * hours / 240.0)
    return (BASE[name] + AMP[name] * (wave + slow)).astype(np.float32)


def write_synthetic_store(path: Path) -> Path:
    """44 six-hourly ``train`` times, then 48 hourly ``eval`` times, of :func:`synthetic_field`."""
    import pandas as pd
    import xarray as xr

    train = pd.date_range("2001-01-01T00", "2001-01-11T18", freq="6h")
    hourly = pd.date_range("2001-01-12T00", "2001-01-13T23", freq="1h")
    times = np.concatenate([train.values, hourly.values]).astype("datetime64[ns]")
    hours = (times - times[0]) / np.timedelta64(1, "h")
    levels = np.array(LAYOUT.levels, dtype=np.int64)
    data = {
        SURFACE_VARIABLES["t2m"].wb2_name: (("time", "latitude", "longitude"),
                                             np.stack([synthetic_field("t2m", h) for h in hours])),
    }
    for v in LAYOUT.upper_air:
        field = np.stack([np.stack([synthetic_field(f"{v}{p}", h) for p in levels]) for h in hours])
        data[UPPER_AIR_VARIABLES[v].wb2_name] = (("time", "level", "latitude", "longitude"), field)
    spans = {
        "train": {"start": "2001-01-01T00:00", "end": "2001-01-11T18:00", "interval_hours": 6},
        "eval": {"start": "2001-01-12T00:00", "end": "2001-01-13T23:00", "interval_hours": 1},
    }
    ds = xr.Dataset(
        data,
        coords={"time": times, "level": levels, "latitude": GRID.lat, "longitude": GRID.lon},
        attrs={"aivarda_grid": json.dumps(GRID.to_dict()), "aivarda_spans": json.dumps(spans), "source": "test"},
    )
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    return path


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("synthetic") / "synthetic.zarr")


def train_config(store: Path, out: Path, **overrides) -> dict:
    cfg = {
        "name": "tiny",
        "seed": 0,
        "data": {"source": "zarr", "path": str(store), "variables": VARIABLES, "val_fraction": 0.2,
                 "stats_samples": 64},
        "model": {"architecture": {"name": "fengwu", "patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2,
                                   "window": [2, 4], "mlp_ratio": 2.0},
                  "dt": "6h"},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "weight_decay": 0.01},
        "batch_size": 4,
        "epochs": 3,
        "checkpoint_every": 4,
        "output_dir": str(out),
        "device": "cpu",
    }
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_trajectory_starts_and_schedule():
    t = np.arange(np.datetime64("2000-01-01T00"), np.datetime64("2000-01-02T00"), np.timedelta64(6, "h"))
    t = t.astype("datetime64[ns]")
    assert trajectory_starts(t, 6, 1).tolist() == t[:3].tolist()
    assert trajectory_starts(t, 6, 2).tolist() == t[:2].tolist()
    assert trajectory_starts(t, 12, 1).tolist() == t[:2].tolist()
    f = lr_lambda(warmup=4, total=14, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and abs(f(9) - 0.55) < 1e-12 and abs(f(14) - 0.1) < 1e-12


def test_weighted_mse_by_hand():
    pred, target = torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2, 3)
    pred[0, 1] = 3.0  # errors: channel 0 → 1, channel 1 → 2
    scale = torch.tensor([1.0, 2.0])[:, None, None]  # normalised errors 1 and 1
    w = torch.tensor([0.5, 1.5])
    assert float(weighted_mse(pred, target, scale, w)) == pytest.approx(1.0)
    pred[0, 0, 0] = 1.0  # row 0 (weight 0.5) of channel 0 now exact
    assert float(weighted_mse(pred, target, scale, w)) == pytest.approx((0.5 * 0 * 3 + 1.5 * 3 + 2 * 3) / 12)


def test_training_decreases_loss_and_resumes_exactly(synthetic_store, tmp_path):
    cfg = validate(TrainConfig, train_config(synthetic_store, tmp_path / "a"), "cfg")
    summary = train(cfg, progress=False)
    # 44 train times, the last 20 % held out: 35 → 34 training pairs (8 steps of 4 per epoch), 9 → 8 val pairs
    assert summary["steps"] == 24 and summary["train_trajectories"] == 34 and summary["val_trajectories"] == 8
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["train_loss"] < 0.7 * log[0]["train_loss"]
    assert log[-1]["val_loss"] < log[0]["val_loss"]
    best, last = read_checkpoint(tmp_path / "a" / "best.pt"), read_checkpoint(tmp_path / "a" / "last.pt")
    assert best["metadata"]["val_loss"] == min(r["val_loss"] for r in log)
    assert last["training_state"]["step"] == 24 and last["norm_stats"]["diff_hours"] == 6.0

    # interrupted mid-epoch after 11 steps, then resumed: bit-identical weights
    cfg_b = validate(TrainConfig, train_config(synthetic_store, tmp_path / "b"), "cfg")
    assert train(cfg_b, stop_after=11, progress=False)["steps"] == 11
    assert read_checkpoint(tmp_path / "b" / "last.pt")["training_state"]["step"] == 11
    assert train(cfg_b, resume=True, progress=False)["steps"] == 24
    resumed = read_checkpoint(tmp_path / "b" / "last.pt")
    for key, value in last["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key

    # the trained model beats persistence on held-out pairs
    model = load_forecast_model(tmp_path / "a" / "best.pt")
    src = Wb2ZarrSource(synthetic_store, LAYOUT, span="train")
    x = src.states(src.times[-5:])
    with torch.no_grad():
        err_model = (model.step(x[:-1]) - x[1:]).square().mean()
    assert err_model < 0.5 * (x[:-1] - x[1:]).square().mean()


def test_cli_train_and_eval(synthetic_store, tmp_path, capsys):
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(train_config(synthetic_store, tmp_path / "run", epochs=1)))
    assert cli_main(["train-model", str(cfg_path), "--max-steps", "3", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["world_size"] == 1

    eval_path = tmp_path / "eval.yaml"
    eval_path.write_text(yaml.safe_dump({
        "checkpoint": str(tmp_path / "run" / "best.pt"),
        "data": {"source": "zarr", "path": str(synthetic_store)},
        "channels": ["z500", "t850"], "leads": ["6h", "12h"], "init_every": "6h", "device": "cpu",
    }))
    assert cli_main(["eval-model", str(eval_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # eval span: 48 hourly times; initial times every 6 h with +12 h inside: 00, 06, …, 30 h → 6
    assert report["n_inits"] == 6 and len(report["results"]) == 2 * 3 * 2
    rows = {(r["lead_hours"], r["channel"], r["forecast"]): r for r in report["results"]}
    assert rows[(6.0, "z500", "climatology")]["acc"] is None
    assert rows[(12.0, "t850", "persistence")]["acc"] < 1.0
    # persistence RMSE by hand: sqrt(mean over inits of the area-weighted mean squared 6 h change)
    src = Wb2ZarrSource(synthetic_store, LAYOUT, span="eval")
    t0 = initial_times(src.times, [6.0, 12.0], 6.0, None)
    i = LAYOUT.index("z500")
    d = (src.states(t0 + np.timedelta64(6, "h"))[:, i] - src.states(t0)[:, i]).double()
    w = torch.as_tensor(GRID.weights)[:, None]
    expected = float((w * d**2).mean(dim=(-2, -1)).mean().sqrt())
    assert rows[(6.0, "z500", "persistence")]["rmse"] == pytest.approx(expected, rel=1e-5)
    # span: null with data.start/end: initial and verifying times across the spans (free runs
    # longer than one span); the climatology is still the train span's mean (same numbers)
    free_path = tmp_path / "free.yaml"
    free_path.write_text(yaml.safe_dump({
        "checkpoint": str(tmp_path / "run" / "best.pt"), "span": None,
        "data": {"source": "zarr", "path": str(synthetic_store), "start": "2001-01-10T00:00", "end": "2001-01-13T23:00"},
        "channels": ["z500"], "leads": ["6h", "2d"], "init_every": "24h", "device": "cpu",
    }))
    assert cli_main(["eval-model", str(free_path), "--json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert free["n_inits"] == 2 and free["first_init"].startswith("2001-01-10T00") and free["span"] is None
    clim_rows = [r for r in free["results"] if r["forecast"] == "climatology" and r["lead_hours"] == 6.0]
    t_verify = np.array(["2001-01-10T06", "2001-01-11T06"], dtype="datetime64[ns]")
    truth = Wb2ZarrSource(synthetic_store, LAYOUT).states(t_verify)[:, i].double()
    clim = Wb2ZarrSource(synthetic_store, LAYOUT, span="train").states(
        Wb2ZarrSource(synthetic_store, LAYOUT, span="train").times)[:, i].double().mean(0)
    expected_clim = float((w * (truth - clim) ** 2).mean(dim=(-2, -1)).mean().sqrt())
    assert clim_rows[0]["rmse"] == pytest.approx(expected_clim, rel=1e-4)
    # errors are one line with exit status 2
    assert cli_main(["eval-model", str(eval_path), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_eval_model_without_a_config_scores_the_shipped_model():
    from aivarda.learning.eval_model import default_eval_config
    from aivarda.paths import ASSETS

    cfg = default_eval_config()
    assert cfg.checkpoint == ASSETS / "fengwu_6h_rollout.pt" and cfg.checkpoint.is_file()
    assert cfg.leads == [6.0, 24.0, 72.0, 120.0] and cfg.channels == ["z500", "t850", "u500", "q500"]


def test_eval_rejects_leads_off_the_model_step(synthetic_store, tmp_path):
    cfg = validate(TrainConfig, train_config(synthetic_store, tmp_path / "run", epochs=1, max_steps=1), "cfg")
    train(cfg, progress=False)
    ev = validate(EvalConfig, {"checkpoint": str(tmp_path / "run" / "last.pt"), "leads": ["9h"], "channels": ["z500"],
                               "data": {"source": "zarr", "path": str(synthetic_store)}}, "eval")
    from aivarda.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of the model step"):
        evaluate(ev, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_match_single_process(synthetic_store, tmp_path):
    """The same global batch split over 2 gloo processes gives the single-process weights."""
    overrides = {"epochs": 1, "max_steps": 5}
    single = validate(TrainConfig, train_config(synthetic_store, tmp_path / "single", **overrides), "cfg")
    train(single, progress=False)
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(train_config(synthetic_store, tmp_path / "ddp", **overrides)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "aivarda.cli", "train-model", str(cfg_path), "--quiet", "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["steps"] == 5
    a = read_checkpoint(tmp_path / "single" / "last.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "ddp" / "last.pt")["state_dict"]
    assert read_checkpoint(tmp_path / "ddp" / "last.pt")["metadata"]["world_size"] == 2
    diff = max(float((b[key] - a[key]).abs().max()) for key in a)
    assert diff < 2e-5, diff
    init = validate(TrainConfig, train_config(synthetic_store, tmp_path / "zero", epochs=1, max_steps=1), "cfg")
    train(init, progress=False)
    z = read_checkpoint(tmp_path / "zero" / "last.pt")["state_dict"]
    moved = max(float((a[k] - z[k]).abs().max()) for k in a)
    assert moved > 1e-3  # training changed the weights well beyond the tolerance
    print(f"DDP vs single process: max |Δw| = {diff:.2e}; weights moved {moved:.2e} in steps 2–5")


def test_rollout_finetuning_starts_from_given_weights(synthetic_store, tmp_path):
    base = validate(TrainConfig, train_config(synthetic_store, tmp_path / "base", epochs=1, max_steps=3), "cfg")
    train(base, progress=False)
    start = read_checkpoint(tmp_path / "base" / "best.pt")
    tune = train_config(synthetic_store, tmp_path / "tune", epochs=1, max_steps=2, rollout_steps=3,
                        grad_checkpointing=True, init_from=str(tmp_path / "base" / "best.pt"))
    tune["optim"] = {"lr": 1e-9, "warmup_steps": 0}
    summary = train(validate(TrainConfig, tune, "cfg"), progress=False)
    # 3-step trajectories: 35 training times → 32 starts; 9 held-out times → 6
    assert summary["train_trajectories"] == 32 and summary["val_trajectories"] == 6
    assert np.isfinite(summary["val_loss"])
    tuned = read_checkpoint(tmp_path / "tune" / "last.pt")
    assert tuned["metadata"]["config"]["rollout_steps"] == 3
    for key, value in start["state_dict"].items():  # a vanishing learning rate keeps the given weights
        torch.testing.assert_close(tuned["state_dict"][key], value, rtol=0, atol=1e-6)


def test_init_from_a_different_architecture_is_a_config_error(synthetic_store, tmp_path):
    from aivarda.errors import ConfigError
    from aivarda.models.checkpoint import (
        build_forecast_model,
        checkpoint_dict,
        save_checkpoint,
    )
    from aivarda.models.normalised import identity_stats

    other = {"name": "fengwu", "patch_size": 2, "embed_dim": 8, "depth": 1, "num_heads": 2, "window": [2, 4]}
    model = build_forecast_model(other, identity_stats(LAYOUT.names, 6.0), GRID, LAYOUT, 6.0)
    save_checkpoint(tmp_path / "other.pt", checkpoint_dict(model))
    cfg = train_config(synthetic_store, tmp_path / "run", init_from=str(tmp_path / "other.pt"))
    with pytest.raises(ConfigError, match="does not fit model.architecture"):
        train(validate(TrainConfig, cfg, "cfg"), progress=False)


def test_linear_prior_is_fitted_before_training_and_travels_with_the_checkpoint(synthetic_store, tmp_path):
    """The synthetic waves are a linear, rotation-equivariant dynamics: the fitted spectral LIM alone
    (the network starts at zero) nearly solves them; resume and checkpoints keep the prior."""
    model_spec = {**train_config(synthetic_store, tmp_path)["model"],
                  "linear_prior": {"lmax": 16, "modes": 24, "ridge": 1e-6}}
    cfg_a = validate(TrainConfig, train_config(synthetic_store, tmp_path / "a", model=model_spec, epochs=1), "cfg")
    summary = train(cfg_a, progress=False)
    assert summary["linear_prior_fit"]["pairs"] == 34
    assert summary["linear_prior_fit"]["explained_tendency_variance"] > 0.95
    payload = read_checkpoint(tmp_path / "a" / "last.pt")
    assert payload["linear_prior"]["config"]["modes"] == 24
    assert payload["metadata"]["linear_prior_fit"] == summary["linear_prior_fit"]

    model = load_forecast_model(tmp_path / "a" / "last.pt")
    assert model.prior is not None and bool(model.prior.fitted)
    src = Wb2ZarrSource(synthetic_store, LAYOUT, span="train")
    x = src.states(src.times[-5:])
    with torch.no_grad():
        err_model = (model.step(x[:-1]) - x[1:]).square().mean()
    assert err_model < 0.05 * (x[:-1] - x[1:]).square().mean()

    # interrupted, then resumed: the prior comes from last.pt, not refitted, and the weights match
    cfg_b = validate(TrainConfig, train_config(synthetic_store, tmp_path / "b", model=model_spec, epochs=1), "cfg")
    train(cfg_b, stop_after=3, progress=False)
    resumed = train(cfg_b, resume=True, progress=False)
    assert resumed["linear_prior_fit"] == summary["linear_prior_fit"]
    b = read_checkpoint(tmp_path / "b" / "last.pt")
    for key, value in payload["state_dict"].items():
        assert torch.equal(b["state_dict"][key], value), key
    for key, value in payload["linear_prior"]["state_dict"].items():
        assert torch.equal(b["linear_prior"]["state_dict"][key], value), key
