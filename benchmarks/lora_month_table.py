"""The LoRA-EnVar month as one table: every run of an ``aivarda report --json`` file with its B, its
fine-tuning mode, its trainable parameters (and their ratio to LoRA's), its seconds per cycle of
fine-tuning and of the analysis, and its analysis RMSE; the parameter inventory of the VAE; and the
report's baselines (climatology, 6-h persistence) and paired comparisons (95 % moving-block bootstrap) restated as the paper's two claims.

    aivarda report RUN ... --compare A:B ... --json --out docs/img/lora_month > docs/results/lora_month_report.json
    python benchmarks/lora_month_table.py docs/results/lora_month_report.json \\
        --vae src/aivarda/assets/vae_t42.pt --json docs/results/lora_month_table.json

The run's B and mode are read from its ``config.json`` (the resolved config the run wrote); the
parameter inventory counts the checkpoint's network (whole VAE, decoder) and LoRA's adapters as
the B builds them (rank and target modules of the LoRA run's config).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aivarda.background.vae import VaeCheckpoint
from aivarda.background.vae.finetune import FinetuneConfig, VaeFinetuner

SHOWN = ("z500", "t850", "u500", "q500", "t2m")


def run_row(run: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """One row of the table: ``run`` from the report, ``cfg`` the run's ``config.json``."""
    a = cfg["assimilation"]
    b = a["background_error"]
    mode = (b.get("finetune") or {}).get("mode", "none") if b["type"] == "vae" else "-"
    secs = run["seconds_per_cycle"]
    return {
        "name": run["name"], "method": a["method"], "b": b["type"], "finetune_mode": mode,
        "members": "letkf" if a.get("ensemble_letkf") else ("lagged" if mode not in ("none", "-") else "-"),
        "trainable_params": run.get("b_trainable_params"),
        "seconds_per_cycle": {"finetune": secs.get("b_update", 0.0), "analysis": secs["minimisation"],
                              "total": secs["total"]},
        "analysis_rmse": {c: run["rmse"][c]["analysis"] for c in SHOWN},
        "analysis_normalised_rmse": run["normalised_rmse"]["analysis"],
        "cycles": run["cycles"], "first_time": run["first_time"], "last_time": run["last_time"],
    }


def inventory(vae: Path, finetune: dict[str, Any]) -> dict[str, int]:
    ckpt, _ = VaeCheckpoint.load(vae)
    net = ckpt.net
    out = {"vae": sum(p.numel() for p in net.parameters()), "decoder": sum(p.numel() for p in net.decoder.parameters())}
    cfg = FinetuneConfig(**{**finetune, "mode": "lora"})
    out["lora"] = VaeFinetuner(net, cfg).n_trainable()
    return out


def fmt(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 10 else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="aivarda report --json output")
    ap.add_argument("--vae", type=Path, required=True, help="the VAE checkpoint of the runs")
    ap.add_argument("--root", type=Path, default=Path("."), help="directory the report's run paths are relative to")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    report = json.loads(args.report.read_text())
    configs = [json.loads((args.root / r["path"] / "config.json").read_text()) for r in report["runs"]]
    rows = [run_row(r, cfg) for r, cfg in zip(report["runs"], configs, strict=True)]
    lora_cfg = next((cfg["assimilation"]["background_error"]["finetune"]
                     for cfg, row in zip(configs, rows, strict=True) if row["finetune_mode"] == "lora"), {})
    params = inventory(args.vae, {k: v for k, v in lora_cfg.items() if k != "mode"})
    for row in rows:
        n = row["trainable_params"]
        row["params_over_lora"] = None if n is None else n / params["lora"]
    comparisons = [
        {"a": c["a"], "b": c["b"], "cycles": c["cycles"],
         "analysis": {k: {f: v["analysis"][f] for f in ("a", "b", "difference", "interval", "significant")}
                      for k, v in c["scores"].items()}}
        for c in report["comparisons"]
    ]
    baselines = report["runs"][0].get("baselines", {})  # the same truth and cycles for every run
    out = {"report": str(args.report), "vae": str(args.vae), "parameters": params, "runs": rows,
           "baselines": baselines, "comparisons": comparisons}

    print(f"parameters: VAE {params['vae']:,}, decoder {params['decoder']:,}, LoRA {params['lora']:,} "
          f"(decoder/LoRA {params['decoder'] / params['lora']:.0f}, VAE/LoRA {params['vae'] / params['lora']:.0f})")
    print("| run | method | B | mode | members | trainable | ×LoRA | fine-tune s | analysis s | total s | "
          + " | ".join(SHOWN) + " | all/σ |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * (len(SHOWN) + 1))
    for r in rows:
        n, s, ratio = r["trainable_params"], r["seconds_per_cycle"], r["params_over_lora"]
        print(f"| {r['name']} | {r['method']} | {r['b']} | {r['finetune_mode']} | {r['members']} | "
              f"{'-' if n is None else f'{int(n):,}'} | {'-' if ratio is None else f'{ratio:.0f}'} | "
              f"{s['finetune']:.1f} | {s['analysis']:.1f} | {s['total']:.1f} | "
              + " | ".join(fmt(r["analysis_rmse"][c]) for c in SHOWN) + f" | {r['analysis_normalised_rmse']:.4f} |")
    for name, bl in baselines.items():
        print(f"| {name} | - | - | - | - | - | - | - | - | - | " + " | ".join(fmt(bl["rmse"][c]) for c in SHOWN)
              + f" | {bl['normalised_rmse']:.4f} |")
    for c in comparisons:
        print(f"\n{c['a']} − {c['b']} ({c['cycles']} cycles), analysis RMSE difference [95 %]:")
        for k, v in c["analysis"].items():
            lo, hi = v["interval"]
            print(f"  {k}: {fmt(v['a'])} vs {fmt(v['b'])}: {fmt(v['difference'])} [{fmt(lo)}, {fmt(hi)}]"
                  + ("" if v["significant"] else " not significant"))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
