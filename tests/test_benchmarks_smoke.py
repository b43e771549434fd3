"""The paper-scale benchmark runs end to end at its CPU smoke size and prints its table."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

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
    # every row of the benchmark ran (two state sizes for 3DVar and the VAE, one 4DVar window)
    assert [r["row"] for r in rows] == ["3dvar-genbe"] * 4 + ["4dvar-6h"] + ["vae-decoder"] * 2
    minimise = [r["what"] for r in rows if r["what"].startswith("minimise")]
    assert len(minimise) == 2 and all(not w.endswith(": 0 J+∇J") for w in minimise), minimise
    for r in rows:
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0, r
        assert r["row"] in out and f"{r['seconds']:9.3f}" in out
