"""``aivarda sweep CONFIG --set KEY=V1,V2 [--set KEY2=A,B] --seeds N``: a grid of cycling runs.

The grid is the Cartesian product of the ``--set`` values and ``N`` observation seeds
(``seed = S, S + 1, …, S + N − 1``, ``S`` the config's ``seed``; the seed draws the simulated
observations, :mod:`aivarda.observations.simulator`). A ``KEY`` is a dotted path into the cycling
YAML (``assimilation.inner_iterations=4,6``, ``observations.fraction=0.05,0.1``); each value is read
as YAML (``10`` an integer, ``0.05`` a float, ``true`` a boolean, ``[z500, t850]`` a list; commas
inside ``[]``/``{}`` do not split values). Every expanded config is validated with the strict
:class:`~aivarda.cycling.config.CyclingConfig` before anything is written or started, so a typo is
one error line naming the ``--set`` value.

Layout of the sweep directory (``--out``, default: the config's ``output_dir`` + ``_sweep``)::

    SWEEP_DIR/sweep.json             manifest: the grid, each run's status, timings, host (checksummed,
                                     written atomically by the one process driving the sweep)
    SWEEP_DIR/sweep.lock             held (flock) by the process driving the sweep
    SWEEP_DIR/configs/RUN.yaml       the expanded config of each run (input paths made absolute)
    SWEEP_DIR/runs/RUN/              a normal, resumable run directory of ``aivarda run``
    SWEEP_DIR/logs/RUN.log           stdout/stderr of the run (appended on each attempt)
    SWEEP_DIR/report/                ``aivarda report`` over the finished runs: report.json,
                                     report.txt, figures

``RUN`` is ``<name>__<key>=<value>__…__seed=<s>``; it is also the run's ``name``, so that
``aivarda report`` combines the seeds of one grid point (they differ only in ``seed``, ``name``
and ``output_dir``). Each run executes ``aivarda run RUN.yaml --out runs/RUN --resume`` in its own
process with ``OMP_NUM_THREADS`` set (``--threads-per-run``, default ``cpus // workers``), on an
engine:

* ``local`` (default): ``--workers K`` processes on this machine (``--gpus 0,1``: worker slot ``i``
  sees only GPU ``i mod len``);
* ``dask``: a ``dask.distributed`` cluster at ``--scheduler ADDRESS``, or a ``LocalCluster`` of
  ``--workers`` single-threaded worker processes when no address is given;
* ``ray``: ``ray.init(address=--scheduler)`` (optional, ``pip install ray``);
* ``slurm``: one SLURM job per run through ``submitit`` (optional, ``pip install submitit``),
  ``--slurm KEY=VALUE`` passed to ``submitit.AutoExecutor.update_parameters`` (e.g.
  ``slurm_partition=gpu``, ``timeout_min=120``, ``gpus_per_node=1``).

Resuming. Running the same command again skips the finished runs (a run is finished when its
``state.json`` has every cycle committed and its ``metrics.nc`` exists; a finished run is never
started again, so nothing it wrote is touched) and resumes the others from their last committed
cycle (:mod:`aivarda.cycling.state`). A changed grid or base config is refused (one line; choose
another ``--out``). A run process dies with the process that started it (``PR_SET_PDEATHSIG`` on
Linux; Dask's worker processes exit with their ``LocalCluster``), so a killed sweep leaves no run
behind holding a run directory; a run whose directory is still held (e.g. by a remote worker of a
killed sweep) is waited for, then resumed (or left alone when it finished meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import itertools
import json
import os
import queue
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aivarda.config import format_validation_error, read_yaml, resolve_config_paths, validate
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.state import LOCK_NAME
from aivarda.errors import ConfigError, DataError
from aivarda.files import atomic_write_json, atomic_write_text, check_writable_dir, read_checked_json, write_checked_json

MANIFEST = "sweep.json"
SWEEP_LOCK = "sweep.lock"
MANIFEST_VERSION = 1
EXECUTORS = ("local", "dask", "ray", "slurm")
RESERVED_KEYS = ("seed", "name", "output_dir")
"""Keys the sweep sets itself (``seed`` through ``--seeds``)."""
MAX_NAME = 180
"""Longer run names are replaced by ``<name>__<hash>`` (file names hold at most 255 bytes)."""


# ------------------------------------------------------------------------------ the grid
@dataclass(frozen=True)
class Axis:
    """One ``--set KEY=V1,V2``: the dotted key, the values (parsed YAML) and their texts."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


@dataclass
class RunSpec:
    """One run of the grid: its name, the values it sets, its validated config and its files."""

    name: str
    overrides: dict[str, Any]
    config: CyclingConfig
    raw: dict[str, Any]
    config_file: Path
    run_dir: Path
    log_file: Path
    digest: str = ""


def _split_values(text: str) -> list[str]:
    """``a,b`` → ``[a, b]``; commas inside ``[]``/``{}`` or quotes do not split."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    parts.append(current.strip())
    return parts


def parse_set(text: str) -> Axis:
    """``KEY=V1,V2,…`` → :class:`Axis`; a malformed one is one ConfigError line."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key or not values.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE1,VALUE2 (e.g. observations.fraction=0.05,0.1)")
    if any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted key like assimilation.inner_iterations")
    if key.split(".")[0] in RESERVED_KEYS:
        hint = "use --seeds N" if key == "seed" else "the sweep sets it for every run"
        raise ConfigError(f"--set {text!r}: {key} cannot be swept ({hint})")
    texts = _split_values(values)
    if any(not t for t in texts):
        raise ConfigError(f"--set {text!r}: an empty value")
    parsed = []
    for t in texts:
        try:
            parsed.append(yaml.safe_load(t))
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {text!r}: value {t!r} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if len(set(texts)) != len(texts):
        raise ConfigError(f"--set {text!r}: a value is given twice")
    return Axis(key, tuple(parsed), tuple(texts))


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"``; missing or null sections become ``{}``."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is {child!r}, not a section; cannot set {key}")
        node = child
    node[parts[-1]] = value


def _safe(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "._+-" else "-" for c in text)
    while ".." in out:
        out = out.replace("..", ".")
    return out


def run_name(base: str, overrides: list[tuple[str, str]]) -> str:
    """``<base>__<key>=<value>__…``: a file-name-safe name (long ones become ``<base>__<hash>``)."""
    name = "__".join([base, *(f"{_safe(k)}={_safe(v)}" for k, v in overrides)])
    if len(name.encode()) > MAX_NAME:
        name = f"{base}__{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return name


def _absolute_paths(raw: dict[str, Any], model: BaseModel) -> None:
    """Every path of ``raw`` that ``model`` holds resolved (:func:`resolve_config_paths`) written
    back as that absolute path, so the expanded config reads the same from any folder."""
    for key, value in raw.items():
        attr = getattr(model, key, None) if isinstance(key, str) else None
        if isinstance(attr, Path) and value is not None:
            raw[key] = str(attr)
        elif isinstance(attr, BaseModel) and isinstance(value, dict):
            _absolute_paths(value, attr)
        elif isinstance(attr, (list, tuple)) and isinstance(value, list):
            for item, sub in zip(value, attr, strict=False):
                if isinstance(item, dict) and isinstance(sub, BaseModel):
                    _absolute_paths(item, sub)


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def default_sweep_dir(cfg: CyclingConfig) -> Path:
    """``<output_dir>_sweep`` of the base config."""
    out = Path(cfg.output_dir)
    return out.with_name(out.name + "_sweep")


def expand(config: str | Path, sets: list[str], seeds: int = 1, out: str | Path | None = None) -> tuple[Path, list[RunSpec]]:
    """The sweep directory and the runs of the grid, every config validated; nothing is written.

    ``sets`` are ``KEY=V1,V2`` texts, ``seeds`` the number of observation seeds."""
    config = Path(config)
    if seeds < 1:
        raise ConfigError(f"--seeds: expected a positive number of seeds, got {seeds}")
    axes = [parse_set(s) for s in sets]
    keys = [a.key for a in axes]
    for a, b in itertools.combinations(keys, 2):
        if a == b or b.startswith(a + ".") or a.startswith(b + "."):
            raise ConfigError(f"--set: {a} and {b} overlap; give each key once")
    base_raw = read_yaml(config)
    base = validate(CyclingConfig, base_raw, str(config))
    resolve_config_paths(base, config.resolve().parent)
    sweep_dir = Path(out).resolve() if out is not None else default_sweep_dir(base).resolve()
    seed_values = [base.seed + i for i in range(seeds)]
    specs: list[RunSpec] = []
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        for seed in seed_values:
            raw = json.loads(json.dumps(base_raw, default=str))  # a deep copy, times as text
            named: list[tuple[str, str]] = []
            overrides: dict[str, Any] = {}
            for axis, i in zip(axes, combo, strict=True):
                where = f"{config} (--set {axis.key}={axis.texts[i]})"
                set_dotted(raw, axis.key, axis.values[i], where)
                named.append((axis.key, axis.texts[i]))
                overrides[axis.key] = axis.values[i]
            named.append(("seed", str(seed)))
            overrides["seed"] = seed
            name = run_name(base.name, named)
            raw.update(name=name, seed=seed, output_dir=str(sweep_dir / "runs" / name))
            where = f"{config} (--set {', '.join(f'{k}={v}' for k, v in named[:-1])})" if named[:-1] else str(config)
            cfg = validate(CyclingConfig, raw, where)
            try:
                resolve_config_paths(cfg, config.resolve().parent)
            except ValidationError as err:
                raise ConfigError(format_validation_error(where, err)) from None
            _absolute_paths(raw, cfg)
            specs.append(RunSpec(name, overrides, cfg, raw, sweep_dir / "configs" / f"{name}.yaml",
                                 sweep_dir / "runs" / name, sweep_dir / "logs" / f"{name}.log",
                                 _digest(cfg.model_dump(mode="json"))))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--set: values that differ only in characters unsafe in file names give the same run name {dup[0]}")
    return sweep_dir, specs


# ------------------------------------------------------------------------------ run state
def run_progress(run_dir: Path) -> tuple[int, int | None]:
    """``(committed cycles, cycles)`` of a run directory (``(0, None)`` when not started)."""
    try:
        state = read_checked_json(run_dir / "state.json", "the run state", required=False)
        return int(state["next_cycle"]), int(state["n_cycles"])
    except (DataError, KeyError, TypeError, ValueError):
        return 0, None


def run_finished(run_dir: Path) -> bool:
    """Every cycle committed and the final ``metrics.nc`` written."""
    done, total = run_progress(run_dir)
    return total is not None and done >= total and (run_dir / "metrics.nc").is_file()


# ------------------------------------------------------------------------------ one run (on a worker)
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG, kept across exec\n"
    "    if os.getppid() != int(sys.argv[1]):  # the parent died before the prctl\n"
    "        sys.exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)
"""Run ``argv[2:]`` so that it receives SIGKILL when the thread that started it dies (Linux): a
killed sweep (or Dask worker) leaves no run behind holding its run directory. A wrapper rather than
a ``preexec_fn``, so nothing runs between fork and exec in the (multithreaded) parent."""


def _with_parent_death(cmd: list[str]) -> list[str]:
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *cmd]


def _lock_holder(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's lock."""
    lock = run_dir / LOCK_NAME
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def execute_run(task: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) one run of a sweep in a child process: ``aivarda run CONFIG --out RUN_DIR
    --resume --json`` with ``OMP_NUM_THREADS`` (and ``CUDA_VISIBLE_DEVICES`` when ``gpu`` is given),
    output appended to its log. Executed by every engine (on the worker's machine); returns the
    outcome the manifest records."""
    run_dir, log = Path(task["run_dir"]), Path(task["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    waited = 0.0
    while _lock_holder(run_dir) and waited < float(task.get("lock_wait_s", 3600)):
        time.sleep(1.0)  # a process of an earlier, killed sweep still runs it (e.g. a remote worker)
        waited = time.time() - started
    if run_finished(run_dir):  # e.g. finished by a process of an earlier sweep while this one waited
        return {"name": task["name"], "returncode": 0, "host": socket.gethostname(), "started": _iso(started),
                "finished": _now(), "wall_seconds": 0.0, "threads": task["threads"], "gpu": task.get("gpu"),
                "error": None}
    env = {**os.environ, "OMP_NUM_THREADS": str(task["threads"]), "MKL_NUM_THREADS": str(task["threads"])}
    if task.get("gpu") is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(task["gpu"])
    cmd = [sys.executable, "-m", "aivarda.cli", "run", task["config"], "--out", str(run_dir), "--resume", "--json"]
    with log.open("ab") as fh:
        fh.write(f"--- {_now()} {socket.gethostname()}: {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.run(_with_parent_death(cmd), stdout=fh, stderr=fh, env=env, stdin=subprocess.DEVNULL, check=False)
    finished = time.time()
    error = None
    if proc.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        error = (lines[-1] if lines else "") + f" (exit status {proc.returncode})"
    return {"name": task["name"], "returncode": proc.returncode, "host": socket.gethostname(),
            "started": _iso(started), "finished": _iso(finished), "wall_seconds": round(finished - started, 3),
            "threads": task["threads"], "gpu": task.get("gpu"), "error": error}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _now() -> str:
    return _iso(time.time())


# ------------------------------------------------------------------------------ engines
Done = Callable[[dict[str, Any], dict[str, Any]], None]
"""``done(task, outcome)``: called in the driving process as each run ends."""


def _failure(task: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    return {"name": task["name"], "returncode": None, "host": None, "error": f"{type(exc).__name__}: {exc}"}


def run_local(tasks: list[dict[str, Any]], done: Done, workers: int, gpus: list[str] | None = None) -> None:
    """``workers`` runs at a time on this machine; slot ``i`` sees GPU ``gpus[i mod len]``."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    slots: queue.Queue[int] = queue.Queue()
    for i in range(workers):
        slots.put(i)

    def one(task: dict[str, Any]) -> dict[str, Any]:
        slot = slots.get()
        try:
            return execute_run({**task, "gpu": gpus[slot % len(gpus)] if gpus else None})
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(one, t): t for t in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - recorded as the run's failure
                outcome = _failure(task, exc)
            done(task, outcome)


ENGINE_PACKAGES = {"dask": "distributed", "ray": "ray", "slurm": "submitit"}
"""The optional package each engine imports (``aivarda[sweep]`` installs ``distributed``)."""


def _missing(engine: str, package: str) -> ConfigError:
    extra = " or pip install 'aivarda[sweep]'" if package == "distributed" else ""
    return ConfigError(f"--executor {engine}: the Python package {package!r} is not installed (pip install {package}{extra})")


def require_engine(engine: str) -> None:
    """Import the engine's optional package now, before anything is written (one line if missing)."""
    package = ENGINE_PACKAGES.get(engine)
    if package is None:
        return
    try:
        __import__(package)
    except ImportError:
        raise _missing(engine, package) from None


def run_dask(tasks: list[dict[str, Any]], done: Done, workers: int, scheduler: str | None) -> None:
    """On the Dask cluster at ``scheduler``, or on a ``LocalCluster`` of ``workers`` single-threaded
    worker processes (a run is one child process of a worker; the workers exit with this process)."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise _missing("dask", "distributed") from None
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        futures = {client.submit(execute_run, t, key=f"aivarda-sweep-{t['name']}-{os.getpid()}-{time.time_ns()}",
                                 pure=False): t for t in tasks}
        for fut in as_completed(list(futures)):
            task = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker, a cancelled task
                outcome = _failure(task, exc)
            done(task, outcome)


def run_ray(tasks: list[dict[str, Any]], done: Done, scheduler: str | None) -> None:
    """As Ray tasks (``ray.init(address=scheduler)``; a local Ray instance when none is given)."""
    try:
        import ray
    except ImportError:
        raise _missing("ray", "ray") from None
    ray.init(address=scheduler, ignore_reinit_error=True)
    try:
        remote = ray.remote(execute_run)
        pending = {remote.options(num_cpus=t["threads"]).remote(t): t for t in tasks}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001
                outcome = _failure(task, exc)
            done(task, outcome)
    finally:
        ray.shutdown()


def run_submitit(tasks: list[dict[str, Any]], done: Done, folder: Path, options: dict[str, Any],
                 cluster: str = "slurm") -> None:
    """One SLURM job per run through ``submitit`` (``options``: ``AutoExecutor.update_parameters``;
    ``cluster="local"``/``"debug"`` run the same path without SLURM)."""
    try:
        import submitit
    except ImportError:
        raise _missing("slurm", "submitit") from None
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    threads = max(t["threads"] for t in tasks)
    params: dict[str, Any] = {"name": "aivarda-sweep", "cpus_per_task": threads, "timeout_min": 24 * 60}
    params.update(options)
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--slurm: {exc}") from None
    jobs = {}
    for t in tasks:
        job = executor.submit(execute_run, t)
        jobs[job] = t
    for job in submitit.helpers.as_completed(list(jobs), poll_frequency=5 if cluster == "slurm" else 0.2):
        task = jobs[job]
        try:
            outcome = job.result()
        except Exception as exc:  # noqa: BLE001
            outcome = _failure(task, exc)
        done(task, outcome)


# ------------------------------------------------------------------------------ the sweep
@dataclass
class Sweep:
    """A grid of runs in a sweep directory, its manifest, and how it is executed."""

    config: Path
    sets: list[str]
    seeds: int = 1
    out: Path | None = None
    executor: str = "local"
    workers: int = 1
    threads_per_run: int | None = None
    scheduler: str | None = None
    gpus: list[str] | None = None
    slurm: dict[str, Any] = field(default_factory=dict)
    slurm_cluster: str = "slurm"
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.workers < 1:
            raise ConfigError(f"--workers: expected a positive number, got {self.workers}")
        if self.threads_per_run is not None and self.threads_per_run < 1:
            raise ConfigError(f"--threads-per-run: expected a positive number, got {self.threads_per_run}")
        self.dir, self.specs = expand(self.config, self.sets, self.seeds, self.out)
        self.manifest_file = self.dir / MANIFEST
        if self.threads_per_run is None:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            self.threads_per_run = max(1, cpus // self.workers)

    # -------------------------------------------------------------- manifest
    def grid(self) -> dict[str, Any]:
        """What identifies the sweep: the base config, the axes, the seeds, each run's config."""
        return {"config": str(self.config.resolve()), "config_sha256": hashlib.sha256(self.config.read_bytes()).hexdigest(),
                "sets": self.sets, "seeds": self.seeds,
                "runs": {s.name: s.digest for s in self.specs}}

    def _fresh_manifest(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION, "created": _now(), "grid": self.grid(),
            "runs": [{"name": s.name, "overrides": s.overrides, "config": str(s.config_file.relative_to(self.dir)),
                      "run_dir": str(s.run_dir.relative_to(self.dir)), "log": str(s.log_file.relative_to(self.dir)),
                      "status": "pending", "attempts": 0, "cycles_done": 0, "n_cycles": len(s.config.cycle_times())}
                     for s in self.specs],
        }

    def _load_manifest(self) -> dict[str, Any]:
        if not self.manifest_file.is_file():
            if self.dir.is_dir() and any(p.name != SWEEP_LOCK for p in self.dir.iterdir()):
                raise DataError(f"{self.dir}: not empty and has no {MANIFEST}; choose another --out for the sweep")
            return self._fresh_manifest()
        manifest = read_checked_json(self.manifest_file, "the sweep manifest")
        saved, wanted = manifest.get("grid", {}), json.loads(json.dumps(self.grid()))
        if saved != wanted:
            what = [k for k in ("config", "config_sha256", "sets", "seeds") if saved.get(k) != wanted.get(k)]
            if saved.get("runs") != wanted["runs"]:
                what.append("runs")
            raise ConfigError(f"{self.manifest_file}: this sweep differs from the one in the directory ({', '.join(what)}); "
                              f"re-run the same command to resume it, or choose another --out")
        return manifest

    def _save(self, manifest: dict[str, Any]) -> None:
        manifest["updated"] = _now()
        write_checked_json(self.manifest_file, manifest)

    # -------------------------------------------------------------- run
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise DataError(f"{self.dir}: the sweep is being run by process {holder}; wait for it to finish") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _write_configs(self) -> None:
        """Each run's expanded config; one already there must be the same (never overwritten)."""
        for s in self.specs:
            text = yaml.safe_dump(s.raw, sort_keys=False)
            if s.config_file.is_file():
                if yaml.safe_load(s.config_file.read_text()) != yaml.safe_load(text):
                    raise DataError(f"{s.config_file}: differs from the run's expanded config; choose another --out")
                continue
            atomic_write_text(s.config_file, text)

    def _say(self, line: str) -> None:
        if not self.quiet:
            print(f"aivarda sweep: {line}", file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        """Execute the unfinished runs, then the report; returns the manifest."""
        check_writable_dir(self.dir, "the sweep directory")
        require_engine(self.executor)
        with self._lock():
            manifest = self._load_manifest()
            self._write_configs()
            entries = {e["name"]: e for e in manifest["runs"]}
            todo = []
            for s in self.specs:
                entry = entries[s.name]
                entry["cycles_done"] = run_progress(s.run_dir)[0]
                if run_finished(s.run_dir):
                    entry["status"] = "finished"
                    continue
                entry["status"] = "submitted"
                entry["attempts"] = int(entry.get("attempts", 0)) + 1
                todo.append({"name": s.name, "config": str(s.config_file), "run_dir": str(s.run_dir),
                             "log": str(s.log_file), "threads": self.threads_per_run})
            manifest["executor"] = self.executor
            manifest["driver"] = {"host": socket.gethostname(), "pid": os.getpid(), "started": _now()}
            self._save(manifest)
            self._say(f"{len(self.specs)} runs in {self.dir}: {len(self.specs) - len(todo)} finished, "
                      f"{len(todo)} to run on {self.executor}")

            def done(task: dict[str, Any], outcome: dict[str, Any]) -> None:
                entry = entries[task["name"]]
                run_dir = Path(task["run_dir"])
                ok = outcome.get("returncode") == 0 and run_finished(run_dir)
                entry.update({k: v for k, v in outcome.items() if k not in ("name", "returncode")})
                entry["cycles_done"] = run_progress(run_dir)[0]
                entry["status"] = "finished" if ok else "failed"
                if not ok and not entry.get("error"):
                    entry["error"] = "the run ended without finishing every cycle"
                self._save(manifest)
                self._say(f"{task['name']}: {entry['status']}" + (f" ({entry['error']})" if not ok else ""))

            if todo:
                self._execute(todo, done)
            finished = [s.name for s in self.specs if entries[s.name]["status"] == "finished"]
            report = manifest.get("report", {})
            current = report.get("included") == finished and (self.dir / report.get("json", "-")).is_file()
            if finished and not (current and not todo):  # a report of these same finished runs is kept
                manifest["report"] = self.report(finished)
            self._save(manifest)
        return manifest

    def _execute(self, todo: list[dict[str, Any]], done: Done) -> None:
        if self.executor == "local":
            run_local(todo, done, self.workers, self.gpus)
        elif self.executor == "dask":
            run_dask(todo, done, self.workers, self.scheduler)
        elif self.executor == "ray":
            run_ray(todo, done, self.scheduler)
        else:
            run_submitit(todo, done, self.dir / "slurm", self.slurm, self.slurm_cluster)

    def report(self, names: list[str]) -> dict[str, Any]:
        """``aivarda report`` over the runs ``names`` into ``SWEEP_DIR/report`` (report.json,
        report.txt, figures); returns where it is."""
        from aivarda.evaluation.report import build_report, format_table, load_run, plot_report

        out = self.dir / "report"
        runs = [load_run(self.dir / "runs" / name) for name in names]
        figures = plot_report(runs, out)
        report = build_report(runs, figures)
        atomic_write_json(out / "report.json", report)
        atomic_write_text(out / "report.txt", format_table(runs, report["runs"], report["provenance"]) + "\n")
        return {"json": "report/report.json", "table": "report/report.txt", "included": names, "written": _now()}


def _slurm_options(items: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--slurm {item!r}: expected KEY=VALUE (e.g. slurm_partition=gpu)")
        options[key.strip()] = yaml.safe_load(value)
    return options


def main(args: argparse.Namespace) -> int:
    """``aivarda sweep CONFIG --set KEY=V1,V2 … [--seeds N] [--executor E] [--workers K] …``."""
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    if gpus and args.executor != "local":
        raise ConfigError("--gpus: only with --executor local (a cluster assigns its own GPUs)")
    if args.scheduler and args.executor not in ("dask", "ray"):
        raise ConfigError(f"--scheduler: only with --executor dask or ray, not {args.executor}")
    sweep = Sweep(Path(args.config), args.set or [], args.seeds, args.out, args.executor, args.workers,
                  args.threads_per_run, args.scheduler, gpus, _slurm_options(args.slurm), quiet=args.json)
    if args.dry_run:
        plan = {"sweep_dir": str(sweep.dir), "runs": [{"name": s.name, "overrides": s.overrides,
                                                       "run_dir": str(s.run_dir)} for s in sweep.specs]}
        print(json.dumps(plan, indent=2) if args.json else "\n".join(
            [f"{len(sweep.specs)} runs in {sweep.dir} (validated; nothing written):", *(f"  {s.name}" for s in sweep.specs)]))
        return 0
    manifest = sweep.run()
    failed = [e for e in manifest["runs"] if e["status"] != "finished"]
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        for e in manifest["runs"]:
            print(f"{e['status']:>9}  {e['name']}" + (f"  ({e.get('error')})" if e["status"] != "finished" else ""))
        if "report" in manifest:
            print(f"report: {sweep.dir / manifest['report']['table']}")
    if failed:
        print(f"aivarda: error: {len(failed)} of {len(manifest['runs'])} runs did not finish "
              f"(logs in {sweep.dir / 'logs'}); re-run the same command to resume them", file=sys.stderr)
        return 1
    return 0
