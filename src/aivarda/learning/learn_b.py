"""``aivarda learn-b nmc CONFIG`` and ``aivarda learn-b genbe CONFIG``.

``nmc`` writes the NMC samples of the config's ``nmc`` section to ``--out`` or to the cache
``$AIVARDA_HOME/b/nmc_<name>_<key>.pt`` (the key identifies source and settings; a cached file is
reused, an explicit ``--out`` that exists is refused unless ``--force``). ``genbe`` fits the
statistics from ``--samples`` / ``samples:`` / the cached samples (made first if missing) and writes
``--out`` / ``output:`` / ``$AIVARDA_HOME/b/genbe_<name>.pt`` (refused if it exists, unless ``--force``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aivarda.background.genbe.config import LearnBConfig
from aivarda.background.genbe.fit import FitSettings, GenBeStatistics, fit_genbe
from aivarda.config import load_config, read_yaml
from aivarda.errors import DataError
from aivarda.files import check_writable_file
from aivarda.learning.nmc import (
    NmcSamples,
    evenly,
    forecast_differences,
    lagged_differences,
    valid_times,
)
from aivarda.paths import cache_dir
from aivarda.provenance import TimeSpan, TrainedOn, records_from_json, records_to_json
from aivarda.sphere import Regrid
from aivarda.timeaxis import from_hours, hours


def make_samples(cfg: LearnBConfig, progress: bool = True) -> NmcSamples:
    """NMC samples as the ``nmc`` section describes, from the ``data`` source."""
    from aivarda.data.sources import open_source

    nmc = cfg.nmc
    source = open_source(cfg.data, span=nmc.span)
    full = source if nmc.span is None else open_source(cfg.data)
    store_grid = nmc.grid.grid() if nmc.grid is not None else source.grid
    regrid = None if store_grid == source.grid else Regrid(source.grid, store_grid)
    where = f"{getattr(source, 'path', 'source')}"
    if nmc.kind == "forecast":
        from aivarda.models.checkpoint import load_forecast_model

        assert nmc.model is not None
        model = load_forecast_model(nmc.model)
        source.geometry.check_same(model.geometry, "nmc.model")
        offsets = [hours(nmc.long_lead), hours(nmc.short_lead)]
        reach = offsets[0]
        times = evenly(valid_times(source.times, full.times, offsets), nmc.max_samples)
        _require(times, where, f"initial states {offsets[0]:g} h and {offsets[1]:g} h earlier", nmc.span)
        samples = forecast_differences(
            model, full, times, offsets[0], offsets[1], nmc.batch_size, regrid, progress
        )
        meta: dict[str, Any] = {"long_lead_hours": offsets[0], "short_lead_hours": offsets[1], "model_dt": float(model.dt)}
    else:
        lag = reach = hours(nmc.lag)
        times = evenly(valid_times(source.times, full.times, [lag]), nmc.max_samples)
        _require(times, where, f"a truth state {lag:g} h earlier", nmc.span)
        samples = lagged_differences(full, times, lag, nmc.batch_size, regrid, progress)
        meta = {"lag_hours": lag, "note": "lagged-truth stand-in for NMC samples (no forecast model)"}
    meta.update({"source": where, "span": nmc.span, "config": json.loads(cfg.model_dump_json())})
    meta["trained_on"] = records_to_json([samples_record(source, times, reach, nmc.span)])
    return NmcSamples(samples, times, store_grid, source.grid, source.layout, nmc.kind, meta)


def samples_record(source: Any, valid_times: Any, reach_hours: float, span: str | None) -> TrainedOn:
    """The truth times NMC samples read: from the earliest initial state (``reach_hours`` before
    the first valid time) to the last valid time."""
    from aivarda.data.fingerprint import trained_on_record

    reach = from_hours(reach_hours)
    truth = TimeSpan(valid_times.min() - reach, valid_times.max(), span or "")
    return trained_on_record("NMC samples", source, [truth], verb="drawn from")


def _require(times: Any, where: str, what: str, span: str | None) -> None:
    if times.size < 2:
        raise DataError(f"{where}: fewer than 2 valid times in span {span!r} with {what}; need at least 2 NMC samples")


def default_samples_path(cfg: LearnBConfig) -> Path:
    from aivarda.data.sources import open_source

    source = open_source(cfg.data, span=cfg.nmc.span)
    token = source.cache_token() if hasattr(source, "cache_token") else str(getattr(source, "path", ""))
    return cache_dir("b") / f"nmc_{cfg.name}_{cfg.nmc_key(token)}.pt"


def _check_new(path: Path, force: bool) -> None:
    """Refuse, before anything is computed, an existing output (without ``--force``), a folder, or
    a file that cannot be written."""
    if path.exists() and not path.is_dir() and not force:
        raise DataError(f"{path}: exists; choose another --out or pass --force to replace it")
    check_writable_file(path, "the output file")


def load_learn_b_config(path: Path) -> LearnBConfig:
    """A ``learn-b`` YAML: :class:`LearnBConfig`, or the VAE's extension of it when the file has a
    ``vae`` section (so ``learn-b nmc`` makes the samples of a ``learn-b vae`` config)."""
    if "vae" in read_yaml(path):
        from aivarda.background.vae.config import LearnVaeConfig

        return load_config(path, LearnVaeConfig)
    return load_config(path, LearnBConfig)


def nmc_main(args: argparse.Namespace) -> int:
    """``aivarda learn-b nmc CONFIG [--out FILE] [--force] [--quiet]``."""
    cfg = load_learn_b_config(args.config)
    if args.out is not None:
        out = Path(args.out)
        _check_new(out, args.force)
    else:
        out = default_samples_path(cfg)
        check_writable_file(out, "the sample cache")
        if out.is_file() and not args.force:
            print(f"NMC samples already cached: {out} ({len(NmcSamples.load(out))} samples)")
            return 0
    t0 = time.perf_counter()
    samples = make_samples(cfg, progress=not args.quiet)
    samples.save(out)
    print(
        f"{len(samples)} {samples.kind} samples on {samples.grid.describe()} "
        f"({len(samples.layout)} channels) in {time.perf_counter() - t0:.1f} s: {out}"
    )
    return 0


def load_or_make_samples(cfg: LearnBConfig, samples_path: Path | None, progress: bool) -> NmcSamples:
    """Samples from an explicit file, else from the cache (made and cached if missing)."""
    path = samples_path or cfg.samples
    if path is not None:
        return NmcSamples.load(path)
    path = default_samples_path(cfg)
    if path.is_file():
        return NmcSamples.load(path)
    samples = make_samples(cfg, progress)
    samples.save(path)
    return samples


def fit_from_config(cfg: LearnBConfig, samples: NmcSamples, progress: bool = False) -> GenBeStatistics:
    g = cfg.genbe
    settings = FitSettings(
        vertical=g.vertical, balance=g.balance, balanced=tuple(g.balanced), bands=g.bands, ridge=g.ridge, lmax=g.lmax
    )
    control = g.control_grid.grid() if g.control_grid is not None else samples.grid
    return fit_genbe(
        samples.samples,
        samples.layout,
        samples.grid,
        control,
        settings,
        metadata={
            "samples_kind": samples.kind, "samples": samples.metadata, "name": cfg.name,
            "trained_on": records_to_json(fitted_on(samples.metadata)),
        },
        state_grid=samples.state_grid,
        progress=progress,
    )


def fitted_on(samples_metadata: dict[str, Any], what: str = "GEN_BE statistics", verb: str = "fitted on") -> list[TrainedOn]:
    """The records of an artefact made from NMC samples (GEN_BE statistics, a VAE): those of its
    samples, as ``what`` ``verb`` (none for samples written before records existed: the artefact
    then has unknown provenance)."""
    records = records_from_json(samples_metadata.get("trained_on", []), "NMC samples: metadata.trained_on")
    return [replace(r, what=what, verb=verb) for r in records]


def summary(stats: GenBeStatistics) -> list[dict[str, Any]]:
    """One row per control variable: levels, variance share of the first mode, length scales (km)."""
    rows = []
    for var in stats.variables:
        name = var["name"]
        lam = stats.eigenvalues[name]
        rows.append(
            {
                "variable": name,
                "levels": int(var["levels"]),
                "mode1_share": float(lam[0] / lam.sum()) if float(lam.sum()) > 0 else float("nan"),
                "L_km": [round(float(x) / 1000.0, 1) for x in stats.length_scale[name]],
                "balanced": name in stats.regression,
            }
        )
    return rows


def genbe_main(args: argparse.Namespace) -> int:
    """``aivarda learn-b genbe CONFIG [--samples FILE] [--out FILE] [--force] [--json]``."""
    cfg = load_learn_b_config(args.config)
    out = Path(args.out) if args.out is not None else cfg.output or cache_dir("b") / f"genbe_{cfg.name}.pt"
    _check_new(out, args.force)
    samples = load_or_make_samples(cfg, args.samples, progress=not args.json)
    t0 = time.perf_counter()
    stats = fit_from_config(cfg, samples, progress=not args.json)
    stats.save(out)
    rows = summary(stats)
    if args.json:
        print(json.dumps({"output": str(out), "n_samples": len(samples), "variables": rows}, indent=1))
    else:
        print(
            f"GEN_BE from {len(samples)} {samples.kind} samples: control grid {stats.control_grid.describe()} "
            f"(L = {stats.lmax}), state grid {stats.state_grid.describe()}, fitted in {time.perf_counter() - t0:.1f} s"
        )
        for r in rows:
            ls = ", ".join(f"{x:g}" for x in r["L_km"][:5]) + (" …" if len(r["L_km"]) > 5 else "")
            print(f"  {r['variable']:>5} levels {r['levels']:>2}  mode-1 share {r['mode1_share']:.2f}  "
                  f"{'balanced ' if r['balanced'] else ''}L/km: {ls}")
        print(f"statistics: {out}")
    return 0
