"""The embedded nature run: Held–Suarez dry primitive equations with a passive moisture tracer.

Model (``dinosaur``): the dry hydrostatic primitive equations on σ levels
(``PrimitiveEquationsSigma``) forced by Held & Suarez (1994) — Newtonian relaxation of T toward a
zonally symmetric radiative equilibrium and Rayleigh drag below σ = 0.7 — on a flat planet, with a
spectral T-grid (T42 = 64×128 Gaussian) and equidistant σ levels, stepped by IMEX-RK-SIL3 with an
exponential step filter. Specific humidity ``q`` is a passive tracer advected by the flow and
relaxed toward a climatology::

    ∂q/∂t + (u·∇)q + σ̇ ∂q/∂σ = −(q − q_clim) / τ_q,
    q_clim(φ, σ) = q0 · exp(−(φ / φ_q)²) · σ^n      (q0 = 0.018 kg/kg, φ_q = 40°, n = 3, τ_q = 3 d)

Initial state: the spun-up T42 state shipped in ``aivarda/assets`` (made by ``aivarda data
spin-up``: 200 days from an isothermal rest atmosphere), truncated spectrally / regridded in σ to
the configured resolution, plus seeded Gaussian noise of ``perturbation_kelvin`` on T — or, with
``initial_state: rest``, an isothermal (288 K) rest atmosphere with the same noise spun up for
``spin_up_days``; or, with ``initial_state: restart``, a run's state saved by ``aivarda data restart``
(:func:`make_restart`; the shipped one is the default world on 2000-07-16T00), which the run
continues bit for bit. Either way the state is dated ``start`` (2000-01-01T00 by default).

Output (see :mod:`aivarda.data.zarr_writer`): FengWu's 69 channels on the WeatherBench2 layout.
``u, v, t, q, z`` are interpolated linearly in ln p from σ to the 13 pressure levels; below the
lowest model level (σ_L ≈ 0.96) ``z`` and ``t`` follow a standard atmosphere from that level,
``T(p) = T_L (p/p_L)^(RΓ/g)``, ``Φ(p) = Φ_L + (g T_L/Γ)(1 − (p/p_L)^(RΓ/g))`` (Γ = 6.5 K/km), so
``z1000`` stays monotone below the ground; ``u, v, q`` are held constant there and above the top
level. ``u10m, v10m, t2m`` are the lowest model level's values; ``msl`` is the surface pressure
(flat planet); ``q`` is clipped at 0 (spectral transport overshoots slightly).

Spans: named ``[start, end]`` (inclusive) ranges sampled every ``interval_hours``; the store's time
axis is the sorted union of their times.

JAX and dinosaur are imported lazily (importing this module is cheap); JAX runs on the CPU unless
``JAX_PLATFORMS`` says otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from aivarda.channels import ChannelLayout
from aivarda.config import StrictModel
from aivarda.errors import AivardaError, ConfigError, DataError
from aivarda.files import atomic_write, remove_dead_tmp_siblings
from aivarda.grid import Grid
from aivarda.paths import ASSETS, aivarda_home

SPINUP_ASSET = ASSETS / "held_suarez_t42_spinup.npz"
RESTART_TIME = datetime(2000, 7, 16)
RESTART_ASSET = ASSETS / "held_suarez_t42_restart_2000-07-16T00.npz"
"""The default world's state at :data:`RESTART_TIME` (``aivarda data restart``)."""
RESTART_KIND = "aivarda nature-run restart"
Q_KEY = "specific_humidity"
STEP_FILTER = {"tau": 0.0087504, "order": 1.5, "cutoff": 0.8}
GRAVITY = 9.80665  # m s⁻²
R_DRY = 287.0  # J kg⁻¹ K⁻¹
LAPSE_RATE = 0.0065  # K m⁻¹
_GAUSSIAN_NODES = {"T21": 16, "T31": 24, "T42": 32, "T85": 64}  # dinosaur: nlat = 2 × nodes


class SpanConfig(StrictModel):
    """Output times ``start, start + interval, …, end`` (inclusive)."""

    start: datetime
    end: datetime
    interval_hours: int = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> SpanConfig:
        if self.end < self.start:
            raise ValueError("end must not be before start")
        if (self.end - self.start).total_seconds() % (3600 * self.interval_hours):
            raise ValueError("end - start must be a multiple of interval_hours")
        return self

    def times(self) -> np.ndarray:
        """The span's times, datetime64[ns], shape ``[T]``."""
        start, end = np.datetime64(self.start, "ns"), np.datetime64(self.end, "ns")
        return np.arange(start, end + np.timedelta64(1, "s"), np.timedelta64(self.interval_hours, "h"))

    def to_attr(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "interval_hours": self.interval_hours}


class MoistureConfig(StrictModel):
    """Passive moisture: ``q_clim = q0 · exp(−(lat/lat_scale)²) · σ^sigma_exponent``, relaxed in ``relaxation_days``."""

    q0: float = Field(0.018, ge=0, le=0.05, description="kg/kg at the equatorial surface")
    lat_scale_degrees: float = Field(40.0, gt=0)
    sigma_exponent: float = Field(3.0, ge=0)
    relaxation_days: float = Field(3.0, gt=0)


def _default_spans() -> dict[str, SpanConfig]:
    return {
        "train": SpanConfig(start=datetime(2000, 1, 1), end=datetime(2000, 6, 30, 18), interval_hours=6),
        "hourly": SpanConfig(start=datetime(2000, 7, 1), end=datetime(2000, 7, 31, 23), interval_hours=1),
        "eval": SpanConfig(start=datetime(2000, 8, 1), end=datetime(2000, 8, 31, 23), interval_hours=1),
    }


class NatureRunConfig(StrictModel):
    """Configuration of the Held–Suarez nature run (defaults: T42 L13, 20-min step, 8 months of output)."""

    resolution: Literal["T21", "T31", "T42", "T85"] = "T42"
    sigma_levels: int = Field(13, ge=4, le=60)
    time_step_minutes: float = Field(20.0, gt=0, le=60)
    seed: int = 0
    perturbation_kelvin: float = Field(0.1, ge=0, description="std of the seeded noise added to T")
    initial_state: Literal["spun_up", "rest", "restart"] = Field(
        "spun_up",
        description="'spun_up': the shipped spun-up state; 'rest': spin up from rest first; "
                    "'restart': a saved restart state of a run (restart_file), dated start",
    )
    restart_file: Path | None = Field(
        None, description="initial_state: restart — the .npz of `aivarda data restart` (default: the shipped one)"
    )
    spin_up_days: float = Field(200.0, ge=0, description="spin-up length from rest (initial_state: rest, spin-up)")
    start: datetime = Field(datetime(2000, 1, 1), description="date of the initial (spun-up) state")
    spans: dict[str, SpanConfig] = Field(default_factory=_default_spans)
    moisture: MoistureConfig = Field(default_factory=MoistureConfig)

    @field_validator("spans")
    @classmethod
    def _spans(cls, v: dict[str, SpanConfig]) -> dict[str, SpanConfig]:
        if not v:
            raise ValueError("at least one span is required")
        return v

    @model_validator(mode="after")
    def _check(self) -> NatureRunConfig:
        step_s = self.time_step_minutes * 60
        if (3600 % step_s) if step_s <= 3600 else True:
            raise ValueError("time_step_minutes must divide one hour")
        for name, span in self.spans.items():
            if span.start < self.start:
                raise ValueError(f"span {name!r} starts before the run's start {self.start.isoformat()}")
            if (span.start - self.start).total_seconds() % step_s:
                raise ValueError(f"span {name!r} must start a whole number of time steps after start")
        if self.restart_file is not None and self.initial_state != "restart":
            raise ValueError("restart_file is only read with initial_state: restart")
        return self

    def dump(self) -> dict[str, Any]:
        """The configuration as JSON data (``restart_file`` only when set, so the configurations
        written before it existed keep their hash and fingerprint)."""
        return json.loads(self.dump_json())

    def dump_json(self) -> str:
        """:meth:`dump` as a JSON string (what :meth:`short_hash` hashes)."""
        return self.model_dump_json(exclude=None if self.restart_file is not None else {"restart_file"})

    def restart_path(self) -> Path:
        """The restart state an ``initial_state: restart`` run starts from."""
        return self.restart_file if self.restart_file is not None else RESTART_ASSET

    @classmethod
    def tiny(cls) -> NatureRunConfig:
        """T21 (32×64) L8, 30-min step, 4 simulated days: ``train`` 3 days 6-hourly, ``eval`` 1 day hourly."""
        return cls(
            resolution="T21",
            sigma_levels=8,
            time_step_minutes=30.0,
            spans={
                "train": SpanConfig(start=datetime(2000, 1, 1), end=datetime(2000, 1, 3, 18), interval_hours=6),
                "eval": SpanConfig(start=datetime(2000, 1, 4), end=datetime(2000, 1, 4, 23), interval_hours=1),
            },
        )

    def output_times(self) -> np.ndarray:
        """Sorted union of the spans' times, datetime64[ns]."""
        return np.unique(np.concatenate([s.times() for s in self.spans.values()]))

    def grid(self) -> Grid:
        """The output grid (Gaussian, N→S)."""
        n = 2 * _GAUSSIAN_NODES[self.resolution]
        return Grid.gaussian(n, 2 * n)

    def short_hash(self) -> str:
        """8 hex digits identifying the config (and the shipped state it starts from)."""
        text = self.dump_json()
        if self.initial_state == "spun_up" and SPINUP_ASSET.is_file():
            text += hashlib.sha256(SPINUP_ASSET.read_bytes()).hexdigest()
        if self.initial_state == "restart" and self.restart_path().is_file():
            text += hashlib.sha256(self.restart_path().read_bytes()).hexdigest()
        return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_store_path(cfg: NatureRunConfig) -> Path:
    """``$AIVARDA_HOME/nature_run/held_suarez_<res>_l<levels>_<hash>.zarr``."""
    return aivarda_home() / "nature_run" / f"held_suarez_{cfg.resolution.lower()}_l{cfg.sigma_levels}_{cfg.short_hash()}.zarr"


# ---------------------------------------------------------------------------------------------- model
def _import_jax() -> Any:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    return jax


@dataclass
class HeldSuarezModel:
    """The compiled model of one configuration.

    ``advance(state, n)`` takes ``n`` time steps; ``diagnose(state)`` returns the 69 FengWu channels
    ``[C, H, W]`` (float32, physical units, lat N→S). Both are jitted (compiled once).
    """

    cfg: NatureRunConfig
    coords: Any
    specs: Any
    reference_temperature: np.ndarray
    q_clim: Any
    advance: Any
    diagnose: Any

    @property
    def dt_seconds(self) -> float:
        return self.cfg.time_step_minutes * 60.0

    def kelvin(self, x: float) -> float:
        """A temperature difference in K, non-dimensionalised."""
        from dinosaur import scales

        return float(self.specs.nondimensionalize(x * scales.units.degK))


def _coords(resolution: str, levels: int) -> Any:
    from dinosaur import coordinate_systems, sigma_coordinates, spherical_harmonic

    horizontal = getattr(spherical_harmonic.Grid, resolution)()
    return coordinate_systems.CoordinateSystem(horizontal, sigma_coordinates.SigmaCoordinates.equidistant(levels))


_PHYSICS_FIELDS = ("resolution", "sigma_levels", "time_step_minutes", "moisture")


def build_model(cfg: NatureRunConfig) -> HeldSuarezModel:
    """Equations, time stepper and diagnostics for ``cfg`` (JAX functions, compiled on first call).

    Models are cached per process by their physics (resolution, levels, step, moisture), so runs
    that differ only in seed, spans or initial state share the compiled functions.
    """
    key = json.dumps(cfg.model_dump(mode="json", include=set(_PHYSICS_FIELDS)), sort_keys=True)
    return replace(_build_model(key), cfg=cfg)


@lru_cache(maxsize=4)
def _build_model(physics_json: str) -> HeldSuarezModel:
    cfg = NatureRunConfig.model_validate(json.loads(physics_json))
    jax = _import_jax()
    from dinosaur import held_suarez, primitive_equations, scales, time_integration

    units = scales.units
    coords = _coords(cfg.resolution, cfg.sigma_levels)
    specs = primitive_equations.PrimitiveEquationsSpecs.from_si()
    ref_t = np.full((cfg.sigma_levels,), specs.nondimensionalize(288.0 * units.degK))
    flat = np.zeros(coords.horizontal.nodal_shape)
    dynamics = primitive_equations.PrimitiveEquationsSigma(ref_t, coords.horizontal.to_modal(flat), coords, specs)
    held_suarez_forcing = held_suarez.HeldSuarezForcingSigma(coords, specs, ref_t, p0=1e5 * units.pascal)

    _, sin_lat = coords.horizontal.nodal_mesh  # (lon, lat)
    lat_deg = np.rad2deg(np.arcsin(sin_lat))
    m = cfg.moisture
    sigma = coords.vertical.centers
    q_clim_nodal = m.q0 * np.exp(-((lat_deg / m.lat_scale_degrees) ** 2))[None] * sigma[:, None, None] ** m.sigma_exponent
    q_clim = coords.horizontal.to_modal(q_clim_nodal)
    inv_tau_q = 1.0 / float(specs.nondimensionalize(m.relaxation_days * units.day))

    class Forcing(time_integration.ExplicitODE):
        """Held–Suarez tendencies plus the moisture relaxation ``−(q − q_clim)/τ_q`` for the tracer."""

        def explicit_terms(self, state: Any) -> Any:
            hs = held_suarez_forcing.explicit_terms(state)
            return primitive_equations.State(
                vorticity=hs.vorticity,
                divergence=hs.divergence,
                temperature_variation=hs.temperature_variation,
                log_surface_pressure=hs.log_surface_pressure,
                tracers={Q_KEY: -(state.tracers[Q_KEY] - q_clim) * inv_tau_q},
                sim_time=hs.sim_time,
            )

    equation = time_integration.compose_equations([dynamics, Forcing()])
    dt = float(specs.nondimensionalize(cfg.time_step_minutes * units.minute))
    step = time_integration.step_with_filters(
        time_integration.imex_rk_sil3(equation, dt),
        [time_integration.exponential_step_filter(coords.horizontal, dt, **STEP_FILTER)],
    )

    @jax.jit
    def advance(state: Any, n: Any) -> Any:
        return jax.lax.fori_loop(0, n, lambda _, x: step(x), state)

    diagnose = jax.jit(_diagnostics_fn(coords, specs, ref_t))
    return HeldSuarezModel(cfg, coords, specs, ref_t, q_clim, advance, diagnose)


def _diagnostics_fn(coords: Any, specs: Any, ref_t: np.ndarray) -> Any:
    """State (modal, non-dimensional) → FengWu-69 channels ``[69, H, W]``, SI units, lat N→S."""
    import jax.numpy as jnp
    from dinosaur import primitive_equations, scales, spherical_harmonic

    units = scales.units
    grid = coords.horizontal
    k_scale = float(specs.dimensionalize(1.0, units.degK).magnitude)
    pa_scale = float(specs.dimensionalize(1.0, units.pascal).magnitude)
    ms_scale = float(specs.dimensionalize(1.0, units.meter / units.second).magnitude)
    phi_scale = float(specs.dimensionalize(1.0, units.meter**2 / units.second**2).magnitude)
    layout = ChannelLayout.fengwu69()
    p_levels = np.asarray(layout.levels, dtype=np.float64) * 100.0  # Pa, ascending
    log_sigma = np.log(coords.vertical.centers)  # ascending (top → bottom)
    zeros = np.zeros(grid.nodal_shape)

    def fn(state: Any) -> Any:
        u, v = spherical_harmonic.vor_div_to_uv_nodal(grid, state.vorticity, state.divergence)
        t_nd = ref_t[:, None, None] + grid.to_nodal(state.temperature_variation)
        phi = primitive_equations.get_geopotential_on_sigma(
            t_nd, nodal_orography=zeros, sigma=coords.vertical,
            gravity_acceleration=specs.g, ideal_gas_constant=specs.R,
        ) * phi_scale
        ps = jnp.exp(grid.to_nodal(state.log_surface_pressure)[0]) * pa_scale  # (lon, lat)
        fields = {"z": phi, "q": jnp.maximum(grid.to_nodal(state.tracers[Q_KEY]), 0.0),
                  "u": u * ms_scale, "v": v * ms_scale, "t": t_nd * k_scale}
        on_p = sigma_to_pressure(fields, log_sigma, p_levels, ps)
        surface = [fields["u"][-1], fields["v"][-1], fields["t"][-1], ps]
        out = jnp.concatenate([jnp.stack(surface)] + [on_p[name] for name in layout.upper_air])
        return jnp.swapaxes(out, 1, 2)[:, ::-1, :].astype(jnp.float32)  # (C, lon, lat↑) → (C, lat↓, lon)

    return fn


def sigma_to_pressure(fields: dict[str, Any], log_sigma: np.ndarray, p_levels: np.ndarray, ps: Any) -> dict[str, Any]:
    """Interpolate ``{name: [L, X, Y]}`` from σ levels to pressure levels, linearly in ln p.

    ``log_sigma``: ln σ of the L model levels, ascending. ``p_levels``: target pressures ``[P]``
    (Pa). ``ps``: surface pressure ``[X, Y]`` (Pa). Returns ``{name: [P, X, Y]}``. Above the top
    level every field is constant; below the lowest level ``z`` and ``t`` follow the standard
    lapse rate from that level (keys ``"z"``, ``"t"``), other fields are constant.
    """
    _import_jax()
    import jax.numpy as jnp

    log_x = jnp.log(jnp.asarray(p_levels)[:, None, None] / ps[None])  # ln σ of the targets, [P, X, Y]
    n = log_sigma.size
    hi = jnp.clip(jnp.searchsorted(jnp.asarray(log_sigma), log_x), 1, n - 1)
    lo = hi - 1
    xs = jnp.asarray(log_sigma)
    w = jnp.clip((log_x - xs[lo]) / (xs[hi] - xs[lo]), 0.0, 1.0)
    out = {}
    for name, f in fields.items():
        f_lo = jnp.take_along_axis(f, lo, axis=0)
        f_hi = jnp.take_along_axis(f, hi, axis=0)
        out[name] = (1 - w) * f_lo + w * f_hi
    below = log_x > log_sigma[-1]
    ratio = jnp.exp(log_x - log_sigma[-1])  # p / p_L (> 1 below the lowest level)
    expo = R_DRY * LAPSE_RATE / GRAVITY
    if "t" in fields:
        t_l = fields["t"][-1][None]
        out["t"] = jnp.where(below, t_l * ratio**expo, out["t"])
        if "z" in fields:
            z_below = fields["z"][-1][None] + GRAVITY * t_l / LAPSE_RATE * (1.0 - ratio**expo)
            out["z"] = jnp.where(below, z_below, out["z"])
    return out


# ---------------------------------------------------------------------------------------------- states
def _noise(model: HeldSuarezModel, seed: int) -> Any:
    """Seeded N(0, perturbation_kelvin²) noise on T, modal, non-dimensional."""
    jax = _import_jax()

    shape = (model.cfg.sigma_levels, *model.coords.horizontal.nodal_shape)
    nodal = jax.random.normal(jax.random.PRNGKey(seed), shape) * model.kelvin(model.cfg.perturbation_kelvin)
    return model.coords.horizontal.to_modal(nodal)


def rest_state(model: HeldSuarezModel) -> Any:
    """Isothermal (288 K) rest atmosphere, ps = 1000 hPa with a seeded bump, T noise, q = q_clim."""
    jax = _import_jax()
    from dinosaur import primitive_equations, primitive_equations_states, scales

    init_fn, _ = primitive_equations_states.isothermal_rest_atmosphere(
        model.coords, model.specs, p0=1e5 * scales.units.pascal, p1=5e3 * scales.units.pascal
    )
    s = init_fn(jax.random.PRNGKey(model.cfg.seed))
    return primitive_equations.State(
        vorticity=s.vorticity,
        divergence=s.divergence,
        temperature_variation=s.temperature_variation + _noise(model, model.cfg.seed),
        log_surface_pressure=s.log_surface_pressure,
        tracers={Q_KEY: model.q_clim},
    )


_STATE_FIELDS = ("vorticity", "divergence", "temperature_variation", "log_surface_pressure", Q_KEY)


def save_state(path: Path, model: HeldSuarezModel, state: Any, meta: dict[str, Any]) -> None:
    """Save a modal state (non-dimensional, float32) and its metadata to ``path`` (.npz)."""
    arrays = _state_arrays(state)
    meta = {"resolution": model.cfg.resolution, "sigma_levels": model.cfg.sigma_levels, **meta}
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays))


def _state_arrays(state: Any) -> dict[str, np.ndarray]:
    return {k: np.asarray(state.tracers[Q_KEY] if k == Q_KEY else getattr(state, k), dtype=np.float32)
            for k in _STATE_FIELDS}


def load_state(path: Path, model: HeldSuarezModel) -> Any:
    """A saved state, truncated/padded spectrally and regridded linearly in σ to ``model``'s coordinates."""
    _import_jax()
    import jax.numpy as jnp
    from dinosaur import coordinate_systems, primitive_equations

    if not path.is_file():
        raise DataError(f"{path}: spun-up state not found; run `aivarda data spin-up` or set initial_state: rest")
    with np.load(path) as npz:
        meta = json.loads(str(npz["meta"]))
        arrays = {k: npz[k] for k in _STATE_FIELDS}
    source = _coords(meta["resolution"], int(meta["sigma_levels"]))
    regrid = coordinate_systems.get_spectral_interpolate_fn(source, model.coords, expect_same_vertical=False)
    weights = _sigma_regrid_matrix(source.vertical.centers, model.coords.vertical.centers)
    fields = {}
    for k, a in arrays.items():
        a = np.asarray(regrid(jnp.asarray(a)))
        if k != "log_surface_pressure":
            a = np.einsum("ij,j...->i...", weights, a)  # linear in the modal coefficients
        fields[k] = jnp.asarray(a, dtype=jnp.float32)
    q = fields.pop(Q_KEY)
    return primitive_equations.State(**fields, tracers={Q_KEY: q})


def _sigma_regrid_matrix(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``W [len(dst), len(src)]``: linear interpolation in σ, constant beyond the end levels."""
    eye = np.eye(src.size)
    return np.stack([np.interp(dst, src, eye[j]) for j in range(src.size)], axis=1)


def initial_state(model: HeldSuarezModel, progress: bool = False) -> Any:
    """The state at ``cfg.start``: the shipped spun-up state + seeded noise, a fresh spin-up, or a
    restart state (as saved, no noise added: it is the state of a run at ``start``)."""
    cfg = model.cfg
    if cfg.initial_state == "rest":
        return spin_up(model, progress=progress)
    if cfg.initial_state == "restart":
        restart_meta(cfg)  # the restart must be of this world, dated start
        return load_state(cfg.restart_path(), model)
    state = load_state(SPINUP_ASSET, model)
    return state.replace(temperature_variation=state.temperature_variation + _noise(model, cfg.seed))  # type: ignore[attr-defined]


def spin_up(model: HeldSuarezModel, progress: bool = True) -> Any:
    """Integrate the rest state for ``cfg.spin_up_days`` (tqdm over simulated days)."""
    from tqdm.auto import tqdm

    jax = _import_jax()
    steps_per_day = round(86400 / model.dt_seconds)
    state = rest_state(model)
    days = int(np.ceil(model.cfg.spin_up_days))
    remaining = round(model.cfg.spin_up_days * steps_per_day)
    for _ in tqdm(range(days), desc="spin-up", unit="day", disable=not progress):
        n = min(steps_per_day, remaining)
        state = jax.block_until_ready(model.advance(state, n))  # an honest progress bar
        remaining -= n
    _check_finite(state, "spin-up")
    return state


def _check_finite(state: Any, where: str) -> None:
    if not np.all(np.isfinite(np.asarray(state.vorticity))):
        raise DataError(f"nature run: the model blew up during {where} (non-finite state); reduce time_step_minutes")


# ---------------------------------------------------------------------------------------------- generation
def store_attrs(cfg: NatureRunConfig) -> dict[str, Any]:
    """Global attributes of a nature-run store (the WB2 contract of the team brief; CF globals of
    :func:`aivarda.data.cf.global_attrs`)."""
    import dinosaur

    from aivarda.data.cf import global_attrs, source_text

    return {
        **global_attrs(f"Held–Suarez nature run {cfg.resolution} L{cfg.sigma_levels}", history="aivarda nature-run"),
        "source": f"{source_text()}: Held–Suarez nature run (dinosaur {getattr(dinosaur, '__version__', '?')}, "
                  f"{cfg.resolution} L{cfg.sigma_levels}, passive moisture tracer)",
        "seed": cfg.seed,
        "aivarda_grid": cfg.grid().to_dict(),
        "aivarda_spans": {name: span.to_attr() for name, span in cfg.spans.items()},
        "aivarda_config": cfg.dump(),
        "aivarda_channels": ChannelLayout.fengwu69().to_dict(),
        **({"aivarda_restart": restart_identity(restart_meta(cfg))} if cfg.initial_state == "restart" else {}),
    }


def _days_bar(start: np.datetime64, end: np.datetime64, desc: str, progress: bool) -> Any:
    """A tqdm bar over the simulated days from ``start`` to ``end``."""
    from tqdm.auto import tqdm

    return tqdm(
        total=float((end - start) / np.timedelta64(1, "D")), desc=desc, unit="day", disable=not progress,
        bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} simulated days [{elapsed}<{remaining}]",
    )


def trajectory(model: HeldSuarezModel, state: Any, start: np.datetime64, times: np.ndarray) -> Any:
    """Yield the states at ``times`` (sorted, ≥ ``start``) of the run from ``state`` at ``start``.

    The model advances from one time to the next (``times[i] − times[i−1]`` in whole steps), so the
    restart state at a time and the store's state at that time are the same computation. States are
    dispatched asynchronously (JAX); the caller blocks when it reads one.
    """
    dt = np.timedelta64(round(model.dt_seconds), "s")
    gaps = np.diff(np.concatenate([[np.datetime64(start, "ns")], np.asarray(times, dtype="datetime64[ns]")]))
    if np.any(gaps < np.timedelta64(0, "s")) or np.any(gaps % dt):
        raise DataError(f"nature run: output times must be sorted, from start on, whole steps of {dt} apart")
    for n in gaps // dt:
        state = model.advance(state, int(n))
        yield state


def _tmp_sibling(out: Path) -> Path:
    return out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def generate_nature_run(cfg: NatureRunConfig, out: str | Path, *, force: bool = False, progress: bool = True) -> Path:
    """Run the model and write the store ``out`` (WB2 layout, FengWu-69 channels); returns ``out``.

    The store is written to a temporary sibling and renamed at the end, so ``out`` is either
    absent or complete. An existing ``out`` is replaced only with ``force``.
    """
    from aivarda.data.zarr_writer import ZarrStateWriter

    out = Path(out)
    if out.exists() and not force:
        raise AivardaError(f"{out}: already exists; pass --force (force=True) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_tmp_siblings(out)  # partial stores of killed generators
    times = cfg.output_times()
    tmp = _tmp_sibling(out)
    try:
        model = build_model(cfg)
        state = initial_state(model, progress=progress)
        start = np.datetime64(cfg.start, "ns")
        grid, layout = cfg.grid(), ChannelLayout.fengwu69()
        with ZarrStateWriter(tmp, grid, layout, times, store_attrs(cfg)) as writer, _days_bar(
            start, times[-1], "nature run", progress
        ) as bar:
            def write(i: int, channels: Any) -> None:
                values = np.asarray(channels)
                if not np.all(np.isfinite(values)):
                    raise DataError(f"nature run: non-finite values at {times[i]}; reduce time_step_minutes")
                writer.write(i, values)
                bar.update(float((times[i] - start) / np.timedelta64(1, "D")) - bar.n)  # ends at `days`

            pending = None
            for i, state in enumerate(trajectory(model, state, start, times)):
                channels = model.diagnose(state)
                if pending is not None:  # the next integration is dispatched before writing this state
                    write(i - 1, pending)
                pending = channels
            write(times.size - 1, pending)
        if out.exists():
            if not force:
                raise AivardaError(f"{out}: appeared while generating; pass --force to replace it")
            _remove(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            _remove(tmp)
    return out


def ensure_nature_run(cfg: NatureRunConfig | None = None, progress: bool = True) -> Path:
    """The cached store of ``cfg`` (default config), generated on first use."""
    cfg = cfg or NatureRunConfig()
    path = default_store_path(cfg)
    if path.exists():
        return path
    try:
        return generate_nature_run(cfg, path, progress=progress)
    except AivardaError:
        if path.exists():  # another process finished first
            return path
        raise


# ---------------------------------------------------------------------------------------------- restarts
_NOT_WORLD = ("spans", "start", "initial_state", "restart_file", "spin_up_days")
"""Configuration fields a restart run may differ in from the run its restart came from."""


def restart_meta(cfg: NatureRunConfig) -> dict[str, Any]:
    """The metadata of the restart ``cfg`` starts from, checked against ``cfg``.

    A run from a restart continues the trajectory of the run the restart was taken from (its
    *world*), so ``cfg`` must have that run's resolution, levels, step, seed, noise and moisture,
    and ``start`` must be the restart's valid time; anything else is a ConfigError naming the field.
    """
    path = cfg.restart_path()
    if not path.is_file():
        raise DataError(f"{path}: restart state not found; make it with `aivarda data restart` (restart_file)")
    with np.load(path) as npz:
        meta = json.loads(str(npz["meta"])) if "meta" in npz.files else {}
    if meta.get("kind") != RESTART_KIND:
        raise DataError(f"{path}: not a restart state of `aivarda data restart` (no {RESTART_KIND!r} metadata)")
    if meta["config"].get("initial_state") != "restart":  # taken from a run from its initial state: check the world
        world = (nature_run_fingerprint(meta["config"]), str(meta["config"]["start"]))
        if meta["fingerprint"] != world[0] or np.datetime64(meta["origin"], "ns") != np.datetime64(world[1], "ns"):
            raise DataError(f"{path}: records world {meta['fingerprint']} (origin {meta['origin']}) but the "
                            f"configuration it was made with is world {world[0]} (origin {world[1]}); "
                            "remake it with `aivarda data restart`")
    valid = np.datetime64(meta["valid_time"], "ns")
    if np.datetime64(cfg.start, "ns") != valid:
        raise ConfigError(f"start: {cfg.start.isoformat()} is not the valid time of the restart {path.name} "
                          f"({meta['valid_time']}); set start: {meta['valid_time']}")
    mine, theirs = cfg.dump(), meta["config"]
    differ = sorted(k for k in set(mine) | set(theirs) if k not in _NOT_WORLD and mine.get(k) != theirs.get(k))
    if differ:
        raise ConfigError(f"{', '.join(differ)}: must equal the restart's ({path.name}: "
                          + ", ".join(f"{k}={theirs.get(k)!r}" for k in differ)
                          + "); a restart continues the run it was taken from")
    return meta


def restart_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a store made from a restart records of it (attribute ``aivarda_restart``): the world
    fingerprint and origin of the run it continues, its valid time and elapsed hours."""
    return {k: meta[k] for k in ("kind", "fingerprint", "origin", "valid_time", "elapsed_hours", "sha256")}


def make_restart(
    cfg: NatureRunConfig, at: datetime | np.datetime64, progress: bool = True
) -> tuple[Any, dict[str, Any]]:
    """The state of the run ``cfg`` at ``at`` and its restart metadata.

    The run is integrated from ``cfg``'s initial state exactly as :func:`generate_nature_run`
    integrates it (through the output times before ``at``, then to ``at``), so a run started from
    the restart (``initial_state: restart``, ``start: at``) continues the same trajectory. The
    metadata records the world (fingerprint, origin: the date of the world's initial state), the
    configuration it was integrated with, the valid time and the elapsed simulated hours.
    """
    at = np.datetime64(at, "ns")
    start = np.datetime64(cfg.start, "ns")
    step = np.timedelta64(round(cfg.time_step_minutes * 60), "s")
    if at < start or (at - start) % step:
        raise ConfigError(f"--at {at}: must be a whole number of {cfg.time_step_minutes:g}-min steps "
                          f"from the run's start {cfg.start.isoformat()}")
    times = cfg.output_times()
    times = np.concatenate([times[times < at], [at]])
    model = build_model(cfg)
    state = initial_state(model, progress=progress)
    with _days_bar(start, at, "restart", progress) as bar:
        for t, state in zip(times, trajectory(model, state, start, times)):
            state.vorticity.block_until_ready()  # an honest progress bar
            bar.update(float((t - start) / np.timedelta64(1, "D")) - bar.n)
    _check_finite(state, f"the integration to {at}")
    inherited = restart_meta(cfg) if cfg.initial_state == "restart" else None
    elapsed = float((at - start) / np.timedelta64(1, "h"))
    meta = {
        "kind": RESTART_KIND,
        "valid_time": str(np.datetime_as_string(at, "s")),
        "fingerprint": inherited["fingerprint"] if inherited else nature_run_fingerprint(cfg),
        "origin": inherited["origin"] if inherited else str(np.datetime_as_string(nature_run_origin(cfg), "s")),
        "elapsed_hours": elapsed + (inherited["elapsed_hours"] if inherited else 0.0),
        "config": cfg.dump(),
    }
    return state, meta


def save_restart(path: Path, model: HeldSuarezModel, state: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Save a restart (:func:`save_state`) with ``meta`` plus the SHA-256 of its arrays; returns the metadata."""
    arrays = _state_arrays(state).values()
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()
    meta = {**meta, "sha256": digest}
    save_state(path, model, state, meta)
    return meta


# ---------------------------------------------------------------------- the world's identity
def world_digest(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _normalised_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with today's defaults filled in (as written by this aivarda)."""
    try:
        return NatureRunConfig.model_validate(dict(config)).dump()
    except ValueError:  # a store written by another version: hash what it recorded
        return dict(config)


def _restart(config: Mapping[str, Any] | NatureRunConfig) -> dict[str, Any] | None:
    """The checked restart metadata of an ``initial_state: restart`` configuration, else ``None``."""
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
    return world_digest({"kind": "aivarda nature run", "config": cfg})


def nature_run_origin(config: Mapping[str, Any] | NatureRunConfig) -> np.datetime64:
    """Date of the world's initial state: ``start``, or the origin a restart records."""
    restart = _restart(config)
    if restart is not None:
        return np.datetime64(restart["origin"], "ns")
    start = config.start if hasattr(config, "start") else config["start"]
    return np.datetime64(start, "ns")
