"""Figures: maps of one field and time series of scores (matplotlib, no display needed).

Figures are built with :class:`matplotlib.figure.Figure` directly (never ``pyplot``), so they work
headless and do not touch the user's backend. Maps use plain longitude/latitude axes — the nature
run has no continents; ``coastlines=True`` draws them with cartopy when it is installed.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from aivarda.errors import DataError
from aivarda.grid import Grid


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges: midpoints between centres, the outer edges mirrored about the end centres."""
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def _new_axes(coastlines: bool, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    fig = Figure(figsize=figsize, layout="constrained")
    if coastlines:
        try:
            import cartopy.crs as ccrs
        except ImportError:
            warnings.warn("cartopy is not installed: drawing the map without coastlines", stacklevel=3)
        else:
            return fig.add_subplot(projection=ccrs.PlateCarree(central_longitude=180.0)), True
    return fig.add_subplot(), False


def plot_map(
    field: torch.Tensor | np.ndarray,
    grid: Grid,
    title: str = "",
    units: str = "",
    ax: Axes | None = None,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    coastlines: bool = False,
) -> Axes:
    """Map of one field ``[H, W]`` on ``grid`` (lat N → S, lon 0…360) with a colour bar.

    Returns the axes; ``ax.figure.savefig(path)`` writes it. ``coastlines`` needs a new figure
    (``ax=None``) and cartopy.
    """
    values = field.detach().cpu().numpy() if isinstance(field, torch.Tensor) else np.asarray(field)
    if values.shape != grid.shape:
        raise ValueError(f"field shape {values.shape} does not match the grid {grid.shape}")
    geo = False
    if ax is None:
        ax, geo = _new_axes(coastlines, figsize=(8.0, 4.2))
    lon_edges = _edges(grid.lon)
    lat_edges = _edges(grid.lat)
    lat_edges[0], lat_edges[-1] = 90.0, -90.0  # the first and last rows reach the poles (global grids)
    kwargs: dict[str, Any] = {"cmap": cmap, "vmin": vmin, "vmax": vmax, "shading": "flat"}
    if geo:
        import cartopy.crs as ccrs

        kwargs["transform"] = ccrs.PlateCarree()
    mesh = ax.pcolormesh(lon_edges, lat_edges, values, **kwargs)
    if geo:
        ax.coastlines(linewidth=0.6)
    else:
        xticks = np.arange(0, 361, 60)
        ax.set_xticks(xticks[(xticks >= lon_edges[0]) & (xticks <= lon_edges[-1])])
        ax.set_yticks(np.arange(-90, 91, 30))
        ax.set_xlim(lon_edges[0], lon_edges[-1])
        ax.set_ylim(-90.0, 90.0)
        ax.set_xlabel("longitude (°E)")
        ax.set_ylabel("latitude (°N)")
        ax.set_aspect("equal")
    ax.figure.colorbar(mesh, ax=ax, shrink=0.85, label=units)
    if title:
        ax.set_title(title)
    return ax


def plot_time_series(
    times: Sequence[Any] | np.ndarray,
    series: Mapping[str, Sequence[float] | np.ndarray | torch.Tensor],
    ylabel: str,
    title: str = "",
    ax: Axes | None = None,
    logy: bool = False,
) -> Axes:
    """One line per entry of ``series`` (label → values, one per time) against ``times``
    (datetimes, or numbers such as lead hours)."""
    if ax is None:
        ax = Figure(figsize=(8.0, 4.0), layout="constrained").add_subplot()
    x = np.asarray(times)
    for label, values in series.items():
        y = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, dtype=float)
        if y.shape != x.shape:
            raise ValueError(f"series {label!r} has {y.shape[0] if y.ndim else 0} values for {x.shape[0]} times")
        ax.plot(x, y, label=label, marker="o" if x.size < 30 else None, markersize=3)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if np.issubdtype(x.dtype, np.datetime64):
        ax.figure.autofmt_xdate()
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def save_figure(ax: Axes, path: str | Path, dpi: int = 120) -> Path:
    """Write the figure of ``ax`` (PNG/PDF/SVG by suffix), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=dpi)
    return path


def plot_store_main(args: argparse.Namespace) -> int:
    """``aivarda data plot STORE --channel z500 [--time ISO] --out map.png``."""
    from aivarda.data.sources import (
        Wb2ZarrSource,
        as_time,
        format_time,
        layout_from_channels,
    )

    if Path(args.out).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise DataError(f"--out {args.out}: expected a .png, .pdf or .svg file")
    layout = layout_from_channels([args.channel])
    source = Wb2ZarrSource(args.store, layout=layout)
    time = source.times[0] if args.time is None else as_time(args.time)
    field = source.state(time)[0]
    channel = layout.channels[0]
    ax = plot_map(field, source.grid, title=f"{channel.name}  {format_time(time)}", units=channel.units)
    print(save_figure(ax, args.out))
    return 0
