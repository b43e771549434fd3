"""``aivarda report`` conventions on synthetic run directories written by the runner's own writers
(:func:`metrics_row`, :func:`write_metrics`): WB2 aggregation, baselines, equal forecast sample sets,
paired comparisons with bootstrap intervals, provenance."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from aivarda.channels import ChannelLayout
from aivarda.cli import main
from aivarda.cycling.outputs import metrics_row, write_metrics
from aivarda.evaluation.report import load_run, run_summary

LAYOUT = ChannelLayout(("t2m",), ("z", "q", "u", "t"), (500, 850))
NAMES = list(LAYOUT.names)
SIGMA = np.array([10.0 ** (i % 3) for i in range(len(NAMES))])


def make_run(root: Path, name: str, rmse_bg: np.ndarray, rmse_an: np.ndarray, *, seed: int = 0, method: str = "3dvar",
             start: str = "2000-08-01T00", hours: int = 6, baselines: bool = True,
             forecasts: dict[int, list[float]] | None = None, extra: dict[str, Any] | None = None,
             netcdf: bool = False) -> Path:
    """A run directory with per-cycle RMSE ``[T, C]`` of background and analysis; with ``baselines``
    climatology RMSE 2σ and persistence RMSE σ in every cycle; ``forecasts``: {cycle: leads (h)}."""
    out = root / name
    out.mkdir(parents=True)
    t0 = np.datetime64(start, "h")
    records = []
    for n in range(rmse_bg.shape[0]):
        scores = {
            "bg_wrmse": dict(zip(NAMES, rmse_bg[n].tolist())), "ana_wrmse": dict(zip(NAMES, rmse_an[n].tolist())),
            "bg_bias": dict.fromkeys(NAMES, 0.0), "ana_bias": dict.fromkeys(NAMES, 0.0),
            "normalised_wrmse": {"background": float(np.mean(rmse_bg[n] / SIGMA)),
                                 "analysis": float(np.mean(rmse_an[n] / SIGMA))},
        }
        base = None
        if baselines:
            base = {"clim_wrmse": dict(zip(NAMES, (2 * SIGMA).tolist())), "pers_wrmse": dict(zip(NAMES, SIGMA.tolist())),
                    "sigma_clim": dict(zip(NAMES, SIGMA.tolist())), "clim_nrmse": 2.0, "pers_nrmse": 1.0}
        row = metrics_row(n, t0 + n * np.timedelta64(hours, "h"), method, scores, {"assimilated": 10}, {},
                          {"iterations": 3, "converged": True, "fallback": False, "J_initial": 2.0, "J_final": 1.0},
                          {"forecast": 0.5, "io": 0.1}, baselines=base)
        fc = None
        if forecasts and n in forecasts:
            leads = forecasts[n]
            fc = {"lead_hours": leads, "rmse": {ch: [100.0 * (1 + lead / 24) + n for lead in leads] for ch in NAMES}}
        records.append({"row": row, "forecast": fc})
    write_metrics(out, records, LAYOUT, netcdf=netcdf)
    cfg = {"name": name, "seed": seed, "cycle_time": f"PT{hours}H", "assimilation": {"method": method},
           "data": {"source": "nature_run"}, "output_dir": str(out), **(extra or {})}
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


def errors(rng: np.random.Generator, t: int, scale: float = 1.0) -> np.ndarray:
    """Per-cycle RMSE ``[T, C]`` around ``scale · σ``, correlated in time."""
    walk = np.cumsum(rng.normal(size=(t, 1)) * 0.05, axis=0)
    return scale * SIGMA * np.exp(0.2 * rng.normal(size=(t, len(NAMES))) + walk)


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["report", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_scores_are_root_of_time_mean_mse_and_baselines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    bg, an = errors(rng, 12), errors(rng, 12, 0.5)
    run = make_run(tmp_path, "a", bg, an, netcdf=True)
    s = report_json(capsys, str(run), "--out", str(tmp_path / "figs"))["runs"][0]
    z = NAMES.index("z500")
    assert s["rmse"]["z500"]["background"] == pytest.approx(np.sqrt(np.mean(bg[:, z] ** 2)), rel=1e-12)
    assert s["rmse"]["z500"]["analysis"] == pytest.approx(np.sqrt(np.mean(an[:, z] ** 2)), rel=1e-12)
    assert s["rmse"]["z500"]["analysis"] > np.mean(an[:, z])  # not the mean of the per-cycle RMSEs
    wb2_all = np.mean(np.sqrt(np.mean(an**2, axis=0)) / SIGMA)
    assert s["normalised_rmse"]["analysis"] == pytest.approx(wb2_all, rel=1e-12)
    assert s["normalised_rmse_convention"].startswith("mean over channels")
    b = s["baselines"]
    assert b["climatology"]["rmse"]["t850"] == pytest.approx(2 * SIGMA[NAMES.index("t850")])
    assert b["climatology"]["normalised_rmse"] == pytest.approx(2.0)
    assert b["persistence"]["normalised_rmse"] == pytest.approx(1.0) and b["persistence"]["lead_hours"] == 6
    # the metrics files hold the baselines: [cycle, channel] in metrics.nc
    with xr.open_dataset(run / "metrics.nc", engine="h5netcdf") as ds:
        assert ds["clim_wrmse"].dims == ("cycle", "channel")
        np.testing.assert_allclose(ds["sigma_clim"].values[0], SIGMA)
        assert float(ds["pers_nrmse"][0]) == 1.0


def test_table_shows_baseline_rows_forecasts_and_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    # forecasts from cycles 0, 4, 8; the last reaches only 12 h: leads average cycles 0 and 4 only
    fcs = {0: [6.0, 12.0, 18.0, 24.0], 4: [6.0, 12.0, 18.0, 24.0], 8: [6.0, 12.0]}
    runs = [make_run(tmp_path, "noda", *(2 * [errors(rng, 10, 3)]), method="none", forecasts=fcs),
            make_run(tmp_path, "var", errors(rng, 10), errors(rng, 10, 0.5))]
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "figs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:5]] == ["noda", "var", "climatology", "persistence"]
    clim = lines[3].split()
    assert clim[2] == "10" and clim[-1] == "2/2"  # all/σ of the climatology: 2
    i = next(k for k, line in enumerate(lines) if line.startswith("z500 forecast"))
    assert lines[i].split()[2:] == ["used", "24h"]
    assert lines[i + 1].split()[:2] == ["noda", "2/3"]
    assert float(lines[i + 1].split()[2]) == pytest.approx(np.sqrt((200.0**2 + 204.0**2) / 2), rel=1e-3)
    assert lines[-2].startswith("provenance: aivarda ") and "noda config " in lines[-2]
    s = run_summary(load_run(runs[0]))
    assert s["forecast_samples"] == {"forecasts": 3, "used": 2, "leads_hours": [6.0, 12.0, 18.0, 24.0]}
    assert s["forecast_rmse"]["z500"]["6h"] == pytest.approx(np.sqrt((125.0**2 + 129.0**2) / 2))


def test_run_without_baselines_keeps_its_columns_and_says_its_convention(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    an = errors(rng, 6)
    run = load_run(make_run(tmp_path, "old", an, an, baselines=False))
    assert not any(k.startswith(("clim_", "pers_", "sigma_")) for k in run.rows[0])
    s = run_summary(run)
    assert "baselines" not in s and s["normalised_rmse_convention"].startswith("root-mean-square")
    per_cycle = np.mean(an / SIGMA, axis=1)
    assert s["normalised_rmse"]["analysis"] == pytest.approx(np.sqrt(np.mean(per_cycle**2)), rel=1e-12)


def test_csv_keeps_every_column_when_later_cycles_add_baselines(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a, b = make_run(tmp_path, "a", *(2 * [errors(rng, 2)]), baselines=False), make_run(tmp_path, "b", *(2 * [errors(rng, 2)]))
    rows = [load_run(a).rows[0], load_run(b).rows[1]]  # a resumed run: the first cycle without baselines
    records = [{"row": dict(r), "forecast": None} for r in rows]
    (tmp_path / "mixed").mkdir()
    write_metrics(tmp_path / "mixed", records, LAYOUT, netcdf=False)
    with (tmp_path / "mixed" / "metrics.csv").open() as fh:
        mixed = list(csv.DictReader(fh))
    assert mixed[0]["clim_wrmse_z500"] == "" and float(mixed[1]["clim_wrmse_z500"]) == pytest.approx(2 * SIGMA[1])


# ------------------------------------------------------------------------------ comparisons
def _compare(capsys: pytest.CaptureFixture[str], runs: list[Path], spec: str, *extra: str) -> dict[str, Any]:
    report = report_json(capsys, *map(str, runs), "--out", str(runs[0].parent / "figs"), "--compare", spec, *extra)
    return report["comparisons"][0]


def test_identical_runs_compare_to_zero_and_not_significant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(4)
    a = make_run(tmp_path, "a", errors(rng, 16), errors(rng, 16, 0.5))
    b = tmp_path / "b"
    shutil.copytree(a, b)
    c = _compare(capsys, [a, b], f"{a}:{b}")
    assert c["cycles"] == 16 and set(c["scores"]) == {"z500", "t850", "u500", "q500", "t2m", "all/σ"}
    for ch in c["scores"].values():
        for kind in ("background", "analysis"):
            assert ch[kind]["difference"] == 0 and ch[kind]["interval"] == [0.0, 0.0] and not ch[kind]["significant"]
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "f"), "--compare", "1:2"]) == 0
    text = capsys.readouterr().out.splitlines()
    i = next(k for k, line in enumerate(text) if line.startswith("1 − 2:"))
    assert "16 common cycles" in text[i] and "blocks of 4 cycles" in text[i]
    rows = text[i + 2 : i + 8]
    assert [r.split()[0] for r in rows] == ["z500", "t850", "u500", "q500", "t2m", "all/σ"]
    assert all(r.count("not significant") == 2 for r in rows)


def test_better_run_is_significant_with_seeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Three seeds of two configurations and one free run: seeds are paired, the free run pairs with
    every seed, the better configuration is significantly better, and A − B is the pooled scores'."""
    rng = np.random.default_rng(5)
    t = 24
    weather = errors(rng, t)
    runs, an_a, an_b = [], [], []
    for seed in (0, 1, 2):
        noise = np.exp(0.05 * rng.normal(size=weather.shape))
        an_a.append(0.7 * weather * noise)
        an_b.append(weather * np.exp(0.05 * rng.normal(size=weather.shape)))
        # seed 2 written after an option with a null default appeared: still the same experiment
        extra_a = {"knob": 1, "new_option": None} if seed == 2 else {"knob": 1}
        runs.append(make_run(tmp_path, f"good_s{seed}", an_a[-1] * 1.2, an_a[-1], seed=seed, extra=extra_a))
        runs.append(make_run(tmp_path, f"plain_s{seed}", an_b[-1] * 1.2, an_b[-1], seed=seed, extra={"knob": 2}))
    runs.append(make_run(tmp_path, "noda", 3 * weather, 3 * weather, method="none"))
    c = _compare(capsys, runs, "good_s0:plain_s1")
    assert c["seeds"] == [[0, 0], [1, 1], [2, 2]] and c["a_runs"] == ["good_s0", "good_s1", "good_s2"]
    z = NAMES.index("z500")
    pooled = np.sqrt(np.mean(np.stack(an_a)[..., z] ** 2)) - np.sqrt(np.mean(np.stack(an_b)[..., z] ** 2))
    e = c["scores"]["z500"]["analysis"]
    assert e["difference"] == pytest.approx(pooled, rel=1e-9)
    assert e["significant"] and e["interval"][1] < 0
    assert c["scores"]["all/σ"]["background"]["significant"]
    d = _compare(capsys, runs, "plain_s2:noda")
    assert d["seeds"] == [[0, 0], [1, 0], [2, 0]] and d["scores"]["t2m"]["analysis"]["difference"] < 0


def test_compare_refuses_different_cycle_times_and_warns_on_partial_overlap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(6)
    a = make_run(tmp_path, "a", errors(rng, 8), errors(rng, 8))
    b = make_run(tmp_path, "b", errors(rng, 8), errors(rng, 8), hours=3)
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "f"), "--compare", "a:b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different cycle times" in err[0] and "PT3H" in err[0]
    late = make_run(tmp_path, "late", errors(rng, 8), errors(rng, 8), start="2000-08-02T00")  # 4 cycles in common
    assert main(["report", str(a), str(late), "--out", str(tmp_path / "f"), "--compare", "a:late", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["comparisons"][0]["cycles"] == 4
    assert "warning" in captured.err and "4 valid times common" in captured.err
    assert main(["report", str(a), "--out", str(tmp_path / "f"), "--compare", "a:nope"]) == 2
    assert "'nope' is not a run name" in capsys.readouterr().err
    assert main(["report", str(a), "--out", str(tmp_path / "f"), "--compare", "a"]) == 2
    assert "expected A:B" in capsys.readouterr().err


# ------------------------------------------------------------------------------ provenance
def test_provenance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(7)
    a = make_run(tmp_path, "a", errors(rng, 4), errors(rng, 4))
    b = make_run(tmp_path, "b", errors(rng, 4), errors(rng, 4), extra={"data": {"source": "zarr", "store_fingerprint": "abc123"}})
    report = report_json(capsys, str(a), str(b), "--out", str(tmp_path / "f"))
    p = report["provenance"]
    assert p["aivarda_version"] and p["host"]["cpu_count"] >= 1 and p["host"]["torch"]
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # tests run from the repository
        assert p["git_commit"] == head.stdout.strip() and isinstance(p["git_dirty"], bool)
    cfg = json.loads((a / "config.json").read_text())
    canonical = json.dumps(cfg, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    ra, rb = report["runs"]
    assert ra["config_sha256"] == hashlib.sha256(canonical.encode()).hexdigest() != rb["config_sha256"]
    assert ra["store_fingerprint"] == "unknown" and rb["store_fingerprint"] == "abc123"
    assert ra["run_git_commit"] == "unknown"
    (a / "metadata.json").write_text(json.dumps({"git_commit": "c0ffee", "store": {"store_fingerprint": {"size": 1}}}))
    again = run_summary(load_run(a))
    assert again["store_fingerprint"] == {"size": 1} and again["run_git_commit"] == "c0ffee"
