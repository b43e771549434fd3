"""Differentiable observation operators ``H: x_window [T, *S] → y [N]``.

Every operator here is linear and carries an explicit adjoint ``Hᵀ: y [N] → [T, *S]`` (a
scatter-add), checked in the tests against autograd's vector–Jacobian product and by the
dot-product test ⟨Hx, y⟩ = ⟨x, Hᵀy⟩. ``S`` is the shape of one state: ``[C, H, W]`` for an
atmosphere (flat index ``c·H·W + j·W + i``), ``[K]`` for Lorenz-96.

Building blocks:

- :class:`StencilOperator` — the sparse kernel: ``y_n = Σ_{e: row_e = n} w_e · x[t_e].flat[f_e]``
  (time selection is the per-entry window index ``t_e``);
- :class:`GridPointOperator` — masked identity ``y_n = x[t_n].flat[f_n]``;
- :class:`BilinearOperator` — horizontal bilinear interpolation, periodic in longitude; between a
  Gaussian grid's first (last) row and the pole it interpolates linearly in latitude towards the
  **pole value, taken as the zonal mean of that row** (for wind components this is the mean of
  the component, not a vector mean);
- :class:`LogPressureInterpolation` — vertical interpolation in ln p between the two bracketing
  model levels, composed with a horizontal operator by :class:`ComposedOperator`;
- :class:`StackedOperator` — several operators for disjoint subsets of the observations;
- :func:`build_operator` — the factory used by the analysis *and* by the simulator.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from aivarda.errors import ObservationError

if TYPE_CHECKING:
    from aivarda.channels import ChannelLayout
    from aivarda.grid import Grid
    from aivarda.observations.obsset import ObsSet

ON_GRID_TOL_DEG = 1e-6  # an observation this close to a grid point (in lat and lon) is on it


@runtime_checkable
class ObservationOperator(Protocol):
    """``y = H(x_window)``: ``[T, *S] → [N]``, differentiable with torch autograd."""

    n_obs: int

    def __call__(self, x_window: Tensor) -> Tensor: ...


@runtime_checkable
class LinearObservationOperator(ObservationOperator, Protocol):
    """A linear H with its explicit adjoint ``Hᵀ: [N] → [T, *S]``."""

    def adjoint(self, y: Tensor, n_times: int | None = None) -> Tensor: ...


# ---------------------------------------------------------------------------------- kernel
class StencilOperator:
    """Sparse linear operator in coordinate form.

    ``y_n = Σ_{e : row_e = n} w_e · x_window[t_e].reshape(-1)[f_e]`` and its adjoint
    ``(Hᵀy)[t_e].reshape(-1)[f_e] += w_e · y_{row_e}``.

    Args:
        row, time_index, flat_index, weight: 1-D, one entry per stencil point ``e``.
        n_obs: N, the length of ``y``.
        state_shape: ``S``, the shape of one state (without the window dimension).
        n_times: T of the window returned by :meth:`adjoint` (default: largest ``time_index`` + 1).
    """

    def __init__(
        self,
        row: Tensor,
        time_index: Tensor,
        flat_index: Tensor,
        weight: Tensor,
        n_obs: int,
        state_shape: Sequence[int],
        n_times: int | None = None,
    ) -> None:
        device = torch.as_tensor(row).device
        self.row = torch.as_tensor(row, dtype=torch.int64, device=device)
        self.time_index = torch.as_tensor(time_index, dtype=torch.int64, device=device)
        self.flat_index = torch.as_tensor(flat_index, dtype=torch.int64, device=device)
        self.weight = torch.as_tensor(weight, dtype=torch.float64, device=device)
        if not (self.row.shape == self.time_index.shape == self.flat_index.shape == self.weight.shape):
            raise ObservationError("stencil operator: row, time_index, flat_index and weight differ in length")
        self.n_obs = int(n_obs)
        self.state_shape = tuple(int(s) for s in state_shape)
        self.state_size = math.prod(self.state_shape)
        needed_t = int(self.time_index.max()) + 1 if self.time_index.numel() else 1
        self.n_times = needed_t if n_times is None else int(n_times)
        if self.flat_index.numel() and (
            int(self.flat_index.min()) < 0 or int(self.flat_index.max()) >= self.state_size
        ):
            raise ObservationError(f"stencil operator: a flat index is outside the state of shape {self.state_shape}")
        if self.time_index.numel() and (int(self.time_index.min()) < 0 or needed_t > self.n_times):
            raise ObservationError(f"stencil operator: a time index is outside the window 0 … {self.n_times - 1}")
        self._needed_t = needed_t
        self._scatter = self.time_index * self.state_size + self.flat_index

    @property
    def device(self) -> torch.device:
        return self.row.device

    def _check(self, x_window: Tensor) -> None:
        if tuple(x_window.shape[1:]) != self.state_shape or x_window.shape[0] < self._needed_t:
            raise ObservationError(
                f"observation operator: expected a window [T≥{self._needed_t}, "
                f"{', '.join(map(str, self.state_shape))}], got {list(x_window.shape)}"
            )

    def __call__(self, x_window: Tensor) -> Tensor:
        """``[T, *S] → [N]``."""
        self._check(x_window)
        vals = x_window.reshape(x_window.shape[0], -1)[self.time_index, self.flat_index]
        vals = vals * self.weight.to(x_window.dtype)
        return vals.new_zeros(self.n_obs).index_add(0, self.row, vals)

    def adjoint(self, y: Tensor, n_times: int | None = None) -> Tensor:
        """``[N] → [T, *S]`` (scatter-add); ``T = n_times`` or the operator's ``n_times``."""
        t = self.n_times if n_times is None else int(n_times)
        if y.shape != (self.n_obs,):
            raise ObservationError(
                f"observation operator adjoint: expected y of shape ({self.n_obs},), got {list(y.shape)}"
            )
        if t < self._needed_t:
            raise ObservationError(f"observation operator adjoint: n_times={t} but observations use {self._needed_t}")
        contrib = self.weight.to(y.dtype) * y[self.row]
        out = y.new_zeros(t * self.state_size).index_add(0, self._scatter, contrib)
        return out.reshape(t, *self.state_shape)

    def to(self, device: torch.device | str) -> StencilOperator:
        out = copy.copy(self)
        for name in ("row", "time_index", "flat_index", "weight", "_scatter"):
            setattr(out, name, getattr(self, name).to(device))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_obs={self.n_obs}, entries={self.row.numel()}, state_shape={self.state_shape})"


class GridPointOperator(StencilOperator):
    """Masked identity: ``y_n = x_window.reshape(T, -1)[time_index_n, flat_index_n]``.

    Shape-agnostic: ``state_shape`` is ``[K]`` for Lorenz-96 or ``[C, H, W]`` (flat index
    ``c·H·W + j·W + i``). Adjoint: scatter-add of ``y`` into zeros.
    """

    def __init__(
        self, flat_index: Tensor, time_index: Tensor, state_shape: Sequence[int], n_times: int | None = None
    ) -> None:
        flat_index = torch.as_tensor(flat_index, dtype=torch.int64)
        n = flat_index.shape[0]
        device = flat_index.device
        super().__init__(
            torch.arange(n, device=device),
            torch.as_tensor(time_index, device=device),
            flat_index,
            torch.ones(n, dtype=torch.float64, device=device),
            n,
            state_shape,
            n_times,
        )

    def __call__(self, x_window: Tensor) -> Tensor:
        self._check(x_window)
        return x_window.reshape(x_window.shape[0], -1)[self.time_index, self.flat_index]


# ---------------------------------------------------------------------------------- horizontal
def bilinear_stencil(
    grid: Grid, lat: np.ndarray, lon: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal interpolation weights on ``grid`` as entries ``(row, j, i, w)``.

    Inside the latitude range: ``f = Σ w f[j, i]`` over the 4 surrounding points, linear in lat
    and in lon, periodic in longitude (``lon`` 359.9° mixes the last column with column 0).
    Beyond the first/last row (a Gaussian grid has no pole rows): with ``a = (φ − φ_0)/(±90 − φ_0)``,
    ``f = (1 − a)·f_lon(row 0) + a·mean_i f[row 0, i]``, i.e. linear in latitude towards a pole
    value equal to the zonal mean of the nearest row. Zero weights are dropped, so an observation
    exactly on a grid point has one entry of weight 1.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    h, w = grid.shape
    dlon = 360.0 / w
    if not np.allclose(np.diff(grid.lon), dlon):
        raise ObservationError(f"bilinear interpolation needs equally spaced longitudes, grid {grid.describe()}")
    n = lat.shape[0]
    rows = np.arange(n)

    # longitude: periodic
    xpos = np.remainder(lon - grid.lon[0], 360.0) / dlon
    i0f = np.floor(xpos)
    wx = xpos - i0f
    i0 = i0f.astype(np.int64) % w
    i1 = (i0 + 1) % w

    # latitude: rows are N → S
    lat_asc = grid.lat[::-1]
    k = np.clip(np.searchsorted(lat_asc, lat, side="right") - 1, 0, h - 2)
    j_s = h - 1 - k  # southern row
    j_n = j_s - 1
    wy = (lat - grid.lat[j_s]) / (grid.lat[j_n] - grid.lat[j_s])  # weight of the northern row
    north_cap = lat > grid.lat[0]
    south_cap = lat < grid.lat[-1]
    inside = ~(north_cap | south_cap)

    ent_r, ent_j, ent_i, ent_w = [], [], [], []

    def add(r: np.ndarray, j: np.ndarray, i: np.ndarray, wt: np.ndarray) -> None:
        ent_r.append(r)
        ent_j.append(j)
        ent_i.append(i)
        ent_w.append(wt)

    m = inside
    add(rows[m], j_n[m], i0[m], (wy * (1 - wx))[m])
    add(rows[m], j_n[m], i1[m], (wy * wx)[m])
    add(rows[m], j_s[m], i0[m], ((1 - wy) * (1 - wx))[m])
    add(rows[m], j_s[m], i1[m], ((1 - wy) * wx)[m])
    for cap, j_edge, pole in ((north_cap, 0, 90.0), (south_cap, h - 1, -90.0)):
        if not cap.any():
            continue
        r = rows[cap]
        a = (lat[cap] - grid.lat[j_edge]) / (pole - grid.lat[j_edge])
        jj = np.full(r.shape, j_edge)
        add(r, jj, i0[cap], (1 - a) * (1 - wx[cap]))
        add(r, jj, i1[cap], (1 - a) * wx[cap])
        add(np.repeat(r, w), np.repeat(jj, w), np.tile(np.arange(w), r.size), np.repeat(a / w, w))

    r, j, i, wt = (np.concatenate(v) for v in (ent_r, ent_j, ent_i, ent_w))
    keep = wt != 0.0
    return r[keep], j[keep], i[keep], wt[keep]


class BilinearOperator(StencilOperator):
    """Bilinear interpolation of channel ``channel_n`` at window time ``time_index_n`` to
    ``(lat_n, lon_n)``; see :func:`bilinear_stencil` for the weights and the polar caps.

    The state shape is ``[n_channels, H, W]``. Without ``n_channels`` the operator accepts
    states with any number of channels that holds ``channel`` and its adjoint returns
    ``largest channel + 1`` channels; pass the layout's size to get full states back.
    """

    def __init__(
        self,
        grid: Grid,
        lat: Tensor | np.ndarray,
        lon: Tensor | np.ndarray,
        channel: Tensor | np.ndarray,
        time_index: Tensor | np.ndarray,
        *,
        n_channels: int | None = None,
        n_times: int | None = None,
    ) -> None:
        device = channel.device if isinstance(channel, Tensor) else torch.device("cpu")
        lat_np, lon_np = _numpy(lat), _numpy(lon)
        channel_np, time_np = _numpy(channel).astype(np.int64), _numpy(time_index).astype(np.int64)
        h, w = grid.shape
        self.any_channels = n_channels is None
        if n_channels is None:
            n_channels = int(channel_np.max()) + 1 if channel_np.size else 1
        r, j, i, wt = bilinear_stencil(grid, lat_np, lon_np)
        flat = channel_np[r] * (h * w) + j * w + i
        super().__init__(
            torch.as_tensor(r, device=device),
            torch.as_tensor(time_np[r], device=device),
            torch.as_tensor(flat, device=device),
            torch.as_tensor(wt, device=device),
            lat_np.shape[0],
            (n_channels, h, w),
            n_times,
        )

    def _check(self, x_window: Tensor) -> None:
        c, h, w = self.state_shape
        if not self.any_channels or x_window.ndim != 4 or x_window.shape[1] < c:
            super()._check(x_window)
        elif tuple(x_window.shape[2:]) != (h, w) or x_window.shape[0] < self._needed_t:
            raise ObservationError(
                f"observation operator: expected a window [T≥{self._needed_t}, C≥{c}, {h}, {w}], "
                f"got {list(x_window.shape)}"
            )


# ---------------------------------------------------------------------------------- vertical
class LogPressureInterpolation:
    """Vertical interpolation in ln p: ``[2N] → [N]``.

    The input holds the observed variable at the obs positions on the two bracketing model
    levels, first all N values at the lower pressure ``p_lo`` then all N at ``p_hi``:
    ``y_n = (1 − a_n)·m_n + a_n·m_{N+n}`` with ``a_n = (ln p_n − ln p_lo,n)/(ln p_hi,n − ln p_lo,n)``.
    Adjoint: ``[(1 − a)·y, a·y]``.
    """

    def __init__(self, pressure: Tensor, p_lo: Tensor, p_hi: Tensor) -> None:
        pressure, p_lo, p_hi = (torch.as_tensor(p, dtype=torch.float64) for p in (pressure, p_lo, p_hi))
        if bool(((pressure < p_lo) | (pressure > p_hi) | (p_lo >= p_hi)).any()):
            raise ObservationError("log-pressure interpolation: each pressure must lie between its bracketing levels")
        self.a = (torch.log(pressure) - torch.log(p_lo)) / (torch.log(p_hi) - torch.log(p_lo))
        self.n_obs = int(self.a.shape[0])

    def __call__(self, m: Tensor) -> Tensor:
        a = self.a.to(m.dtype)
        return (1 - a) * m[: self.n_obs] + a * m[self.n_obs :]

    def adjoint(self, y: Tensor) -> Tensor:
        a = self.a.to(y.dtype)
        return torch.cat([(1 - a) * y, a * y])

    def to(self, device: torch.device | str) -> LogPressureInterpolation:
        out = object.__new__(LogPressureInterpolation)
        out.a, out.n_obs = self.a.to(device), self.n_obs
        return out


class VectorMap(Protocol):
    """A linear map between observation-space vectors ``[M] → [N]`` with its adjoint ``[N] → [M]``."""

    n_obs: int

    def __call__(self, m: Tensor) -> Tensor: ...

    def adjoint(self, y: Tensor) -> Tensor: ...


class ComposedOperator:
    """``H = outer ∘ inner`` (e.g. vertical ∘ horizontal); adjoint ``innerᵀ(outerᵀ y)``."""

    def __init__(self, outer: VectorMap, inner: LinearObservationOperator) -> None:
        self.outer, self.inner = outer, inner
        self.n_obs = outer.n_obs

    @property
    def n_times(self) -> int:
        return self.inner.n_times  # type: ignore[attr-defined]

    def __call__(self, x_window: Tensor) -> Tensor:
        return self.outer(self.inner(x_window))

    def adjoint(self, y: Tensor, n_times: int | None = None) -> Tensor:
        return self.inner.adjoint(self.outer.adjoint(y), n_times)

    def to(self, device: torch.device | str) -> ComposedOperator:
        return ComposedOperator(self.outer.to(device), self.inner.to(device))  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"ComposedOperator({self.outer.__class__.__name__} ∘ {self.inner!r})"


class StackedOperator:
    """Operators for disjoint subsets of the observations: ``y[index_g] = H_g(x)``.

    The index tensors must partition ``0 … N−1``. Adjoint: ``Σ_g H_gᵀ(y[index_g])``.
    """

    def __init__(self, parts: Sequence[tuple[Tensor, LinearObservationOperator]], n_obs: int, n_times: int) -> None:
        self.parts = [(torch.as_tensor(idx, dtype=torch.int64), op) for idx, op in parts]
        self.n_obs, self.n_times = int(n_obs), int(n_times)
        order = torch.cat([idx for idx, _ in self.parts]) if self.parts else torch.zeros(0, dtype=torch.int64)
        if order.numel() != self.n_obs or not torch.equal(
            torch.sort(order).values, torch.arange(self.n_obs, device=order.device)
        ):
            raise ObservationError("stacked operator: the parts' indices must partition the observations")
        self._inverse = torch.argsort(order)

    def __call__(self, x_window: Tensor) -> Tensor:
        return torch.cat([op(x_window) for _, op in self.parts])[self._inverse]

    def adjoint(self, y: Tensor, n_times: int | None = None) -> Tensor:
        t = self.n_times if n_times is None else n_times
        return sum(op.adjoint(y[idx], t) for idx, op in self.parts)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> StackedOperator:
        parts = [(idx.to(device), op.to(device)) for idx, op in self.parts]  # type: ignore[attr-defined]
        return StackedOperator(parts, self.n_obs, self.n_times)

    def __repr__(self) -> str:
        return "StackedOperator(" + ", ".join(repr(op) for _, op in self.parts) + ")"


# ---------------------------------------------------------------------------------- factory
def _numpy(t: Tensor | np.ndarray) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def nearest_row(grid: Grid, lat: np.ndarray) -> np.ndarray:
    """Index of the grid row nearest to each latitude."""
    lat_asc = grid.lat[::-1]
    k = np.clip(np.searchsorted(lat_asc, lat), 1, grid.nlat - 1)
    k -= (lat - lat_asc[k - 1]) < (lat_asc[k] - lat)
    return grid.nlat - 1 - k


def vertical_brackets(
    layout: ChannelLayout, channel: np.ndarray, level: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Model channels for upper-air observations at pressure ``level`` (hPa, inside the layout's range).

    Returns ``(exact, c_exact, c_lo, c_hi, p_brackets)``, arrays over the observations:
    ``exact`` — the level is one of the layout's levels and ``c_exact`` is that channel of the
    observed variable; otherwise ``c_lo``/``c_hi`` are the variable's channels at the bracketing
    levels ``p_brackets[0] < p < p_brackets[1]``.
    """
    levels = np.asarray(layout.levels, dtype=np.float64)
    order = np.argsort(levels)
    sorted_levels = levels[order]
    n_surface = len(layout.surface)
    n_lev = len(levels)
    var_start = n_surface + ((channel - n_surface) // n_lev) * n_lev  # first channel of the variable
    close = np.isclose(level[:, None], levels[None, :], rtol=1e-9, atol=0.0)
    exact = close.any(axis=1)
    c_exact = var_start + close.argmax(axis=1)
    k = np.clip(np.searchsorted(sorted_levels, level, side="right") - 1, 0, n_lev - 2)
    c_lo = var_start + order[k]
    c_hi = var_start + order[k + 1]
    return exact, c_exact, c_lo, c_hi, np.stack([sorted_levels[k], sorted_levels[k + 1]])


def build_operator(
    obs: ObsSet,
    grid: Grid | None,
    layout: ChannelLayout | None,
    state_shape: Sequence[int],
    *,
    n_times: int | None = None,
) -> LinearObservationOperator:
    """The observation operator of ``obs`` for states of shape ``state_shape``.

    ``state_shape`` is ``[C, H, W]`` (or the window ``[T, C, H, W]``, which also sets ``n_times``).
    Observations exactly on a grid point (and on a model level or at the surface) get a
    :class:`GridPointOperator`, other positions a :class:`BilinearOperator`; a finite ``level``
    that is not one of the layout's levels adds :class:`LogPressureInterpolation` between the
    bracketing levels of the observed variable. The result keeps the order of ``obs``.

    Without a grid (``grid=None``, a Lorenz-96 state ``[K]`` or window ``[T, K]``) ``obs.channel``
    is the index of the observed state element and the operator is a :class:`GridPointOperator`.

    Every observation must be valid (:meth:`ObsSet.validate` is called and raises otherwise);
    pass ``obs.active()`` or a validated set.
    """
    shape = tuple(int(s) for s in state_shape)
    if grid is None:
        if len(shape) == 2:  # a window [T, K]
            n_times, shape = shape[0] if n_times is None else n_times, shape[1:]
        idx = obs.channel
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= math.prod(shape)):
            raise ObservationError(f"observations: channel outside the state of shape {shape}")
        return GridPointOperator(idx, obs.time_index, shape, n_times)
    if layout is None:
        raise ObservationError("build_operator: a grid needs a channel layout")
    if len(shape) == 4:
        n_times = shape[0] if n_times is None else n_times
        shape = shape[1:]
    if shape != (layout.n_channels, *grid.shape):
        raise ObservationError(
            f"build_operator: state shape {list(shape)} does not match layout × grid "
            f"[{layout.n_channels}, {grid.nlat}, {grid.nlon}]"
        )
    obs.validate(grid, layout, n_times=n_times)
    n = len(obs)
    if n_times is None:
        n_times = int(obs.time_index.max()) + 1 if n else 1
    device = obs.device
    h, w = grid.shape
    lat, lon = _numpy(obs.lat), _numpy(obs.lon)
    channel, level, time = _numpy(obs.channel).copy(), _numpy(obs.level), _numpy(obs.time_index)

    # vertical: finite levels either fall on a model level (→ that channel) or need interpolation
    vertical = np.zeros(n, dtype=bool)
    has_level = np.isfinite(level)
    if has_level.any():
        exact, c_exact, c_lo, c_hi, p_brackets = vertical_brackets(layout, channel[has_level], level[has_level])
        idx = np.flatnonzero(has_level)
        channel[idx[exact]] = c_exact[exact]
        vertical[idx[~exact]] = True
        v_lo, v_hi, v_p = c_lo[~exact], c_hi[~exact], p_brackets[:, ~exact]

    # horizontal: exactly on a grid point?
    j = nearest_row(grid, lat)
    xpos = np.remainder(lon - grid.lon[0], 360.0) / (360.0 / w)
    i = np.rint(xpos).astype(np.int64) % w
    on_grid = (np.abs(lat - grid.lat[j]) < ON_GRID_TOL_DEG) & (
        np.abs(xpos - np.rint(xpos)) * 360.0 / w < ON_GRID_TOL_DEG
    )

    def tensor(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, device=device)

    parts: list[tuple[Tensor, LinearObservationOperator]] = []
    sel = np.flatnonzero(on_grid & ~vertical)
    if sel.size:
        flat = channel[sel] * (h * w) + j[sel] * w + i[sel]
        parts.append((tensor(sel), GridPointOperator(tensor(flat), tensor(time[sel]), shape, n_times)))
    sel = np.flatnonzero(~on_grid & ~vertical)
    if sel.size:
        op = BilinearOperator(
            grid, lat[sel], lon[sel], tensor(channel[sel]), time[sel], n_channels=shape[0], n_times=n_times
        )
        parts.append((tensor(sel), op))
    sel = np.flatnonzero(vertical)
    if sel.size:
        horizontal = BilinearOperator(
            grid,
            np.concatenate([lat[sel], lat[sel]]),
            np.concatenate([lon[sel], lon[sel]]),
            tensor(np.concatenate([v_lo, v_hi])),
            np.concatenate([time[sel], time[sel]]),
            n_channels=shape[0],
            n_times=n_times,
        )
        interp = LogPressureInterpolation(tensor(level[sel]), tensor(v_p[0]), tensor(v_p[1]))
        parts.append((tensor(sel), ComposedOperator(interp, horizontal)))

    if len(parts) == 1:
        return parts[0][1]
    if not parts:
        return GridPointOperator(
            tensor(np.zeros(0, dtype=np.int64)), tensor(np.zeros(0, dtype=np.int64)), shape, n_times
        )
    return StackedOperator(parts, n, n_times)
