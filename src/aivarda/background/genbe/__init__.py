"""GEN_BE static background error (WRFDA-style): NMC samples, fitting on the sphere, and the
control-variable transform ``U`` (docs/genbe.md)."""

from aivarda.background.genbe.fit import (
    FitSettings,
    GenBeStatistics,
    control_variables,
    fit_genbe,
)
from aivarda.sphere import EARTH_RADIUS, Regrid, SphereOps
from aivarda.background.genbe.transform import GenBeConfig, GenBeTransform

__all__ = [
    "EARTH_RADIUS",
    "FitSettings",
    "GenBeConfig",
    "GenBeStatistics",
    "GenBeTransform",
    "Regrid",
    "SphereOps",
    "control_variables",
    "fit_genbe",
]
