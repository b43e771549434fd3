"""Simulated observations from a truth window (an OSSE).

``y = H(x_truth) + σ_o·ε``, ``ε ~ N(0, I)``, with ``H`` built by
:func:`~aivarda.observations.operators.build_operator` — the same operator the analysis uses.

Positions (a *column* observes every selected channel at one position and window time):

- ``random``: ``count`` (or ``fraction`` × H·W) grid columns per observed time, drawn without
  replacement, fresh each cycle;
- ``fixed``: persistent stations — ``n_stations`` grid columns drawn once from ``seed``, or the
  ``lat,lon`` rows of ``stations_file`` (off-grid positions use bilinear interpolation);
- ``grid``: every ``grid_stride``-th row and column, or the ``.npy`` mask in ``mask_file``;
- ``offgrid``: ``count`` random positions uniform on the sphere (bilinear ``H``), fresh each cycle.

Randomness comes from ``numpy.random.SeedSequence([seed, cycle])`` (independent streams for
positions, noise and withholding), so a cycle's observations do not depend on earlier calls:
runs are reproducible and resumable, and the draws are the same on every device.

Error std per channel: ``σ_c = error_std[var]`` when given (absolute), else
``error_fraction × error_scale[var] × clim_std_c`` (defaults 0.01 and 0.25 for t and t2m).
``withhold`` marks that fraction of the columns as withheld (verification only).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aivarda.channels import ChannelLayout
from aivarda.errors import ObservationError
from aivarda.grid import Grid
from aivarda.observations.config import ObservationConfig
from aivarda.observations.obsset import ObsSet
from aivarda.observations.operators import build_operator

_STATIONS_STREAM = 0x57A7  # seed-sequence key of the fixed stations (independent of the cycle)


def read_stations(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Stations from a CSV with a header ``lat,lon`` (degrees); one clear error per problem."""
    path = Path(path)
    if not path.is_file():
        raise ObservationError(f"{path}: stations file not found")
    try:
        return _parse_stations(path)
    except UnicodeDecodeError as exc:
        raise ObservationError(f"{path}: not a text (UTF-8) CSV file (byte {exc.start} cannot be decoded)") from None


def _parse_stations(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        if "lat" not in header or "lon" not in header:
            raise ObservationError(f"{path}: expected a CSV header with columns lat,lon, got {reader.fieldnames}")
        lat, lon = [], []
        for k, row in enumerate(reader, start=2):
            row = {key.strip().lower(): val for key, val in row.items() if key is not None}
            try:
                la, lo = float(row["lat"]), float(row["lon"])
            except (TypeError, ValueError):
                raise ObservationError(f"{path}: line {k}: lat,lon must be numbers, got {row}") from None
            if not (math.isfinite(la) and math.isfinite(lo) and -90 <= la <= 90):
                raise ObservationError(f"{path}: line {k}: station outside the grid (lat {la}, lon {lo})")
            lat.append(la)
            lon.append(lo)
    if not lat:
        raise ObservationError(f"{path}: no stations")
    return np.asarray(lat), np.remainder(np.asarray(lon), 360.0)


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A boolean ``[H, W]`` mask from ``.npy``."""
    path = Path(path)
    try:
        mask = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ObservationError(f"{path}: cannot read the observation mask ({type(exc).__name__}: {exc or 'empty file'})") from None
    if mask.shape != shape:
        raise ObservationError(f"{path}: observation mask has shape {mask.shape}, expected the grid's {shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ObservationError(f"{path}: observation mask must be boolean (or 0/1)")
        mask = mask.astype(bool)
    return mask


class ObservationSimulator:
    """Draws observations of a truth window; see the module docstring for the modes.

    Args:
        config: the ``observations`` config section.
        grid, layout: of the truth states ``[C, H, W]``.
        clim_std: climatological std per channel ``[C]`` (physical units).
        seed: base seed; cycle ``k`` uses ``SeedSequence([seed, k])``.
    """

    def __init__(
        self,
        config: ObservationConfig,
        grid: Grid,
        layout: ChannelLayout,
        clim_std: Tensor | np.ndarray,
        seed: int = 0,
    ) -> None:
        self.config, self.grid, self.layout, self.seed = config, grid, layout, int(seed)
        clim = np.asarray(clim_std.detach().cpu() if isinstance(clim_std, Tensor) else clim_std, dtype=np.float64)
        if clim.shape != (layout.n_channels,):
            raise ObservationError(
                f"observation simulator: clim_std has shape {clim.shape}, expected ({layout.n_channels},)"
            )
        self.clim_std = clim
        self.observed = self._observables()
        self.channel_error_std = self._error_std()
        self._fixed_positions = self._persistent_positions()

    # ------------------------------------------------------------------ setup
    def _observables(self) -> tuple[np.ndarray, np.ndarray]:
        """``(channel, level)`` of what one column observes (level NaN on model levels)."""
        names = list(self.layout.names) if self.config.channels is None else self.config.channels
        channels = self.layout.indices(names)
        if self.config.pressure_levels is None:
            return np.asarray(channels, dtype=np.int64), np.full(len(channels), np.nan)
        levels = np.asarray(self.layout.levels, dtype=np.float64)
        lo, hi = levels.min(), levels.max()
        outside = [p for p in self.config.pressure_levels if not lo <= p <= hi]
        if outside:
            raise ObservationError(
                f"observations.pressure_levels: {outside} hPa outside the model levels [{lo:g}, {hi:g}]"
            )
        out_c: list[int] = []
        out_p: list[float] = []
        seen: list[str] = []
        for name, c in zip(names, channels, strict=True):
            var, level = ChannelLayout.parse(name)
            if level is None:
                out_c.append(c)
                out_p.append(math.nan)
            elif var not in seen:
                seen.append(var)
                start = self.layout.variable_slice(var).start
                for p in self.config.pressure_levels:
                    out_c.append(start + int(np.argmin(np.abs(np.log(levels) - math.log(p)))))
                    out_p.append(float(p))
        return np.asarray(out_c, dtype=np.int64), np.asarray(out_p)

    def _error_std(self) -> np.ndarray:
        """σ_o per observable ``[n_observables]``."""
        cfg = self.config
        sigma = np.empty(len(self.observed[0]))
        for k, c in enumerate(self.observed[0]):
            var = self.layout.channels[c].variable.short
            if var in cfg.error_std:
                sigma[k] = cfg.error_std[var]
            else:
                sigma[k] = cfg.error_fraction * cfg.error_scale.get(var, 1.0) * self.clim_std[c]
        bad = ~(np.isfinite(sigma) & (sigma > 0))
        if bad.any():
            names = sorted({self.layout.names[c] for c in self.observed[0][bad]})
            raise ObservationError(
                f"observation simulator: channels {names} have a climatological std of zero or NaN, so σ_o "
                "would be non-positive; give observations.error_std for their variables or leave them out of "
                "observations.channels"
            )
        return sigma

    def _persistent_positions(self) -> tuple[np.ndarray, np.ndarray] | None:
        cfg, grid = self.config, self.grid
        if cfg.mode == "fixed":
            if cfg.stations_file is not None:
                return read_stations(cfg.stations_file)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, _STATIONS_STREAM]))
            n_cols = grid.nlat * grid.nlon
            if cfg.n_stations > n_cols:
                raise ObservationError(f"observations.n_stations: {cfg.n_stations} > the grid's {n_cols} columns")
            return self._columns_to_latlon(np.sort(rng.choice(n_cols, cfg.n_stations, replace=False)))
        if cfg.mode == "grid":
            if cfg.mask_file is not None:
                mask = read_mask(cfg.mask_file, grid.shape)
            else:
                mask = np.zeros(grid.shape, dtype=bool)
                mask[:: cfg.grid_stride, :: cfg.grid_stride] = True
            return self._columns_to_latlon(np.flatnonzero(mask))
        return None

    def _columns_to_latlon(self, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        j, i = np.divmod(cols, self.grid.nlon)
        return self.grid.lat[j], self.grid.lon[i]

    def _n_columns(self) -> int:
        n_cols = self.grid.nlat * self.grid.nlon
        n = self.config.count if self.config.count is not None else round(self.config.fraction * n_cols)
        if self.config.mode == "random" and n > n_cols:
            raise ObservationError(f"observations.count: {n} > the grid's {n_cols} columns")
        return n

    def positions(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Latitudes and longitudes of the columns observed at one window time."""
        if self._fixed_positions is not None:
            return self._fixed_positions
        n = self._n_columns()
        if self.config.mode == "random":
            return self._columns_to_latlon(np.sort(rng.choice(self.grid.nlat * self.grid.nlon, n, replace=False)))
        lat = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))  # uniform on the sphere
        return lat, rng.uniform(0.0, 360.0, n)

    # ------------------------------------------------------------------ simulation
    def simulate(self, truth_window: Tensor, window_offsets_hours: list[float], cycle: int) -> ObsSet:
        """Observations of ``truth_window`` ``[T, C, H, W]`` for assimilation cycle ``cycle``.

        ``window_offsets_hours[t]`` is the time of window state ``t`` relative to the analysis time.
        Returns an ObsSet on the truth's device, ordered by time, column, then channel.
        """
        cfg, layout, grid = self.config, self.layout, self.grid
        shape = (layout.n_channels, *grid.shape)
        if truth_window.ndim != 4 or tuple(truth_window.shape[1:]) != shape:
            raise ObservationError(
                f"observation simulator: truth window must be [T, {', '.join(map(str, shape))}], "
                f"got {list(truth_window.shape)}"
            )
        n_times = truth_window.shape[0]
        if len(window_offsets_hours) != n_times:
            raise ObservationError(
                f"observation simulator: {len(window_offsets_hours)} window offsets for {n_times} states"
            )
        times = list(range(n_times)) if cfg.times is None else cfg.times
        if max(times) >= n_times:
            raise ObservationError(f"observations.times: {max(times)} is outside the window of {n_times} states")

        pos_seq, noise_seq, withhold_seq = np.random.SeedSequence([self.seed, int(cycle)]).spawn(3)
        rng_pos = np.random.default_rng(pos_seq)
        channel_o, level_o = self.observed
        n_o = len(channel_o)
        lat_l, lon_l, time_l, col_l = [], [], [], []
        n_columns = 0
        for t in times:
            lat, lon = self.positions(rng_pos)
            lat_l.append(np.repeat(lat, n_o))
            lon_l.append(np.repeat(lon, n_o))
            time_l.append(np.full(lat.size * n_o, t))
            col_l.append(np.repeat(np.arange(n_columns, n_columns + lat.size), n_o))
            n_columns += lat.size
        n_per_time = [a.size // n_o for a in lat_l]
        channel = np.concatenate([np.tile(channel_o, k) for k in n_per_time])
        level = np.concatenate([np.tile(level_o, k) for k in n_per_time])
        sigma = np.concatenate([np.tile(self.channel_error_std, k) for k in n_per_time])
        time = np.concatenate(time_l)
        column = np.concatenate(col_l)

        withheld_cols = np.random.default_rng(withhold_seq).random(n_columns) < cfg.withhold
        device = truth_window.device
        obs = ObsSet.create(
            np.concatenate(lat_l),
            np.concatenate(lon_l),
            channel,
            torch.zeros(channel.size, dtype=truth_window.dtype),
            torch.as_tensor(sigma, dtype=truth_window.dtype),
            time_index=time,
            time_offset_hours=np.asarray(window_offsets_hours, dtype=np.float64)[time],
            level=level,
            withheld=withheld_cols[column],
        ).to(device)
        with torch.no_grad():
            hx = build_operator(obs, grid, layout, shape, n_times=n_times)(truth_window)
        value = hx.double()
        if cfg.noise:
            eps = np.random.default_rng(noise_seq).standard_normal(channel.size)
            value = value + torch.as_tensor(sigma * eps, device=device)
        return obs.replace(value=value.to(truth_window.dtype))
