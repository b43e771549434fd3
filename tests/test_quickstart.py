"""``aivarda quickstart --tiny``: the main job end to end on the tiny world."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aivarda.cli import main


def test_quickstart_tiny_runs_every_stage(tiny_nature_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--tiny", "--json", "--out", str(tmp_path)]) == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    report = json.loads((run_dir / "report.json").read_text())
    assert set(report) == {"none", "3dvar_diagonal", "3dvar_genbe"}
    none, diagonal, genbe = report["none"], report["3dvar_diagonal"], report["3dvar_genbe"]
    # the same observations in every experiment
    assert none["observations"] == diagonal["observations"] == genbe["observations"]
    b = none["normalised_wrmse"]["background"]
    assert none["normalised_wrmse"]["analysis"] == b
    assert diagonal["normalised_wrmse"]["analysis"] < b
    # a spatially correlated, balanced B spreads the observations' information: far better than diagonal
    assert genbe["normalised_wrmse"]["analysis"] < diagonal["normalised_wrmse"]["analysis"]
    assert genbe["ana_wrmse"]["z500"] < 0.8 * genbe["bg_wrmse"]["z500"]
    for name in report:
        assert (run_dir / name / "metrics.json").is_file()
    # the leakage guard ran: the scored day (2000-01-04) is outside the GEN_BE statistics' 01-01…01-03
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["in_sample"] is False and provenance["warnings"] == []
    assert provenance["evaluated"]["start"] == "2000-01-04T00:00:00"
    (genbe,) = provenance["artefacts"]
    assert genbe["verb"] == "fitted on" and genbe["spans"][0]["end"] == "2000-01-03T18:00:00"
    # a second run (the same second, possibly) writes a new directory and leaves the first untouched
    before = (run_dir / "report.json").read_bytes()
    assert main(["quickstart", "--tiny", "--json", "--out", str(tmp_path)]) == 0
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2
    assert (run_dir / "report.json").read_bytes() == before


def test_cycling_quickstart_with_shipped_models(
    tiny_nature_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path taken when the trained models are shipped, on the tiny world with stand-in models
    of its grid (untrained FengWu networks: persistence plus the mean tendency)."""
    from aivarda.channels import ChannelLayout
    from aivarda.cycling import config as cycling_config
    from aivarda.data.sources import Wb2ZarrSource
    from aivarda.data.stats import load_or_compute_norm_stats
    from aivarda.models.checkpoint import build_forecast_model, checkpoint_dict, save_checkpoint
    from aivarda.quickstart import CYCLING_METHODS, cycling_quickstart, genbe_statistics

    layout = ChannelLayout.fengwu69()
    source = Wb2ZarrSource(tiny_nature_run, layout, span="train")
    arch = {"name": "fengwu", "patch_size": 4, "embed_dim": 8, "depth": 1, "num_heads": 2, "window": [2, 4]}
    for name, dt in (("fengwu_6h.pt", 6.0), ("fengwu_1h.pt", 1.0)):
        stats = load_or_compute_norm_stats(source, diff_hours=6.0, progress=False)
        # the 1-hour model carries a linear prior (fitted to persistence): the quickstart's 4DVar is
        # multi-incremental, its inner loops run the window model's linear part
        prior = {"lmax": 4, "modes": 4} if dt == 1.0 else None
        model = build_forecast_model(arch, stats, source.grid, layout, dt, linear_prior=prior)
        if prior is not None:
            from aivarda.models.linear_prior import fit_linear_prior

            z = torch.randn(4, layout.n_channels, *source.grid.shape, generator=torch.Generator().manual_seed(0))
            fit_linear_prior(model.prior, [(z, z)], torch.ones(source.grid.nlat), progress=False)
        save_checkpoint(tmp_path / name, checkpoint_dict(model))
    monkeypatch.setattr(cycling_config, "DEFAULT_MODEL", tmp_path / "fengwu_6h.pt")
    monkeypatch.setattr(cycling_config, "DEFAULT_WINDOW_MODEL", tmp_path / "fengwu_1h.pt")
    out = tmp_path / "out"
    out.mkdir()
    genbe = genbe_statistics(tiny_nature_run, tiny=True, progress=False)
    assert cycling_quickstart(tiny_nature_run, genbe, out, quiet=True, tiny=True) == 0
    summary = json.loads((out / "report.json").read_text())
    runs = {r["name"]: r for r in summary["runs"]}
    assert set(runs) == set(CYCLING_METHODS)
    assert all(Path(f).is_file() for f in summary["figures"])
    # 4 cycles each; GEN_BE analyses beat the free run, 4DVar (a 3-h window of hourly observations) too
    none, var3, var4 = runs["none"], runs["3dvar"], runs["4dvar"]
    assert none["cycles"] == var3["cycles"] == var4["cycles"] == 4
    for run in (var3, var4):
        rmse = run["rmse"]["z500"]
        assert rmse["analysis"] < 0.8 * none["rmse"]["z500"]["analysis"]


def test_quickstart_scores_out_of_sample() -> None:
    """The T42 quickstart continues the default world (the shipped models' trajectory, by
    fingerprint and origin) from its 2000-07-16 restart and scores 2000-08-01…02: outside the
    shipped models' training spans and its GEN_BE span, so the leakage guard passes; the old
    quickstart period (2000-01-15…16 of the same world) and July are refused."""
    import numpy as np

    from aivarda.artefacts import trained_on_of_checkpoint
    from aivarda.cycling.config import DEFAULT_MODEL, DEFAULT_WINDOW_MODEL
    from aivarda.data.fingerprint import nature_run_fingerprint, nature_run_origin
    from aivarda.data.nature_run import NatureRunConfig
    from aivarda.errors import LeakageError
    from aivarda.provenance import TimeSpan, TrainedOn, check_out_of_sample
    from aivarda.quickstart import quickstart_nature_run

    cfg = quickstart_nature_run()
    world, origin = nature_run_fingerprint(cfg), nature_run_origin(cfg)
    assert (world, origin) == (nature_run_fingerprint(NatureRunConfig()), np.datetime64("2000-01-01", "ns"))
    models = trained_on_of_checkpoint(DEFAULT_MODEL) + trained_on_of_checkpoint(DEFAULT_WINDOW_MODEL)
    assert [r.fingerprint for r in models] == [world] * len(models) and all(r.known for r in models)
    train, scored = cfg.spans["train"], cfg.spans["eval"]
    # GEN_BE's lagged-truth samples read the truth of the train span (and nothing earlier: the
    # first valid time is the lag after its start)
    genbe = TrainedOn("GEN_BE statistics", (TimeSpan(train.start, train.end, "train"),), fingerprint=world,
                      origin=origin, verb="fitted on")
    period = TimeSpan(scored.start, scored.end)
    assert period.text() == "2000-08-01T00:00…2000-08-02T23:00"
    assert check_out_of_sample(period, [*models, genbe], store_fingerprint=world, origin=origin) == []

    old = NatureRunConfig(spans={"eval": {"start": "2000-01-15T00:00", "end": "2000-01-16T23:00", "interval_hours": 1}})
    with pytest.raises(LeakageError, match=r"fengwu_6h_rollout\.pt .*trained on 2000-01-01T00:00…2000-06-12T12:00 \(train\)"):
        check_out_of_sample(TimeSpan("2000-01-15", "2000-01-16T23"), models,
                            store_fingerprint=nature_run_fingerprint(old), origin=nature_run_origin(old))
    with pytest.raises(LeakageError, match=r"fengwu_1h\.pt .*2000-07-01T00:00…2000-07-28T20:00 \(train\)"):
        check_out_of_sample(TimeSpan("2000-07-20", "2000-07-21"), models, store_fingerprint=world, origin=origin)
