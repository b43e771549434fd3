"""The ``aivarda`` command.

Sub-commands are declared here (arguments only); their handlers live in the modules that own the
work and are imported lazily (``"module:function"``) so that ``aivarda --help`` stays fast. A handler
takes the parsed ``argparse.Namespace`` and returns an exit code (``None`` means 0). Any
:class:`~aivarda.errors.AivardaError` becomes one line on stderr and exit status 2; so do an
``OSError`` (permission denied, disk full, a file where a folder was expected) and a
``UnicodeDecodeError`` (a binary file given as text) that escape a handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from aivarda import __version__
from aivarda.errors import AivardaError


def _handler(target: str) -> Callable[[argparse.Namespace], int | None]:
    module, func = target.split(":")

    def run(args: argparse.Namespace) -> int | None:
        return getattr(importlib.import_module(module), func)(args)

    return run


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _add_training(p: argparse.ArgumentParser, max_steps_key: str) -> None:
    """The options of every training command (resumable, sliceable, quiet or JSON)."""
    p.add_argument("--resume", action="store_true", help="continue from output_dir/last.pt")
    p.add_argument("--max-steps", type=int, default=None, help=f"override {max_steps_key}")
    p.add_argument("--stop-after", type=int, default=None, help="pause after this many steps in total (resume later)")
    p.add_argument("--out", type=Path, default=None, help="override output_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_json(p)


def _add_allow_in_sample(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-in-sample", action="store_true",
                   help="score a period a model/B/statistics was trained on (stamped on every output)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aivarda",
        description="Cycling variational data assimilation with AI forecast models.",
    )
    parser.add_argument("--version", action="version", version=f"aivarda {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # --- quickstart -------------------------------------------------------------------------
    p = sub.add_parser("quickstart", help="build the embedded default world and run the main job end to end")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="parent of the time-stamped output directory")
    p.add_argument("--tiny", action="store_true", help="the coarse test world (seconds; for smoke tests)")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.quickstart:main"))

    # --- data -------------------------------------------------------------------------------
    data = sub.add_parser("data", help="nature run and data stores").add_subparsers(
        dest="data_command", metavar="DATA_COMMAND", required=True
    )
    p = data.add_parser("nature-run", help="generate the Held–Suarez nature run (WeatherBench2 Zarr layout)")
    p.add_argument("--out", type=Path, default=None, help="output store (default: $AIVARDA_HOME/nature_run/<name>.zarr)")
    p.add_argument("--config", type=Path, default=None, help="YAML with NatureRunConfig fields")
    p.add_argument("--tiny", action="store_true", help="coarse, a few days: generates in seconds (tests)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the config)")
    p.add_argument("--force", action="store_true", help="replace an existing store at --out")
    p.set_defaults(func=_handler("aivarda.data.nature_run_cli:main"))

    p = data.add_parser("spin-up", help="spin the nature run up from rest and save the state the package ships")
    p.add_argument("--config", type=Path, default=None, help="YAML with NatureRunConfig fields")
    p.add_argument("--out", type=Path, default=None, help="output .npz (default: the packaged asset)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=_handler("aivarda.data.nature_run_cli:spin_up_main"))

    p = data.add_parser("restart", help="save a nature run's state at a time, to continue it from (initial_state: restart)")
    p.add_argument("--at", required=True, help="valid time of the restart, e.g. 2000-07-16T00")
    p.add_argument("--config", type=Path, default=None, help="YAML with NatureRunConfig fields (default: default world)")
    p.add_argument("--tiny", action="store_true", help="the tiny world")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides the config)")
    p.add_argument("--out", type=Path, default=None, help="output .npz (default: the packaged one; default world only)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=_handler("aivarda.data.nature_run_cli:restart_main"))

    p = data.add_parser("stations", help="observation files (IODA or BUFR) of a synthetic station network from the truth")
    p.add_argument("config", type=Path, help="station network YAML (e.g. configs/stations/network.yaml)")
    p.add_argument("--format", choices=("ioda", "bufr"), default="ioda")
    p.add_argument("--out", type=Path, required=True, help="folder of the files ({time:%%Y%%m%%d%%H}.nc4 / .bufr)")
    p.add_argument("--start", required=True, help="first report time, e.g. 2000-08-01T00")
    p.add_argument("--end", required=True, help="last report time (inclusive)")
    p.add_argument("--interval", default="6h", help="spacing of the files (default 6h)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=_handler("aivarda.data.stations_cli:main"))

    p = data.add_parser("describe", help="channels, grid, time range and per-channel statistics of a store")
    p.add_argument("store", type=Path)
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.data.describe:main"))

    p = data.add_parser("stats", help="compute (or show cached) normalisation statistics of a store")
    p.add_argument("store", type=Path)
    p.add_argument("--span", default=None, help="time span of the store (e.g. train, hourly; default: all times)")
    p.add_argument("--diff-hours", type=float, default=6.0, help="interval of the difference statistics (default 6)")
    p.add_argument("--refresh", action="store_true", help="recompute even if cached")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.data.stats:main"))

    p = data.add_parser("plot", help="map of one channel at one time")
    p.add_argument("store", type=Path)
    p.add_argument("--channel", default="z500")
    p.add_argument("--time", default=None, help="ISO time (default: the first)")
    p.add_argument("--out", type=Path, required=True, help="PNG file")
    p.set_defaults(func=_handler("aivarda.evaluation.plots:plot_store_main"))

    # --- assimilation ------------------------------------------------------------------------
    p = sub.add_parser("assimilate", help="one variational analysis (3DVar/4DVar) on simulated observations")
    p.add_argument("config", type=Path)
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the config's output_dir)")
    _add_json(p)
    _add_allow_in_sample(p)
    p.set_defaults(func=_handler("aivarda.assimilate:main"))

    # --- cycling ------------------------------------------------------------------------------
    p = sub.add_parser("run", help="a cycling experiment (no-DA, 3DVar, 4DVar, ...); resumable")
    p.add_argument("config", type=Path, help="YAML with CyclingConfig fields (e.g. configs/exp_3DVar.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: the config's output_dir)")
    _add_json(p)
    _add_allow_in_sample(p)
    p.set_defaults(func=_handler("aivarda.cycling.runner:main"))

    p = sub.add_parser("report", help="table and figures comparing cycling runs")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=None, help="figure directory (default: report/ beside the first run)")
    p.add_argument("--first-cycles", type=int, default=None, metavar="N",
                   help="only the first N cycles of every run (e.g. to compare with a shorter run)")
    p.add_argument("--compare", action="append", default=None, metavar="A:B",
                   help="paired difference A − B over the common cycles with a 95%% block-bootstrap interval "
                        "(A, B: run name, directory or 1-based position; the seeds of one configuration are combined); repeatable")
    p.add_argument("--block-length", type=int, default=4, metavar="CYCLES",
                   help="block length of the moving-block bootstrap in cycles (default 4: one day of 6-hour cycles)")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.evaluation.report:main"))

    p = sub.add_parser("sweep", help="a grid of cycling runs (--set KEY=V1,V2 × --seeds N) on local processes, "
                                     "Dask, Ray or SLURM; resumable, with one report")
    p.add_argument("config", type=Path, help="YAML with CyclingConfig fields: the base of every run")
    p.add_argument("--set", action="append", default=None, metavar="KEY=V1,V2",
                   help="dotted config key and its values, e.g. observations.fraction=0.05,0.1; repeatable (grid)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="observation seeds seed … seed+N−1 (default 1)")
    p.add_argument("--out", type=Path, default=None, help="sweep directory (default: the config's output_dir + _sweep)")
    p.add_argument("--executor", choices=("local", "dask", "ray", "slurm"), default="local",
                   help="local processes (default), Dask distributed, Ray, or SLURM jobs through submitit")
    p.add_argument("--workers", type=int, default=1, metavar="K",
                   help="runs at a time (local; the LocalCluster's workers for dask without --scheduler)")
    p.add_argument("--threads-per-run", type=int, default=None, metavar="T",
                   help="OMP_NUM_THREADS of each run (default: this machine's CPUs // workers)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="Dask scheduler or Ray cluster address")
    p.add_argument("--gpus", default=None, metavar="LIST", help="local: GPU ids given round-robin to the worker slots, e.g. 0,1,2,3")
    p.add_argument("--slurm", action="append", default=None, metavar="KEY=VALUE",
                   help="submitit AutoExecutor parameter, e.g. slurm_partition=gpu, timeout_min=120; repeatable")
    p.add_argument("--dry-run", action="store_true", help="validate and list the runs; write nothing")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.sweep:main"))

    # --- forecast models ---------------------------------------------------------------------
    p = sub.add_parser(
        "train-model",
        help="train a forecast model (multi-GPU/multi-node: launch the same command with torchrun)",
    )
    p.add_argument("config", type=Path, help="YAML with TrainConfig fields (e.g. configs/models/fengwu_6h.yaml)")
    _add_training(p, "max_steps")
    p.set_defaults(func=_handler("aivarda.learning.train_model:main"))

    p = sub.add_parser("eval-model", help="RMSE/ACC of a forecast model vs persistence and climatology by lead time")
    p.add_argument("config", type=Path, nargs="?", default=None, help="YAML with EvalConfig fields (optional)")
    p.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (overrides the config)")
    p.add_argument("--store", type=Path, default=None, help="WeatherBench2-layout Zarr store (default: the nature run)")
    p.add_argument("--max-inits", type=int, default=None, help="at most this many initial times")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.learning.eval_model:main"))

    # --- background-error statistics ----------------------------------------------------------
    learn_b = sub.add_parser("learn-b", help="learn background-error statistics (NMC samples, GEN_BE, VAE)").add_subparsers(
        dest="learn_b_command", metavar="LEARN_B_COMMAND", required=True
    )
    p = learn_b.add_parser("nmc", help="NMC samples (48 h − 24 h forecasts, or the lagged-truth stand-in)")
    p.add_argument("config", type=Path, help="YAML with LearnBConfig fields (e.g. configs/learn_b_genbe.yaml)")
    p.add_argument("--out", type=Path, default=None, help="sample file (default: cached under $AIVARDA_HOME/b)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler("aivarda.learning.learn_b:nmc_main"))

    p = learn_b.add_parser("genbe", help="fit GEN_BE static B (ψ/χ, vertical modes, balance, length scales)")
    p.add_argument("config", type=Path, help="YAML with LearnBConfig fields (e.g. configs/learn_b_genbe.yaml)")
    p.add_argument("--samples", type=Path, default=None, help="NMC sample file (default: the config's, or the cache)")
    p.add_argument("--out", type=Path, default=None, help="statistics file (default: $AIVARDA_HOME/b/genbe_<name>.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.learning.learn_b:genbe_main"))

    # --- provenance ---------------------------------------------------------------------------
    p = sub.add_parser("provenance", help="what checkpoints/B files were trained on; check a period is out of sample")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE", help="forecast-model checkpoints, GEN_BE or NMC files")
    p.add_argument("--store", type=Path, default=None, help="the store a run would score against")
    p.add_argument("--from", dest="start", default=None, help="first scored time (ISO), with --store")
    p.add_argument("--to", dest="end", default=None, help="last scored time (ISO), with --store")
    p.add_argument("--allow-in-sample", action="store_true", help="report an overlap instead of refusing")
    _add_json(p)
    p.set_defaults(func=_handler("aivarda.artefacts:main"))

    p = learn_b.add_parser(
        "vae", help="train the VAE-Var background-error autoencoder on NMC samples (multi-GPU: under torchrun)"
    )
    p.add_argument("config", type=Path, help="YAML with LearnVaeConfig fields (e.g. configs/learn_b_vae.yaml)")
    _add_training(p, "vae.training.max_steps")
    p.add_argument("--samples", type=Path, default=None, help="NMC sample file (default: the config's, or the cache)")
    p.add_argument("--epochs", type=int, default=None, help="override vae.training.epochs")
    p.add_argument("--calibrate-only", action="store_true",
                   help="only (re)estimate the variance and spectral calibrations of output_dir/best.pt on its training samples")
    p.set_defaults(func=_handler("aivarda.learning.learn_vae:main"))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except AivardaError as exc:
        print(f"aivarda: error: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:  # a binary file where text was expected
        print(f"aivarda: error: a file is not UTF-8 text ({exc.reason} at byte {exc.start})", file=sys.stderr)
        return 2
    except OSError as exc:  # permission denied, disk full, a folder where a file was expected, ...
        if isinstance(exc, BrokenPipeError):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"aivarda: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aivarda: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
