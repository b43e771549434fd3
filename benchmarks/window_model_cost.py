"""Cost of a 4DVar window through a forecast model: ``n`` steps forward plus the adjoint (autograd
back to the initial state), for the full model and for its linear prior alone.

    python benchmarks/window_model_cost.py [--checkpoint FILE] [--steps 5] [--repeats 3] [--threads 1] [--json]

Default checkpoint: the shipped 1-hour model (``aivarda/assets/fengwu_1h.pt``), whose 5 steps make
the 6-hour window of ``configs/exp_4DVar.yaml``. One untimed warm-up, then the median of
``--repeats`` timings; prints a table (or JSON) with the ratio full / linear prior.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aivarda.models.checkpoint import load_forecast_model
from aivarda.paths import ASSETS


def window_seconds(model, steps: int, repeats: int) -> float:
    """Median seconds of ``forecast(x, steps)`` plus its backward pass to ``x``."""
    grid = model.grid
    g = torch.Generator().manual_seed(0)
    x0 = model.mean + model.std * 0.3 * torch.randn(1, model.layout.n_channels, *grid.shape, generator=g)
    times = []
    for _ in range(repeats + 1):
        x = x0.clone().requires_grad_(True)
        tic = time.perf_counter()
        model.forecast(x, steps).square().sum().backward()
        times.append(time.perf_counter() - tic)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ASSETS / "fengwu_1h.pt"))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    full = window_seconds(load_forecast_model(args.checkpoint), args.steps, args.repeats)
    linear = window_seconds(
        load_forecast_model({"checkpoint": args.checkpoint, "linear_prior_only": True}), args.steps, args.repeats
    )
    result = {"checkpoint": args.checkpoint, "steps": args.steps, "threads": args.threads,
              "seconds_full": full, "seconds_linear_prior": linear, "ratio_full_to_linear": full / linear}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.checkpoint}: {args.steps} steps forward + adjoint, {args.threads} thread(s)")
    print(f"  full model          {full:8.3f} s")
    print(f"  linear prior alone  {linear:8.3f} s")
    print(f"  ratio               {full / linear:8.1f} ×")


if __name__ == "__main__":
    main()
