"""Randomisation test of a trained VAE decoder: per-channel variance of ``U(z)``, ``z ~ N(0, I)``,
over that of the NMC samples (``aivarda.background.vae.diagnostics``).

    python benchmarks/vae_variance.py --checkpoint runs/learn_b_vae/best.pt --samples NMC.pt \
        [--split val|train|all] [--calibration none|variance|spectral] [--n 64] [--seed 0] [--threads 1] [--json]

``--split`` compares with the checkpoint's validation samples (default), its training samples, or
all samples of the file (split by the valid-time spans recorded in the checkpoint). Prints the ratio
per channel and the share of channels within a factor 2, and the size of ``D(0)`` (what
``centre: true`` subtracts) as its RMS over the grid in units of the NMC error std ``s_c``.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from aivarda.background.vae.checkpoint import VaeCheckpoint
from aivarda.background.vae.diagnostics import decoder_variance_ratio
from aivarda.background.vae.transform import VaeTransform
from aivarda.learning.nmc import NmcSamples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--samples", required=True, help="the NMC sample file the VAE was trained on")
    ap.add_argument("--calibration", choices=["none", "variance", "spectral"], default="none",
                    help="the transform's calibration (default none: the raw decoder, the transform's default)")
    ap.add_argument("--split", choices=["val", "train", "all"], default="val")
    ap.add_argument("--n", type=int, default=64, help="decoder samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ckpt, _ = VaeCheckpoint.load(args.checkpoint)
    samples = NmcSamples.load(args.samples)
    keep = np.ones(len(samples), dtype=bool)
    if args.split != "all":
        keep = samples.in_span(ckpt.metadata[f"{args.split}_span"])
    U = VaeTransform(ckpt, samples.grid, centre=True, calibration=args.calibration)
    ratio = decoder_variance_ratio(U, samples.samples[torch.as_tensor(keep)], n=args.n, seed=args.seed).numpy()
    names = list(ckpt.layout.names)
    with torch.no_grad():
        d0 = U.offset(torch.zeros(1)).double()  # D(0) [C, H, W], normalised units
    w = torch.as_tensor(samples.grid.weights, dtype=torch.float64)[:, None]
    d0_rms = ((d0.square() * w).sum((1, 2)) / (w.sum() * d0.shape[-1])).sqrt().numpy()
    ok = np.isfinite(ratio)
    within = float(np.mean((ratio[ok] >= 0.5) & (ratio[ok] <= 2.0)))
    out = {
        "checkpoint": args.checkpoint,
        "split": args.split,
        "n_samples": int(keep.sum()),
        "n_decoder_samples": args.n,
        "within_factor_2": within,
        "ratio_min": float(ratio[ok].min()),
        "ratio_median": float(np.median(ratio[ok])),
        "ratio_max": float(ratio[ok].max()),
        "ratio": {n: float(r) for n, r in zip(names, ratio)},
        "d0_rms_median": float(np.median(d0_rms)),
        "d0_rms_max": float(d0_rms.max()),
        "d0_rms": {n: float(r) for n, r in zip(names, d0_rms)},
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['n_samples']} {args.split} NMC samples vs {args.n} decoder samples z ~ N(0, I)")
    print(f"variance ratio: min {out['ratio_min']:.3g}  median {out['ratio_median']:.3g}  max {out['ratio_max']:.3g}; "
          f"within a factor 2: {100 * within:.0f} % of {ok.sum()} channels")
    print(f"RMS of D(0) in units of s_c: median {out['d0_rms_median']:.3g}  max {out['d0_rms_max']:.3g}")
    print("channel  variance ratio  D(0) RMS")
    for n, r, d in zip(names, ratio, d0_rms):
        print(f"  {n:>6} {r:14.3g} {d:9.3g}")


if __name__ == "__main__":
    main()
