"""``aivarda learn-b vae CONFIG [--resume]``: train the background-error VAE on NMC samples.

Data: the NMC samples ``δx [N, C, H, W]`` that ``aivarda learn-b nmc`` writes, sorted by valid
time; the latest ``val_fraction`` of them are the validation set (the two spans never overlap and
are recorded in the checkpoint). Each sample is divided by the per-channel NMC error std
``s_c`` of the training samples (area-weighted), ``x = δx / s``.

Loss (negative ELBO per sample, averaged over the batch): with ``(μ, log σ_z²) = E(x)``,
``z = μ + σ_z ε``, ``ε ~ N(0, I)``, ``x̂ = D(z)``,

    L = Σ (x̂ − x)² / (2σ²) + ½ Σ (μ² + σ_z² − log σ_z² − 1),     σ = 2 by default,

Adam (lr 1e-4), batch 4. The validation loss is the same ELBO on the held-out samples with a fixed
``ε`` (so it is comparable between epochs and runs).

Distributed: launch the same command with ``torchrun --nproc_per_node N``; as for
``aivarda train-model`` the batch is global, each process takes its share of the same seeded
permutation and only rank 0 writes. The ``ε`` of the global batch of step ``s`` is drawn from a
generator seeded by ``(seed, s)`` and each process takes its samples' rows, so a run gives the same
weights (up to reduction order) whatever the number of processes, and a resumed run draws exactly
what the uninterrupted one would.

Outputs in ``output_dir``: ``last.pt`` (every ``checkpoint_every`` steps and every epoch end, with
the optimiser state for ``--resume``), ``best.pt`` (lowest validation loss), ``train_log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from aivarda.background.vae.checkpoint import VaeCheckpoint, channel_std, time_span
from aivarda.background.vae.config import LearnVaeConfig
from aivarda.background.vae.diagnostics import raw_decoder_samples, spectral_calibration, variance_calibration
from aivarda.background.vae.network import VaeNet, vae_loss
from aivarda.config import load_config
from aivarda.errors import DataError
from aivarda.learning.learn_b import fitted_on, load_or_make_samples
from aivarda.learning.nmc import NmcSamples
from aivarda.learning.train_model import (
    _all_sum,
    epoch_batches,
    last_checkpoint,
    process_setup,
    run_epochs,
    run_metadata,
    training_state,
)
from aivarda.parallel import end_distributed, is_rank0, rank0_first, setup_distributed
from aivarda.provenance import records_to_json


def split_by_time(times: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation samples: the latest ``round(val_fraction·N)`` valid
    times (at least one if ``val_fraction > 0``) are validation."""
    order = np.argsort(np.asarray(times, dtype="datetime64[ns]"), kind="stable")
    n_val = 0 if val_fraction == 0 else max(1, int(round(val_fraction * order.size)))
    return order[: order.size - n_val], order[order.size - n_val :]


def _step_noise(shape: tuple[int, ...], *seeds: int) -> Tensor:
    seed = int(np.random.SeedSequence(list(seeds)).generate_state(1)[0])
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class VaeTrainer:
    """One training run (one process of it under torchrun); see the module docstring."""

    def __init__(self, cfg: LearnVaeConfig, samples: NmcSamples, progress: bool = True) -> None:
        t = cfg.vae.training
        self.cfg, self.t = cfg, t
        self.info, self.local_batch = process_setup(t.device, t.batch_size, "vae.training.batch_size")
        info = self.info
        self.rank0 = info.rank == 0
        self.progress = progress and self.rank0
        train_idx, val_idx = split_by_time(samples.valid_times, t.val_fraction)
        if train_idx.size < t.batch_size:
            raise DataError(
                f"{len(samples)} NMC samples leave {train_idx.size} for training (val_fraction {t.val_fraction:g}), "
                f"fewer than one batch of {t.batch_size}"
            )
        x = samples.samples.float()
        err_std = channel_std(x[torch.as_tensor(train_idx)], samples.grid.weights)
        scale = torch.where(err_std > 0, err_std, torch.ones_like(err_std))[:, None, None]  # constant channels stay 0
        self.x_train = x[torch.as_tensor(train_idx)] / scale
        self.x_val = x[torch.as_tensor(val_idx)] / scale
        self.train_times, self.val_times = samples.valid_times[train_idx], samples.valid_times[val_idx]

        torch.manual_seed(t.seed)
        net = VaeNet(len(samples.layout), samples.grid.shape, cfg.vae.architecture)
        self.ckpt = VaeCheckpoint(net, err_std, samples.grid, samples.state_grid, samples.layout)
        self.net = net.to(info.device)
        self.model: nn.Module = self.net
        if info.world_size > 1:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.net, device_ids=device_ids)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=t.lr)
        self.sampler = DistributedSampler(
            range(len(self.x_train)), num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=t.seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        self.total_steps = min(t.max_steps or 10**12, t.epochs * self.steps_per_epoch)
        self.out = Path(cfg.output_dir)
        self.step, self.best_val = 0, math.inf
        self.val_eps = _step_noise((len(self.x_val), *net.latent_shape), t.seed, 2**31)
        self.trained_on = vae_trained_on(samples.metadata)
        self.samples_info = {"kind": samples.kind, "n_train": int(train_idx.size), "n_val": int(val_idx.size),
                             "source": samples.metadata.get("source"), "span": samples.metadata.get("span")}

    # ------------------------------------------------------------------ checkpoints
    def metadata(self, epoch: int, train_loss: float, val_loss: float) -> dict[str, Any]:
        return {
            **run_metadata(self, epoch, train_loss, val_loss),
            "sigma": self.t.sigma,
            "train_span": time_span(self.train_times),
            "val_span": time_span(self.val_times),
            "samples": self.samples_info,
            "trained_on": self.trained_on,
        }

    def save(self, name: str, epoch: int, train_loss: float, val_loss: float, training_state: bool) -> None:
        if not self.rank0:
            return
        self.ckpt.metadata = self.metadata(epoch, train_loss, val_loss)
        state = None
        if training_state:
            state = {"optimizer": self.optimizer.state_dict(), "step": self.step, "best_val": self.best_val}
        self.ckpt.save(self.out / name, state)

    def resume(self) -> None:
        """Restore weights, optimiser state, step and best validation loss from ``output_dir/last.pt``."""
        last = last_checkpoint(self.out)
        ckpt, payload = VaeCheckpoint.load(last)
        state = training_state(payload, last)
        if ckpt.metadata.get("train_span") != time_span(self.train_times) or not torch.equal(ckpt.err_std, self.ckpt.err_std):
            raise DataError(f"{last}: was trained on other NMC samples (train span {ckpt.metadata.get('train_span')})")
        self.net.load_state_dict(ckpt.net.state_dict())
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best_val = int(state["step"]), float(state["best_val"])

    # ------------------------------------------------------------------ steps
    def _terms(self, net: nn.Module, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        dev = self.info.device
        x_hat, mu, logvar = net(x.to(dev), eps.to(dev))
        return vae_loss(x.to(dev), x_hat, mu, logvar, self.t.sigma)

    def train_step(self, idx: list[int]) -> tuple[float, float]:
        # the global batch's ε (the DistributedSampler interleaves ranks: this rank's i-th sample
        # is global batch position i·W + rank), so any number of processes draws the same ε
        eps = _step_noise((self.t.batch_size, *self.net.latent_shape), self.t.seed, self.step)
        eps = eps[self.info.rank :: self.info.world_size]
        recon, kl = self._terms(self.model, self.x_train[idx], eps)
        loss = (recon + kl).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item(), kl.mean().item()

    def validate(self) -> tuple[float, float, float]:
        """Mean ``(loss, reconstruction, KL)`` per validation sample (all processes); NaN without any."""
        n = len(self.x_val)
        if n == 0:
            return math.nan, math.nan, math.nan
        idx = list(range(self.info.rank, n, self.info.world_size))
        sums = [0.0, 0.0, 0.0]
        self.net.eval()
        with torch.no_grad():
            for b in range(0, len(idx), self.local_batch):
                i = idx[b : b + self.local_batch]
                recon, kl = self._terms(self.net, self.x_val[i], self.val_eps[i])
                sums = [sums[0] + (recon + kl).sum().item(), sums[1] + recon.sum().item(), sums[2] + kl.sum().item()]
        self.net.train()
        total = _all_sum(sums, self.info)
        return total[0] / n, total[1] / n, total[2] / n

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self, epoch)

    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        if self.rank0:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"learn-b vae {self.cfg.name}", unit="step",
                   disable=not self.progress)
        self.net.train()
        t_start = time.perf_counter()

        def step(idx: Any) -> tuple[float, dict[str, str]]:
            loss, kl = self.train_step(idx)
            return loss, {"loss": f"{loss:.4g}", "kl": f"{kl:.4g}"}

        epoch, train_loss, val, seconds = run_epochs(
            self, lambda epoch, done: self.epoch_batches(epoch)[done:], step, self.validate, self.t.checkpoint_every,
            bar, stop_after, lambda v: {"val_recon": v[1], "val_kl": v[2]},
        )
        val = val if len(val) == 3 else (math.nan, math.nan, math.nan)
        return {
            "steps": self.step,
            "epochs": epoch,
            "train_loss": train_loss,
            "val_loss": val[0],
            "val_recon": val[1],
            "val_kl": val[2],
            "best_val_loss": self.best_val,
            "seconds": time.perf_counter() - t_start,
            "seconds_per_step": float(np.median(seconds)) if seconds else math.nan,
            "train_span": time_span(self.train_times),
            "val_span": time_span(self.val_times),
            **{f"{k}_samples": v for k, v in self.samples_info.items() if k in ("n_train", "n_val")},
            "latent_shape": list(self.net.latent_shape),
            "parameters": sum(p.numel() for p in self.net.parameters()),
            "world_size": self.info.world_size,
            "output_dir": str(self.out),
        }


def train_vae(
    cfg: LearnVaeConfig, samples: NmcSamples, *, resume: bool = False, stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train as configured; ``resume`` continues from ``output_dir/last.pt``; ``stop_after`` pauses
    after that many steps in total (``last.pt`` written)."""
    trainer = VaeTrainer(cfg, samples, progress)
    if resume:
        trainer.resume()
    return trainer.run(stop_after)


def vae_trained_on(samples_metadata: dict[str, Any]) -> list[dict[str, Any]]:
    """The VAE's provenance records (JSON): those of its NMC samples."""
    return records_to_json(fitted_on(samples_metadata, "VAE background error", "trained on"))


def calibrate_checkpoint(path: Path, samples: NmcSamples, n: int, seed: int) -> Tensor:
    """Estimate the per-channel variance calibration ``k`` and the spectral calibration ``g [C, L]``
    of the checkpoint at ``path`` on the NMC samples of its training span
    (``aivarda.background.vae.diagnostics.variance_calibration``, ``spectral_calibration``, the
    same decoder draws) and write them into the file (atomically) → ``k [C]``."""
    ckpt, _ = VaeCheckpoint.load(path)
    span = ckpt.metadata.get("train_span")
    if not span:
        raise DataError(f"{path}: has no train_span; cannot tell its training samples")
    keep = samples.in_span(span)
    if not keep.any():
        raise DataError(f"{path}: none of the NMC samples lies in its training span {span}")
    train = samples.samples[torch.as_tensor(keep)]
    draws = raw_decoder_samples(ckpt, n, seed)  # decoded once for both calibrations
    k = variance_calibration(ckpt, train, draws=draws)
    ckpt.calibration = k
    ckpt.spectral_calibration = spectral_calibration(ckpt, train, draws=draws)
    if not ckpt.metadata.get("trained_on"):  # checkpoints trained before the VAE recorded it
        ckpt.metadata["trained_on"] = vae_trained_on(samples.metadata)
    ckpt.metadata = {**ckpt.metadata, "calibration": {"decoder_samples": n, "seed": seed, "span": span,
                                                      "nmc_samples": int(keep.sum())}}
    ckpt.save(path)
    return k


def main(args: argparse.Namespace) -> int:
    """CLI handler of ``aivarda learn-b vae``."""
    cfg = load_config(args.config, LearnVaeConfig)
    if getattr(args, "out", None):
        cfg.output_dir = Path(args.out).resolve()
    if getattr(args, "epochs", None):
        cfg.vae.training.epochs = args.epochs
    if getattr(args, "max_steps", None):
        cfg.vae.training.max_steps = args.max_steps
    resume = bool(getattr(args, "resume", False))
    calibrate_only = bool(getattr(args, "calibrate_only", False))
    if not resume and not calibrate_only and (cfg.output_dir / "last.pt").exists():
        raise DataError(f"{cfg.output_dir / 'last.pt'}: exists; pass --resume to continue it or choose another --out")
    quiet = bool(getattr(args, "quiet", False))
    info = setup_distributed(cfg.vae.training.device)
    with rank0_first(info):  # NMC samples made (and cached) once
        samples = load_or_make_samples(cfg, getattr(args, "samples", None), progress=not quiet and info.rank == 0)
    t = cfg.vae.training
    stop_after = getattr(args, "stop_after", None)
    if calibrate_only:
        summary: dict[str, Any] = {"output_dir": str(cfg.output_dir)}
        if not (cfg.output_dir / "best.pt").exists():
            raise DataError(f"{cfg.output_dir / 'best.pt'}: not found; train first (aivarda learn-b vae CONFIG)")
    else:
        summary = train_vae(cfg, samples, resume=resume, stop_after=stop_after, progress=not quiet)
    finished = calibrate_only or stop_after is None or summary["steps"] < stop_after  # not paused
    if is_rank0() and finished and (t.calibration_samples > 0 or calibrate_only) and (cfg.output_dir / "best.pt").exists():
        k = calibrate_checkpoint(cfg.output_dir / "best.pt", samples, max(t.calibration_samples, 1), t.seed)
        summary["calibration"] = {"min": float(k.min()), "median": float(k.median()), "max": float(k.max())}
    if is_rank0():
        print(json.dumps(summary, indent=None if getattr(args, "json", False) else 2))
    end_distributed()
    return 0
