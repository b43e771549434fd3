"""One registry mechanism for every pluggable component (OOPS's factories, with validation).

A component kind — assimilation methods, background-error models, forecast-network
architectures, observation operators — owns one :class:`Registry`. An entry binds a YAML name to
its own strict config model (a :class:`~aivarda.config.StrictModel` subclass) and a builder::

    METHODS = Registry("assimilation method", "aivarda.methods", key="method")

    @METHODS.register("3dvar", ThreeDVarConfig)
    def _build(cfg: ThreeDVarConfig) -> Method: ...

``parse(mapping)`` validates a YAML section against the config model registered under its
``key`` (``type``, ``method`` or ``name``) and ``builder(name)`` returns the builder; what a
builder receives is the registry's own business (documented where each registry is defined).

Where entries come from: a module registers its entries when it is imported. The modules are
found through Python entry points — the group named by the registry (``aivarda.methods``,
``aivarda.background``, ``aivarda.models``, ``aivarda.operators``), each entry point naming a
module. aivarda's own components are declared that way in ``pyproject.toml``, and another
package adds one the same way in its own metadata::

    [project.entry-points."aivarda.background"]
    my_b = "my_package.my_b"        # importing my_package.my_b registers its B

A test or a script can also register directly (import the registry and decorate).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from aivarda.config import StrictModel, format_validation_error
from aivarda.errors import ConfigError

B = TypeVar("B", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[B]):
    """One registered component: its name, its config model and its builder."""

    name: str
    config: type[StrictModel]
    build: B


class Registry(Generic[B]):
    """Name → (validated config model, builder) for one component kind; see the module docstring."""

    def __init__(self, kind: str, group: str, *, key: str = "type") -> None:
        self.kind = kind
        self.group = group
        self.key = key
        self._entries: dict[str, Entry[B]] = {}
        self._plugins_loaded = False

    # ------------------------------------------------------------------ registration
    def register(self, name: str, config: type[StrictModel]) -> Callable[[B], B]:
        """Decorator: register ``builder`` under ``name`` with its config model ``config``."""
        if not name or not isinstance(name, str):
            raise ValueError(f"{self.kind}: a registered name must be a non-empty string, got {name!r}")

        def deco(build: B) -> B:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, config, build)
            return build

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy component clean up with this)."""
        self._entries.pop(name, None)

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            try:
                importlib.import_module(ep.value.split(":")[0])
            except Exception as exc:  # noqa: BLE001 — a broken plug-in names itself, once
                self._plugins_loaded = False
                raise ConfigError(
                    f"entry point {ep.name!r} of group {self.group!r} ({ep.value}) failed to import: "
                    f"{type(exc).__name__}: {exc}"
                ) from None

    # ------------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        """Every registered name (plug-ins included)."""
        self._load_plugins()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def entry(self, name: str, source: str | None = None) -> Entry[B]:
        """The entry of ``name``; an unknown name is one ConfigError line naming the key."""
        self._load_plugins()
        if name not in self._entries:
            where = f"{source}: " if source else ""
            raise ConfigError(f"{where}{self.key}: unknown {self.kind} {name!r}; expected one of {self.names()}")
        return self._entries[name]

    def builder(self, name: str) -> B:
        return self.entry(name).build

    def parse(self, data: Any, source: str | None = None) -> Any:
        """Validate a mapping ``{key: name, ...}`` against the config model of ``name``; an
        already-validated config passes through. Errors are one ConfigError line (``source``
        prefixes it, e.g. ``exp.yaml: assimilation``)."""
        if isinstance(data, StrictModel) and getattr(data, self.key, None) in self._entries:
            return data
        if not isinstance(data, Mapping) or self.key not in data:
            where = f"{source}: " if source else ""
            raise ConfigError(f"{where}expected a mapping with a {self.key!r} key (one of {self.names()})")
        entry = self.entry(str(data[self.key]), source)
        try:
            return entry.config.model_validate(dict(data))
        except ValidationError as err:
            raise ConfigError(format_validation_error(source or self.kind, err)) from None
