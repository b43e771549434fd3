"""Wb2ZarrSource: exact values, orientation normalisation, selection and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aivarda.channels import ChannelLayout
from aivarda.config import DataConfig
from aivarda.data.sources import (
    FieldSource,
    Wb2ZarrSource,
    as_time,
    layout_from_channels,
    open_source,
    store_layout,
    store_signature,
)
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid


def test_reads_exact_values_and_metadata(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout)
    assert isinstance(src, FieldSource)
    assert src.grid == Grid.equiangular(9, 16)
    assert src.times.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(src.times, mini_wb2_store.times)
    t = mini_wb2_store.times[3]
    x = src.state(t)
    assert x.dtype == torch.float32 and x.shape == (len(mini_wb2_store.layout), 9, 16)
    np.testing.assert_allclose(x.numpy(), mini_wb2_store.expected(t), atol=1e-3)
    assert src.spans == mini_wb2_store.spans
    assert json.loads(src.attrs["aivarda_grid"])["nlat"] == 9


def test_flipped_store_is_normalised_to_north_south_and_0_360(mini_wb2_store, mini_wb2_store_flipped):
    canon = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout)
    flipped = Wb2ZarrSource(mini_wb2_store_flipped.path, layout=mini_wb2_store.layout)
    assert flipped.grid == canon.grid  # inferred from coordinates: equiangular with poles
    assert flipped.grid.kind == "equiangular"
    assert np.all(np.diff(flipped.grid.lat) < 0) and flipped.grid.lon.min() == 0.0
    times = mini_wb2_store.times[[0, 5, 9]]
    torch.testing.assert_close(flipped.states(times), canon.states(times))
    np.testing.assert_allclose(flipped.state(times[1]).numpy(), mini_wb2_store.expected(times[1]), atol=1e-3)
    assert flipped.spans == {}


def test_states_in_any_order_with_repeats(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout)
    times = mini_wb2_store.times[[7, 2, 7, 0]]
    xs = src.states(times)
    assert xs.shape == (4, len(src.layout), 9, 16)
    for k, t in enumerate(times):
        np.testing.assert_allclose(xs[k].numpy(), mini_wb2_store.expected(t), atol=1e-3)


def test_reads_more_states_than_the_read_cache_holds(mini_wb2_store, monkeypatch):
    """A batch of more unique times than the recent-states cache can hold (the climatology of a new
    store reads 128 at a time) returns every state: eviction happens after the batch is taken."""
    import aivarda.data.sources as sources

    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout)
    one = src.state(mini_wb2_store.times[0]).numpy().nbytes
    monkeypatch.setattr(sources, "READ_CACHE_BYTES", 3 * one)  # room for 3 states
    for idx in ([0, 1], [1, 2, 3, 4, 5, 6, 7], [7, 6, 0, 9, 8, 1]):  # partly cached, then larger than the cache
        times = mini_wb2_store.times[idx]
        xs = src.states(times)
        for k, t in enumerate(times):
            np.testing.assert_allclose(xs[k].numpy(), mini_wb2_store.expected(t), atol=1e-3)
    assert len(src._recent) == 3


def test_layout_subset_selects_channels_and_levels(mini_wb2_store):
    layout = ChannelLayout(("t2m",), ("t", "z"), (850,))
    src = Wb2ZarrSource(mini_wb2_store.path, layout=layout)
    t = mini_wb2_store.times[1]
    x = src.state(t)
    assert x.shape == (3, 9, 16)
    np.testing.assert_allclose(x.numpy(), mini_wb2_store.expected(t, layout), atol=1e-3)
    # t850 = 1000·k(t) + 850 + hours/4 + lat + lon/100 at the north pole, lon 0, 6 h
    assert x[layout.index("t850"), 0, 0].item() == pytest.approx(1000 * 8 + 850 + 1.5 + 90.0, abs=1e-3)


def test_span_and_time_range(mini_wb2_store):
    train = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="train")
    assert train.times.size == 8 and np.all(np.diff(train.times) == np.timedelta64(6, "h"))
    hourly = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="hourly")
    assert hourly.times.size == 7 and np.all(np.diff(hourly.times) == np.timedelta64(1, "h"))
    ranged = Wb2ZarrSource(
        mini_wb2_store.path, layout=mini_wb2_store.layout, time_range=("2020-01-01T06", "2020-01-02T00")
    )
    assert [str(t)[:13] for t in ranged.times] == ["2020-01-01T06", "2020-01-01T12", "2020-01-01T18", "2020-01-02T00"]
    with pytest.raises(DataError, match=r"time 2020-01-03T01:00 is not in the source; available 2020-01-01T00:00"):
        train.state("2020-01-03T01")
    with pytest.raises(DataError, match=r"unknown span 'eval'; the store has spans \['hourly', 'train'\]"):
        Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout, span="eval")


def test_time_not_in_store_names_the_range(mini_wb2_store):
    src = Wb2ZarrSource(mini_wb2_store.path, layout=mini_wb2_store.layout)
    with pytest.raises(DataError) as err:
        src.state("2021-06-01")
    msg = str(err.value)
    assert "\n" not in msg and str(mini_wb2_store.path) in msg
    assert "2020-01-01T00:00 … 2020-01-03T06:00 (15 times)" in msg
    with pytest.raises(DataError, match="cannot read 'yesterday'"):
        src.state("yesterday")


def test_missing_store_is_one_line(tmp_path):
    missing = tmp_path / "nothing.zarr"
    with pytest.raises(DataError, match=r"nothing.zarr: no Zarr store found \(expected a WeatherBench2-layout store"):
        Wb2ZarrSource(missing)
    assert not missing.exists()


def test_default_layout_is_fengwu69_and_missing_level_is_named(mini_wb2_store):
    with pytest.raises(DataError) as err:
        Wb2ZarrSource(mini_wb2_store.path)  # FengWu's 69 channels need 13 levels; the store has 3
    msg = str(err.value)
    assert "\n" not in msg and "mini.zarr" in msg and "[50, 100, 150" in msg and "[500, 850, 1000]" in msg


def test_missing_variable_lists_the_store(mini_wb2_store):
    with pytest.raises(DataError) as err:
        Wb2ZarrSource(mini_wb2_store.path, layout=ChannelLayout(("sp",), (), ()))
    msg = str(err.value)
    assert "'surface_pressure' (sp) not found" in msg and "'geopotential'" in msg and "\n" not in msg


def test_store_layout_and_signature(mini_wb2_store, tmp_path):
    from conftest import write_mini_store

    layout = store_layout(mini_wb2_store.path)
    assert layout.names == mini_wb2_store.layout.names
    store = write_mini_store(tmp_path / "copy.zarr")
    before = store_signature(store.path)
    assert before == store_signature(store.path)
    write_mini_store(store.path)  # rewriting the store changes its signature
    assert store_signature(store.path) != before


def test_layout_from_channels():
    layout = layout_from_channels(["z500", "t2m", "t850", "z850", "t500"])
    assert layout.names == ("t2m", "z500", "z850", "t500", "t850")
    with pytest.raises(DataError, match=r"missing \['z850'\]"):
        layout_from_channels(["z500", "t850", "t500"])
    with pytest.raises(DataError, match="unknown channel name 'foo'"):
        layout_from_channels(["foo"])


def test_open_source_zarr(mini_wb2_store):
    cfg = DataConfig(source="zarr", path=mini_wb2_store.path, variables=["z500", "t2m"])
    src = open_source(cfg, span="train")
    assert src.layout.names == ("t2m", "z500") and src.times.size == 8
    with pytest.raises(ConfigError, match="data.path: required"):
        open_source(DataConfig(source="zarr"))


def test_as_time_accepts_common_types():
    import datetime as dt

    import pandas as pd

    ref = np.datetime64("2020-01-01T06:00", "ns")
    for value in ("2020-01-01T06:00", dt.datetime(2020, 1, 1, 6), pd.Timestamp("2020-01-01 06:00"), ref):
        assert as_time(value) == ref


def test_reads_the_tiny_nature_run(tiny_nature_run, monkeypatch):
    import xarray as xr

    src = Wb2ZarrSource(tiny_nature_run)  # default layout: FengWu's 69 channels
    assert len(src.layout) == 69 and src.grid == Grid.gaussian(32, 64)
    assert set(src.spans) >= {"train"}
    train = Wb2ZarrSource(tiny_nature_run, span="train")
    assert np.all(np.diff(train.times) == np.timedelta64(6, "h"))
    t = train.times[2]
    x = train.state(t)
    assert x.shape == (69, 32, 64) and torch.isfinite(x).all()
    ds = xr.open_zarr(tiny_nature_run)
    z500 = ds["geopotential"].sel(time=t, level=500).values
    np.testing.assert_array_equal(x[src.layout.index("z500")].numpy(), z500)
    assert 4.5e4 < x[src.layout.index("z500")].mean().item() < 6.5e4  # ≈ 5.5 km × g

    import aivarda.data.nature_run as nature_run

    monkeypatch.setattr(nature_run, "ensure_nature_run", lambda *a, **k: tiny_nature_run)
    opened = open_source(DataConfig(source="nature_run"), span="train")
    torch.testing.assert_close(opened.state(t), x)
