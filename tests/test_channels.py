"""Channel layouts: FengWu's 69 channels, indexing, slices, parsing, errors."""

from __future__ import annotations

import pytest

from aivarda.channels import (
    SURFACE_VARIABLES,
    UPPER_AIR_VARIABLES,
    WB2_LEVELS,
    ChannelLayout,
)
from aivarda.errors import DataError


def test_fengwu69_names_in_order():
    layout = ChannelLayout.fengwu69()
    names = layout.names
    assert len(names) == 69 == len(layout) == layout.n_channels
    assert names[:4] == ("u10m", "v10m", "t2m", "msl")
    assert WB2_LEVELS == (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
    expected = ["u10m", "v10m", "t2m", "msl"] + [f"{v}{p}" for v in "zquvt" for p in WB2_LEVELS]
    assert list(names) == expected
    assert names[4] == "z50" and names[16] == "z1000" and names[17] == "q50" and names[68] == "t1000"


def test_index_slices_and_channels():
    layout = ChannelLayout.fengwu69()
    assert layout.index("z500") == 4 + 7 and layout.index("t850") == 4 + 4 * 13 + 10
    assert layout.indices(["msl", "q50"]) == [3, 17]
    assert layout.variable_slice("u") == slice(4 + 2 * 13, 4 + 3 * 13)
    assert layout.variable_slice("t2m") == slice(2, 3)
    ch = layout.channel("q700")
    assert ch.level == 700 and ch.units == "kg kg**-1" and ch.variable.wb2_name == "specific_humidity"
    assert layout.channel("msl").level is None and layout.channel("msl").variable.wb2_name == "mean_sea_level_pressure"
    assert [c.name for c in layout.channels] == list(layout.names)


def test_index_errors_list_what_exists():
    layout = ChannelLayout.fengwu69()
    with pytest.raises(DataError, match=r"unknown channel 'z501'; this layout has 69 channels") as err:
        layout.index("z501")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="variable 'w' is not in this layout"):
        layout.variable_slice("w")


def test_parse():
    assert ChannelLayout.parse("z500") == ("z", 500)
    assert ChannelLayout.parse("t2m") == ("t2m", None)
    assert ChannelLayout.parse("u10m") == ("u10m", None)
    assert ChannelLayout.parse("q1000") == ("q", 1000)
    for bad in ("zz500", "z", "500", "temperature"):
        with pytest.raises(DataError, match="unknown channel name"):
            ChannelLayout.parse(bad)


def test_custom_layout_round_trip_and_validation():
    layout = ChannelLayout(("t2m",), ("z", "t"), (500, 850))
    assert layout.names == ("t2m", "z500", "z850", "t500", "t850")
    assert ChannelLayout.from_dict(layout.to_dict()) == layout
    with pytest.raises(DataError, match="unknown surface variable 'sst'"):
        ChannelLayout(("sst",), (), ())
    with pytest.raises(DataError, match="unknown upper-air variable 'pv'"):
        ChannelLayout((), ("pv",), (500,))
    with pytest.raises(DataError, match="need at least one pressure level"):
        ChannelLayout((), ("z",), ())
    with pytest.raises(DataError, match="duplicate channels"):
        ChannelLayout(("t2m", "t2m"), (), ())


def test_variable_tables_have_wb2_names_and_units():
    assert SURFACE_VARIABLES["msl"].wb2_name == "mean_sea_level_pressure" and SURFACE_VARIABLES["msl"].units == "Pa"
    assert UPPER_AIR_VARIABLES["z"].wb2_name == "geopotential" and UPPER_AIR_VARIABLES["z"].units == "m**2 s**-2"
    assert {v.wb2_name for v in UPPER_AIR_VARIABLES.values()} >= {
        "geopotential", "specific_humidity", "u_component_of_wind", "v_component_of_wind", "temperature"
    }
