"""LoRA-EnVar and its baselines on the tiny world (``docs/lora-envar.md`` §6): the cycling config
``docs/results/lora_3denvar_tiny.yaml`` run once per ``finetune.mode`` (``none`` as ``method:
3dvar``, a static B not being an ensemble B), then the numbers of ``aivarda report --json`` per run.

    aivarda data nature-run --tiny --out tiny.zarr
    cp docs/results/learn_b_vae_tiny.yaml . && aivarda learn-b vae learn_b_vae_tiny.yaml
    python benchmarks/lora_envar_tiny.py --store tiny.zarr --vae runs/learn_b_vae_tiny/best.pt \
        [--out runs/lora_envar_tiny] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from aivarda.cli import main as cli_main
from aivarda.evaluation.report import load_run, run_summary

BASE = Path(__file__).resolve().parents[1] / "docs" / "results" / "lora_3denvar_tiny.yaml"
MODES = ("none", "lora", "reset", "full")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--vae", required=True, help="best.pt of aivarda learn-b vae (learn_b_vae_tiny.yaml)")
    ap.add_argument("--out", default="runs/lora_envar_tiny")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(BASE.read_text())
    results = {}
    for mode in args.modes.split(","):
        cfg = json.loads(json.dumps(base))
        cfg["name"] = f"tiny_{mode}"
        cfg["data"]["path"] = str(Path(args.store).resolve())
        cfg["output_dir"] = str(out / mode)
        b = cfg["assimilation"]["background_error"]
        b["checkpoint"] = str(Path(args.vae).resolve())
        if mode == "none":
            cfg["assimilation"]["method"] = "3dvar"
            b.pop("finetune")
        else:
            b["finetune"]["mode"] = mode
        path = out / f"{mode}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        if not (out / mode / "metrics.csv").is_file():
            assert cli_main(["run", str(path), "--json"]) == 0
        s = run_summary(load_run(out / mode))
        results[mode] = {k: s[k] for k in ("method", "cycles", "seconds_per_cycle", "b_trainable_params", "normalised_rmse", "rmse")}
    print(json.dumps({m: {"b_trainable_params": r["b_trainable_params"], "seconds_per_cycle": r["seconds_per_cycle"],
                          "all/σ": r["normalised_rmse"]} for m, r in results.items()}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
