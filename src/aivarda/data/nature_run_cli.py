"""Handlers of ``aivarda data nature-run`` and ``aivarda data spin-up``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aivarda.config import load_config
from aivarda.data.nature_run import (
    SPINUP_ASSET,
    NatureRunConfig,
    build_model,
    default_store_path,
    generate_nature_run,
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
