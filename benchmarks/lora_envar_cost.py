"""Cost of the LoRA-EnVar B at the released VAE architecture (``configs/learn_b_vae.yaml``: 69
channels on the 64×128 grid, latent 32×32×64, embed 96, depth 2): trainable parameters of each
``finetune.mode`` and the seconds of one per-cycle fine-tuning (K members, ``epochs``, batch 4) and
of one decode, for an untrained network (the cost does not depend on the weights).

    python benchmarks/lora_envar_cost.py [--members 8] [--epochs 5] [--threads 1] [--device cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from aivarda.background.vae import VaeArchitecture, VaeCheckpoint, VaeNet
from aivarda.background.vae.finetune import FinetuneConfig
from aivarda.background.vae.transform import FinetunedVaeTransform
from aivarda.channels import ChannelLayout
from aivarda.grid import Grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--modes", default="lora,full")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grid, layout = Grid.gaussian(64, 128), ChannelLayout.fengwu69()

    def checkpoint() -> VaeCheckpoint:
        torch.manual_seed(0)
        return VaeCheckpoint(VaeNet(69, grid.shape, VaeArchitecture()), torch.ones(69), grid, grid, layout)

    net = checkpoint().net
    out: dict = {
        "architecture": net.arch.model_dump(), "grid": [64, 128], "channels": 69, "device": args.device,
        "threads": args.threads, "members": args.members, "epochs": args.epochs, "batch_size": 4,
        "parameters": {"vae": sum(p.numel() for p in net.parameters()),
                       "decoder": sum(p.numel() for p in net.decoder.parameters())},
        "modes": {},
    }
    for qkv_rows in ("query", "all"):
        t = FinetunedVaeTransform(checkpoint(), FinetuneConfig(mode="lora", qkv_rows=qkv_rows))
        out["parameters"][f"lora_{qkv_rows}"] = t.finetuner.n_trainable()
    out["parameters"]["decoder_over_lora"] = out["parameters"]["decoder"] / out["parameters"]["lora_query"]
    out["parameters"]["vae_over_lora"] = out["parameters"]["vae"] / out["parameters"]["lora_query"]

    gen = torch.Generator().manual_seed(1)
    members = torch.randn(args.members, 69, *grid.shape, generator=gen).to(args.device)
    z = torch.randn(1, *net.latent_shape, generator=gen).to(args.device)
    for mode in args.modes.split(","):
        t = FinetunedVaeTransform(checkpoint(), FinetuneConfig(mode=mode, epochs=args.epochs))
        with torch.no_grad():
            t.decode(z)  # warm-up, D(0)
            tic = time.perf_counter()
            t.decode(z)
            decode = time.perf_counter() - tic
        tic = time.perf_counter()
        t.update(members)
        update = time.perf_counter() - tic
        info = t.update_diagnostics()
        out["modes"][mode] = {"trainable_params": info["trainable_params"], "update_seconds": update,
                              "steps": info["finetune_steps"], "seconds_per_step": update / info["finetune_steps"],
                              "decode_seconds": decode}
        print(f"{mode:5s} trainable {info['trainable_params']:>9.0f}  update {update:7.2f} s "
              f"({info['finetune_steps']:.0f} steps)  decode {decode:.3f} s", flush=True)
    print(json.dumps(out["parameters"], indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
