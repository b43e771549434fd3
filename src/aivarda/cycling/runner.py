"""The cycling runner (``aivarda run CONFIG [--resume]``).

It receives built parts (:func:`aivarda.components.build_components`: the truth, the method, its
window model, statistics, simulator, B) and the cycling model, and asks the method what differs.
Cycle ``n`` at ``t_n = start_time + n·cycle_time``:

1. background ``x_b = M(x_a(n − 1))``, the lead-1 member of the time-lagged ensemble store
   (:mod:`aivarda.cycling.ensemble`; before the first analysis the members come from the truth
   ``gap`` cycles earlier), and the members valid at ``t_n`` when the method or the B needs them;
   a method whose ``needs.ensemble_source`` is ``"own"`` (an LETKF) cycles its own ensemble
   instead: its members are the one-cycle forecasts of its analysis members and ``x_b`` their mean;
2. the window's observations from the observation source (``observations.source``: simulated
   from the truth at the method's window times with ``SeedSequence([seed, n])``, the same draws
   when a run is resumed, from a station network, or read from the cycle's file;
   :mod:`aivarda.observations.sources`), quality-controlled against the method's background window;
3. a B that declares it needs the ensemble is updated with the members through the method (its
   wall time ``wall_b_update``; a :class:`~aivarda.background.transforms.ReportingTransform`'s
   numbers as ``b_<name>`` columns);
4. ``x_a = x_b + U z*`` by the method (:func:`aivarda.assimilation.analysis.analyse_window`);
5. scores against the truth and in observation space (O−B, O−A, withheld observations; by report
   type and variable for station reports, :mod:`aivarda.evaluation.station_stats`), the
   minimiser's diagnostics and the wall time of each stage;
6. forecasts of ``x_a`` for 1…``dynamic_member`` cycles into the ensemble store (1 cycle, the next
   background, when neither the method nor its B uses the ensemble; ``"own"``: the
   analysis members forecast one cycle), and every
   ``forecast.every`` cycles a ``forecast.lead`` forecast scored against the truth;
7. outputs, then the commit (:mod:`aivarda.cycling.state`), with the state of a B that has per-cycle
   state (:class:`~aivarda.background.transforms.StatefulTransform`), restored by ``--resume``:
   with ``outputs.forecast_fields`` the scored forecasts' fields (lead 0 = the analysis) go to
   ``forecasts.zarr`` as they are made, in the WeatherBench2 forecast layout; every field file
   carries CF metadata (:mod:`aivarda.data.cf`).
"""

from __future__ import annotations

import argparse
import json
import time as wallclock
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aivarda.assimilation.analysis import analyse_window
from aivarda.background.transforms import ReportingTransform, StatefulTransform
from aivarda.components import build_components, leakage_guard, load_model
from aivarda.config import load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.ensemble import LaggedEnsemble, initial_truth_times
from aivarda.cycling.outputs import (
    WALL_STAGES,
    StateSeries,
    metrics_row,
    write_metrics,
    write_states,
)
from aivarda.cycling.state import RunDirectory
from aivarda.data.cf import global_attrs
from aivarda.errors import DataError
from aivarda.evaluation.diagnostics import minimizer_summary, observation_space, state_scores
from aivarda.evaluation.metrics import baseline_scores
from aivarda.evaluation.provenance import code_provenance
from aivarda.evaluation.station_stats import departure_columns, departure_record, write_departures
from aivarda.files import atomic_write, atomic_write_json
from aivarda.models.base import ForecastModel, iterate_trajectory
from aivarda.models.checkpoint import load_forecast_model
from aivarda.models.distributed import MemberParallelModel, serve, stop_serving
from aivarda.parallel import end_distributed, setup_distributed
from aivarda.provenance import TimeSpan
from aivarda.ranges import check_state
from aivarda.timeaxis import hours, steps_between, to_timedelta64

SERVE_TIMEOUT = timedelta(hours=12)
"""How long the serving processes of a torchrun launch wait for process 0's next member forecast
(its setup, analyses and outputs come between them)."""

Hook = Callable[[int, str], None]
"""``hook(cycle, stage)`` is called after each stage (``background``, ``observations``, ``analysis``,
``forecast``, ``outputs``); tests use it to interrupt a run at a chosen point."""


def cycle_seed(seed: int, cycle: int) -> int:
    """The torch seed of cycle ``cycle`` (independent of earlier cycles, so resumes draw the same)."""
    return int(np.random.SeedSequence([seed, cycle]).generate_state(1)[0])


class CyclingRunner:
    """Runs a :class:`CyclingConfig` into the run directory ``out`` (default: its ``output_dir``)."""

    def __init__(self, cfg: CyclingConfig, out: str | Path | None = None, *, progress: bool = True,
                 hook: Hook | None = None, wrap_model: Callable[[ForecastModel], ForecastModel] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(out) if out is not None else Path(cfg.output_dir)
        self.progress = progress
        self.hook: Hook = hook or (lambda cycle, stage: None)
        # the cycling model as the run uses it (under torchrun: its member forecasts shared, main())
        self.wrap_model = wrap_model or (lambda model: model)

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from aivarda.data.sources import open_source

        cfg = self.cfg
        model_cfg = cfg.forecast_model_config()  # a missing default model is an error before any data is made
        self.parts = parts = build_components(cfg, error_hours=hours(cfg.cycle_time), progress=self.progress)
        self.source, self.geometry, self.method = parts.source, parts.geometry, parts.method
        self.grid, self.layout = self.geometry.grid, self.geometry.layout
        self.truth_times = self.source.times if cfg.span is None else open_source(cfg.data, span=cfg.span).times
        self.times = cfg.cycle_times()
        self.cycle_step = to_timedelta64(cfg.cycle_time)
        self.device = torch.device(cfg.torch_device())
        self.model = self.wrap_model(load_model(model_cfg, self.geometry, "model", str(self.device)))
        self.steps_per_cycle = steps_between(cfg.cycle_time, self.model.dt, "cycle_time")
        self.window = self.method.window(self.times[0], parts.window_model)
        self.needs_members = parts.b_needs_ensemble or self.method.needs.ensemble
        self.own_ensemble = self.method.needs.ensemble_source == "own"  # the method cycles its own ensemble
        # members kept per cycle: the ensemble when the method or its B uses one, else the background alone
        self.members = cfg.dynamic_member if self.needs_members or self.own_ensemble else 1
        self.stats = parts.stats
        self.forecast_cycles = int(cfg.forecast.lead / cfg.cycle_time) if cfg.forecast.every else 0
        self._check_truth()
        self.provenance = leakage_guard(cfg, parts, self._scored_span(), [model_cfg])
        from aivarda.data.stats import climatology

        self.climatology = climatology(parts.statistics_source, progress=self.progress).to(self.device)

    def _scored_span(self) -> TimeSpan:
        """Every valid time the run scores: analyses, the window times, forecasts (to the store's end)."""
        last = self.times[-1] + self.window.offsets[-1]
        if self.forecast_cycles:
            last = max(last, min(self.times[-1] + self.forecast_cycles * self.cycle_step, self.source.times[-1]))
        return TimeSpan(self.times[0], last)

    def _initial_truth_times(self) -> np.ndarray:
        return initial_truth_times(self.times[0], self.cycle_step, self.cfg.gap, self.members)

    def _check_truth(self) -> None:
        needed = np.concatenate([self._initial_truth_times(), (self.times[:, None] + self.window.offsets[None, :]).ravel(),
                                 (self.times - self.cycle_step).astype("datetime64[ns]")])  # persistence baseline
        missing = needed[~np.isin(needed, self.truth_times)]
        if missing.size:
            raise DataError(
                f"{getattr(self.source, 'path', 'data')}: {missing.size} truth times the run needs are missing, "
                f"first {np.datetime_as_string(missing.min(), 'm')} (the initial members need gap + members − 1 = {self.cfg.gap + self.members - 1} "
                f"cycles before start_time; the method's windows need their {self.window.n_times} times)"
            )

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> list[dict[str, Any]]:
        """Run (or resume) every cycle; returns the per-cycle records."""
        cfg = self.cfg
        run_dir = RunDirectory(self.out)
        dump = cfg.model_dump(mode="json")
        dump["output_dir"] = str(self.out)
        n_cycles = len(cfg.cycle_times())
        run_dir.check(resume)
        self._setup()  # validates models and data before anything is written
        state, records = run_dir.open(dump, n_cycles, resume)
        metadata = self.out / "metadata.json"
        code = code_provenance()
        if not metadata.is_file():  # the code, host, store and leakage record of the run's first start
            atomic_write_json(metadata, {**code, "store_fingerprint": self.provenance["store_fingerprint"],
                                         "store_content": self.provenance["store_content"], "leakage": self.provenance})
        self.ensemble = LaggedEnsemble(run_dir.ensemble_dir, self.members, n_cycles, layout=self.layout)
        self.commit = code["git_commit"]
        self.series = self._series()
        self.analyses, self.backgrounds = self.series.get("analyses"), self.series.get("backgrounds")
        self.forecast_fields = self.series.get("forecasts")
        if not state.initialised:
            truth = self.source.states(self._initial_truth_times()).to(self.device)
            self.ensemble.initialise(self.model, truth, cfg.gap, self.steps_per_cycle)
            state.initialised = True
            run_dir.commit(state)
        self.ensemble.discard_through(state.next_cycle - 1)
        # a B updated every cycle whose update leaves state (fine-tuned weights) is saved with each cycle
        stateful = self.parts.b_needs_ensemble and isinstance(self.parts.transform, StatefulTransform)
        if stateful and state.next_cycle > 0:  # the B as the last committed cycle left it
            self.parts.transform.load_state_dict(run_dir.load_b_state(state.next_cycle - 1))  # type: ignore[union-attr]
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_cycles, initial=state.next_cycle, desc=cfg.name, unit="cycle")
        last = None  # (cycle, time, states) of the last cycle this process committed
        try:
            for n in range(state.next_cycle, n_cycles):
                record = self.cycle(n)
                state.next_cycle = n + 1
                b_state = self.parts.transform.state_dict() if stateful else None  # type: ignore[union-attr]
                run_dir.commit(state, record, n, b_state=b_state)
                last = self._pending_last
                records.append(record)
                self.ensemble.discard_through(n)
                write_metrics(self.out, records, self.layout, netcdf=False)
                if bar is not None:
                    bar.update(1)
                    row = record["row"]
                    bar.set_postfix(nrmse_b=f"{row['bg_nrmse']:.3g}", nrmse_a=f"{row['ana_nrmse']:.3g}")
        finally:
            if bar is not None:
                bar.close()
            if last is not None:
                self._write_last_cycle(*last)
        write_metrics(self.out, records, self.layout, attrs=self._attrs("scores"))
        return records

    def _write_last_cycle(self, n: int, t: np.datetime64, states: dict[str, Tensor]) -> None:
        """``last_cycle.nc``: background, analysis and truth of cycle ``n`` (the report's maps)."""
        write_states(self.out / "last_cycle.nc", self.grid, self.layout, states, t,
                     {**self._attrs(f"background, analysis and truth of cycle {n}"), "cycle": n,
                      "time": str(np.datetime64(t, "s"))})

    def _attrs(self, what: str) -> dict[str, Any]:
        """Global attributes of an output file: CF (:func:`aivarda.data.cf.global_attrs`) and the run's names."""
        title = f"aivarda cycling experiment {self.cfg.name}: {what} ({self.method.name})"
        return {**global_attrs(title, commit=self.commit, history=f"aivarda run (experiment {self.cfg.name})"),
                "experiment": self.cfg.name, "method": self.method.name}

    def _series(self) -> dict[str, StateSeries]:
        """The Zarr stores the outputs config asks for (created on the first start, reopened on resume)."""
        cfg, out = self.cfg, self.out
        series: dict[str, StateSeries] = {}
        for name, wanted in (("analyses", cfg.outputs.analyses_zarr), ("backgrounds", cfg.outputs.backgrounds_zarr)):
            if wanted:
                series[name] = StateSeries(out / f"{name}.zarr", self.grid, self.layout, self.times,
                                           {**self._attrs(name), "aivarda_grid": self.grid.to_dict()})
        if cfg.outputs.forecast_fields:  # WB2 forecast layout: time = initialisation, leads 0 … forecast.lead
            leads = (np.arange(self.forecast_cycles + 1) * self.cycle_step).astype("timedelta64[ns]")
            series["forecasts"] = StateSeries(out / "forecasts.zarr", self.grid, self.layout,
                                              self.times[::cfg.forecast.every],
                                              {**self._attrs("forecasts"), "aivarda_grid": self.grid.to_dict()}, leads=leads)
        return series

    def cycle(self, n: int) -> dict[str, Any]:
        """Run cycle ``n`` (everything but the commit); returns its record."""
        cfg, layout = self.cfg, self.layout
        torch.manual_seed(cycle_seed(cfg.seed, n))
        wall = dict.fromkeys(WALL_STAGES, 0.0)
        start = wallclock.perf_counter()
        t = self.times[n]

        tic = wallclock.perf_counter()
        own = self.own_ensemble
        members = self.ensemble.ensemble(n).to(self.device) if self.needs_members or own else None
        x_b = members.mean(0) if own else self.ensemble.background(n).to(self.device)
        window = self.window.at(t)
        truth_window = self.source.states(window.times).to(self.device)
        previous_truth = self.source.state((t - self.cycle_step).astype("datetime64[ns]")).to(self.device)
        wall["io"] += wallclock.perf_counter() - tic
        self.hook(n, "background")

        tic = wallclock.perf_counter()
        obs = self.parts.observations.observe(truth_window, window.start, window.offsets, cycle=n)
        wall["observations"] += wallclock.perf_counter() - tic
        self.hook(n, "observations")

        parts = self.parts
        b_numbers: dict[str, float] = {}
        if parts.b_needs_ensemble:
            assert members is not None
            tic = wallclock.perf_counter()
            self.method.update_background_error(parts.transform, members, window, parts.window_model)  # type: ignore[arg-type]
            wall["b_update"] += wallclock.perf_counter() - tic
            if isinstance(parts.transform, ReportingTransform):
                b_numbers = parts.transform.update_diagnostics()
        tic = wallclock.perf_counter()
        wa = analyse_window(self.method, x_b, obs, self.geometry, cfg.observations, parts.transform,
                            parts.background_std, window, parts.window_model, members=members)
        x_a = wa.result.x_a.detach()
        check_state(x_a, self.layout, f"analysis of cycle {n} ({np.datetime_as_string(t, 'm')})")
        wall["minimisation"] += wallclock.perf_counter() - tic
        self.hook(n, "analysis")

        tic = wallclock.perf_counter()
        scores = state_scores(self.geometry, truth_window[0], x_b, x_a, self.stats.std)
        baselines = baseline_scores(self.grid, truth_window[0], previous_truth, self.climatology, layout.names,
                                    self.stats.std)
        windows = {"O-B": wa.background_window, "O-A": wa.analysis_window}
        obs_space = observation_space(wa.observations, self.geometry, windows, cfg.observations.operator)
        by_report = departure_columns(wa.observations, self.geometry, windows, cfg.observations.operator)
        wall["observations"] += wallclock.perf_counter() - tic

        forecast_now = cfg.forecast.every > 0 and n % cfg.forecast.every == 0
        fields_index = n // cfg.forecast.every if forecast_now and self.forecast_fields is not None else None
        members, forecast = self._forecasts(x_a, t, self.forecast_cycles if forecast_now else 0, wall,
                                            keep=0 if own else None, fields_index=fields_index)
        if own:  # the method's analysis members, forecast one cycle: the next cycle's members
            if wa.result.members is None:
                raise RuntimeError(f"method {self.method.name}: ensemble_source 'own' but its analysis has no members")
            tic = wallclock.perf_counter()
            with torch.no_grad():
                members = self.model.forecast(wa.result.members.detach(), self.steps_per_cycle)
            wall["forecast"] += wallclock.perf_counter() - tic
        tic = wallclock.perf_counter()
        if own:
            self.ensemble.put_members(n + 1, members)
        else:
            self.ensemble.put(n, members)
        wall["io"] += wallclock.perf_counter() - tic
        self.hook(n, "forecast")

        tic = wallclock.perf_counter()
        if self.analyses is not None:
            self.analyses.write(n, x_a)
        if self.backgrounds is not None:
            self.backgrounds.write(n, x_b)
        if cfg.outputs.observations:
            from aivarda.observations.io import save_obs

            atomic_write(self.out / "observations" / f"cycle_{n:05d}.nc",
                         lambda tmp: save_obs(wa.observations, tmp, layout, analysis_time=window.start,
                                              window_offsets=window.offsets))
        if cfg.outputs.departures:
            write_departures(self.out / "departures" / f"cycle_{n:05d}.npz",
                             departure_record(wa.observations, self.geometry, windows, cfg.observations.operator))
        wall["io"] += wallclock.perf_counter() - tic
        # last_cycle.nc is written once this process stops cycling (run's finally), not every cycle
        self._pending_last = (n, t, {"background": x_b, "analysis": x_a, "truth": truth_window[0]})
        self.hook(n, "outputs")

        wall["total"] = wallclock.perf_counter() - start
        row = metrics_row(n, t, self.method.name, scores, wa.observations.counts(), obs_space,
                          minimizer_summary(wa.result), wall, baselines=baselines, background_error=b_numbers)
        row.update(self.parts.observations.cycle_metrics())
        row.update(by_report)
        return {"row": row, "forecast": forecast}

    def _forecasts(self, x_a: Tensor, t: np.datetime64, n_scored: int, wall: dict[str, float],
                   keep: int | None = None, fields_index: int | None = None) -> tuple[Tensor | None, dict[str, Any] | None]:
        """Forecast ``x_a`` cycle by cycle: the first ``keep`` (default: the members kept) states
        are kept (the new members, ``[K, C, H, W]``; ``None`` when ``keep = 0``); the first
        ``n_scored`` are scored against the truth as they come (RMSE per channel, leads whose truth
        is in the source), so a long forecast holds one state. With ``fields_index`` the scored
        forecast's states (lead 0: ``x_a``) are written at that initialisation index of ``forecasts.zarr``."""
        from aivarda.evaluation.metrics import rmse

        K = self.members if keep is None else keep
        members: list[Tensor] = []
        leads: list[float] = []
        scores: list[Tensor] = []
        if fields_index is not None and self.forecast_fields is not None:
            tic = wallclock.perf_counter()
            self.forecast_fields.write(fields_index, x_a, 0)
            wall["io"] += wallclock.perf_counter() - tic
        steps = iterate_trajectory(self.model, x_a, [self.steps_per_cycle] * max(K, n_scored))
        for k in range(1, max(K, n_scored) + 1):
            tic = wallclock.perf_counter()
            with torch.no_grad():
                x = next(steps)
            check_state(x, self.layout, f"forecast from {np.datetime_as_string(t, 'm')} at lead {k} cycles")
            wall["forecast"] += wallclock.perf_counter() - tic
            if k <= K:
                members.append(x)
            valid = (t + k * self.cycle_step).astype("datetime64[ns]")
            if fields_index is not None and self.forecast_fields is not None and k <= n_scored:
                tic = wallclock.perf_counter()
                self.forecast_fields.write(fields_index, x, k)
                wall["io"] += wallclock.perf_counter() - tic
            if k <= n_scored and valid in self.source.times:
                tic = wallclock.perf_counter()
                scores.append(rmse(x, self.source.state(valid).to(self.device), self.grid))
                leads.append(hours(valid - t))
                wall["io"] += wallclock.perf_counter() - tic
        forecast = None
        if n_scored:
            table = torch.stack(scores) if scores else torch.empty(0, self.layout.n_channels)
            forecast = {"lead_hours": leads, "rmse": {ch: table[:, c].tolist() for c, ch in enumerate(self.layout.names)}}
        return (torch.stack(members) if members else None), forecast


def run_experiment(cfg: CyclingConfig, out: str | Path | None = None, *, resume: bool = False,
                   progress: bool = True, wrap_model: Callable[[ForecastModel], ForecastModel] | None = None,
                   ) -> list[dict[str, Any]]:
    """Run (or resume) a cycling experiment; returns the per-cycle records."""
    return CyclingRunner(cfg, out, progress=progress, wrap_model=wrap_model).run(resume=resume)


def main(args: argparse.Namespace) -> int:
    """``aivarda run CONFIG [--resume] [--out DIR] [--json]``.

    Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``) process 0 runs the experiment with
    its ensemble-member forecasts shared over the N processes, which load the same cycling model
    and serve it (:mod:`aivarda.models.distributed`); only process 0 writes and prints."""
    from aivarda.evaluation.report import format_table, load_run, run_summary

    cfg = load_config(args.config, CyclingConfig)
    if getattr(args, "allow_in_sample", False):
        cfg.allow_in_sample = True
    out = Path(args.out) if args.out is not None else Path(cfg.output_dir)
    info = setup_distributed(cfg.torch_device(), timeout=SERVE_TIMEOUT)  # WORLD_SIZE > 1 under torchrun
    if info.world_size == 1:
        run_experiment(cfg, out, resume=args.resume, progress=not args.json)
    else:
        try:
            if info.rank > 0:  # forecast process 0's member shards; write and print nothing
                serve(load_forecast_model(cfg.forecast_model_config(), device=str(info.device)), info)
                return 0
            try:
                run_experiment(cfg, out, resume=args.resume, progress=not args.json,
                               wrap_model=lambda model: MemberParallelModel(model, info))
            finally:  # also when the run fails: the serving processes must not wait for ever
                stop_serving(info)
        finally:
            end_distributed()
    run = load_run(out)
    print(json.dumps(run_summary(run), indent=2) if args.json else format_table([run]) + f"\noutputs: {out}")
    return 0
