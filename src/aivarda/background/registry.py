"""Registry of background-error control transforms, selectable from YAML.

A configuration section ``background_error: {type: <name>, ...}`` is validated against the
config model registered under ``<name>`` and built into a :class:`ControlTransform` by the
registered builder. A new transform (GEN_BE, ensemble, hybrid, VAE, ...) is one module that
decorates its builder with :func:`register_transform`, plus its module name in ``_PLUGIN_MODULES``.

Builders receive a :class:`TransformContext`: the state shape, dtype, and named statistics
computed elsewhere (``"std"``: per-channel background-error std ``[C]``; ``"covariance"``: a dense
``B`` ``[n, n]``), used when the config does not give the numbers itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from aivarda.background.transforms import (
    ControlTransform,
    DenseSqrtTransform,
    DiagonalTransform,
    IdentityTransform,
)
from aivarda.config import StrictModel
from aivarda.errors import ConfigError

# Modules whose import registers further transforms (one line per new transform module).
_PLUGIN_MODULES: tuple[str, ...] = ("aivarda.background.genbe.transform",)


class TransformConfig(StrictModel):
    """Base of every ``background_error`` section; ``type`` names the registered transform."""

    type: str


@dataclass(frozen=True)
class TransformContext:
    """What a builder may need besides its config."""

    state_shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    statistics: Mapping[str, Tensor] = field(default_factory=dict)


Builder = Callable[[Any, TransformContext], ControlTransform]


@dataclass(frozen=True)
class _Entry:
    config: type[TransformConfig]
    build: Builder


_REGISTRY: dict[str, _Entry] = {}


def register_transform(name: str, config: type[TransformConfig]) -> Callable[[Builder], Builder]:
    """Decorator: register ``build(config, context) -> ControlTransform`` under ``name``."""

    def deco(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"background transform {name!r} is already registered")
        _REGISTRY[name] = _Entry(config, build)
        return build

    return deco


def _entries() -> dict[str, _Entry]:
    for module in _PLUGIN_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def transform_names() -> list[str]:
    """Names accepted as ``background_error.type``."""
    return sorted(_entries())


def parse_transform_config(data: Any) -> TransformConfig:
    """Validate a ``background_error`` mapping against the model registered for its ``type``."""
    if isinstance(data, TransformConfig):
        return data
    if not isinstance(data, Mapping) or "type" not in data:
        raise ValueError(f"expected a mapping with a 'type' key (one of {transform_names()})")
    entries = _entries()
    name = data["type"]
    if name not in entries:
        raise ValueError(f"unknown background_error type {name!r}; expected one of {transform_names()}")
    return entries[name].config.model_validate(dict(data))


def build_transform(config: TransformConfig | Mapping[str, Any], context: TransformContext) -> ControlTransform:
    """Build the transform a config names."""
    cfg = parse_transform_config(config)
    return _entries()[cfg.type].build(cfg, context)


def _statistic(context: TransformContext, key: str, section: str) -> Tensor:
    if key not in context.statistics:
        raise ConfigError(f"background_error: type {section} needs '{key}' in the config or precomputed statistics")
    return torch.as_tensor(context.statistics[key], dtype=context.dtype)


def _load_matrix(path: Path, dtype: torch.dtype) -> Tensor:
    if not path.is_file():
        raise ConfigError(f"background_error.covariance: file not found: {path}")
    if path.suffix not in (".npy", ".pt", ".pth"):
        raise ConfigError(f"background_error.covariance: expected a .npy or .pt file, got {path}")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        else:  # tensors only: never unpickle code from a data file
            data = torch.load(path, map_location="cpu", weights_only=True)
        matrix = torch.as_tensor(data, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 — any unreadable file is one user error
        raise ConfigError(
            f"background_error.covariance: {path}: not a readable matrix ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or not bool(torch.isfinite(matrix).all()):
        raise ConfigError(f"background_error.covariance: {path}: expected a finite square matrix, got shape {list(matrix.shape)}")
    return matrix


class IdentityConfig(TransformConfig):
    """``B = I``."""

    type: Literal["identity"] = "identity"


class DiagonalConfig(TransformConfig):
    """``B = diag((scale·σ)²)``; ``σ`` per channel (or one value); default: statistics ``"std"``."""

    type: Literal["diagonal"] = "diagonal"
    std: float | list[float] | None = Field(default=None, description="per-channel std; default: statistics['std']")
    scale: float = Field(default=1.0, gt=0)


class DenseConfig(TransformConfig):
    """``B = scale · C`` with ``C`` from a ``.npy``/``.pt`` file or statistics ``"covariance"``."""

    type: Literal["dense"] = "dense"
    covariance: Path | None = None
    scale: float = Field(default=1.0, gt=0)
    method: Literal["symmetric", "cholesky"] = "symmetric"


@register_transform("identity", IdentityConfig)
def _build_identity(cfg: IdentityConfig, context: TransformContext) -> ControlTransform:
    return IdentityTransform(context.state_shape)


@register_transform("diagonal", DiagonalConfig)
def _build_diagonal(cfg: DiagonalConfig, context: TransformContext) -> ControlTransform:
    if cfg.std is None:
        std = _statistic(context, "std", "diagonal")
    else:
        std = torch.as_tensor(cfg.std, dtype=context.dtype)
        if std.ndim == 0:
            std = std.expand(context.state_shape[0]).clone()
    return DiagonalTransform(cfg.scale * std, context.state_shape)


@register_transform("dense", DenseConfig)
def _build_dense(cfg: DenseConfig, context: TransformContext) -> ControlTransform:
    if cfg.covariance is None:
        cov = _statistic(context, "covariance", "dense")
    else:
        cov = _load_matrix(cfg.covariance, context.dtype)
    return DenseSqrtTransform(cfg.scale * cov, context.state_shape, cfg.method)
