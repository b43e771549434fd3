"""Observations: the ObsSet container, observation operators H, simulation (OSSE), QC and file I/O.

``build_operator(obs, grid, layout, state_shape)`` gives the differentiable ``H: [T, C, H, W] → [N]``
used both to simulate observations and in the variational cost. A cycle uses them as::

    sim = ObservationSimulator(ObservationConfig(), grid, layout, clim_std, seed=0)
    obs = sim.simulate(truth_window, window_offsets_hours=[0.0], cycle=k)        # [T=1, C, H, W]
    obs = quality_control(obs, grid, layout, cfg.qc, background=x_b_window, background_std=sigma_b)
    used = obs.active()                                     # QC good and not withheld
    H = build_operator(used, grid, layout, x_b_window.shape)
    J_o = 0.5 * (((H(x_window) - used.value) / used.error_std) ** 2).sum()
"""

from aivarda.observations.config import (
    DEFAULT_GROSS_LIMITS,
    ObservationConfig,
    QCConfig,
)
from aivarda.observations.io import load_obs, save_obs
from aivarda.observations.obsset import ObsSet, QCFlag
from aivarda.observations.operators import (
    BilinearOperator,
    ComposedOperator,
    GridPointOperator,
    LinearObservationOperator,
    LogPressureInterpolation,
    ObservationOperator,
    StackedOperator,
    StencilOperator,
    bilinear_stencil,
    build_operator,
)
from aivarda.observations.qc import (
    background_check,
    channel_std_at_obs,
    gross_check,
    quality_control,
)
from aivarda.observations.simulator import ObservationSimulator

__all__ = [
    "DEFAULT_GROSS_LIMITS",
    "BilinearOperator",
    "ComposedOperator",
    "GridPointOperator",
    "LinearObservationOperator",
    "LogPressureInterpolation",
    "ObsSet",
    "ObservationConfig",
    "ObservationOperator",
    "ObservationSimulator",
    "QCConfig",
    "QCFlag",
    "StackedOperator",
    "StencilOperator",
    "background_check",
    "bilinear_stencil",
    "build_operator",
    "channel_std_at_obs",
    "gross_check",
    "load_obs",
    "quality_control",
    "save_obs",
]
