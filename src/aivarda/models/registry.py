"""Registry of forecast-network architectures, by name (``aivarda.models`` entry points).

An architecture is a :class:`~aivarda.config.StrictModel` holding its hyper-parameters with a
``build(grid, layout) -> nn.Module`` method returning a network ``[B, C, H, W] → [B, C, H, W]`` on
normalised fields (see :mod:`aivarda.models.normalised`). Adding one is one module that registers
its config (``ARCHITECTURES.register("fengwu", FengWuConfig)(FengWuConfig.build)``) plus one entry
point. In YAML an architecture is a mapping with its ``name`` and its hyper-parameters::

    architecture: {name: fengwu, embed_dim: 96, depth: 4, patch_size: 4, window: [4, 8]}

``name: module`` (any ``torch.nn.Module`` by import path, :mod:`aivarda.models.wrapper`) is not a
registered architecture: it imports code, so it is accepted only from a user's own config
(``allow_module=True``: a training config or ``model: {module: ...}``), never from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from aivarda.channels import ChannelLayout
from aivarda.config import validate
from aivarda.errors import ConfigError
from aivarda.grid import Grid
from aivarda.registry import Registry

ArchitectureBuilder = Callable[[Any, Grid, ChannelLayout], nn.Module]
ARCHITECTURES: Registry[ArchitectureBuilder] = Registry("architecture", "aivarda.models", key="name")


class Architecture(Protocol):
    name: str

    def build(self, grid: Grid, layout: ChannelLayout) -> nn.Module: ...

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...


def architecture_config(
    spec: dict[str, Any] | Architecture, source: str = "architecture", *, allow_module: bool = False
) -> Architecture:
    """Validate an architecture mapping (``{"name": ..., **hyper-parameters}``).

    ``allow_module`` admits ``name: module`` (code named by import path); only a user's own config
    may pass it, so a checkpoint file can never make aivarda import and call arbitrary code.
    """
    if not isinstance(spec, dict):
        if getattr(spec, "name", None) == "module" and not allow_module:
            raise ConfigError(f"{source}.name: 'module' architectures are only accepted from your own config")
        return spec
    name = spec.get("name")
    if name == "module":
        if not allow_module:
            raise ConfigError(
                f"{source}.name: 'module' (code by import path) is not accepted here; a checkpoint may only "
                f"name a registered architecture ({ARCHITECTURES.names()}). To load such weights, name the "
                f"class in your own config: model: {{module: 'pkg.mod:Class', checkpoint: FILE, dt: ...}}"
            )
        from aivarda.models.wrapper import ModuleConfig

        return validate(ModuleConfig, dict(spec), source)
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ConfigError(f"{source}.name: unknown architecture {name!r}; expected one of {ARCHITECTURES.names()}")
    return validate(ARCHITECTURES.entry(name).config, dict(spec), source)
