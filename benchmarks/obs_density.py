"""The observation-density sweep: a method against a baseline at several numbers of observed columns
per cycle, paired on the same observations (same seed, same count), as a figure and a JSON.

Each count's pair is compared with :func:`aivarda.evaluation.report.compare_runs` (paired
difference of the analysis RMSE over the common cycles, 95 % moving-block bootstrap); the figure
shows the analysis RMSE of both methods per count (z500, t850 and the all-channel mean over
σ_clim) and the difference with its interval.

    aivarda sweep configs/exp_3DVar.yaml --set observations.count=250,500,1000,2000 \\
        --set end_time=2000-08-14T18:00 --set forecast.every=0 --set outputs.analyses_zarr=false \\
        --out runs/obs_density/3dvar
    aivarda sweep configs/exp_LoRA-3DEnVar.yaml (the same --set) --out runs/obs_density/lora
    python benchmarks/obs_density.py --method runs/obs_density/lora --baseline runs/obs_density/3dvar \\
        --json docs/results/obs_density.json --figure docs/img/obs_density.png

A count whose runs have not both finished is left out (and named in the JSON's ``missing``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from aivarda.evaluation.report import compare_runs, load_run

KEY = "observations.count"
SHOWN = ("z500", "t850", "all/σ")


def runs_by_count(sweep_dir: Path) -> dict[int, tuple[Path, bool]]:
    """``count → (run directory, finished)`` of an ``aivarda sweep`` over ``observations.count``."""
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    out = {}
    for r in manifest["runs"]:
        if KEY in r["overrides"]:
            out[int(r["overrides"][KEY])] = (sweep_dir / r["run_dir"], r.get("status") == "finished")
    if not out:
        raise SystemExit(f"{sweep_dir}/sweep.json: no run sets {KEY}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", type=Path, required=True, help="sweep directory of the method (A)")
    ap.add_argument("--baseline", type=Path, required=True, help="sweep directory of the baseline (B)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args()

    method, baseline = runs_by_count(args.method), runs_by_count(args.baseline)
    rows, missing = [], []
    for count in sorted(set(method) | set(baseline)):
        if not (count in method and count in baseline and method[count][1] and baseline[count][1]):
            missing.append(count)
            continue
        a, b = load_run(method[count][0]), load_run(baseline[count][0])
        c = compare_runs([a, b], f"{a.name}:{b.name}")
        rows.append({"count": count, "a": a.name, "b": b.name, "cycles": c["cycles"], "first_time": c["first_time"],
                     "last_time": c["last_time"], "seeds": c["seeds"],
                     "analysis": {ch: s["analysis"] for ch, s in c["scores"].items()},
                     "background": {ch: s["background"] for ch, s in c["scores"].items()}})
    if not rows:
        raise SystemExit("no count has both runs finished")
    out = {"method": str(args.method), "baseline": str(args.baseline), "key": KEY,
           "difference": "method − baseline, analysis (and background) RMSE over the common cycles, 95 % moving-block "
                         "bootstrap interval", "rows": rows, "missing": missing}
    for r in rows:
        an = r["analysis"]
        print(f"{r['count']:>5} columns, {r['cycles']} cycles: " + "  ".join(
            f"{ch} {an[ch]['a']:.4g} vs {an[ch]['b']:.4g} ({an[ch]['difference']:+.3g} [{an[ch]['interval'][0]:+.3g}, "
            f"{an[ch]['interval'][1]:+.3g}])" for ch in SHOWN if ch in an))
    if missing:
        print(f"left out (not finished): {missing}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.figure:
        plot(args.figure, rows, args)


def plot(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    counts = np.array([r["count"] for r in rows])
    shown = [ch for ch in SHOWN if ch in rows[0]["analysis"]]
    fig, axes = plt.subplots(2, len(shown), figsize=(4.3 * len(shown), 6.5), constrained_layout=True, squeeze=False)
    for k, ch in enumerate(shown):
        a = np.array([r["analysis"][ch]["a"] for r in rows])
        b = np.array([r["analysis"][ch]["b"] for r in rows])
        d = np.array([r["analysis"][ch]["difference"] for r in rows])
        lo = np.array([r["analysis"][ch]["interval"][0] for r in rows])
        hi = np.array([r["analysis"][ch]["interval"][1] for r in rows])
        ax = axes[0, k]
        ax.plot(counts, a, "o-", color="C1", label=rows[0]["a"].split("__")[0])
        ax.plot(counts, b, "s-", color="C0", label=rows[0]["b"].split("__")[0])
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        ax.set_title(f"{ch}: analysis RMSE")
        ax.legend(fontsize=8)
        ax = axes[1, k]
        ax.errorbar(counts, d, yerr=[d - lo, hi - d], fmt="o", color="k", capsize=4)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
        ax.set_xlabel("observed columns per cycle")
        ax.set_title(f"{ch}: method − baseline (95 %)")
    fig.suptitle(f"Observation density: {rows[0]['a'].split('__')[0]} against {rows[0]['b'].split('__')[0]} "
                 f"({rows[0]['first_time'][:10]} … {rows[0]['last_time'][:10]}, {rows[0]['cycles']} cycles, same observations)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
