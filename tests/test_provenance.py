"""The leakage guard: provenance records, store fingerprints, what trained artefacts record and
the refusal to score times they learned from."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from test_training import train_config, write_synthetic_store

from aivarda.artefacts import trained_on_of_checkpoint
from aivarda.config import validate
from aivarda.data.fingerprint import nature_run_fingerprint, store_identity
from aivarda.data.nature_run import NatureRunConfig, SpanConfig
from aivarda.errors import ConfigError, DataError, LeakageError
from aivarda.models.config import TrainConfig
from aivarda.learning.train_model import train
from aivarda.paths import ASSETS
from aivarda.provenance import (
    IN_SAMPLE,
    UNKNOWN,
    TimeSpan,
    TrainedOn,
    check_out_of_sample,
    provenance_record,
    records_from_json,
    records_to_json,
)

pytestmark = pytest.mark.usefixtures("one_thread")

T = np.datetime64
MODEL = TrainedOn(
    "fengwu_6h.pt",
    (TimeSpan(T("2000-01-01T00"), T("2000-06-12T12"), "train"), TimeSpan(T("2000-06-12T18"), T("2000-06-30T18"), "validation")),
    store="/x/default.zarr",
    fingerprint="aaaa",
    origin=T("2000-01-01"),
)


# ------------------------------------------------------------------------------------------ guard
def test_overlap_is_one_clear_line_naming_artefact_span_store_and_scored_period():
    scored = TimeSpan(T("2000-01-13T00"), T("2000-01-20T18"))
    with pytest.raises(LeakageError) as info:
        check_out_of_sample(scored, [MODEL], store_fingerprint="aaaa", origin="2000-01-01")
    msg = str(info.value)
    assert "\n" not in msg and isinstance(info.value, ConfigError)  # the CLI prints it, exit status 2
    assert msg == (
        "fengwu_6h.pt was trained on 2000-01-01T00:00…2000-06-12T12:00 (train) of store aaaa; the run scores "
        "2000-01-13T00:00…2000-01-20T18:00 (overlap 2000-01-13T00:00…2000-01-20T18:00: 7.8 days); "
        "use --allow-in-sample to override"
    )


def test_same_store_other_period_and_other_store_pass():
    august = TimeSpan(T("2000-08-01T00"), T("2000-08-02T18"))
    assert check_out_of_sample(august, [MODEL], store_fingerprint="aaaa", origin="2000-01-01") == []
    january = TimeSpan(T("2000-01-13"), T("2000-01-20"))
    assert check_out_of_sample(january, [MODEL], store_fingerprint="bbbb", origin="2000-01-01") == []
    # spans are inclusive: the validation span's last time counts, the next hour does not
    with pytest.raises(LeakageError, match=r"\(validation\)"):
        check_out_of_sample(TimeSpan(T("2000-06-30T18"), T("2000-07-02")), [MODEL], store_fingerprint="aaaa")
    assert check_out_of_sample(TimeSpan(T("2000-06-30T19"), T("2000-07-02")), [MODEL], store_fingerprint="aaaa") == []


def test_allow_in_sample_returns_the_warnings_to_stamp():
    scored = np.array(["2000-01-15T00", "2000-01-15T06", "2000-06-13T00"], dtype="datetime64[ns]")
    warnings = check_out_of_sample(scored, [MODEL], store_fingerprint="aaaa", allow_in_sample=True)
    assert len(warnings) == 2 and all(w.startswith(IN_SAMPLE) for w in warnings)
    assert "(train)" in warnings[0] and "2 times, 6 h" in warnings[0]
    assert "(validation)" in warnings[1] and "1 time" in warnings[1]
    record = provenance_record(scored, [MODEL], store_fingerprint="aaaa", warnings=warnings)
    assert record["in_sample"] is True and record["evaluated"]["start"] == "2000-01-15T00:00:00"
    assert json.loads(json.dumps(record)) == record


def test_times_are_compared_one_by_one_and_unknown_store_is_compared():
    # January and August are scored, the artefact learned February–July: the hull would overlap, the times do not
    art = TrainedOn("b.pt", (TimeSpan(T("2000-02-01"), T("2000-07-31T23")),), fingerprint="aaaa", verb="fitted on")
    scored = np.array(["2000-01-20", "2000-08-05"], dtype="datetime64[ns]")
    assert check_out_of_sample(scored, [art], store_fingerprint="aaaa") == []
    # an unidentified evaluation store is compared with every record
    with pytest.raises(LeakageError, match="b.pt was fitted on"):
        check_out_of_sample(TimeSpan(T("2000-03-01"), T("2000-03-02")), [art], store_fingerprint=None)


def test_same_trajectory_dated_otherwise_is_caught_through_the_origin():
    # a store of the same initial state dated 2000-08-01: its 1–2 August are the model's 1–2 January
    moved = TimeSpan(T("2000-08-01T00"), T("2000-08-02T18"))
    with pytest.raises(LeakageError, match=r"the same states as 2000-01-01T00:00…2000-01-02T18:00"):
        check_out_of_sample(moved, [MODEL], store_fingerprint="aaaa", origin="2000-08-01")


def test_unknown_provenance_is_a_warning_never_an_error():
    old = TrainedOn("old_genbe.pt", note="written before records existed")
    out = check_out_of_sample(TimeSpan(T("2000-01-01"), T("2000-01-02")), [old], store_fingerprint="aaaa")
    assert len(out) == 1 and out[0].startswith(UNKNOWN) and "old_genbe.pt" in out[0]


def test_records_round_trip_through_json_and_reject_nonsense():
    data = json.loads(json.dumps(records_to_json([MODEL])))
    assert records_from_json(data) == [MODEL]
    with pytest.raises(DataError, match="end is before start"):
        TimeSpan(T("2000-02-01"), T("2000-01-01"))
    with pytest.raises(DataError, match="malformed training record"):
        records_from_json([{"spans": []}], "x.pt")


# ------------------------------------------------------------------------------------------ fingerprints
def test_nature_run_fingerprint_identifies_the_trajectory():
    default = NatureRunConfig()
    assert nature_run_fingerprint(default) == nature_run_fingerprint(NatureRunConfig())
    # other output spans: the same states at the common times, so the same trajectory
    two_weeks = NatureRunConfig(
        spans={"eval": SpanConfig(start=datetime(2000, 1, 15), end=datetime(2000, 1, 16), interval_hours=1)}
    )
    assert nature_run_fingerprint(two_weeks) == nature_run_fingerprint(default)
    # the date only labels the states (the forcing has no calendar): the origin moves, not the fingerprint
    moved = NatureRunConfig(
        start=datetime(2000, 8, 1),
        spans={"eval": SpanConfig(start=datetime(2000, 8, 1), end=datetime(2000, 8, 2), interval_hours=6)},
    )
    assert nature_run_fingerprint(moved) == nature_run_fingerprint(default)
    # another seed, resolution or forcing is another world
    others = [NatureRunConfig(seed=1), NatureRunConfig(resolution="T31"), NatureRunConfig(perturbation_kelvin=0.2),
              NatureRunConfig(initial_state="rest"), NatureRunConfig(moisture={"q0": 0.015})]
    prints = {nature_run_fingerprint(c) for c in others}
    assert len(prints) == len(others) and nature_run_fingerprint(default) not in prints


def test_store_fingerprint_of_a_nature_run_store_matches_its_configuration(tiny_nature_run):
    identity = store_identity(tiny_nature_run)
    assert identity == store_identity(tiny_nature_run)  # stable across re-opening
    assert identity.fingerprint == nature_run_fingerprint(NatureRunConfig.tiny())
    assert identity.origin == T("2000-01-01T00", "ns")


def _with_attrs(src: Path, dst: Path, **attrs: str) -> Path:
    import zarr

    shutil.copytree(src, dst)
    group = zarr.open_group(str(dst), mode="r+")
    group.attrs.update(attrs)
    return dst


def test_store_fingerprints_of_copies_and_variants(mini_wb2_store, tmp_path):
    import zarr

    base = store_identity(mini_wb2_store.path)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(mini_wb2_store.path, copy)
    same = store_identity(copy)
    assert (same.fingerprint, same.content, same.origin) == (base.fingerprint, base.content, None)
    # one sampled value changed (first time, first point): the content differs, the world (reanalysis: the real atmosphere) does not
    arr = zarr.open_group(str(copy), mode="r+")["10m_u_component_of_wind"]  # the first variable, sampled
    arr[0, 0, 0] = arr[0, 0, 0] + 1.0
    changed = store_identity(copy)
    assert changed.content != base.content and changed.fingerprint == base.fingerprint
    # other spans: other content
    spans = json.dumps({"train": {"start": "2020-01-01T00:00", "end": "2020-01-02T00:00", "interval_hours": 6}})
    assert store_identity(_with_attrs(mini_wb2_store.path, tmp_path / "s.zarr", aivarda_spans=spans)).content != base.content
    # a store declaring another world, and nature-run stores of two seeds
    assert store_identity(_with_attrs(mini_wb2_store.path, tmp_path / "w.zarr", aivarda_world="toy")).fingerprint != base.fingerprint
    seeds = []
    for seed in (0, 1):
        cfg = NatureRunConfig.tiny().model_copy(update={"seed": seed}).model_dump_json()
        seeds.append(store_identity(_with_attrs(mini_wb2_store.path, tmp_path / f"nr{seed}.zarr", aivarda_config=cfg)))
    assert seeds[0].fingerprint == nature_run_fingerprint(NatureRunConfig.tiny()) != seeds[1].fingerprint
    assert seeds[1].fingerprint == nature_run_fingerprint(NatureRunConfig.tiny().model_copy(update={"seed": 1}))


# ------------------------------------------------------------------------------------------ writers/readers
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step training on the synthetic store (its 44 six-hourly train times, the last 20 % held out)."""
    root = tmp_path_factory.mktemp("guard")
    store = write_synthetic_store(root / "synthetic.zarr")
    cfg = validate(TrainConfig, train_config(store, root / "run", epochs=1, max_steps=2), "cfg")
    train(cfg, progress=False)
    return store, root / "run" / "best.pt"


def test_checkpoint_records_its_training_and_validation_spans_and_the_guard_uses_them(trained):
    store, best = trained
    (record,) = trained_on_of_checkpoint(best)
    identity = store_identity(store)
    # 44 times, cut = int(44 · 0.8) = 35: train = times[:35] (2001-01-01T00 … 01-09T12), validation = the rest
    assert [s.to_dict() for s in record.spans] == [
        {"start": "2001-01-01T00:00:00", "end": "2001-01-09T12:00:00", "label": "train"},
        {"start": "2001-01-09T18:00:00", "end": "2001-01-11T18:00:00", "label": "validation"},
    ]
    assert (record.fingerprint, record.content, record.store) == (identity.fingerprint, identity.content, str(store))
    assert record.what == "best.pt (forecast model tiny)"
    # a run over the training span fails with the clear line; the store's eval span passes
    with pytest.raises(LeakageError, match=r"^best.pt \(forecast model tiny\) was trained on 2001-01-01T00:00…2001-01-09T12:00 \(train\)"):
        check_out_of_sample(TimeSpan(T("2001-01-05"), T("2001-01-06")), [record], store_fingerprint=identity.fingerprint)
    eval_span = TimeSpan(T("2001-01-12T00"), T("2001-01-13T23"))
    assert check_out_of_sample(eval_span, [record], store_fingerprint=identity.fingerprint) == []
    assert check_out_of_sample(TimeSpan(T("2001-01-05"), T("2001-01-06")), [record], store_fingerprint="other") == []


def test_finetuned_checkpoint_inherits_what_its_initial_weights_learned(trained, tmp_path):
    store, best = trained
    cfg = train_config(store, tmp_path / "ft", epochs=1, max_steps=1, init_from=str(best))
    cfg["data"] = {**cfg["data"], "val_fraction": 0.0, "train_span": "eval"}
    cfg["rollout_steps"] = 1
    train(validate(TrainConfig, cfg, "cfg"), progress=False)
    own, inherited = trained_on_of_checkpoint(tmp_path / "ft" / "last.pt")
    assert own.spans == (TimeSpan(T("2001-01-12T00"), T("2001-01-13T23"), "train"),)
    assert inherited.spans == trained_on_of_checkpoint(best)[0].spans and "init_from" in inherited.note


def test_shipped_6h_model_reports_the_default_nature_runs_train_span():
    default = NatureRunConfig()
    (record,) = trained_on_of_checkpoint(ASSETS / "fengwu_6h.pt")
    train_span, val_span = record.spans
    # the default store's `train` span, 2000-01-01T00 … 06-30T18 every 6 h: 728 times, the last 10 % validation
    assert (train_span.start, val_span.end) == (T(default.spans["train"].start, "ns"), T(default.spans["train"].end, "ns"))
    assert (train_span.end, val_span.start) == (T("2000-06-12T12", "ns"), T("2000-06-12T18", "ns"))
    assert record.fingerprint == nature_run_fingerprint(default) and record.origin == T("2000-01-01", "ns")
    (hourly,) = trained_on_of_checkpoint(ASSETS / "fengwu_1h.pt")
    assert (hourly.spans[0].start, hourly.spans[-1].end) == (T("2000-07-01T00", "ns"), T("2000-07-31T23", "ns"))


def test_the_old_quickstart_period_is_refused_and_august_passes():
    from aivarda.quickstart import quickstart_nature_run

    models = trained_on_of_checkpoint(ASSETS / "fengwu_6h.pt") + trained_on_of_checkpoint(ASSETS / "fengwu_1h.pt")
    world = nature_run_fingerprint(quickstart_nature_run())
    with pytest.raises(LeakageError, match=r"^fengwu_6h.pt \(forecast model fengwu_6h\) was trained on 2000-01-01T00:00…2000-06-12T12:00 \(train\)"):
        check_out_of_sample(TimeSpan(T("2000-01-15T00"), T("2000-01-16T18")), models, store_fingerprint=world, origin="2000-01-01")
    august = TimeSpan(T("2000-08-01T00"), T("2000-08-02T18"))
    assert check_out_of_sample(august, models, store_fingerprint=world, origin="2000-01-01") == []


# ------------------------------------------------------------------------------------------ for the drivers
def test_guard_run_on_a_store_refuses_allows_and_stamps(tiny_nature_run):
    from aivarda.artefacts import guard_run
    from aivarda.data.fingerprint import trained_on_record

    # the tiny world's `train` span (2000-01-01T00 … 01-03T18) was learned; its `eval` day was not
    model = trained_on_record("m.pt", tiny_nature_run, [TimeSpan(T("2000-01-01T00"), T("2000-01-03T18"), "train")])
    clean = guard_run(TimeSpan(T("2000-01-04T00"), T("2000-01-04T23")), tiny_nature_run, [model])
    assert clean["in_sample"] is False and clean["warnings"] == []
    assert clean["store_content"] == store_identity(tiny_nature_run).content
    overlapping = TimeSpan(T("2000-01-03T12"), T("2000-01-04T06"))
    with pytest.raises(LeakageError, match=r"^m.pt was trained on 2000-01-01T00:00…2000-01-03T18:00 \(train\)"):
        guard_run(overlapping, tiny_nature_run, [model])
    stamped = guard_run(overlapping, tiny_nature_run, [model], allow_in_sample=True)
    assert stamped["in_sample"] is True and "overlap 2000-01-03T12:00…2000-01-03T18:00: 6 h" in stamped["warnings"][0]


def test_model_background_error_and_statistics_records(mini_wb2_store):
    from aivarda.artefacts import trained_on_of_background_error, trained_on_of_model, trained_on_of_norm_stats
    from aivarda.data.sources import Wb2ZarrSource
    from aivarda.data.stats import compute_norm_stats

    shipped = trained_on_of_model({"checkpoint": "${AIVARDA_ASSETS}/fengwu_6h.pt"})
    assert shipped == trained_on_of_checkpoint(ASSETS / "fengwu_6h.pt")
    persistence = {"module": "torch.nn:Identity", "dt": "6h", "layout": mini_wb2_store.layout.to_dict()}
    assert trained_on_of_model(persistence) == []  # learned nothing
    assert trained_on_of_background_error({"type": "diagonal"}) == []
    source = Wb2ZarrSource(mini_wb2_store.path, mini_wb2_store.layout, span="train")
    (stats,) = trained_on_of_norm_stats(compute_norm_stats(source, progress=False), source)
    # 6-hour pairs of the train span 2020-01-01T00 … 01-02T18: the states read
    assert stats.spans == (TimeSpan(T("2020-01-01T00"), T("2020-01-02T18"), "statistics"),)


def test_provenance_cli_prints_records_and_checks_a_period(trained, capsys):
    from aivarda.cli import main

    store, best = trained
    assert main(["provenance", str(best)]) == 0
    assert capsys.readouterr().out.startswith("best.pt (forecast model tiny) trained on 2001-01-01T00:00…2001-01-09T12:00 (train)")
    period = ["--store", str(store), "--from", "2001-01-05", "--to", "2001-01-06"]
    assert main(["provenance", str(best), *period]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aivarda: error: best.pt (forecast model tiny) was trained on")
    assert main(["provenance", str(best), *period, "--allow-in-sample", "--json"]) == 0
    stamped = json.loads(capsys.readouterr().out)
    assert stamped["in_sample"] is True and stamped["warnings"][0].startswith(IN_SAMPLE)
    assert main(["provenance", str(best), "--store", str(store), "--from", "2001-01-12", "--to", "2001-01-13"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("out of sample")
