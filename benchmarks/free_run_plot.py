"""The free-run error curve of forecast models: RMSE against lead, beside climatology and the level
of two unrelated states of the world (√2 × climatology's RMSE), from ``aivarda eval-model --json``
outputs (e.g. ``configs/models/free_run_fengwu_6h.yaml``).

    python benchmarks/free_run_plot.py docs/results/free_run_fengwu_6h.json docs/results/free_run_fengwu_6h_rollout.json \
        [--channels z500,t850] [--out docs/img/free_run.png] [--json]

Prints per model and channel the RMSE at each lead, the ratio to √2 × climatology's RMSE at the
same lead, and the largest ratio from the first lead where the error reaches 90 % of that level on
("saturated within 10 %" when it stays in [0.9, 1.1] from there to the last lead), and whether the
error ever drifts more than 10 % above that level (a model that blurs towards climatology stays
below it: its ratio ends between 1/√2 and 1).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def curves(path: Path) -> tuple[str, dict[str, dict[str, list[tuple[float, float]]]]]:
    data = json.loads(path.read_text())
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for row in data["results"]:
        out.setdefault(row["channel"], {}).setdefault(row["forecast"], []).append((row["lead_hours"], row["rmse"]))
    for per in out.values():
        for series in per.values():
            series.sort()
    return Path(data["checkpoint"]).name, out


def saturation(model: list[tuple[float, float]], clim: list[tuple[float, float]]) -> dict[str, object]:
    ratios = [(lead, m / (math.sqrt(2) * c)) for (lead, m), (_, c) in zip(model, clim)]
    reached = next((i for i, (_, r) in enumerate(ratios) if r >= 0.9), None)
    after = ratios[reached:] if reached is not None else []
    return {
        "ratios": ratios,
        "reaches_90pct_at_hours": None if reached is None else ratios[reached][0],
        "max_ratio_after": max((r for _, r in after), default=None),
        "min_ratio_after": min((r for _, r in after), default=None),
        "saturated_within_10pct": bool(after) and all(0.9 <= r <= 1.1 for _, r in after),
        "max_ratio": max(r for _, r in ratios),
        "never_above_110pct": all(r <= 1.1 for _, r in ratios),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--channels", default="z500,t850")
    ap.add_argument("--out", type=Path, default=None, help="PNG of the curves")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    channels = args.channels.split(",")
    models = [curves(p) for p in args.results]
    summary = {}
    for name, per in models:
        for ch in channels:
            s = saturation(per[ch]["model"], per[ch]["climatology"])
            summary[f"{name}:{ch}"] = s
            if not args.json:
                print(f"{name} {ch}: " + "  ".join(f"{lead / 24:g}d {r:.2f}" for lead, r in s["ratios"]))
                lo, hi = s["min_ratio_after"], s["max_ratio_after"]
                span = "never" if lo is None else f"{lo:.3f} … {hi:.3f}"
                print(f"    reaches 0.9 × √2·clim at {s['reaches_90pct_at_hours']} h; after that ratio {span}; "
                      f"within 10 %: {s['saturated_within_10pct']}; largest ratio {s['max_ratio']:.3f} "
                      f"(never above 1.1: {s['never_above_110pct']})")
    if args.json:
        print(json.dumps({"inputs": [str(p) for p in args.results], "summary": summary}, indent=2))
    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(channels), figsize=(5.2 * len(channels), 3.8), squeeze=False)
        for ax, ch in zip(axes[0], channels):
            for name, per in models:
                lead, rmse = zip(*per[ch]["model"])
                ax.plot([h / 24 for h in lead], rmse, marker="o", ms=3, label=name)
            name, per = models[0]
            lead, clim = zip(*per[ch]["climatology"])
            days = [h / 24 for h in lead]
            ax.plot(days, clim, "k--", lw=1, label="climatology")
            ax.plot(days, [math.sqrt(2) * c for c in clim], "k:", lw=1.5, label="√2 × climatology (unrelated states)")
            ax.fill_between(days, [0.9 * math.sqrt(2) * c for c in clim], [1.1 * math.sqrt(2) * c for c in clim],
                            color="0.85", zorder=0, label="±10 %")
            ax.set_xlabel("lead (days)")
            ax.set_ylabel(f"{ch} RMSE")
            ax.set_title(f"free runs: {ch}")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out, dpi=110)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
