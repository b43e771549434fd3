"""Choose a tuned knob from an ``aivarda sweep`` over it: the grid value whose runs have the lowest
score in the sweep's report, with every value's scores beside it. Knobs tuned together (several
``--key``) are chosen as one tuple of values.

The selection rule (fixed before the runs): the lowest analysis RMSE/σ_clim averaged over channels
(the report's ``normalised_rmse``), over the common cycles of the runs; ties (within 0.1 %) go to the
smaller value (the first key decides, then the next). The sweep runs on a tuning span disjoint
from any evaluation (configs/tuning/).

    python benchmarks/select_knob.py runs/tuning/flow_error_seeds_obs --key assimilation.flow_error \
        --json > docs/results/tuning_flow_error_seeds_obs.json
    python benchmarks/select_knob.py runs/tuning/hybrid_w* --key assimilation.background_error.static_weight \
        --key assimilation.background_error.ensemble.localisation.length_scale_km --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def knob(overrides: dict, keys: list[str]) -> object:
    """The run's value of one key, or the list of its values of several."""
    return overrides[keys[0]] if len(keys) == 1 else [overrides[k] for k in keys]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_dirs", type=Path, nargs="+",
                   help="directories of `aivarda sweep`s over the same key (sweep.json, report/report.json); a grid "
                        "extended by a second sweep is given as both")
    p.add_argument("--key", required=True, action="append",
                   help="the swept config key, e.g. assimilation.flow_error; repeat it for knobs tuned together")
    p.add_argument("--score", choices=["analysis", "background"], default="analysis")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    rows: list[dict] = []
    for sweep_dir in args.sweep_dirs:
        manifest = json.loads((sweep_dir / "sweep.json").read_text())
        report_rel = manifest.get("report", {}).get("json")
        if report_rel is None:
            raise SystemExit(f"{sweep_dir}/sweep.json: no report yet (the sweep has not finished)")
        report = json.loads((sweep_dir / report_rel).read_text())
        value_of = {r["name"]: knob(r["overrides"], args.key) for r in manifest["runs"] if all(k in r["overrides"] for k in args.key)}
        if not value_of:
            raise SystemExit(f"{sweep_dir}/sweep.json: no run sets {' and '.join(args.key)}")
        found = [run for run in report["runs"] if run["name"] in value_of]
        if len(found) != len(value_of):
            raise SystemExit(f"{sweep_dir}: the report has {len(found)} of the {len(value_of)} runs; rerun the sweep to finish it")
        for run in found:
            rows.append({"value": value_of[run["name"]], "run": run["name"], "cycles": run["cycles"],
                         "first_time": run["first_time"], "last_time": run["last_time"],
                         "normalised_rmse": run["normalised_rmse"],
                         "rmse_analysis": {c: v["analysis"] for c, v in run["rmse"].items()},
                         "store_fingerprint": run.get("store_fingerprint")})
    values = [r["value"] for r in rows]
    if len({json.dumps(v) for v in values}) != len(values):
        raise SystemExit(f"{', '.join(args.key)}: a value is in more than one run ({sorted(values)})")
    if len({(r["first_time"], r["last_time"], r["cycles"], r["store_fingerprint"]) for r in rows}) != 1:
        raise SystemExit("the runs do not cover the same cycles of the same store; they cannot be compared")
    rows.sort(key=lambda r: r["value"])
    best = min(r["normalised_rmse"][args.score] for r in rows)
    chosen = next(r for r in rows if r["normalised_rmse"][args.score] <= best * 1.001)
    out = {"sweeps": [str(d) for d in args.sweep_dirs], "key": args.key[0] if len(args.key) == 1 else args.key, "score": f"{args.score} normalised_rmse (mean over channels of "
           "sqrt(time-mean MSE)/sigma_clim)", "rule": "lowest score; ties within 0.1 % to the smaller value",
           "chosen": chosen["value"], "rows": rows}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{', '.join(args.key)} on {rows[0]['first_time']} … {rows[0]['last_time']} ({rows[0]['cycles']} cycles)")
        for r in rows:
            mark = "  <- chosen" if r is chosen else ""
            print(f"  {str(r['value']):>8} all/σ b {r['normalised_rmse']['background']:.4f} a {r['normalised_rmse']['analysis']:.4f}"
                  f"  z500 a {r['rmse_analysis'].get('z500', float('nan')):.1f}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
