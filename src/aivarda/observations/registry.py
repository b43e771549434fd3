"""Registry of observation operators, selectable from YAML (``aivarda.operators`` entry points).

``observations: {operator: {type: <name>, ...}}`` is validated against the config registered
under ``<name>`` in :data:`OPERATORS`; its builder ``build(config, observations, geometry,
state_shape)`` returns the operator ``H: [T, C, H, W] → [N]`` (with its adjoint) of the given
(validated) observations. The default, ``interpolation``, is :func:`~aivarda.observations.operators.build_operator`:
grid-point values, bilinear interpolation off the grid, log-pressure interpolation between levels.
A new operator (a radiance model, a station operator with height correction) is one module that
registers its config and builder, named by an ``aivarda.operators`` entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from aivarda.config import StrictModel
from aivarda.errors import ConfigError
from aivarda.geometry import Geometry
from aivarda.observations.obsset import ObsSet
from aivarda.observations.operators import LinearObservationOperator, build_operator
from aivarda.registry import Registry


class OperatorConfig(StrictModel):
    """Base of every ``observations.operator`` section; ``type`` names the registered operator."""

    type: str


OperatorBuilder = Callable[[Any, ObsSet, Geometry, Sequence[int]], LinearObservationOperator]
OPERATORS: Registry[OperatorBuilder] = Registry("observation operator", "aivarda.operators", key="type")
"""Operator name → (config model, builder ``(config, obs, geometry, state_shape) -> operator``)."""


def parse_operator_config(data: Any) -> OperatorConfig:
    """Validate an ``operator`` section (errors as ValueError, so the enclosing config names its file)."""
    try:
        return OPERATORS.parse(data)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def observation_operator(
    config: OperatorConfig, obs: ObsSet, geometry: Geometry, state_shape: Sequence[int]
) -> LinearObservationOperator:
    """The operator ``config`` names, for ``obs`` and states (or windows) of ``state_shape``."""
    return OPERATORS.builder(config.type)(config, obs, geometry, state_shape)


class InterpolationConfig(OperatorConfig):
    """Grid-point / bilinear / log-pressure interpolation of the model state."""

    type: Literal["interpolation"] = "interpolation"


@OPERATORS.register("interpolation", InterpolationConfig)
def _build_interpolation(
    cfg: InterpolationConfig, obs: ObsSet, geometry: Geometry, state_shape: Sequence[int]
) -> LinearObservationOperator:
    return build_operator(obs, geometry.grid, geometry.layout, state_shape)
