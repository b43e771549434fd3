"""What a trained artefact was trained on, and the guard against scoring in-sample.

Every artefact learned from data (a forecast-model checkpoint, NMC samples, GEN_BE statistics)
records a :class:`TrainedOn`: the store it read, the store's fingerprint, the store's time origin
and the time spans (inclusive) of the states it learned from. Before a run scores anything,
:func:`check_out_of_sample` compares the run's scored times with those records.

**Same trajectory.** Two stores are compared only when they hold the same trajectory, i.e. their
fingerprints (:func:`aivarda.data.fingerprint.store_fingerprint`) are equal. A nature run's
fingerprint is its generating configuration without the output spans and the start date, so two
stores of the default world with different spans (the quickstart's and the default store) are the
same trajectory; a nature run with another seed, resolution or forcing is another world, and
training on one world and scoring on another is not leakage. Reanalysis stores (no generating
configuration) all belong to the world they declare (default: the real atmosphere), compared by date.

**Time origin.** The Held–Suarez forcing does not depend on the date, so the same initial state
dated otherwise is the same trajectory shifted in time. Times are therefore compared relative to the
store's origin ``o`` (the date of a nature run's initial state; ``None`` for a reanalysis): a scored
time ``t`` of a store with origin ``o_E`` is the state ``t + (o_A − o_E)`` of an artefact's store with
origin ``o_A``.

**Decision.** With scored times ``E`` in a store of fingerprint ``f_E``, an artefact record
``(f_A, o_A, {S_k})`` is violated iff

    (f_E = f_A, or either is unknown)  and  ∃ k: S_k ∩ (E + o_A − o_E) ≠ ∅

(a scored span ``E`` as a continuous interval, an array of scored times time by time). A record
without spans (a file written before aivarda recorded provenance) is *unknown provenance*: a
warning, never an error.

This module depends on numpy and :mod:`aivarda.errors` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from aivarda.errors import DataError, LeakageError

OVERRIDE_HINT = "use --allow-in-sample to override"
IN_SAMPLE = "in-sample"
"""Prefix of the warnings :func:`check_out_of_sample` returns for an allowed in-sample run."""
UNKNOWN = "unknown provenance"
"""Prefix of the warnings for artefacts without a training record."""


def parse_time(value: Any, what: str = "time") -> np.datetime64:
    """``np.datetime64[ns]`` of an ISO string, ``datetime`` or ``datetime64``; anything else is a
    DataError naming ``what``."""
    try:
        t = np.datetime64(value.strip() if isinstance(value, str) else value, "ns")
    except (ValueError, TypeError):
        raise DataError(f"{what}: cannot read {value!r} as a time (expected ISO format like 2000-01-01T06:00)") from None
    if np.isnat(t):
        raise DataError(f"{what}: {value!r} is not a valid time")
    return t


def _short(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "m")))


def _iso(t: np.datetime64) -> str:
    return str(np.datetime_as_string(np.datetime64(t, "s")))


@dataclass(frozen=True)
class TimeSpan:
    """The times ``start ≤ t ≤ end`` (inclusive); ``label`` says what they were (``"train"``…)."""

    start: np.datetime64
    end: np.datetime64
    label: str = ""

    def __post_init__(self) -> None:
        start, end = parse_time(self.start, "time span start"), parse_time(self.end, "time span end")
        if end < start:
            raise DataError(f"time span {_short(start)}…{_short(end)}: end is before start")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @classmethod
    def of(cls, times: Sequence[Any] | np.ndarray, label: str = "") -> TimeSpan:
        """The span from the first to the last of ``times``."""
        t = np.asarray(times, dtype="datetime64[ns]")
        if t.size == 0:
            raise DataError(f"time span{f' {label!r}' if label else ''}: no times")
        return cls(t.min(), t.max(), label)

    def shifted(self, delta: np.timedelta64) -> TimeSpan:
        return TimeSpan(self.start + delta, self.end + delta, self.label)

    def intersection(self, other: TimeSpan) -> TimeSpan | None:
        start, end = max(self.start, other.start), min(self.end, other.end)
        return TimeSpan(start, end) if start <= end else None

    @property
    def hours(self) -> float:
        return float((self.end - self.start) / np.timedelta64(1, "h"))

    def text(self) -> str:
        """``2000-01-01T00:00…2000-06-30T18:00``."""
        return f"{_short(self.start)}…{_short(self.end)}"

    def to_dict(self) -> dict[str, str]:
        return {"start": _iso(self.start), "end": _iso(self.end), "label": self.label}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TimeSpan:
        return cls(d["start"], d["end"], str(d.get("label", "")))


@dataclass(frozen=True)
class TrainedOn:
    """What one artefact learned from.

    Attributes:
        what: the artefact, e.g. ``"forecast model fengwu_6h.pt"``.
        spans: the time spans of the states it learned from (empty: unknown provenance).
        store: path of the store it read (informative; stores are compared by ``fingerprint``).
        fingerprint: the store's trajectory fingerprint (``None``: unknown, compared with any store).
        origin: time of the store's initial state (nature runs), ``None`` for a reanalysis.
        verb: ``"trained on"``, ``"fitted on"``…, for messages.
        content: fingerprint of the exact store content (times, spans, sampled values), informative.
        note: how the record was obtained when it was not written with the artefact.
    """

    what: str
    spans: tuple[TimeSpan, ...] = ()
    store: str | None = None
    fingerprint: str | None = None
    origin: np.datetime64 | None = None
    verb: str = "trained on"
    content: str | None = None
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "spans", tuple(self.spans))
        if self.origin is not None:
            object.__setattr__(self, "origin", parse_time(self.origin, f"{self.what}: origin"))

    @property
    def known(self) -> bool:
        """Whether the record says what the artefact learned from."""
        return bool(self.spans)

    def named(self, name: str) -> TrainedOn:
        """The record with ``name`` (e.g. the file name) appended to ``what``."""
        return replace(self, what=f"{self.what} {name}".strip())

    def describe(self) -> str:
        """One line, e.g. ``x.pt trained on 2000-01-01T00:00…2000-06-23T12:00 (train), … of store 3f2a…``."""
        if not self.known:
            return f"{self.what}: {UNKNOWN}" + (f" ({self.note})" if self.note else "")
        spans = ", ".join(s.text() + (f" ({s.label})" if s.label else "") for s in self.spans)
        return f"{self.what} {self.verb} {spans} of store {self.fingerprint or '(unidentified)'}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (times as ISO strings)."""
        return {
            "what": self.what,
            "verb": self.verb,
            "store": self.store,
            "fingerprint": self.fingerprint,
            "origin": None if self.origin is None else _iso(self.origin),
            "content": self.content,
            "spans": [s.to_dict() for s in self.spans],
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "trained_on") -> TrainedOn:
        """Inverse of :meth:`to_dict`; a malformed record is a DataError naming ``where``."""
        try:
            return cls(
                what=str(d["what"]),
                spans=tuple(TimeSpan.from_dict(s) for s in d.get("spans", ())),
                store=d.get("store"),
                fingerprint=d.get("fingerprint"),
                origin=d.get("origin"),
                verb=str(d.get("verb", "trained on")),
                content=d.get("content"),
                note=str(d.get("note", "")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}: malformed training record ({type(exc).__name__}: {exc})") from None


def records_to_json(records: Sequence[TrainedOn]) -> list[dict[str, Any]]:
    return [r.to_dict() for r in records]


def records_from_json(data: Any, where: str = "trained_on") -> list[TrainedOn]:
    if not isinstance(data, (list, tuple)):
        raise DataError(f"{where}: expected a list of training records, got {type(data).__name__}")
    return [TrainedOn.from_dict(d, where) for d in data]


def _duration(span: TimeSpan, n_times: int | None) -> str:
    if span.hours == 0:
        return "1 time"
    length = f"{span.hours:g} h" if span.hours < 48 else f"{span.hours / 24:.1f} days"
    return length if n_times is None else f"{n_times} times, {length}"


def _overlap(
    evaluated: TimeSpan | np.ndarray, span: TimeSpan, shift: np.timedelta64
) -> tuple[TimeSpan, int | None] | None:
    """The part of ``evaluated`` (shifted into the artefact's time) inside ``span``, and how many
    evaluated times that is (``None`` for a continuous span)."""
    if isinstance(evaluated, TimeSpan):
        inter = evaluated.shifted(shift).intersection(span)
        return None if inter is None else (inter, None)
    t = evaluated + shift
    inside = t[(t >= span.start) & (t <= span.end)]
    return None if inside.size == 0 else (TimeSpan.of(inside), int(inside.size))


def _as_evaluated(evaluated: TimeSpan | Sequence[Any] | np.ndarray) -> tuple[TimeSpan | np.ndarray, TimeSpan]:
    if isinstance(evaluated, TimeSpan):
        return evaluated, evaluated
    times = np.unique(np.asarray(evaluated, dtype="datetime64[ns]"))
    if times.size == 0:
        raise DataError("leakage guard: the run scores no times")
    return times, TimeSpan.of(times)


def check_out_of_sample(
    evaluated: TimeSpan | Sequence[Any] | np.ndarray,
    artefacts: Sequence[TrainedOn],
    *,
    store_fingerprint: str | None,
    origin: np.datetime64 | str | None = None,
    allow_in_sample: bool = False,
) -> list[str]:
    """Refuse to score times an artefact learned from (module docstring).

    Args:
        evaluated: the times the run scores: a :class:`TimeSpan` (continuous) or an array of times.
        artefacts: the records of every trained artefact the run uses.
        store_fingerprint: fingerprint of the store the run reads its truth from (``None``:
            unidentified, compared with every artefact).
        origin: that store's time origin (``None`` for a reanalysis).
        allow_in_sample: return the overlaps as warnings instead of raising.

    Returns:
        Warnings to stamp on every output: one per overlap (prefix ``"in-sample"``) when allowed,
        one per artefact of unknown provenance (prefix ``"unknown provenance"``).

    Raises:
        LeakageError: one line naming the first overlapping artefact, its span, its store and the
            overlapping scored span, unless ``allow_in_sample``.
    """
    ev, hull = _as_evaluated(evaluated)
    eval_origin = None if origin is None else parse_time(origin, "leakage guard: origin")
    unknown: list[str] = []
    leaks: list[str] = []
    for a in artefacts:
        if not a.known:
            unknown.append(f"{UNKNOWN}: {a.what} has no record of what it was {a.verb}"
                           + (f" ({a.note})" if a.note else "") + "; cannot check that the run is out of its sample")
            continue
        if store_fingerprint is not None and a.fingerprint is not None and a.fingerprint != store_fingerprint:
            continue  # another trajectory: not leakage
        shift = np.timedelta64(0, "ns")
        if a.origin is not None and eval_origin is not None:
            shift = a.origin - eval_origin
        for span in a.spans:
            hit = _overlap(ev, span, shift)
            if hit is None:
                continue
            inter, n = hit
            same = "" if shift == 0 else f", the same states as {inter.text()} of that trajectory"
            label = f" ({span.label})" if span.label else ""
            leaks.append(
                f"{a.what} was {a.verb} {span.text()}{label} of store {a.fingerprint or '(unidentified)'}; "
                f"the run scores {hull.text()} (overlap {inter.shifted(-shift).text()}{same}: {_duration(inter, n)})"
            )
    if leaks and not allow_in_sample:
        more = f" (and {len(leaks) - 1} more overlap{'s' if len(leaks) > 2 else ''})" if len(leaks) > 1 else ""
        raise LeakageError(f"{leaks[0]}{more}; {OVERRIDE_HINT}")
    return [f"{IN_SAMPLE} (allowed by --allow-in-sample): {line}" for line in leaks] + unknown


def provenance_record(
    evaluated: TimeSpan | Sequence[Any] | np.ndarray,
    artefacts: Sequence[TrainedOn],
    *,
    store_fingerprint: str | None,
    origin: np.datetime64 | str | None = None,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """What to stamp on a run's outputs (JSON-safe): the scored span, the store, the artefacts'
    records, the guard's warnings and whether the run is in-sample."""
    _, hull = _as_evaluated(evaluated)
    return {
        "evaluated": hull.to_dict(),
        "store_fingerprint": store_fingerprint,
        "origin": None if origin is None else _iso(parse_time(origin, "origin")),
        "in_sample": any(w.startswith(IN_SAMPLE) for w in warnings),
        "warnings": list(warnings),
        "artefacts": records_to_json(artefacts),
    }
