"""Fingerprints of field stores: which trajectory a store holds, and exactly what it contains.

``store_fingerprint`` (16 hex digits) identifies the *trajectory* a store samples, so that the
leakage guard (:mod:`aivarda.provenance`) can tell whether two stores hold the same states:

- a nature run (global attribute ``aivarda_config``): its generating configuration — resolution,
  levels, time step, seed, initial-state noise, initial state, moisture — **without** the output
  ``spans`` and the ``start`` date. The spans only choose which states are written (the quickstart's
  16-day store and the default 8-month store of the same configuration hold the same states at their
  common times), and the Held–Suarez forcing does not depend on the date, so the same initial state
  dated otherwise is the same trajectory shifted in time; the date is the store's *origin*, and the
  guard compares times since the origin.
- a nature run started from a restart (``initial_state: restart``, :func:`aivarda.data.nature_run.make_restart`):
  the fingerprint and origin of the run the restart was taken from (recorded in the restart and in
  the store's attribute ``aivarda_restart``): it continues that trajectory, so the quickstart's store
  made from the shipped restart of 2000-07-16 is compared with the default world by date.
- any other store (a reanalysis): the world it declares in the attribute ``aivarda_world``
  (default ``"earth"``): every reanalysis store is the real atmosphere, compared by date, whatever
  its grid, variables or time coverage.

``content_fingerprint`` identifies the exact content of one store: its variables and their
dimensions, levels, grid, time axis, ``aivarda_spans`` and a deterministic sample of values (a
strided subset of the first variable's first level at the first, middle and last time). It reads
three 2-D slices, never the whole store, and is stable across re-opening; rewriting the store with
other values, times or spans changes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aivarda.data.sources import _read_json_attr, open_wb2_dataset
from aivarda.provenance import TimeSpan, TrainedOn

if TYPE_CHECKING:
    from aivarda.data.nature_run import NatureRunConfig

WORLD_ATTR = "aivarda_world"
DEFAULT_WORLD = "earth"
VALUE_SAMPLES = 64
"""Values sampled per time slice for the content fingerprint."""


@dataclass(frozen=True)
class StoreIdentity:
    """``fingerprint``: the trajectory (guard); ``origin``: time of a nature run's initial state
    (``None`` for a reanalysis); ``content``: the exact store content; ``path``: where it was."""

    path: str
    fingerprint: str
    origin: np.datetime64 | None
    content: str


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def _normalised_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with today's defaults filled in (as written by this aivarda)."""
    from aivarda.data.nature_run import NatureRunConfig

    try:
        return NatureRunConfig.model_validate(dict(config)).dump()
    except ValueError:  # a store written by another version: hash what it recorded
        return dict(config)


def _restart(config: Mapping[str, Any] | NatureRunConfig) -> dict[str, Any] | None:
    """The checked restart metadata of an ``initial_state: restart`` configuration, else ``None``."""
    from aivarda.data.nature_run import NatureRunConfig, restart_meta

    if (config.initial_state if hasattr(config, "initial_state") else config.get("initial_state")) != "restart":
        return None
    cfg = config if isinstance(config, NatureRunConfig) else NatureRunConfig.model_validate(dict(config))
    return restart_meta(cfg)


def nature_run_fingerprint(config: Mapping[str, Any] | NatureRunConfig) -> str:
    """Trajectory fingerprint of a nature-run configuration (module docstring); a run from a
    restart (``initial_state: restart``) has the fingerprint of the world the restart was taken from."""
    restart = _restart(config)
    if restart is not None:
        return str(restart["fingerprint"])
    cfg = config.dump() if hasattr(config, "dump") else _normalised_config(config)
    cfg = {k: v for k, v in cfg.items() if k not in ("spans", "start")}
    if cfg.get("initial_state") == "spun_up":
        cfg.pop("spin_up_days", None)  # unused when starting from the shipped state
    return _digest({"kind": "aivarda nature run", "config": cfg})


def nature_run_origin(config: Mapping[str, Any] | NatureRunConfig) -> np.datetime64:
    """Date of the world's initial state: ``start``, or the origin a restart records."""
    restart = _restart(config)
    if restart is not None:
        return np.datetime64(restart["origin"], "ns")
    start = config.start if hasattr(config, "start") else config["start"]
    return np.datetime64(start, "ns")


def _path_of(source: Any) -> Path:
    return Path(getattr(source, "path", source))


def store_identity(source: Any) -> StoreIdentity:
    """Fingerprints and origin of a store (a path or a source with ``.path``)."""
    path = _path_of(source)
    ds = open_wb2_dataset(path)
    config = _read_json_attr(ds, "aivarda_config", path)
    restart = _read_json_attr(ds, "aivarda_restart", path)
    if isinstance(restart, Mapping) and "fingerprint" in restart:  # a run from a restart: the world it continues
        fingerprint, origin = str(restart["fingerprint"]), np.datetime64(restart["origin"], "ns")
    elif isinstance(config, Mapping) and "start" in config:
        fingerprint, origin = nature_run_fingerprint(config), nature_run_origin(config)
    else:
        fingerprint, origin = _digest({"kind": "world", "world": str(ds.attrs.get(WORLD_ATTR, DEFAULT_WORLD))}), None
    return StoreIdentity(str(path), fingerprint, origin, _content(ds, path))


def store_fingerprint(source: Any) -> str:
    """Trajectory fingerprint of a store (module docstring)."""
    return store_identity(source).fingerprint


def content_fingerprint(source: Any) -> str:
    """Fingerprint of the exact content of a store (module docstring)."""
    return store_identity(source).content


def _content(ds: Any, path: Path) -> str:
    names = sorted(map(str, ds.data_vars))
    times = np.asarray(ds["time"].values, dtype="datetime64[ns]")
    parts: dict[str, Any] = {
        "variables": {n: list(map(str, ds[n].dims)) for n in names},
        "levels": [float(p) for p in np.asarray(ds["level"].values)] if "level" in ds.coords else None,
        "latitude": _array_digest(np.round(np.asarray(ds["latitude"].values, dtype=np.float64), 6)),
        "longitude": _array_digest(np.round(np.asarray(ds["longitude"].values, dtype=np.float64), 6)),
        "times": _array_digest(times.astype(np.int64)),
        "spans": _read_json_attr(ds, "aivarda_spans", path),
    }
    if names and times.size:
        var = ds[names[0]]
        samples = []
        for i in sorted({0, times.size // 2, times.size - 1}):
            sel = {"time": i, **{d: 0 for d in var.dims if d not in ("time", "latitude", "longitude")}}
            values = np.asarray(var.isel(sel).values, dtype=np.float32).ravel()
            samples.append(values[np.linspace(0, values.size - 1, min(VALUE_SAMPLES, values.size)).astype(int)])
        parts["values"] = _array_digest(np.concatenate(samples))
    return _digest(parts)


def trained_on_record(what: str, source: Any, spans: Sequence[TimeSpan], verb: str = "trained on") -> TrainedOn:
    """The :class:`~aivarda.provenance.TrainedOn` of an artefact that learned ``spans`` of the store
    ``source`` (a path or a source with ``.path``)."""
    identity = store_identity(source)
    return TrainedOn(
        what=what, spans=tuple(spans), store=identity.path, fingerprint=identity.fingerprint,
        origin=identity.origin, verb=verb, content=identity.content,
    )
