"""Normalisation statistics: hand/numpy-loop values, caching, climatology, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aivarda.channels import ChannelLayout
from aivarda.cli import main as cli_main
from aivarda.data import stats as stats_mod
from aivarda.data.sources import Wb2ZarrSource
from aivarda.data.stats import (
    NormStats,
    climatology,
    compute_norm_stats,
    load_or_compute_norm_stats,
    summarise,
)
from aivarda.errors import DataError
from aivarda.grid import Grid


class ArraySource:
    """An in-memory FieldSource for tests: ``data [T, C, H, W]`` at the given times."""

    def __init__(self, data: np.ndarray, times: np.ndarray, grid: Grid, layout: ChannelLayout) -> None:
        self.data, self.times, self.grid, self.layout = data, times, grid, layout

    def state(self, time):
        return self.states([time])[0]

    def states(self, times):
        idx = [int(np.flatnonzero(self.times == np.datetime64(t, "ns"))[0]) for t in times]
        return torch.from_numpy(self.data[idx])


def _random_source(grid: Grid, n_times: int = 6, seed: int = 0) -> ArraySource:
    rng = np.random.default_rng(seed)
    layout = ChannelLayout(("t2m",), ("z",), (500,))
    data = rng.normal(size=(n_times, 2, *grid.shape)).astype(np.float32)
    data[:, 1] = 5e4 + 1e3 * data[:, 1]  # geopotential-like offset: precision check
    times = np.datetime64("2020-01-01T00", "ns") + np.arange(n_times) * np.timedelta64(6, "h")
    return ArraySource(data, times, grid, layout)


@pytest.mark.parametrize("grid", [Grid.equiangular(7, 12), Grid.gaussian(6, 12)])
def test_weighted_stats_match_numpy_loops(grid):
    src = _random_source(grid)
    st = compute_norm_stats(src, diff_hours=6, progress=False)
    w = grid.weights
    x = src.data.astype(np.float64)
    starts, ends = x[:-1], x[1:]  # every 6-hourly pair
    h, wdt = grid.shape
    for c in range(2):
        mean = sum(w[i] * starts[k, c, i, j] for k in range(5) for i in range(h) for j in range(wdt)) / (5 * h * wdt)
        var = sum(w[i] * (starts[k, c, i, j] - mean) ** 2 for k in range(5) for i in range(h) for j in range(wdt)) / (
            5 * h * wdt
        )
        d = ends - starts
        dmean = sum(w[i] * d[k, c, i, j] for k in range(5) for i in range(h) for j in range(wdt)) / (5 * h * wdt)
        dvar = sum(w[i] * (d[k, c, i, j] - dmean) ** 2 for k in range(5) for i in range(h) for j in range(wdt)) / (
            5 * h * wdt
        )
        assert st.mean[c].item() == pytest.approx(mean, rel=1e-6, abs=1e-6)
        assert st.std[c].item() == pytest.approx(np.sqrt(var), rel=1e-5)
        assert st.diff_mean[c].item() == pytest.approx(dmean, rel=1e-5, abs=1e-5)
        assert st.diff_std[c].item() == pytest.approx(np.sqrt(dvar), rel=1e-5)
    assert st.n_samples == 5 and st.diff_hours == 6.0 and st.channels == ("t2m", "z500")
    # weighting matters: the unweighted std differs
    assert not np.isclose(st.std[0].item(), starts[:, 0].std(), rtol=1e-4)


def test_mini_store_stats_by_hand(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="train")
    st = compute_norm_stats(src, diff_hours=6, progress=False)
    # x = base_c + hours/4 + φ + λ/100; the 6-hourly pairs start at hours 0, 6, …, 36 (7 samples)
    assert st.n_samples == 7
    lat_mean = np.mean(mini_wb2_store.grid.weights * mini_wb2_store.grid.lat)  # 0 by symmetry
    assert lat_mean == pytest.approx(0.0, abs=1e-12)
    lon_mean = mini_wb2_store.grid.lon.mean() / 100.0
    hours = np.arange(7) * 6.0
    base = np.array([1000.0 * ["u10m", "v10m", "t2m", "msl", "z", "q", "u", "v", "t"].index(ch.variable.short)
                     + (ch.level or 0) for ch in mini_wb2_store.layout.channels])
    np.testing.assert_allclose(st.mean.numpy(), base + hours.mean() / 4 + lon_mean, atol=1e-3)
    var_lat = np.mean(mini_wb2_store.grid.weights * mini_wb2_store.grid.lat**2)
    var = (hours / 4).var() + var_lat + (mini_wb2_store.grid.lon / 100).var()
    np.testing.assert_allclose(st.std.numpy(), np.sqrt(var), rtol=1e-4)
    np.testing.assert_allclose(st.diff_mean.numpy(), 1.5, atol=1e-3)
    np.testing.assert_allclose(st.diff_std.numpy(), 0.0, atol=1e-3)
    hourly = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="hourly")
    st1 = compute_norm_stats(hourly, diff_hours=1, progress=False)
    np.testing.assert_allclose(st1.diff_mean.numpy(), 0.25, atol=1e-3)
    assert st1.n_samples == 6


def test_no_pairs_is_a_data_error(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="train")
    with pytest.raises(DataError, match="no two times 1 h apart"):
        compute_norm_stats(src, diff_hours=1, progress=False)
    summary = summarise(src, diff_hours=1, progress=False, require_pairs=False)
    assert torch.isnan(summary.stats.diff_std).all() and summary.stats.n_samples == 8
    assert summary.minimum[0].item() == pytest.approx(-90.0, abs=1e-3)  # u10m: k = 0, south pole, lon 0, t 0


def test_max_samples_subsamples_evenly(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="train")
    st = compute_norm_stats(src, diff_hours=6, max_samples=3, progress=False)
    assert st.n_samples == 3  # starts at hours 0, 18, 36: mean hours 18
    assert st.mean[0].item() == pytest.approx(18 / 4 + mini_wb2_store.grid.lon.mean() / 100, abs=1e-3)


def test_roundtrip_select_and_normalise(tmp_path):
    f64 = torch.float64
    st = NormStats(("a", "b"), torch.tensor([1.0, -2.0], dtype=f64), torch.tensor([2.0, 4.0], dtype=f64),
                   torch.zeros(2, dtype=f64), torch.ones(2, dtype=f64), 6.0, 10)
    st.save(tmp_path / "s.json")
    back = NormStats.load(tmp_path / "s.json")
    assert back.channels == st.channels and torch.equal(back.std, st.std) and back.n_samples == 10
    sub = st.select(["b"])
    assert sub.channels == ("b",) and sub.mean.item() == -2.0
    x = torch.randn(3, 2, 4, 5)
    z = st.normalise(x)
    torch.testing.assert_close(z[:, 1], (x[:, 1] + 2.0) / 4.0)
    torch.testing.assert_close(st.denormalise(z), x)
    with pytest.raises(DataError, match=r"channels \['c'\] not available"):
        st.select(["c"])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not a valid statistics file"):
        NormStats.load(tmp_path / "bad.json")


def test_cache_computes_once_then_reads(tmp_path, monkeypatch):
    from conftest import write_mini_store

    store = write_mini_store(tmp_path / "cached.zarr")
    src = Wb2ZarrSource(store.path, layout=store.layout, span="train")
    first = load_or_compute_norm_stats(src, progress=False)
    files = list((Path(os.environ["AIVARDA_HOME"]) / "stats").glob("norm_cached_*.json"))
    assert len(files) == 1

    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(stats_mod, "compute_norm_stats", fail)
    again = load_or_compute_norm_stats(Wb2ZarrSource(store.path, layout=store.layout, span="train"), progress=False)
    torch.testing.assert_close(again.mean, first.mean)
    with pytest.raises(AssertionError, match="recomputed"):  # another Δ is another cache entry
        load_or_compute_norm_stats(src, diff_hours=12, progress=False)
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_compute_norm_stats(src, refresh=True, progress=False)
    write_mini_store(store.path)  # rewritten with the same content: the content key is the same
    load_or_compute_norm_stats(Wb2ZarrSource(store.path, layout=store.layout, span="train"), progress=False)
    change_one_value(store.path / "2m_temperature", 250.0)  # the data changed, its metadata did not
    with pytest.raises(AssertionError, match="recomputed"):
        load_or_compute_norm_stats(Wb2ZarrSource(store.path, layout=store.layout, span="train"), progress=False)


def change_one_value(array_path: Path, value: float) -> None:
    """Set the first element of a Zarr array in place (its chunk file changes, metadata does not)."""
    import zarr

    a = zarr.open_array(str(array_path), mode="r+")
    a[(0,) * a.ndim] = value


def test_climatology_is_time_mean_and_cached(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="train")
    clim = climatology(src, progress=False)
    expected = np.mean([mini_wb2_store.expected(t) for t in src.times], axis=0)
    assert clim.shape == (len(src.layout), 9, 16) and clim.dtype == torch.float32
    np.testing.assert_allclose(clim.numpy(), expected, atol=1e-3)
    assert list((Path(os.environ["AIVARDA_HOME"]) / "stats").glob("clim_mini_*.npy"))
    torch.testing.assert_close(climatology(src, progress=False), clim)


def test_cli_stats_json(mini_wb2_store, capsys):
    assert cli_main(["data", "stats", str(mini_wb2_store.path), "--span", "train", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_samples"] == 7 and out["diff_hours"] == 6.0
    rows = {r["channel"]: r for r in out["channels"]}
    assert set(rows) == set(mini_wb2_store.layout.names)
    assert rows["t2m"]["units"] == "K" and rows["z500"]["diff_mean"] == pytest.approx(1.5, abs=1e-3)
    assert cli_main(["data", "stats", str(mini_wb2_store.path), "--span", "train"]) == 0
    table = capsys.readouterr().out
    assert "diff_std" in table and "z500" in table
