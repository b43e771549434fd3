"""The paper-scale benchmark runs end to end at its CPU smoke size and prints its table."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_scale_smoke_prints_a_table(capsys):
    rows = _load("paper_scale").main(["--smoke"])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("device: CPU")
    assert "command:" in out and "date:" in out
    header = next(line for line in out.splitlines() if line.startswith("row "))
    assert "seconds" in header and "peak memory" in header
    # every row of the benchmark ran (two state sizes for 3DVar, the VAE and LoRA-EnVar, one 4DVar window)
    assert [r["row"] for r in rows] == ["3dvar-genbe"] * 4 + ["4dvar-6h"] + ["vae-decoder"] * 2 + ["lora-envar"] * 8
    minimise = [r for r in rows if r["what"].startswith("minimise")]
    assert len(minimise) == 4 and all(r["evaluations"] > 0 for r in minimise), minimise
    assert all(r["what"].endswith(f": {r['evaluations']} J+∇J") for r in minimise)
    for r in rows:
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0, r
        assert r["row"] in out and f"{r['seconds']:9.3f}" in out


@pytest.mark.parametrize("bf16", [False, True])
def test_paper_scale_lora_envar_cycle(capsys, bf16):
    """The LoRA-EnVar row fine-tunes the query adapters only, then minimises through the fine-tuned
    VAE; its cycle line is the sum of the two (also with the fine-tuning and the cost autocast to
    bfloat16 on the CPU)."""
    module = _load("paper_scale")
    rows = module.main(["--smoke", "--only", "lora-envar", "--json"] + (["--bf16"] if bf16 else []))
    capsys.readouterr()
    # the adapter count of benchmarks/lora_envar_cost.py's convention (query rows of each decoder
    # qkv: A [r, D] and B_q [D, r]), from the Linear layers of a fresh network of the smoke size
    net = module.VaeNet(69, module.SMOKE["control"], module.VaeArchitecture(**module.SMOKE["vae"]))
    qkv = [m for name, m in net.decoder.named_modules() if name.endswith(".qkv") and isinstance(m, torch.nn.Linear)]
    assert qkv
    expected = sum(2 * m.in_features + 2 * (m.out_features // 3) for m in qkv)
    assert len(rows) == 8
    for state in ("69×16×32", "69×24×48"):
        finetune, gradient, minimise, cycle = [r for r in rows if r["state"] == state]
        assert finetune["what"].startswith("fine-tune r=2 (10 steps)")  # K = 8, 5 epochs of batch 4
        assert finetune["trainable_params"] == expected and finetune["finetune_steps"] == 10
        # every adapter (A and B of each qkv) moved, no weight of the VAE did
        assert finetune["changed_adapter_tensors"] == 2 * len(qkv) and finetune["changed_base_tensors"] == 0
        assert gradient["what"].startswith("J + ∇J")
        assert minimise["what"].startswith("minimise ≤ 3 it.") and minimise["evaluations"] > 0
        assert cycle["what"] == "cycle: fine-tune + minimise"
        assert cycle["seconds"] == finetune["seconds"] + minimise["seconds"]
        for r in (finetune, gradient, minimise):
            assert math.isfinite(r["seconds"]) and r["seconds"] > 0, r


def test_paper_scale_refuses_an_unknown_row():
    with pytest.raises(SystemExit):
        _load("paper_scale").main(["--smoke", "--only", "lora_envar"])
