"""Observations: the ObsSet container, observation operators H, simulation (OSSE), QC and file I/O
(IODA v3, WMO BUFR TEMP/SYNOP, prepbufr-style Parquet/CSV through one ObsTable; docs/observation-files.md).

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
from aivarda.observations.io import load_obs, read_observations, read_table, save_obs
from aivarda.observations.ioda import read_ioda, write_ioda
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
from aivarda.observations.table import ObsTable, decode_station_ids, encode_station_ids

__all__ = [
    "DEFAULT_GROSS_LIMITS",
    "BilinearOperator",
    "ComposedOperator",
    "GridPointOperator",
    "LinearObservationOperator",
    "LogPressureInterpolation",
    "ObsSet",
    "ObsTable",
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
    "decode_station_ids",
    "encode_station_ids",
    "gross_check",
    "load_obs",
    "quality_control",
    "read_ioda",
    "read_observations",
    "read_table",
    "save_obs",
    "write_ioda",
]
