"""Spherical Fourier Neural Operator (Bonev et al. 2023) from torch-harmonics.

The network ``[B, C, H, W] → [B, C, H, W]`` is torch-harmonics' example SFNO with ``C`` input and
output channels on the state grid: the spherical-harmonic transforms use the grid's quadrature
(``Grid.sht_grid``: Gaussian → ``"legendre-gauss"``, equiangular → ``"equiangular"``), the
internal grid is Legendre–Gauss, ``scale_factor`` sets the internal down-sampling. Tested with
torch-harmonics 0.9.2 and 0.9.3 (both ship it as
``torch_harmonics.examples.models.SphericalFourierNeuralOperator``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Literal

from pydantic import Field
from torch import nn

from aivarda.channels import ChannelLayout
from aivarda.config import StrictModel
from aivarda.errors import ConfigError
from aivarda.grid import Grid
from aivarda.models.registry import ARCHITECTURES

_SFNO_CLASSES = (
    "torch_harmonics.examples.models:SphericalFourierNeuralOperator",  # 0.9.x
    "torch_harmonics.examples.sfno:SphericalFourierNeuralOperatorNet",  # ≤ 0.7
)


def sfno_class() -> type[nn.Module]:
    """The SFNO class of the installed torch-harmonics."""
    for target in _SFNO_CLASSES:
        module, name = target.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ConfigError("architecture sfno: this torch-harmonics has no SFNO example model (install torch-harmonics>=0.9.2,<0.10)")


class SFNOConfig(StrictModel):
    """Hyper-parameters of the SFNO (``architecture: {name: sfno, ...}``); ``extra`` passes any
    other keyword of the torch-harmonics class through."""

    name: Literal["sfno"] = "sfno"
    embed_dim: int = Field(64, ge=1)
    num_layers: int = Field(4, ge=1)
    scale_factor: int = Field(1, ge=1, description="internal down-sampling of the grid")
    mlp_ratio: float = Field(2.0, gt=0)
    normalization_layer: Literal["none", "layer_norm", "instance_norm"] = "none"
    hard_thresholding_fraction: float = Field(1.0, gt=0, le=1)
    extra: dict[str, Any] = Field(default_factory=dict)

    def build(self, grid: Grid, layout: ChannelLayout) -> nn.Module:
        cls = sfno_class()
        kwargs: dict[str, Any] = {
            "img_size": grid.shape,
            "grid": grid.sht_grid,
            "grid_internal": "legendre-gauss",
            "in_chans": layout.n_channels,
            "out_chans": layout.n_channels,
            "embed_dim": self.embed_dim,
            "num_layers": self.num_layers,
            "scale_factor": self.scale_factor,
            "mlp_ratio": self.mlp_ratio,
            "normalization_layer": self.normalization_layer,
            "hard_thresholding_fraction": self.hard_thresholding_fraction,
            **self.extra,
        }
        accepted = inspect.signature(cls.__init__).parameters
        unknown = sorted(k for k in self.extra if k not in accepted)
        if unknown:
            raise ConfigError(f"architecture.extra: {cls.__name__} has no argument(s) {unknown}")
        return cls(**{k: v for k, v in kwargs.items() if k in accepted})


ARCHITECTURES.register("sfno", SFNOConfig)(SFNOConfig.build)
