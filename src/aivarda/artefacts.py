"""What the trained artefacts a run uses were trained on: readers of their
:class:`~aivarda.provenance.TrainedOn` records, for the leakage guard.

- :func:`trained_on_of_checkpoint`: forecast-model checkpoints (``aivarda train-model``); the
  record is ``metadata["trained_on"]`` (own record first, then what the ``init_from`` weights
  learned from). Checkpoints written before that record existed (the shipped ``fengwu_6h.pt`` and
  ``fengwu_1h.pt``) carry their training configuration; the record is derived from it
  (:func:`derived_from_training_config`): the data source, the training span and the validation
  span (``val_span``, or the last ``val_fraction`` of the training span) as training used them.
- :func:`trained_on_of_genbe`: GEN_BE statistics and NMC sample files (``aivarda learn-b``): the
  truth times the samples read. Older files: derived from the sample metadata (the whole span of the
  store the samples came from) when that store is still there.
- :func:`trained_on_of_vae`: VAE background-error checkpoints (``aivarda learn-b vae``): those of
  their NMC samples; older files have unknown provenance.

A file whose provenance cannot be established gives a record without spans: the guard reports it
as *unknown provenance* (a warning, never an error).

This is a driver-level module: it reads stores (:mod:`aivarda.data`) and model files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from aivarda.errors import DataError
from aivarda.provenance import TimeSpan, TrainedOn, records_from_json
from aivarda.timeaxis import from_hours

DERIVED_NOTE = (
    "derived from the training configuration the checkpoint recorded (written before aivarda recorded provenance)"
)


def _load(path: Path, what: str) -> dict[str, Any]:
    import torch

    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is a user error here
        raise DataError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict):
        raise DataError(f"{path}: not an aivarda {what}")
    return payload


def _named(records: list[TrainedOn], name: str | None) -> list[TrainedOn]:
    """Put the file name in front of the artefact's own (first) record."""
    if not records or not name:
        return records
    return [replace(records[0], what=f"{name} ({records[0].what})"), *records[1:]]


def trained_on_of_checkpoint(checkpoint: dict[str, Any] | str | Path, name: str | None = None) -> list[TrainedOn]:
    """Records of a forecast-model checkpoint (a path or a loaded checkpoint dict; ``name``
    defaults to the file name)."""
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        name = name or path.name
        checkpoint = _load(path, "forecast-model checkpoint")
    meta = checkpoint.get("metadata") or {}
    what = f"forecast model {meta.get('name', '(unnamed)')}"
    if meta.get("trained_on"):
        return _named(records_from_json(meta["trained_on"], f"{name or what}: metadata.trained_on"), name)
    try:
        records = [derived_from_training_config(meta, what)]
    except (DataError, KeyError, TypeError, ValueError) as exc:
        records = [TrainedOn(what, note=f"no training record, and none could be derived: {exc}")]
    return _named(records, name)


def _span_times(store: Path | None, span: str, nature_run: Any) -> np.ndarray:
    if nature_run is not None:
        if span not in nature_run.spans:
            raise DataError(f"the default nature run has no span {span!r}")
        return nature_run.spans[span].times()
    from aivarda.data.sources import Wb2ZarrSource, store_layout

    return Wb2ZarrSource(store, store_layout(store), span=span).times  # type: ignore[arg-type]


def derived_from_training_config(meta: dict[str, Any], what: str) -> TrainedOn:
    """The record of a checkpoint written before records existed, from its ``metadata``: the
    training config's data section and the store it named.

    ``data.source: nature_run`` whose recorded store is the default nature run's (same file name,
    i.e. the same configuration hash) gives the default configuration's spans without reading the
    store; otherwise the recorded store must still exist and is read.
    """
    from aivarda.data.fingerprint import nature_run_fingerprint, nature_run_origin, store_identity
    from aivarda.data.nature_run import NatureRunConfig, default_store_path
    from aivarda.data.sources import holdout_cut

    data = meta["config"]["data"]
    store = Path(meta["store"]) if meta.get("store") else None
    nature_run = None
    if data.get("source") == "nature_run":
        default = NatureRunConfig()
        if store is None or store.name == default_store_path(default).name:
            nature_run = default
    if nature_run is None and (store is None or not store.exists()):
        raise DataError(f"the store it was trained on ({store}) is not available")
    train = _span_times(store, data["train_span"], nature_run)
    if data.get("val_span"):
        val = _span_times(store, data["val_span"], nature_run)
    elif float(data.get("val_fraction", 0) or 0) > 0:
        cut = holdout_cut(train.size, float(data["val_fraction"]), f"span {data['train_span']!r}")
        train, val = train[:cut], train[cut:]
    else:
        val = None
    spans = [TimeSpan.of(train, "train")] + ([TimeSpan.of(val, "validation")] if val is not None else [])
    if nature_run is not None:
        fingerprint, origin, content = nature_run_fingerprint(nature_run), nature_run_origin(nature_run), None
    else:
        identity = store_identity(store)
        fingerprint, origin, content = identity.fingerprint, identity.origin, identity.content
    return TrainedOn(
        what, tuple(spans), str(store) if store else None, fingerprint, origin, "trained on", content, DERIVED_NOTE
    )


def trained_on_of_genbe(path: str | Path) -> list[TrainedOn]:
    """Records of a GEN_BE statistics file or an NMC sample file."""
    path = Path(path)
    payload = _load(path, "GEN_BE statistics or NMC sample file")
    fmt = payload.get("format")
    if fmt not in ("aivarda-genbe", "aivarda-nmc-samples"):
        raise DataError(f"{path}: not a GEN_BE statistics or NMC sample file (format {fmt!r})")
    meta = payload.get("metadata") or {}
    what = "GEN_BE statistics" if fmt == "aivarda-genbe" else "NMC samples"
    if meta.get("trained_on"):
        return _named(records_from_json(meta["trained_on"], f"{path}: metadata.trained_on"), path.name)
    samples_meta = meta.get("samples", {}) if fmt == "aivarda-genbe" else meta
    try:
        record = _derived_from_samples_metadata(samples_meta, what)
    except (DataError, KeyError, TypeError, ValueError) as exc:
        record = TrainedOn(what, note=f"no record, and none could be derived: {exc}")
    return _named([record], path.name)


def trained_on_of_vae(path: str | Path) -> list[TrainedOn]:
    """Records of a VAE checkpoint (``metadata["trained_on"]``: its NMC samples' records); a file
    without them has unknown provenance."""
    path = Path(path)
    payload = _load(path, "VAE checkpoint")
    if payload.get("format") != "aivarda-vae":
        raise DataError(f"{path}: not a VAE checkpoint (format {payload.get('format')!r})")
    meta = payload.get("metadata") or {}
    if meta.get("trained_on"):
        return _named(records_from_json(meta["trained_on"], f"{path}: metadata.trained_on"), path.name)
    return _named([TrainedOn("VAE background error", note="no record (written before aivarda recorded it)")], path.name)


def _derived_from_samples_metadata(meta: dict[str, Any], what: str) -> TrainedOn:
    """Conservative record of old samples: the whole span they were drawn from, extended back by
    the longest lead (or lag) the samples reach."""
    from aivarda.data.fingerprint import trained_on_record
    from aivarda.data.sources import Wb2ZarrSource, store_layout

    store = Path(meta["source"])
    if not store.exists():
        raise DataError(f"the store the samples came from ({store}) is not available")
    times = Wb2ZarrSource(store, store_layout(store), span=meta.get("span")).times
    back = float(meta.get("long_lead_hours", meta.get("lag_hours", 0)))
    start = times[0] - from_hours(back)
    record = trained_on_record(what, store, [TimeSpan(start, times[-1], str(meta.get("span") or ""))], "fitted on")
    note = "derived from the sample metadata: the whole span (written before aivarda recorded provenance)"
    return replace(record, note=note)


# ------------------------------------------------------------------------------------------ drivers
def trained_on_of_model(model: Any) -> list[TrainedOn]:
    """Records of a forecast model as a config names it (:class:`~aivarda.models.config.ModelConfig`,
    its mapping, a model YAML or a checkpoint path): an aivarda checkpoint's records; a ``module``
    with a state dict is of unknown provenance; a ``module`` without weights learned nothing."""
    from aivarda.config import load_config, validate
    from aivarda.models.config import ModelConfig

    if isinstance(model, (str, Path)):
        if Path(model).suffix not in (".yaml", ".yml"):
            return trained_on_of_checkpoint(expand(model))
        model = load_config(model, ModelConfig)
    elif isinstance(model, dict):
        model = validate(ModelConfig, model, "model")
    if model.module is None:
        return trained_on_of_checkpoint(expand(model.checkpoint))
    if model.checkpoint is not None:
        return [TrainedOn(f"module {model.module} weights {Path(model.checkpoint).name}", note="a plain state dict")]
    return []


def trained_on_of_background_error(b: Any) -> list[TrainedOn]:
    """Records of a ``background_error`` section (a mapping or its config object): the GEN_BE file
    of ``type: genbe``, the checkpoint of ``type: vae``; other types read no fitted file (a diagonal B's statistics: see
    :func:`trained_on_of_norm_stats`)."""
    get = b.get if isinstance(b, dict) else lambda key, default=None: getattr(b, key, default)
    if get("type") == "genbe":
        return trained_on_of_genbe(expand(get("file")))
    if get("type") == "vae":
        return trained_on_of_vae(expand(get("checkpoint")))
    return []


def trained_on_of_norm_stats(stats: Any, source: Any, what: str = "normalisation statistics") -> list[TrainedOn]:
    """The record of :class:`~aivarda.data.stats.NormStats` computed on ``source`` (their
    ``span``); statistics without a span (older caches) are of unknown provenance."""
    from aivarda.data.fingerprint import trained_on_record

    if getattr(stats, "span", None) is None:
        return [TrainedOn(what, note="statistics written before their span was recorded")]
    return [trained_on_record(what, source, [TimeSpan(*stats.span, label="statistics")], verb="computed on")]


def expand(path: Any) -> Path:
    from aivarda.paths import expand_path

    return expand_path(path)


def guard_run(
    evaluated: Any, source: Any, artefacts: list[TrainedOn], *, allow_in_sample: bool = False
) -> dict[str, Any]:
    """The leakage guard for a run that scores ``evaluated`` (a :class:`TimeSpan` or times) against
    the truth of ``source`` (a store path or a source with ``.path``) with ``artefacts``: raises
    :class:`~aivarda.errors.LeakageError` on an overlap unless ``allow_in_sample``; returns the
    record to stamp on every output (``provenance_record`` plus the store's content fingerprint),
    whose ``warnings`` the driver also prints."""
    from aivarda.data.fingerprint import store_identity
    from aivarda.provenance import check_out_of_sample, provenance_record

    identity = store_identity(source)
    warnings = check_out_of_sample(
        evaluated, artefacts, store_fingerprint=identity.fingerprint, origin=identity.origin,
        allow_in_sample=allow_in_sample,
    )
    record = provenance_record(
        evaluated, artefacts, store_fingerprint=identity.fingerprint, origin=identity.origin, warnings=warnings
    )
    return {**record, "store": identity.path, "store_content": identity.content}


def trained_on_of_file(path: str | Path) -> list[TrainedOn]:
    """Records of any aivarda artefact file (forecast-model checkpoint, GEN_BE statistics, NMC samples, VAE)."""
    path = Path(path)
    fmt = _load(path, "artefact file").get("format")
    if fmt == "aivarda-forecast-model":
        return trained_on_of_checkpoint(path)
    if fmt in ("aivarda-genbe", "aivarda-nmc-samples"):
        return trained_on_of_genbe(path)
    if fmt == "aivarda-vae":
        return trained_on_of_vae(path)
    raise DataError(f"{path}: not an aivarda checkpoint, GEN_BE statistics, NMC sample file or VAE (format {fmt!r})")


def main(args: Any) -> int:
    """``aivarda provenance FILE... [--store STORE --from T --to T [--allow-in-sample]] [--json]``."""
    import json

    records = [r for f in args.files for r in trained_on_of_file(f)]
    check = None
    if args.store is not None or args.start is not None or args.end is not None:
        if args.store is None or args.start is None or args.end is None:
            raise DataError("provenance: --store, --from and --to go together (the period a run would score)")
        check = guard_run(TimeSpan(args.start, args.end), args.store, records, allow_in_sample=args.allow_in_sample)
    if args.json:
        print(json.dumps(check or {"artefacts": [r.to_dict() for r in records]}, indent=1))
        return 0
    for r in records:
        print(r.describe() + (f"  [{r.note}]" if r.note and r.known else ""))
    if check is not None:
        for w in check["warnings"]:
            print(f"warning: {w}")
        print(f"{check['evaluated']['start']} … {check['evaluated']['end']} of {args.store}: "
              + ("IN-SAMPLE (allowed)" if check["in_sample"] else "out of sample"))
    return 0
