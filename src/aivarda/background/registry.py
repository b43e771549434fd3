"""Registry of background-error models (control transforms), selectable from YAML.

A configuration section ``background_error: {type: <name>, ...}`` is validated against the
config model registered under ``<name>`` in :data:`BACKGROUNDS` and built into a
:class:`ControlTransform` by the registered builder ``build(config, context)``. A new B (GEN_BE,
ensemble, hybrid, VAE, ...) is one module that decorates its builder with
``@BACKGROUNDS.register(name, Config)`` (or :func:`register_transform`), named by an
``aivarda.background`` entry point (see :mod:`aivarda.registry`).

Builders receive a :class:`TransformContext`: the state shape and dtype, the geometry when the
state lies on the sphere, and the statistics the driver computed (``error_std``: per-channel
background-error std ``[C]``), used when the config does not give the numbers itself.

A B declares what it needs by attributes of its config: ``needs_ensemble = True`` (a class
attribute, or a property when it depends on the settings, e.g. ``type: vae`` with
``finetune.mode``) makes the driver pass the ensemble members every cycle
(``transform.update(members)``, through the method's
:meth:`~aivarda.assimilation.methods.Method.update_background_error`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

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
from aivarda.geometry import Geometry
from aivarda.registry import Registry


class TransformConfig(StrictModel):
    """Base of every ``background_error`` section; ``type`` names the registered transform."""

    type: str
    needs_ensemble: ClassVar[bool] = False
    """True: the driver updates the built transform with the ensemble members every cycle."""


@dataclass(frozen=True)
class TransformContext:
    """What a builder may need besides its config: the state shape and dtype, the geometry of a
    state on the sphere, the per-channel background-error std ``[C]`` the driver computed, the
    ensemble members when they are known at build time."""

    state_shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    geometry: Geometry | None = None
    error_std: Tensor | None = None
    ensemble: Tensor | None = None
    """Members ``[K, *S]`` (or trajectories ``[K, T, *S]``) known when the B is built; a B that
    needs the ensemble every cycle gets it through ``update(members)``."""

    def require_error_std(self, section: str) -> Tensor:
        if self.error_std is None:
            raise ConfigError(f"background_error: type {section} needs 'std' in the config or the background-error std of the data")
        return torch.as_tensor(self.error_std, dtype=self.dtype)


Builder = Callable[[Any, TransformContext], ControlTransform]
BACKGROUNDS: Registry[Builder] = Registry("background_error type", "aivarda.background", key="type")
"""Background-error model name → (config model, builder ``(config, context) -> ControlTransform``)."""

register_transform = BACKGROUNDS.register


def transform_names() -> list[str]:
    """Names accepted as ``background_error.type``."""
    return BACKGROUNDS.names()


def parse_transform_config(data: Any) -> TransformConfig:
    """Validate a ``background_error`` mapping against the model registered for its ``type``
    (errors as ValueError, so an enclosing config names its file and key)."""
    try:
        return BACKGROUNDS.parse(data)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def build_transform(config: TransformConfig | Mapping[str, Any], context: TransformContext) -> ControlTransform:
    """Build the transform a config names."""
    cfg = BACKGROUNDS.parse(config, "background_error")
    return BACKGROUNDS.builder(cfg.type)(cfg, context)


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
    """``B = diag((scale·σ)²)``; ``σ`` per channel (or one value); default: the data's background-error std."""

    type: Literal["diagonal"] = "diagonal"
    std: float | list[float] | None = Field(default=None, description="per-channel std; default: the data's background-error std")
    scale: float = Field(default=1.0, gt=0)


class DenseConfig(TransformConfig):
    """``B = scale · C`` with ``C`` from a ``.npy``/``.pt`` file (tensors only) or given as a matrix."""

    type: Literal["dense"] = "dense"
    covariance: Path | list[list[float]]
    scale: float = Field(default=1.0, gt=0)
    method: Literal["symmetric", "cholesky"] = "symmetric"


@register_transform("identity", IdentityConfig)
def _build_identity(cfg: IdentityConfig, context: TransformContext) -> ControlTransform:
    return IdentityTransform(context.state_shape)


@register_transform("diagonal", DiagonalConfig)
def _build_diagonal(cfg: DiagonalConfig, context: TransformContext) -> ControlTransform:
    if cfg.std is None:
        std = context.require_error_std("diagonal")
    else:
        std = torch.as_tensor(cfg.std, dtype=context.dtype)
        if std.ndim == 0:
            std = std.expand(context.state_shape[0]).clone()
    return DiagonalTransform(cfg.scale * std, context.state_shape)


@register_transform("dense", DenseConfig)
def _build_dense(cfg: DenseConfig, context: TransformContext) -> ControlTransform:
    if isinstance(cfg.covariance, Path):
        cov = _load_matrix(cfg.covariance, context.dtype)
    else:
        cov = torch.as_tensor(cfg.covariance, dtype=context.dtype)
    return DenseSqrtTransform(cfg.scale * cov, context.state_shape, cfg.method)
