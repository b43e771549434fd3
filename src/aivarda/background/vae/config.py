"""Configuration of ``aivarda learn-b vae CONFIG`` (see ``configs/learn_b_vae.yaml``).

The YAML has the sections of ``aivarda learn-b nmc|genbe`` (``data``, ``nmc``, ``samples``; the
NMC samples are read from ``samples:``, else from the cache the ``nmc`` section names, made first
if missing) plus a ``vae`` section with the architecture and the training settings, and
``output_dir``. Paths in the file are relative to its directory, except ``output_dir``, which is
relative to the working directory (as for ``aivarda train-model``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from aivarda.background.genbe.config import LearnBConfig
from aivarda.background.vae.network import VaeArchitecture
from aivarda.config import StrictModel


class VaeTraining(StrictModel):
    """Loss and optimisation (defaults: the released VAE-Var settings, 20 epochs)."""

    sigma: float = Field(2.0, gt=0, description="σ of the reconstruction term Σ(x̂ − x)²/(2σ²)")
    lr: float = Field(1e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(4, ge=1, description="global batch (split over torchrun processes)")
    epochs: int = Field(20, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps in total")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="the latest valid times (this fraction) are held out for validation"
    )
    checkpoint_every: int = Field(100, ge=1, description="also write last.pt every this many steps")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    calibration_samples: int = Field(
        64, ge=0, description="decoder samples for the per-channel variance calibration of best.pt after training (0: none)"
    )


class VaeSection(StrictModel):
    """``vae:``: the network and its training."""

    architecture: VaeArchitecture = Field(default_factory=VaeArchitecture)
    training: VaeTraining = Field(default_factory=VaeTraining)


class LearnVaeConfig(LearnBConfig):
    """``aivarda learn-b vae CONFIG``: the ``learn-b`` sections plus ``vae`` and ``output_dir``."""

    name: str = "vae"
    vae: VaeSection = Field(default_factory=VaeSection)
    output_dir: Path = Field(
        Path("runs/vae"),
        description="best.pt, last.pt and train_log.jsonl are written here (relative to the working directory)",
    )
