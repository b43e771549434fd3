"""Any ``torch.nn.Module`` as a forecast network, by import path.

``model: {module: "pkg.mod:Class", kwargs: {...}}`` (or ``architecture: {name: module, ...}`` in a
training config) builds ``pkg.mod.Class(**kwargs)``. ``Class`` must be a ``torch.nn.Module``
subclass, checked before it is called; only a user's own config may name one, never a checkpoint
(:func:`aivarda.models.registry.architecture_config`). The module must map ``[B, C, H, W] → [B, C, H, W]`` on normalised
fields (it becomes the ``f`` of :mod:`aivarda.models.normalised`; with identity statistics it sees
physical units). Its weights come from a checkpoint like every other architecture's.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal

from pydantic import Field, field_validator
from torch import nn

from aivarda.channels import ChannelLayout
from aivarda.config import StrictModel
from aivarda.errors import ConfigError
from aivarda.grid import Grid

_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def import_object(target: str) -> Any:
    """``"pkg.mod:Name"`` (``Name`` may be dotted) → the object."""
    if not _TARGET.match(target):
        raise ConfigError(f"architecture.target: expected 'package.module:Class', got {target!r}")
    module_name, attr = target.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"architecture.target: cannot import module {module_name!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"architecture.target: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


class ModuleConfig(StrictModel):
    """A network given by import path and keyword arguments."""

    name: Literal["module"] = "module"
    target: str = Field(description="'package.module:Class' of a torch.nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not _TARGET.match(v):
            raise ValueError("expected 'package.module:Class'")
        return v

    def build(self, grid: Grid, layout: ChannelLayout) -> nn.Module:
        cls = import_object(self.target)
        # Check what the name points at before calling anything: only a torch.nn.Module subclass.
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ConfigError(
                f"architecture.target: {self.target} is not a torch.nn.Module subclass ({type(cls).__name__})"
            )
        try:
            net = cls(**self.kwargs)
        except TypeError as exc:
            raise ConfigError(f"architecture.kwargs: {self.target}: {exc}") from None
        if not isinstance(net, nn.Module):
            raise ConfigError(f"architecture.target: {self.target} did not build a torch.nn.Module")
        return net
