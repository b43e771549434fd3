"""Background-error covariance as control-variable transforms ``δx = U(z)``, ``B = U Uᵀ``."""

from aivarda.background.registry import (
    BACKGROUNDS,
    TransformConfig,
    TransformContext,
    build_transform,
    parse_transform_config,
    register_transform,
    transform_names,
)
from aivarda.background.transforms import (
    ControlTransform,
    DenseSqrtTransform,
    DiagonalTransform,
    IdentityTransform,
    LinearControlTransform,
    symmetric_sqrt,
)

__all__ = [
    "BACKGROUNDS",
    "ControlTransform",
    "DenseSqrtTransform",
    "DiagonalTransform",
    "IdentityTransform",
    "LinearControlTransform",
    "TransformConfig",
    "TransformContext",
    "build_transform",
    "parse_transform_config",
    "register_transform",
    "symmetric_sqrt",
    "transform_names",
]
