"""Seconds and peak memory of one variational analysis at the seeds' sizes, with random-weight networks.

    python benchmarks/paper_scale.py [--device cuda] [--bf16] [--repeats 3] [--iterations 10]
    OMP_NUM_THREADS=1 python benchmarks/paper_scale.py --smoke      # small sizes on the CPU, < 1 min

Rows (69 FengWu channels; only the shapes matter, so every network has random weights and every
statistic is fitted to synthetic fields):

- ``3dvar-genbe``: GEN_BE ``U`` fitted from synthetic samples on the control grid (128×256), state
  69×128×256 and 69×721×1440; one ``J(z)`` + ``∇J`` and ``--iterations`` L-BFGS iterations
  (:class:`~aivarda.assimilation.minimizer.Minimizer`, one outer loop).
- ``4dvar-6h``: strong-constraint 4DVar over 6 one-hour steps of a random-weight FengWu-style
  network (``aivarda.models`` architecture ``fengwu``, ``--arch``), state 69×128×256: one ``J(z)``
  + ``∇J`` through :class:`~aivarda.assimilation.cost.VariationalCost` with
  :class:`~aivarda.assimilation.window.ModelPropagation` (forward and adjoint through the window).
- ``vae-decoder``: ``U(z) = D(z)`` of a random-weight VAE (control 32×128×256), state
  69×128×256 and 69×721×1440 (increments regridded): one ``J(z)`` + ``∇J``.
- ``lora-envar``: one LoRA-EnVar cycle (``docs/lora-envar.md``) with the same VAE (a fresh
  random-weight copy), state 69×128×256 and 69×721×1440, in the runtime configuration of the seeds
  (``finetune: {mode: lora}`` as released: rank 2 on the query rows of the decoder's attention
  ``qkv``, Adam lr 1e-2, ``K = 8`` members, 5 epochs of batch 4 = 10 steps):
  (a) ``fine-tune``: :meth:`~aivarda.background.vae.transform.FinetunedVaeTransform.update` on 8
  random members ``x_k ~ N(0, 1)`` ``[8, 69, H, W]`` at the state size (as the runner passes them:
  regridded to the control grid, normalised, 10 optimiser steps), with the trainable parameter
  count (:meth:`~aivarda.background.vae.finetune.VaeFinetuner.n_trainable`, as
  ``benchmarks/lora_envar_cost.py``); the row also carries how many adapter and base tensors the
  fine-tunings changed (the base weights must not move);
  (b) the DA through the fine-tuned ``U``: one minimisation of ``--iterations`` L-BFGS iterations
  run right after the fine-tuning, as in a cycle (its first evaluation computes ``D(0)`` of the new
  decoder), and then one ``J(z)`` + ``∇J``;
  (c) ``cycle``: fine-tune + minimise seconds.
  Under ``--bf16`` the cost is autocast as in the other rows and the fine-tuning too (the same
  ``torch.autocast(bfloat16)``, which runs on the CPU as well; the weights, Adam and the samples
  stay float32).

Observations: ``--obs-fraction`` of the state values at random, at every window time, with
``y ~ N(0, 1)`` and σ_o = 1 (``H`` picks them out of the window trajectory). Time: median of ``--repeats`` after one
warm-up. Peak memory: ``torch.cuda.max_memory_allocated`` per row on a GPU; on the CPU the process'
peak resident set so far (``resource`` ``ru_maxrss``, monotone over the rows). On a GPU, TF32 is on
for matmuls and convolutions, and ``--bf16`` runs the cost under ``torch.autocast(bfloat16)``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from torch import Tensor

from aivarda.assimilation.cost import VariationalCost
from aivarda.assimilation.minimizer import Minimizer
from aivarda.assimilation.window import ModelPropagation
from aivarda.background.genbe import GenBeTransform, SphereOps, fit_genbe
from aivarda.background.transforms import DiagonalTransform
from aivarda.background.vae.checkpoint import VaeCheckpoint
from aivarda.background.vae.finetune import FinetuneConfig
from aivarda.background.vae.network import VaeArchitecture, VaeNet
from aivarda.background.vae.transform import FinetunedVaeTransform, VaeTransform
from aivarda.channels import ChannelLayout
from aivarda.grid import Grid
from aivarda.models.checkpoint import build_forecast_model
from aivarda.models.normalised import identity_stats

PAPER = {"control": (128, 256), "states": [(128, 256), (721, 1440)], "window_state": (128, 256),
         "arch": {"name": "fengwu", "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 4, "window": [4, 8]},
         "vae": {"latent_channels": 32, "latent_stride": 1, "patch_size": 2, "embed_dim": 96, "depth": 2,
                 "num_heads": 4, "window": 4}}
SMOKE = {"control": (16, 32), "states": [(16, 32), (24, 48)], "window_state": (16, 32),
         "arch": {"name": "fengwu", "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "window": [2, 4]},
         "vae": {"latent_channels": 4, "latent_stride": 1, "patch_size": 2, "embed_dim": 16, "depth": 1,
                 "num_heads": 2, "window": 4}}
ROWS = ("3dvar-genbe", "4dvar-6h", "vae-decoder", "lora-envar")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> str:
    """Peak GPU memory since the last reset, or the process' peak resident set on the CPU."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB (GPU, this row)"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{kib / 2**20:.2f} GiB (RSS, process so far)"


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def random_observations(state_shape: tuple[int, ...], n_times: int, fraction: float, device: torch.device,
                        gen: torch.Generator) -> tuple[Callable[[Tensor], Tensor], SimpleNamespace]:
    """``H(x_window) = x_window.flatten()[idx]`` for ``fraction`` of the values at each window time, and
    observations ``y ~ N(0, 1)``, ``σ_o = 1`` there (a zero background then has non-zero innovations,
    so the minimiser has work to do)."""
    per_time = state_shape[0] * state_shape[1] * state_shape[2]
    n = max(1, int(fraction * per_time))
    flat = torch.cat([t * per_time + torch.randperm(per_time, generator=gen)[:n] for t in range(n_times)]).to(device)
    obs = SimpleNamespace(value=torch.randn(n * n_times, generator=gen), error_std=torch.ones(n * n_times),
                          time_index=torch.arange(n_times).repeat_interleave(n))
    return (lambda x: x.reshape(-1)[flat]), obs


def gradient_seconds(cost: VariationalCost, repeats: int, device: torch.device, amp) -> float:
    """Median seconds of one ``J(z)`` and ``∇J`` at a random ``z``."""
    z = (0.1 * torch.randn(cost.latent_shape, device=device)).requires_grad_(True)

    def once() -> None:
        with amp():
            total = cost(z).total
        torch.autograd.grad(total, z)

    return timed(once, repeats, device)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="small sizes on the CPU (CI)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true", help="autocast the cost and the LoRA fine-tuning to bfloat16")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10, help="L-BFGS iterations of the timed minimisations")
    ap.add_argument("--obs-fraction", type=float, default=0.01)
    ap.add_argument("--arch", type=json.loads, default=None, help="FengWu-style architecture (JSON)")
    ap.add_argument("--only", default=",".join(ROWS), help="rows to run (comma-separated)")
    ap.add_argument("--states", default=None,
                    help="state grids of the 3DVar, VAE and LoRA-EnVar rows, e.g. '128x256' (default: 128x256,721x1440)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    sizes = dict(SMOKE if args.smoke else PAPER)
    if args.smoke:
        args.device, args.repeats, args.iterations = "cpu", 1, 3
    if args.states is not None:
        sizes["states"] = [tuple(int(n) for n in g.split("x")) for g in args.states.split(",")]
    if args.arch is not None:
        sizes["arch"] = args.arch
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else nullcontext
    only = set(args.only.split(","))
    if only - set(ROWS):
        ap.error(f"--only: unknown rows {sorted(only - set(ROWS))}; the rows are {', '.join(ROWS)}")
    # the first torch.optim optimiser of a process imports torch._dynamo (~1 s): pay it before timing
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])
    layout = ChannelLayout.fengwu69()
    C = len(layout)
    gen = torch.Generator().manual_seed(0)
    control = Grid.equiangular(*sizes["control"])
    rows: list[dict] = []

    def record(name: str, shape: tuple[int, ...], what: str, seconds: float, **extra: object) -> None:
        rows.append({"row": name, "state": "×".join(map(str, shape)), "what": what, "seconds": seconds,
                     "peak_memory": peak_memory(device), **extra})

    def minimise(cost: VariationalCost) -> tuple[float, int]:
        """Seconds and cost evaluations of one minimisation of ``--iterations`` L-BFGS iterations (one outer loop)."""
        minimizer = Minimizer(outer_loops=1, inner_iterations=args.iterations)
        with amp():
            t0 = time.perf_counter()
            result = minimizer.minimize(cost)
            synchronize(device)
            seconds = time.perf_counter() - t0
        return seconds, int(result.diagnostics[-1]["evaluations"]) if result.diagnostics else 0

    def minimised(name: str, shape: tuple[int, ...], seconds: float, evaluations: int) -> None:
        record(name, shape, f"minimise ≤ {args.iterations} it.: {evaluations} J+∇J", seconds, evaluations=evaluations)

    def reset() -> None:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    if "3dvar-genbe" in only:
        ops = SphereOps(control)
        amp_l = ops.gaussian_amplitudes(torch.tensor(8e5))
        samples = ops.dofs_to_field(torch.randn(4, C, ops.n_dofs, dtype=torch.float64, generator=gen) * amp_l).float()
        for state in sizes["states"]:
            reset()
            shape = (C, *state)
            U = GenBeTransform(fit_genbe(samples, layout, control, state_grid=Grid.equiangular(*state)))
            H, obs = random_observations(shape, 1, args.obs_fraction, device, gen)
            cost = VariationalCost(torch.zeros(shape, device=device), U, H, obs)
            record("3dvar-genbe", shape, "J + ∇J", gradient_seconds(cost, args.repeats, device, amp))
            minimised("3dvar-genbe", shape, *minimise(cost))

    if "4dvar-6h" in only:
        reset()
        grid = Grid.equiangular(*sizes["window_state"])
        shape = (C, *grid.shape)
        model = build_forecast_model(sizes["arch"], identity_stats(layout.names, 1.0), grid, layout, 1.0).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        window = ModelPropagation(model, [1] * 6)
        stds = torch.ones(C)
        H, obs = random_observations(shape, window.n_times, args.obs_fraction, device, gen)
        cost = VariationalCost(torch.zeros(shape, device=device), DiagonalTransform(stds.to(device), shape), H, obs,
                               propagation=window)
        record("4dvar-6h", shape, "J + ∇J (6 steps fwd + adjoint)", gradient_seconds(cost, args.repeats, device, amp))

    if "vae-decoder" in only:
        net = VaeNet(C, control.shape, VaeArchitecture(**sizes["vae"]))
        for state in sizes["states"]:
            reset()
            shape = (C, *state)
            ckpt = VaeCheckpoint(net, torch.ones(C), control, Grid.equiangular(*state), layout)
            U = VaeTransform(ckpt, Grid.equiangular(*state))
            H, obs = random_observations(shape, 1, args.obs_fraction, device, gen)
            cost = VariationalCost(torch.zeros(shape, device=device), U, H, obs)
            latent = "×".join(map(str, U.latent_shape))
            record("vae-decoder", shape, f"J + ∇J (z {latent})", gradient_seconds(cost, args.repeats, device, amp))

    if "lora-envar" in only:
        finetune = FinetuneConfig(mode="lora", epochs=5, batch_size=4)  # the seeds' runtime configuration
        for state in sizes["states"]:
            reset()
            shape = (C, *state)
            net = VaeNet(C, control.shape, VaeArchitecture(**sizes["vae"]))
            ckpt = VaeCheckpoint(net, torch.ones(C), control, Grid.equiangular(*state), layout)
            U = FinetunedVaeTransform(ckpt, finetune, Grid.equiangular(*state))
            before = {name: p.detach().clone() for name, p in U.net.named_parameters()}
            members = torch.randn((8, *shape), generator=gen).to(device)

            def update() -> None:
                with amp():
                    U.update(members)

            seconds_ft = timed(update, args.repeats, device)
            changed = [name for name, p in U.net.named_parameters() if not torch.equal(p.detach(), before[name])]
            adapters = [name for name in changed if ".lora_A." in name or ".lora_B." in name]
            trainable = U.finetuner.n_trainable()
            steps = int(U.update_diagnostics()["finetune_steps"])
            record("lora-envar", shape, f"fine-tune r={finetune.rank} ({steps} steps): {trainable} par.", seconds_ft,
                   trainable_params=trainable, finetune_steps=steps, changed_adapter_tensors=len(adapters),
                   changed_base_tensors=len(changed) - len(adapters))
            H, obs = random_observations(shape, 1, args.obs_fraction, device, gen)
            cost = VariationalCost(torch.zeros(shape, device=device), U, H, obs)
            # the minimisation right after the fine-tuning, as in a cycle (its first evaluation computes
            # D(0) of the new decoder); then J + ∇J, whose warm-up finds D(0) computed
            seconds_da, evaluations = minimise(cost)
            latent = "×".join(map(str, U.latent_shape))
            record("lora-envar", shape, f"J + ∇J (z {latent})", gradient_seconds(cost, args.repeats, device, amp))
            minimised("lora-envar", shape, seconds_da, evaluations)
            record("lora-envar", shape, "cycle: fine-tune + minimise", seconds_ft + seconds_da)

    if args.json:
        print(json.dumps(rows, indent=2))
        return rows
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"bf16: {args.bf16}, TF32: {device.type == 'cuda'}")
    print(f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"{'row':<12} {'state':<11} {'what':<34} {'seconds':>9}  peak memory")
    for r in rows:
        print(f"{r['row']:<12} {r['state']:<11} {r['what']:<34} {r['seconds']:9.3f}  {r['peak_memory']}")
    return rows


if __name__ == "__main__":
    main()
