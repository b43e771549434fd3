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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aivarda.data.nature_run import nature_run_fingerprint, nature_run_origin, world_digest
from aivarda.data.sources import _read_json_attr, open_wb2_dataset
from aivarda.provenance import TimeSpan, TrainedOn

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


def _array_digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


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
        fingerprint, origin = world_digest({"kind": "world", "world": str(ds.attrs.get(WORLD_ATTR, DEFAULT_WORLD))}), None
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
    return world_digest(parts)


def trained_on_record(what: str, source: Any, spans: Sequence[TimeSpan], verb: str = "trained on") -> TrainedOn:
    """The :class:`~aivarda.provenance.TrainedOn` of an artefact that learned ``spans`` of the store
    ``source`` (a path or a source with ``.path``)."""
    identity = store_identity(source)
    return TrainedOn(
        what=what, spans=tuple(spans), store=identity.path, fingerprint=identity.fingerprint,
        origin=identity.origin, verb=verb, content=identity.content,
    )
