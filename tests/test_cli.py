"""The ``aivarda`` command: data describe/stats/plot, and one-line errors that write nothing."""

from __future__ import annotations

import json

import pytest

from aivarda.cli import build_parser, main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("aivarda: error: ")
    return err[0]


def test_describe_json(mini_wb2_store, capsys):
    assert main(["data", "describe", str(mini_wb2_store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["grid"]["kind"] == "equiangular" and (info["grid"]["nlat"], info["grid"]["nlon"]) == (9, 16)
    assert info["n_channels"] == 4 + 5 * 3 and info["layout"]["levels"] == [500, 850, 1000]
    assert info["time"] == {"start": "2020-01-01T00:00", "end": "2020-01-03T06:00", "n_times": 15,
                            "intervals_hours": [1.0, 6.0]}
    assert set(info["spans"]) == {"train", "hourly"}
    assert info["fingerprint"]["origin"] is None and len(info["fingerprint"]["content"]) == 16  # not a nature run
    rows = {r["channel"]: r for r in info["channels"]}
    t2m = rows["t2m"]
    assert t2m["units"] == "K" and t2m["variable"] == "2m_temperature"
    # x = 2000 + hours/4 + φ + λ/100, sampled at the starts of the 6-hour pairs (hours 0 … 48)
    assert t2m["min"] == pytest.approx(2000 - 90.0, abs=1e-3)
    assert t2m["max"] == pytest.approx(2000 + 48 / 4 + 90.0 + 337.5 / 100, abs=1e-3)
    assert t2m["diff6h_std"] == pytest.approx(0.0, abs=1e-3)


def test_describe_table_of_flipped_store(mini_wb2_store_flipped, capsys):
    assert main(["data", "describe", str(mini_wb2_store_flipped.path)]) == 0
    out = capsys.readouterr().out
    assert "equiangular 9×16 (lat 90.000 … -90.000)" in out and "15 times" in out
    assert "z500" in out and "diff6h_std" in out and "  span " not in out  # no aivarda_spans attribute


def test_describe_missing_store(tmp_path, capsys):
    missing = tmp_path / "missing.zarr"
    assert main(["data", "describe", str(missing)]) == 2
    line = _error_line(capsys)
    assert f"{missing}: no Zarr store found" in line
    assert not missing.exists()


def test_plot_with_wrong_variable_writes_nothing(mini_wb2_store, tmp_path, capsys):
    out_dir = tmp_path / "figs"
    assert main(["data", "plot", str(mini_wb2_store.path), "--channel", "zz500", "--out", str(out_dir / "m.png")]) == 2
    assert "unknown channel name 'zz500'" in _error_line(capsys)
    assert main(["data", "plot", str(mini_wb2_store.path), "--channel", "w500", "--out", str(out_dir / "m.png")]) == 2
    assert "'vertical_velocity' (w) not found; the store has" in _error_line(capsys)
    store, png = str(mini_wb2_store.path), str(out_dir / "m.png")
    assert main(["data", "plot", store, "--time", "1999-01-01", "--out", png]) == 2
    assert "time 1999-01-01T00:00 is not in the source" in _error_line(capsys)
    assert not out_dir.exists()


def test_stats_of_missing_store(tmp_path, capsys):
    assert main(["data", "stats", str(tmp_path / "none.zarr")]) == 2
    assert "none.zarr: no Zarr store found" in _error_line(capsys)


def test_nature_run_with_malformed_config_writes_nothing(tmp_path, capsys):
    cfg = tmp_path / "nr.yaml"
    cfg.write_text("resolution: T21\nspans: {train: [1,\n")
    out_dir = tmp_path / "out"
    assert main(["data", "nature-run", "--config", str(cfg), "--out", str(out_dir / "nr.zarr")]) == 2
    line = _error_line(capsys)
    assert f"{cfg}: malformed YAML" in line
    assert not out_dir.exists()


def test_help_lists_data_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["data", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("nature-run", "describe", "stats", "plot"):
        assert command in out
