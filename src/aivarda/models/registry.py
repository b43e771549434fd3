"""Registry of network architectures, by name.

An architecture is a :class:`~aivarda.config.StrictModel` holding its hyper-parameters with a
``build(grid, layout) -> nn.Module`` method returning a network ``[B, C, H, W] → [B, C, H, W]`` on
normalised fields (see :mod:`aivarda.models.normalised`). Adding one is one file + one line here.
In YAML an architecture is a mapping with its ``name`` and its hyper-parameters::

    architecture: {name: fengwu, embed_dim: 96, depth: 4, patch_size: 4, window: [4, 8]}
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from torch import nn

from aivarda.channels import ChannelLayout
from aivarda.config import validate
from aivarda.errors import ConfigError
from aivarda.grid import Grid

ARCHITECTURES: dict[str, str] = {
    "fengwu": "aivarda.models.fengwu:FengWuConfig",
    "sfno": "aivarda.models.sfno:SFNOConfig",
    "module": "aivarda.models.wrapper:ModuleConfig",
}


class Architecture(Protocol):
    name: str

    def build(self, grid: Grid, layout: ChannelLayout) -> nn.Module: ...

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...


def _config_class(name: str) -> type:
    module, cls = ARCHITECTURES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def architecture_config(spec: dict[str, Any] | Architecture, source: str = "architecture") -> Architecture:
    """Validate an architecture mapping (``{"name": ..., **hyper-parameters}``)."""
    if not isinstance(spec, dict):
        return spec
    name = spec.get("name")
    if name not in ARCHITECTURES:
        raise ConfigError(f"{source}.name: unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return validate(_config_class(name), dict(spec), source)

