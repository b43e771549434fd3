"""Ensemble-member forecasts over the processes of a torch.distributed group (Gloo, CPU): the
gathered forecast against the single-process batched forecast, what stays on process 0, the stop
that a failing process 0 sends, and ``aivarda run`` under ``torchrun`` against the single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from aivarda.models.checkpoint import build_forecast_model, checkpoint_dict, load_forecast_model, save_checkpoint
from aivarda.models.distributed import shard_sizes
from aivarda.models.normalised import identity_stats

pytestmark = pytest.mark.usefixtures("one_thread")

FENGWU = {"name": "fengwu", "patch_size": 2, "embed_dim": 16, "depth": 2, "num_heads": 2, "window": [2, 4],
          "mlp_ratio": 2.0, "zero_init_output": False}
STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_fengwu(path: Path) -> Path:
    """An untrained FengWu-style checkpoint on the synthetic store's grid and channels
    (``tests/test_training.py``), residual, identity normalisation (physical units)."""
    from test_training import GRID, LAYOUT

    torch.manual_seed(0)
    model = build_forecast_model(FENGWU, identity_stats(LAYOUT.names), GRID, LAYOUT, 6.0)
    return save_checkpoint(path, checkpoint_dict(model))


def states(*lead: int, seed: int = 1) -> torch.Tensor:
    from test_training import GRID, LAYOUT

    g = torch.Generator().manual_seed(seed)
    return 250.0 + 10.0 * torch.randn(*lead, LAYOUT.n_channels, *GRID.shape, generator=g)


def _join(ctx: mp.ProcessContext, timeout: float) -> None:
    """Wait for the spawned processes (an exception in one is raised here); a hang fails the test."""
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"processes still running after {timeout} s (a hang)")


def _environment(rank: int, world: int, port: int) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- the wrapper
def _forecast_worker(rank: int, world: int, port: int, ckpt: str, out: str) -> None:
    from aivarda.models.distributed import MemberParallelModel, serve, stop_serving
    from aivarda.parallel import end_distributed, setup_distributed

    _environment(rank, world, port)
    info = setup_distributed("cpu")
    model = load_forecast_model(ckpt)
    if rank > 0:
        served = serve(model, info)
        Path(out, f"served_{rank}.json").write_text(json.dumps(served))
        end_distributed()
        return
    shared = MemberParallelModel(model, info)
    try:
        results: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for k in (5, 3, 1):  # shards [3, 2], [2, 1], [1, 0]
                results[f"K{k}"] = shared.forecast(states(k), STEPS)
            results["leading"] = shared.forecast(states(2, 3), STEPS)  # [2, 3, *S]: 6 members
            results["single"] = shared.forecast(states(), STEPS)
        x = states(2).requires_grad_(True)  # with gradients: stays on process 0, differentiable
        y = shared.forecast(x, 1)
        y.square().sum().backward()
        assert x.grad is not None and bool(x.grad.abs().sum() > 0)
        results["grad"] = y.detach()
        # process 0's own shard fails mid-exchange: the exchange still completes, the next one is in step
        def failing(x: torch.Tensor, n: int) -> torch.Tensor:
            raise RuntimeError("own shard failed")

        own, model.forecast = model.forecast, failing
        with pytest.raises(RuntimeError, match="own shard failed"):
            shared.forecast(states(4), STEPS)
        model.forecast = own
        with torch.no_grad():
            results["after_failure"] = shared.forecast(states(5), STEPS)
        torch.save(results, Path(out, "results.pt"))
    finally:
        stop_serving(info)
        end_distributed()


def test_shards_cover_the_members_in_order() -> None:
    assert shard_sizes(5, 2) == [3, 2] and shard_sizes(1, 2) == [1, 0] and shard_sizes(7, 3) == [3, 2, 2]
    for k in range(12):
        for n in range(1, 5):
            sizes = shard_sizes(k, n)
            assert sum(sizes) == k and max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_gathered_member_forecast_equals_the_single_process_batched_forecast(tmp_path: Path) -> None:
    ckpt = tiny_fengwu(tmp_path / "fengwu.pt")
    ctx = mp.start_processes(_forecast_worker, args=(2, _free_port(), str(ckpt), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    _join(ctx, 120)
    results = torch.load(tmp_path / "results.pt")
    model = load_forecast_model(ckpt)
    with torch.no_grad():
        # K = 5 over 2 processes: bit for bit the one-process batch of 5
        assert torch.equal(results["K5"], model.forecast(states(5), STEPS))
        # each member is what the model gives on its shard ([2] here, [1] there) ...
        x3 = states(3)
        assert torch.equal(results["K3"], torch.cat([model.forecast(x3[:2], STEPS), model.forecast(x3[2:], STEPS)]))
        # ... which for a one-member shard may round differently from the batch (CPU conv kernels)
        torch.testing.assert_close(results["K3"], model.forecast(x3, STEPS), rtol=0, atol=1e-4)
        assert torch.equal(results["leading"], model.forecast(states(6), STEPS).reshape(2, 3, *results["K1"].shape[1:]))
        for key, x in (("K1", states(1)), ("single", states())):
            assert torch.equal(results[key], model.forecast(x, STEPS))
        assert torch.equal(results["grad"], model.forecast(states(2), 1))
        assert torch.equal(results["after_failure"], results["K5"])
    assert not torch.equal(results["K5"], states(5))  # the model does something
    # process 1 forecast only the shared batches (K = 5, 3, 6, the failed 4, 5 again); the others stayed on process 0
    assert json.loads((tmp_path / "served_1.json").read_text()) == 5


# -------------------------------------------------------------- launch: a failing process 0 stops the rest
def _cli_worker(rank: int, world: int, port: int, config: str, ckpt: str, out: str) -> None:
    import aivarda.cycling.runner as runner
    from aivarda.cli import main
    from aivarda.errors import DataError

    _environment(rank, world, port)

    def failing_run(cfg, out_dir, *, resume, progress, wrap_model):  # one shared forecast, then an error
        model = wrap_model(load_forecast_model(ckpt))
        with torch.no_grad():
            model.forecast(states(4), 1)
        raise DataError("injected failure of process 0")

    runner.run_experiment = failing_run
    code = main(["run", config])
    Path(out, f"exit_{rank}.json").write_text(json.dumps(code))


def test_a_failing_process_0_stops_the_serving_processes(tmp_path: Path) -> None:
    """``aivarda run`` on two processes whose process 0 fails after a shared forecast: it sends stop
    (the ``finally`` of the launch), process 1 leaves its serve loop, both exit."""
    ckpt = tiny_fengwu(tmp_path / "fengwu.pt")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "name": "fail", "data": {"source": "zarr", "path": str(tmp_path / "absent.zarr")}, "device": "cpu",
        "start_time": "2001-01-12T00:00", "end_time": "2001-01-12T06:00", "model": {"checkpoint": str(ckpt)},
        "output_dir": str(tmp_path / "run")}))
    ctx = mp.start_processes(_cli_worker, args=(2, _free_port(), str(config), str(ckpt), str(tmp_path)), nprocs=2,
                             join=False, start_method="spawn")
    _join(ctx, 120)
    assert json.loads((tmp_path / "exit_0.json").read_text()) == 2  # the error, as `aivarda run` reports it
    assert json.loads((tmp_path / "exit_1.json").read_text()) == 0  # served, then stopped: no hang
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------- aivarda run under torchrun
def letkf_config(path: Path, store: Path, ckpt: Path, out: Path) -> Path:
    """Two 6-hour LETKF cycles, K = 5 members forecast by the tiny FengWu (shards [3, 2])."""
    from test_training import VARIABLES

    path.write_text(yaml.safe_dump({
        "name": "letkf-dist", "seed": 2, "data": {"source": "zarr", "path": str(store), "variables": VARIABLES},
        "start_time": "2001-01-12T00:00", "end_time": "2001-01-12T06:00", "dynamic_member": 5, "gap": 1,
        "device": "cpu", "model": {"checkpoint": str(ckpt)},
        "assimilation": {"method": "letkf", "letkf": {"length_scale_km": 2000, "rtps": 0.5}},
        "observations": {"mode": "random", "fraction": 0.3, "withhold": 0.1},
        "forecast": {"every": 0}, "outputs": {"analyses_zarr": False}, "output_dir": str(out)}))
    return path


def test_letkf_run_under_torchrun_equals_the_single_process_run(tmp_path: Path) -> None:
    from test_cycling import read_rows, without_wall
    from test_training import write_synthetic_store

    from aivarda.cli import main

    store = write_synthetic_store(tmp_path / "synthetic.zarr")
    ckpt = tiny_fengwu(tmp_path / "fengwu.pt")
    single = letkf_config(tmp_path / "single.yaml", store, ckpt, tmp_path / "single")
    assert main(["run", str(single), "--json"]) == 0
    shared = letkf_config(tmp_path / "shared.yaml", store, ckpt, tmp_path / "shared")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "aivarda.cli", "run", str(shared)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("outputs: ") == 1  # only process 0 prints its table
    rows, expected = read_rows(tmp_path / "shared"), read_rows(tmp_path / "single")
    assert len(rows) == 2 and [r["method"] for r in rows] == ["letkf"] * 2
    assert without_wall(rows) == without_wall(expected)
