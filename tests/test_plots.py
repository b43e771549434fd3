"""Figures are written and are not blank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from aivarda.cli import main as cli_main
from aivarda.evaluation.plots import plot_map, plot_time_series, save_figure
from aivarda.grid import Grid


def _assert_nontrivial_png(path, min_bytes=8_000):
    assert path.is_file() and path.stat().st_size > min_bytes
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    colours = np.unique(img[..., :3].reshape(-1, 3).round(2), axis=0)
    assert len(colours) > 50  # a colour map and text, not a blank canvas


@pytest.mark.parametrize("grid", [Grid.gaussian(32, 64), Grid.equiangular(33, 64)])
def test_plot_map_png(tmp_path, grid):
    lat = np.deg2rad(grid.lat)[:, None]
    lon = np.deg2rad(grid.lon)[None, :]
    field = torch.from_numpy(5e4 + 1e3 * np.cos(2 * lat) * np.sin(3 * lon)).float()
    ax = plot_map(field, grid, title="z500", units="m**2 s**-2")
    assert ax.get_title() == "z500" and ax.get_ylim() == (-90.0, 90.0)
    out = save_figure(ax, tmp_path / "sub" / "map.png")
    _assert_nontrivial_png(out)
    with pytest.raises(ValueError, match="does not match the grid"):
        plot_map(field[:-1], grid)


def test_plot_time_series_png(tmp_path):
    times = np.datetime64("2020-01-01T00") + np.arange(12) * np.timedelta64(6, "h")
    ax = plot_time_series(times, {"3DVar": np.linspace(2, 1, 12), "free run": torch.linspace(2, 4, 12)},
                          ylabel="RMSE z500 (m² s⁻²)", title="analysis error")
    assert [line.get_label() for line in ax.get_lines()] == ["3DVar", "free run"]
    _assert_nontrivial_png(save_figure(ax, tmp_path / "ts.png"), min_bytes=5_000)
    with pytest.raises(ValueError, match="has 3 values for 12 times"):
        plot_time_series(times, {"bad": [1, 2, 3]}, ylabel="x")


def test_cli_plot(mini_wb2_store, tmp_path, capsys):
    out = tmp_path / "plots" / "t850.png"
    code = cli_main(["data", "plot", str(mini_wb2_store.path), "--channel", "t850", "--time", "2020-01-01T06",
                     "--out", str(out)])
    assert code == 0 and str(out) in capsys.readouterr().out
    _assert_nontrivial_png(out)
