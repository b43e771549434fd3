"""Handlers of ``aivarda data nature-run``, ``aivarda data spin-up`` and ``aivarda data restart``."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from aivarda.config import load_config
from aivarda.data.nature_run import (
    RESTART_ASSET,
    SPINUP_ASSET,
    NatureRunConfig,
    build_model,
    default_store_path,
    generate_nature_run,
    make_restart,
    save_restart,
    save_state,
    spin_up,
)
from aivarda.errors import AivardaError, ConfigError


def _config(args: argparse.Namespace) -> NatureRunConfig:
    tiny = getattr(args, "tiny", False)
    if tiny and args.config is not None:
        raise ConfigError("--tiny and --config are exclusive; put the fields you want in the YAML instead")
    cfg = load_config(args.config, NatureRunConfig) if args.config is not None else (
        NatureRunConfig.tiny() if tiny else NatureRunConfig()
    )
    if getattr(args, "seed", None) is not None:
        cfg.seed = args.seed
    return cfg


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(args: argparse.Namespace) -> int:
    """``aivarda data nature-run [--out] [--config|--tiny] [--seed] [--force]``."""
    cfg = _config(args)
    out = args.out if args.out is not None else default_store_path(cfg)
    if out.exists() and not args.force:
        raise AivardaError(f"{out}: already exists; pass --force to replace it")
    times = cfg.output_times()
    print(f"nature run: {cfg.resolution} L{cfg.sigma_levels}, seed {cfg.seed}, {times.size} times "
          f"{str(times[0])[:16]} … {str(times[-1])[:16]} → {out}")
    t0 = time.perf_counter()
    generate_nature_run(cfg, out, force=args.force, progress=True)
    elapsed = time.perf_counter() - t0
    print(f"wrote {out} ({_size(out) / 1e6:.1f} MB) in {elapsed:.1f} s")
    return 0


def spin_up_main(args: argparse.Namespace) -> int:
    """``aivarda data spin-up [--config] [--out] [--force]``: spin up from rest, save the modal state."""
    cfg = _config(args)
    out = args.out if args.out is not None else SPINUP_ASSET
    if out.exists() and not args.force:
        raise AivardaError(f"{out}: already exists; pass --force to replace it")
    print(f"spin-up: {cfg.resolution} L{cfg.sigma_levels}, {cfg.spin_up_days:g} days from rest, seed {cfg.seed} → {out}")
    t0 = time.perf_counter()
    model = build_model(cfg)
    state = spin_up(model, progress=True)
    elapsed = time.perf_counter() - t0
    meta = {
        "spin_up_days": cfg.spin_up_days,
        "seed": cfg.seed,
        "time_step_minutes": cfg.time_step_minutes,
        "moisture": json.loads(cfg.moisture.model_dump_json()),
        "seconds": round(elapsed, 1),
        "command": "aivarda data spin-up" + (f" --config {args.config}" if args.config else ""),
    }
    save_state(out, model, state, meta)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB) after {elapsed:.0f} s")
    return 0


def restart_main(args: argparse.Namespace) -> int:
    """``aivarda data restart --at TIME [--config|--tiny] [--seed] [--out] [--force]``: the run's
    state at ``TIME``, integrated from its initial state as ``aivarda data nature-run`` integrates
    it, saved with its world fingerprint, origin and elapsed time."""
    from aivarda.provenance import parse_time

    cfg = _config(args)
    at = parse_time(args.at, "--at")
    if args.out is None and cfg != NatureRunConfig():
        raise ConfigError("--out is required for a non-default world (the packaged restart is the default world's)")
    out = args.out if args.out is not None else RESTART_ASSET
    if out.exists() and not args.force:
        raise AivardaError(f"{out}: already exists; pass --force to replace it")
    print(f"restart: {cfg.resolution} L{cfg.sigma_levels}, seed {cfg.seed}, "
          f"{cfg.start.isoformat()} → {str(at)[:16]} → {out}")
    t0, c0 = time.perf_counter(), os.times()
    state, meta = make_restart(cfg, at, progress=True)
    elapsed, c1 = time.perf_counter() - t0, os.times()
    command = "aivarda data restart --at " + str(args.at) + (f" --config {args.config}" if args.config else "") + (
        " --tiny" if getattr(args, "tiny", False) else "") + (f" --seed {args.seed}" if args.seed is not None else "")
    meta = {**meta, "seconds": round(elapsed, 1), "cpu_seconds": round(c1.user + c1.system - c0.user - c0.system, 1),
            "command": command}
    meta = save_restart(out, build_model(cfg), state, meta)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {meta['elapsed_hours'] / 24:g} simulated days of world "
          f"{meta['fingerprint']} (origin {meta['origin']}) in {elapsed:.0f} s wall, {meta['cpu_seconds']:.0f} s CPU")
    return 0
