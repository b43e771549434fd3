"""Configuration of forecast models: what to load (:class:`ModelConfig`), how to train
(:class:`TrainConfig`, ``aivarda train-model``) and how to evaluate (:class:`EvalConfig`,
``aivarda eval-model``).

Relative input paths (stores, statistics, checkpoints to start from) are resolved against the
directory of the YAML file; ``output_dir`` is relative to the working directory. ``${AIVARDA_HOME}``
in a path is replaced by the cache root and ``${AIVARDA_ASSETS}`` by the package's shipped
artefacts (:func:`aivarda.paths.expand_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from aivarda.config import DataConfig, Hours, SafeName, StrictModel, load_config
from aivarda.models.linear_prior import LinearPriorConfig


class ModelConfig(StrictModel):
    """A forecast model for cycling/assimilation: a trained aivarda checkpoint
    (``checkpoint: fengwu_6h.pt``) or any ``torch.nn.Module`` by import path
    (``module: pkg.mod:Class``, ``kwargs``, ``checkpoint`` = its state dict, ``stats``, ``dt``)."""

    checkpoint: Path | None = Field(None, description="aivarda checkpoint, or the module's state dict")
    module: str | None = Field(None, description="'package.module:Class' of a torch.nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    stats: Path | None = Field(None, description="JSON/YAML of NormStats (module only; default: identity)")
    dt: Hours | None = Field(None, description="step length, e.g. '6h' (module only)")
    grid: dict[str, Any] | None = Field(None, description="Grid.to_dict() (module only)")
    layout: dict[str, Any] | None = Field(None, description="ChannelLayout.to_dict() (module only)")
    residual: bool = True
    grad_checkpointing: bool = Field(False, description="activation checkpointing of every step")
    linear_prior_only: bool = Field(
        False, description="the checkpoint's fitted linear prior alone, without the network (cheap and linear)"
    )
    device: str = "cpu"

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.module is None and self.checkpoint is None:
            raise ValueError("give either 'checkpoint' (an aivarda checkpoint) or 'module' (package.module:Class)")
        if self.module is not None and self.dt is None:
            raise ValueError("'dt' is required with 'module'")
        return self

class ModelSpec(StrictModel):
    """The network to train and how its output is read."""

    architecture: dict[str, Any] = Field(description="{name: fengwu|sfno|module, ...hyper-parameters}")
    dt: Hours = Field(6.0, description="step length, e.g. '6h' or '1h'")
    residual: bool = True
    linear_prior: LinearPriorConfig | None = Field(
        None, description="spectral linear inverse model under the network, fitted before training"
    )


class TrainDataConfig(DataConfig):
    """Training trajectories from the nature run (``source: nature_run``) or a WeatherBench2-layout
    store (``source: zarr, path: ...``); ``variables`` selects channels (default: all the store has)."""

    train_span: str = "train"
    val_span: str | None = Field(None, description="held-out span; default: the last val_fraction of train_span")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    stats: Path | None = Field(None, description="NormStats JSON; default: computed (and cached) from the training times")
    stats_samples: int = Field(512, ge=2, description="sample times for the statistics when computed here")
    cache: bool = Field(True, description="keep the states read from the store in memory")

class OptimConfig(StrictModel):
    """AdamW with a linear warm-up then cosine decay to ``min_lr_ratio · lr``."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.01, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)


class TrainConfig(StrictModel):
    """``aivarda train-model CONFIG``."""

    name: SafeName = "model"
    seed: int = 0
    data: TrainDataConfig
    model: ModelSpec
    optim: OptimConfig = Field(default_factory=OptimConfig)
    batch_size: int = Field(8, ge=1, description="global batch (split over processes)")
    epochs: int = Field(10, ge=1)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    rollout_steps: int = Field(1, ge=1, description="k: loss over the k-step autoregressive rollout")
    loss_norm: Literal["tendency", "state"] = Field(
        "tendency", description="errors divided by the tendency std σ_Δ or by the state std σ"
    )
    amp: bool = Field(True, description="bfloat16 autocast on CUDA (ignored on CPU)")
    grad_checkpointing: bool = False
    checkpoint_every: int = Field(200, ge=1, description="write last.pt every N steps")
    init_from: Path | None = Field(
        None, description="start from this checkpoint's weights and statistics (e.g. k-step fine-tuning)"
    )
    output_dir: Path = Path("runs/models/model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)

class EvalConfig(StrictModel):
    """``aivarda eval-model [CONFIG]``: lead-time RMSE/ACC against the nature run's ``eval`` span,
    beside persistence and climatology (the time mean of ``clim_span``)."""

    checkpoint: Path = Field(Path("${AIVARDA_ASSETS}/fengwu_6h_rollout.pt"), description="default: the shipped 6-hour model")
    data: DataConfig = Field(default_factory=DataConfig)
    span: str | None = Field("eval", description="the store's span of initial and verifying times; null: all times of data (data.start/end)")
    clim_span: str = Field("train", description="span whose time mean is the climatology")
    clim_samples: int = Field(512, ge=1, description="states averaged for the climatology")
    channels: list[str] = Field(default_factory=lambda: ["z500", "t850", "u500", "q500"])
    leads: list[Hours] = Field(default_factory=lambda: [6.0, 24.0, 72.0, 120.0], description="e.g. [6h, 1d]")
    init_every: Hours = Field(12.0, description="time between initial times")
    max_inits: int | None = Field(None, ge=1)
    batch_size: int = Field(8, ge=1, description="initial times forecast together")
    device: Literal["auto", "cpu", "cuda"] = "auto"

def load_train_config(path: str | Path) -> TrainConfig:
    """Load a :class:`TrainConfig`, validating the architecture section too."""
    from aivarda.models.registry import architecture_config

    cfg = load_config(path, TrainConfig)
    architecture_config(cfg.model.architecture, f"{path}: model.architecture", allow_module=True)
    return cfg
