"""Forecast-model checkpoints: one ``torch.save`` file holding everything needed to rebuild the model.

Format (a dict of plain Python values and tensors, loadable with ``torch.load(weights_only=True)``)::

    format: "aivarda-forecast-model", version: 1
    architecture: {name: ..., hyper-parameters}     # registry.architecture_config
    state_dict:   network weights
    norm_stats:   NormStats.to_dict()               # mean, std, diff_mean, diff_std [C], diff_hours, channels
    grid:         Grid.to_dict();  layout: ChannelLayout.to_dict()
    dt: hours;    residual: bool
    linear_prior (optional): {config: LinearPriorConfig, state_dict: SpectralLIM buffers}
    metadata:     training metadata (config, step, losses, data store, versions)
    training_state (optional, last.pt only): optimizer, scheduler, step, RNG states for --resume
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from aivarda.channels import ChannelLayout
from aivarda.config import load_config
from aivarda.errors import ConfigError, DataError
from aivarda.files import load_torch_file, save_torch_file
from aivarda.grid import Grid
from aivarda.models.base import ForecastModel
from aivarda.models.config import ModelConfig
from aivarda.models.linear_prior import LinearPriorConfig, SpectralLIM
from aivarda.models.normalised import NeuralForecastModel, identity_stats
from aivarda.models.registry import architecture_config
from aivarda.normstats import NormStats

FORMAT = "aivarda-forecast-model"
VERSION = 1


def build_forecast_model(
    architecture: dict[str, Any],
    stats: Any,
    grid: Grid,
    layout: ChannelLayout,
    dt: float,
    *,
    residual: bool = True,
    checkpoint: bool = False,
    linear_prior: LinearPriorConfig | dict[str, Any] | None = None,
    allow_module: bool = False,
) -> NeuralForecastModel:
    """A fresh (untrained) model of a registered architecture, with an unfitted linear prior
    (:class:`~aivarda.models.linear_prior.SpectralLIM`) when ``linear_prior`` is given.
    ``allow_module`` admits ``name: module`` and is for a user's own (training) config only."""
    arch = architecture_config(architecture, allow_module=allow_module)
    prior = None
    if linear_prior is not None:
        prior = SpectralLIM(linear_prior, grid, layout.n_channels)
    model = NeuralForecastModel(
        arch.build(grid, layout), stats, dt, grid, layout, residual=residual, checkpoint=checkpoint, prior=prior
    )
    model.architecture = arch.model_dump(mode="json")
    return model


def checkpoint_dict(model: NeuralForecastModel, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of a model made by :func:`build_forecast_model` (weights copied to the CPU)."""
    if model.grid is None or model.layout is None or model.architecture is None:
        raise DataError("a checkpoint needs the model's architecture, grid and channel layout (use build_forecast_model)")
    arch = model.architecture
    prior = None
    if model.prior is not None:
        prior = {
            "config": model.prior.cfg.model_dump(mode="json"),
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.prior.state_dict().items()},
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()},
        "norm_stats": model.stats.to_dict(),
        "grid": model.grid.to_dict(),
        "layout": model.layout.to_dict(),
        "dt": model.dt,
        "residual": model.residual,
        "linear_prior": prior,
        "metadata": json.loads(json.dumps(metadata or {}, default=str)),
    }


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically."""
    return save_torch_file(path, payload)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint file."""
    return load_torch_file(path, FORMAT, VERSION, "forecast-model checkpoint", "train one with `aivarda train-model`")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _load_weights(module: torch.nn.Module, state: Any, source: str) -> None:
    """``module.load_state_dict(state)``; a missing or misshapen state dict is one DataError line."""
    if not isinstance(state, dict):
        raise DataError(f"{source}: no state_dict of weights")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise DataError(f"{source}: its weights do not fit the model it describes ({_first_line(exc)})") from None


def model_from_checkpoint(
    payload: dict[str, Any], *, checkpoint: bool = False, source: str = "checkpoint"
) -> NeuralForecastModel:
    """Rebuild the model of a checkpoint dict (CPU, eval mode); ``source`` names it in errors."""
    missing = [k for k in ("grid", "layout", "architecture", "norm_stats", "dt", "state_dict") if k not in payload]
    if missing:
        raise DataError(f"{source}: a forecast-model checkpoint without {missing}")
    grid = Grid.from_dict(payload["grid"])
    layout = ChannelLayout.from_dict(payload["layout"])
    model = build_forecast_model(
        payload["architecture"],
        payload["norm_stats"],
        grid,
        layout,
        float(payload["dt"]),
        residual=bool(payload.get("residual", True)),
        checkpoint=checkpoint,
        linear_prior=(payload.get("linear_prior") or {}).get("config"),
    )
    _load_weights(model.net, payload["state_dict"], source)
    if model.prior is not None:
        _load_weights(model.prior, payload["linear_prior"].get("state_dict"), f"{source} (linear_prior)")
    model.metadata = payload.get("metadata", {})
    return model.eval()


def _module_model(cfg: ModelConfig) -> NeuralForecastModel:
    grid = None if cfg.grid is None else Grid.from_dict(cfg.grid)
    layout = None if cfg.layout is None else ChannelLayout.from_dict(cfg.layout)
    arch = {"name": "module", "target": cfg.module, "kwargs": cfg.kwargs}
    net = architecture_config(arch, "model", allow_module=True).build(grid, layout)  # type: ignore[arg-type]
    if cfg.stats is not None:
        if not cfg.stats.is_file():
            raise ConfigError(f"{cfg.stats}: statistics file not found (model.stats)")
        stats = NormStats.load(cfg.stats)
    elif layout is not None:
        stats = identity_stats(layout.names, float(cfg.dt))  # type: ignore[arg-type]
    else:
        raise ConfigError("model: give 'stats' or 'layout' with 'module' (the number of channels is needed)")
    if cfg.checkpoint is not None:
        if not cfg.checkpoint.is_file():
            raise DataError(f"{cfg.checkpoint}: weights not found (model.checkpoint)")
        try:
            state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 — any unreadable file is one user error
            raise DataError(f"{cfg.checkpoint}: not a readable torch file ({_first_line(exc)})") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        _load_weights(net, state, str(cfg.checkpoint))
    return NeuralForecastModel(
        net, stats, float(cfg.dt), grid, layout, residual=cfg.residual, checkpoint=cfg.grad_checkpointing  # type: ignore[arg-type]
    ).eval()


def load_forecast_model(
    source: str | Path | ModelConfig | dict[str, Any], *, trainable: bool = False, device: str | None = None
) -> NeuralForecastModel:
    """A :class:`ForecastModel` from a checkpoint file (``.pt``), a model YAML, a
    :class:`ModelConfig` or its mapping. Parameters are frozen unless ``trainable``
    (gradients with respect to the *state* still flow, as 4DVar needs)."""
    if isinstance(source, (str, Path)) and Path(source).suffix in (".yaml", ".yml"):
        source = load_config(source, ModelConfig)
    elif isinstance(source, dict):
        from aivarda.config import validate

        source = validate(ModelConfig, source, "model")
    if isinstance(source, ModelConfig):
        cfg = source
        if cfg.module is not None:
            model = _module_model(cfg)
        else:
            model = model_from_checkpoint(read_checkpoint(cfg.checkpoint), checkpoint=cfg.grad_checkpointing,  # type: ignore[arg-type]
                                          source=str(cfg.checkpoint))
            if cfg.linear_prior_only:
                if model.prior is None:
                    raise ConfigError(f"linear_prior_only: {cfg.checkpoint} has no linear prior")
                model.linear_prior_only()
        device = device or cfg.device
    else:
        model = model_from_checkpoint(read_checkpoint(source), source=str(source))
    model.requires_grad_(trainable)
    model = model.to(device or "cpu")
    assert isinstance(model, ForecastModel)
    return model
