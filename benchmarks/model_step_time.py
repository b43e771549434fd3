"""Seconds per training step (forward + backward + AdamW) of a forecast-model config on random data.

    python benchmarks/model_step_time.py configs/models/fengwu_6h.yaml [--batch 4] [--steps 5] [--threads 2]

Builds the config's architecture for the T42 grid (64×128) and FengWu's 69 channels (or the
config's ``data.variables``), runs ``--steps`` timed steps after one warm-up step and prints JSON:
parameters, weight megabytes, median seconds per step and per sample, forward-only seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aivarda.channels import ChannelLayout
from aivarda.config import load_config
from aivarda.data.sources import layout_from_channels
from aivarda.normstats import NormStats
from aivarda.grid import Grid
from aivarda.models.checkpoint import build_forecast_model
from aivarda.models.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--batch", type=int, default=None, help="default: the config's batch_size")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, TrainConfig)
    layout = layout_from_channels(cfg.data.variables) if cfg.data.variables else ChannelLayout.fengwu69()
    grid = Grid.t42()
    c = layout.n_channels
    ones, zeros = torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    stats = NormStats(layout.names, zeros, ones, zeros, ones, cfg.model.dt, 0)
    torch.manual_seed(0)
    model = build_forecast_model(cfg.model.architecture, stats, grid, layout, cfg.model.dt).to(args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, k = args.batch or cfg.batch_size, cfg.rollout_steps
    x = torch.randn(b, c, *grid.shape, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times, fwd = [], []
    for i in range(args.steps + 1):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            model.rollout(x, k)
        sync()
        t1 = time.perf_counter()
        loss = model.rollout(x, k).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            times.append(t2 - t1)
    n = sum(p.numel() for p in model.parameters())
    step = statistics.median(times)
    print(json.dumps({
        "config": args.config, "device": args.device, "threads": torch.get_num_threads(), "batch": b,
        "rollout_steps": k, "parameters": n, "weights_mb": round(n * 4 / 2**20, 2),
        "seconds_per_step": round(step, 3), "seconds_per_sample": round(step / b, 3),
        "forward_seconds": round(statistics.median(fwd), 3),
    }))


if __name__ == "__main__":
    main()
