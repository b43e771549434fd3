"""LoRA-EnVar cycling on the tiny world (identity stand-in models, an untrained tiny VAE): the
runner updates the fine-tuned VAE B every cycle, records its trainable parameters and the seconds of
the update, keeps its adapters per cycle, and a run interrupted mid-way and resumed equals an
uninterrupted one; ``aivarda report`` shows the numbers."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from test_plugins import identity_model

import aivarda.assimilation.envar  # noqa: F401  (registers 3denvar)
import aivarda.files
from aivarda.background.vae import VaeArchitecture, VaeCheckpoint, VaeNet
from aivarda.config import DataConfig, load_config
from aivarda.cycling.config import CyclingConfig
from aivarda.cycling.runner import CyclingRunner
from aivarda.data.sources import open_source
from aivarda.evaluation.report import format_table, load_run, run_summary

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"latent_channels": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "window": 4}


@pytest.fixture(scope="module")
def tiny_vae(tiny_nature_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny VAE for the tiny world's 69 channels on its 32×64 grid; ``s`` = 2 % of the
    per-channel std of the truth over the ``train`` span (small increments)."""
    source = open_source(DataConfig(source="zarr", path=tiny_nature_run), span="train")
    states = source.states(source.times)
    std = states.double().std(dim=(0, 2, 3)).float()
    torch.manual_seed(0)
    net = VaeNet(source.layout.n_channels, source.grid.shape, VaeArchitecture(**TINY))
    path = tmp_path_factory.mktemp("vae") / "best.pt"
    VaeCheckpoint(net, 0.02 * std, source.grid, source.grid, source.layout).save(path)
    return path


def config(tmp_path: Path, tiny: Path, vae: Path, name: str, section: dict[str, Any], end: str) -> Path:
    cfg = {"name": name, "seed": 1, "data": {"source": "zarr", "path": str(tiny)},
           "start_time": "2000-01-04T00:00", "end_time": end, "dynamic_member": 8, "gap": 1,
           "device": "cpu", "model": identity_model("6h"), "window_model": identity_model("1h"),
           "assimilation": {"outer_loops": 1, "inner_iterations": 4, **section},
           "observations": {"mode": "random", "fraction": 0.2, "withhold": 0.15},
           "forecast": {"every": 0}, "outputs": {"analyses_zarr": True}, "output_dir": str(tmp_path / name)}
    cfg["assimilation"]["background_error"] = {"type": "vae", "checkpoint": str(vae), **section.get("background_error", {})}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


class Killed(BaseException):
    """The in-process stand-in of SIGKILL (nothing in aivarda catches a BaseException)."""


def rows_of(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open() as fh:
        return [{k: v for k, v in r.items() if not k.startswith("wall_")} for r in csv.DictReader(fh)]


LORA = {"method": "3denvar", "background_error": {"finetune": {"mode": "lora", "epochs": 1}}}


def reference_run(tmp_path: Path, tiny: Path, vae: Path, name: str, section: dict[str, Any]
                  ) -> tuple[CyclingConfig, Path, list[dict[str, str]]]:
    """Three uninterrupted cycles of ``section``: the config, the run directory and its metrics rows."""
    cfg = load_config(config(tmp_path, tiny, vae, name, section, "2000-01-04T12:00"), CyclingConfig)
    ref = tmp_path / "ref"
    CyclingRunner(cfg, ref, progress=False).run()
    return cfg, ref, rows_of(ref)


def interrupt_in_cycle_2(cfg: CyclingConfig, out: Path) -> None:
    """Run into ``out`` and stop in cycle 2 after its B update and analysis, before its commit."""

    def stop(cycle: int, stage: str) -> None:
        if (cycle, stage) == (2, "analysis"):
            raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        CyclingRunner(cfg, out, progress=False, hook=stop).run()


def test_lora_3denvar_resumed_mid_run_equals_uninterrupted(tiny_nature_run: Path, tiny_vae: Path, tmp_path: Path) -> None:
    from aivarda.data.sources import Wb2ZarrSource

    cfg, ref, rows = reference_run(tmp_path, tiny_nature_run, tiny_vae, "lora", LORA)
    assert [r["method"] for r in rows] == ["3denvar"] * 3
    for r in rows:  # an untrained VAE is no credible B: the analysis fits the observations it assimilated
        assert float(r["oma_assimilated_normalised_rms"]) < float(r["omb_assimilated_normalised_rms"])
        assert float(r["min_J_final"]) < float(r["min_J_initial"])
        assert float(r["b_trainable_params"]) == 2 * 2 * 2 * (16 + 32 + 16)  # query adapters, rank 2
        assert float(r["b_finetune_steps"]) == 2  # K = 8, batch 4, 1 epoch
    with (ref / "metrics.csv").open() as fh:
        assert all(float(r["wall_b_update"]) > 0 for r in csv.DictReader(fh))
    # the B states of the last two cycles are kept
    assert sorted(p.name for p in (ref / "b_state").glob("*.pt")) == ["cycle_00001.pt", "cycle_00002.pt"]

    out = tmp_path / "resumed"
    interrupt_in_cycle_2(cfg, out)  # cycle 2's adapters fine-tuned, not committed
    assert sorted(p.name for p in (out / "b_state").glob("*.pt")) == ["cycle_00000.pt", "cycle_00001.pt"]
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    CyclingRunner(cfg, out, progress=False).run(resume=True)
    assert rows_of(out) == rows
    a, b = Wb2ZarrSource(ref / "analyses.zarr"), Wb2ZarrSource(out / "analyses.zarr")
    assert torch.equal(a.states(a.times), b.states(b.times))
    state_ref = torch.load(ref / "b_state" / "cycle_00002.pt", weights_only=True)["state"]
    state_out = torch.load(out / "b_state" / "cycle_00002.pt", weights_only=True)["state"]
    assert state_ref["updates"] == state_out["updates"] == 3
    assert state_ref["weights"].keys() == state_out["weights"].keys()
    assert all(torch.equal(state_ref["weights"][k], v) for k, v in state_out["weights"].items())

    # the B state of the last committed cycle damaged: the resume redoes that cycle from the one before
    (damaged / "b_state" / "cycle_00001.pt").write_bytes(b"damaged")
    CyclingRunner(cfg, damaged, progress=False).run(resume=True)
    assert rows_of(damaged) == rows

    # killed right after cycle 1's B state is on disk, before its checksum, record and commit
    # (an in-process stand-in of SIGKILL, as tests/test_kill_anywhere.py)
    killed = tmp_path / "killed"
    real = aivarda.files.fsync_path

    def fsync(path: object) -> None:
        real(path)  # type: ignore[arg-type]
        if Path(str(path)) == killed / "b_state" and (killed / "b_state" / "cycle_00001.pt").is_file():
            raise Killed

    with mock.patch.object(aivarda.files, "fsync_path", fsync), pytest.raises(Killed):
        CyclingRunner(cfg, killed, progress=False).run()
    assert json.loads((killed / "state.json").read_text())["next_cycle"] == 1
    CyclingRunner(cfg, killed, progress=False).run(resume=True)
    assert rows_of(killed) == rows

    # aivarda report: trainable parameters and the seconds of the B update and of the analysis
    summary = run_summary(load_run(ref))
    assert summary["b_trainable_params"] == 512.0
    assert summary["seconds_per_cycle"]["b_update"] > 0 and summary["seconds_per_cycle"]["minimisation"] > 0
    table = format_table([load_run(ref)])
    assert "b_update" in table and "B params" in table and " 512" in table


def test_lora_4denvar_is_4dvar_with_the_fine_tuned_vae(tiny_nature_run: Path, tiny_vae: Path, tmp_path: Path) -> None:
    """LoRA-4DEnVar: method 4dvar (the increment carried through the window by the window model)
    with the fine-tuned VAE B, updated from the members at the window start."""
    section = {"method": "4dvar", "da_win": 2, "window_interval": "1h",
               "background_error": {"finetune": {"mode": "lora", "epochs": 1}}}
    path = config(tmp_path, tiny_nature_run, tiny_vae, "lora4d", section, "2000-01-04T06:00")
    CyclingRunner(load_config(path, CyclingConfig), tmp_path / "lora4d", progress=False).run()
    rows = rows_of(tmp_path / "lora4d")
    assert [r["method"] for r in rows] == ["4dvar"] * 2
    assert all(float(r["oma_assimilated_normalised_rms"]) < float(r["omb_assimilated_normalised_rms"]) and float(r["b_trainable_params"]) == 512
               for r in rows)
    assert np.isfinite([float(r["b_finetune_loss_last"]) for r in rows]).all()


def test_lora_3denvar_on_an_letkf_ensemble_resumes_as_uninterrupted(tiny_nature_run: Path, tiny_vae: Path,
                                                                     tmp_path: Path) -> None:
    """``ensemble_letkf``: LoRA-3DEnVar fine-tuned on an LETKF ensemble cycled beside it (recentred on
    the variational analysis); interrupted in cycle 2 after its fine-tuning and resumed, the run
    equals the uninterrupted one (metrics and analyses: cycle 2's background is the mean of the
    members forecast from cycle 1's recentred LETKF members)."""
    from aivarda.data.sources import Wb2ZarrSource

    section = {**LORA, "ensemble_letkf": {"length_scale_km": 1200, "rtps": 0.5}}
    cfg, ref, rows = reference_run(tmp_path, tiny_nature_run, tiny_vae, "lora_letkf", section)
    assert [r["method"] for r in rows] == ["3denvar"] * 3
    assert all(float(r["b_trainable_params"]) == 512 and float(r["oma_assimilated_normalised_rms"])
               < float(r["omb_assimilated_normalised_rms"]) for r in rows)

    out = tmp_path / "resumed"
    interrupt_in_cycle_2(cfg, out)
    CyclingRunner(cfg, out, progress=False).run(resume=True)
    assert rows_of(out) == rows
    a, b = Wb2ZarrSource(ref / "analyses.zarr"), Wb2ZarrSource(out / "analyses.zarr")
    assert torch.equal(a.states(a.times), b.states(b.times))
