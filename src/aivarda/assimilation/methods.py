"""Assimilation methods, selectable by name from YAML: each owns its window and declares its needs.

A method is a :class:`Method` built from its own strict config (a subclass of
:class:`AssimilationConfig`, the ``assimilation:`` section, chosen by its ``method:`` key) through
the :data:`METHODS` registry. Drivers (the cycling runner, ``aivarda assimilate``) never branch on
a method's name; they ask the method:

- :attr:`Method.needs` — a window model (a forecast model stepping through the window) and/or the
  ensemble members valid at the analysis time;
- :meth:`Method.window` — the window (observation times, model steps between them);
- :meth:`Method.background_window` — the background trajectory the observations are checked
  against (QC, O−B);
- :meth:`Method.update_background_error` — the per-cycle update of B from the ensemble, for a B
  that declares it needs one;
- :meth:`Method.analyse` — the analysis;
- :meth:`Method.analysis_members` — the analysis members of a method that cycles its own ensemble
  (``needs.ensemble_source == "own"``), when its analysis does not give them itself.

Built-in methods: ``none`` (free run, ``x_a = x_b``), ``3dvar`` (``T = 1``), ``3dvar-fgat``
(3DVar at the first guess at appropriate time: the observations of a ``T``-time window against
the background trajectory of the window model, the increment constant in time) and ``4dvar``
(strong constraint: the increment at the window start stepped through the window by the model).
The background-error model is chosen independently (``background_error: {type: ...}``), so e.g.
VAE-3DVar is ``method: 3dvar`` with ``background_error: {type: vae}``.

A new method is one class (and its config) registered with ``@METHODS.register(name, Config)``
in a module named by an ``aivarda.methods`` entry point (see :mod:`aivarda.registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, SerializeAsAny, field_validator
from torch import Tensor

from aivarda.assimilation.cost import VariationalCost
from aivarda.assimilation.incremental import multi_incremental
from aivarda.assimilation.letkf_ensemble import LETKFEnsemble, LETKFEnsembleOption
from aivarda.assimilation.minimizer import AnalysisResult, Minimizer
from aivarda.assimilation.problem import AnalysisProblem, Needs
from aivarda.assimilation.window import BackgroundTrajectory, ModelPropagation, Propagation, Window
from aivarda.background.registry import IdentityConfig, TransformConfig, parse_transform_config
from aivarda.background.transforms import EnsembleTransform
from aivarda.config import PositiveDuration, StrictModel
from aivarda.errors import AivardaError, ConfigError
from aivarda.models.base import ForecastModel, HasLinearPart, trajectory
from aivarda.registry import Registry
from aivarda.timeaxis import steps_between, to_timedelta64


class AssimilationConfig(StrictModel):
    """The ``assimilation`` section: what every method shares. Each method's config subclasses it
    with its own ``method`` literal and its own knobs."""

    method: str = Field(description="registered method: none, 3dvar, 3dvar-fgat, 4dvar, ...")
    bg_lamb: float = Field(default=1.0, gt=0, description="λ: the observation term is weighted by 1/λ")
    outer_loops: int = Field(default=4, ge=1)
    inner_iterations: int = Field(default=5, ge=1)
    history_size: int = Field(default=10, ge=1)
    tolerance: float = Field(default=1e-5, ge=0, description="stop when ‖∇J‖ ≤ tolerance·‖∇J(0)‖")
    j_tolerance: float = Field(default=1e-12, ge=0, description="stop when |ΔJ| ≤ j_tolerance·|J|")
    algorithm: Literal["lbfgs", "gauss_newton"] = Field(
        default="lbfgs",
        description="lbfgs: outer × inner L-BFGS; gauss_newton: exact solve of each linearisation (small controls)",
    )
    background_error: SerializeAsAny[TransformConfig] = Field(default_factory=IdentityConfig)

    @field_validator("background_error", mode="before")
    @classmethod
    def _transform(cls, v: Any) -> TransformConfig:
        return parse_transform_config(v)

    def minimizer(self, progress: bool = False) -> Minimizer:
        return Minimizer(
            outer_loops=self.outer_loops,
            inner_iterations=self.inner_iterations,
            history_size=self.history_size,
            tolerance=self.tolerance,
            j_tolerance=self.j_tolerance,
            progress=progress,
            algorithm=self.algorithm,
        )


class WindowConfig(AssimilationConfig):
    """A method whose observations span ``da_win`` window times ``window_interval`` apart."""

    da_win: int = Field(default=6, ge=2, description="window times T (observation times t_0 … t_0 + (T−1)·interval)")
    window_interval: PositiveDuration = Field(default=timedelta(hours=1), description="spacing of the window times")
    flow_error: float = Field(
        default=0.0, ge=0, description="model-error std per window time in units of σ_o: σ_t² = σ_o²·(1 + (flow_error·t)²)"
    )


class Method:
    """Base of every method: a 3D window, no model, no ensemble, analysis by minimising
    :class:`VariationalCost` with the method's :meth:`propagation`. Subclasses override what
    differs."""

    needs: ClassVar[Needs] = Needs()

    def __init__(self, config: AssimilationConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.method

    # ------------------------------------------------------------------ window
    def window_offsets(self) -> np.ndarray:
        """``[T]`` offsets of the observation times from the analysis time."""
        return np.zeros(1, dtype="timedelta64[s]")

    def window(self, start: np.datetime64, model: ForecastModel | None = None) -> Window:
        """The window at ``start``; a method that needs a window model gets the model steps
        between its times (a ConfigError when the spacing is not a whole number of steps)."""
        offsets = self.window_offsets()
        steps: tuple[int, ...] = ()
        if self.needs.window_model:
            if model is None:
                raise ConfigError(f"assimilation.method {self.name}: needs a window model")
            steps = tuple(
                steps_between(b - a, model.dt, "assimilation.window_interval") for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            )
        return Window(start, offsets, steps)

    def background_window(self, background: Tensor, window: Window, model: ForecastModel | None) -> Tensor:
        """The background trajectory ``[T, *S]`` the observations of the window are compared with."""
        if window.steps and model is not None:
            with torch.no_grad():
                return trajectory(model, background, window.steps)
        return background[None]

    # ------------------------------------------------------------------ B
    def update_background_error(self, transform: EnsembleTransform, members: Tensor, window: Window,
                                model: ForecastModel | None) -> None:
        """The per-cycle update of a B that declares it needs the ensemble: ``members [K, *S]``
        valid at the analysis time (a 4D ensemble method would pass their window trajectories)."""
        transform.update(members)

    # ------------------------------------------------------------------ analysis
    def propagation(self, problem: AnalysisProblem) -> Propagation:
        """How the increment is carried through the window inside the cost."""
        return BackgroundTrajectory(problem.background_window)

    def cost(self, problem: AnalysisProblem) -> VariationalCost:
        return VariationalCost(
            problem.background,
            problem.transform,
            problem.operator,
            problem.observations,
            propagation=self.propagation(problem),
            bg_lamb=self.config.bg_lamb,
            flow_error=self.flow_error,
        )

    @property
    def flow_error(self) -> float:
        """Model-error inflation of ``R`` per window time (see :mod:`aivarda.assimilation.cost`)."""
        return 0.0

    def analyse(self, problem: AnalysisProblem) -> AnalysisResult:
        return self.config.minimizer(problem.progress).minimize(self.cost(problem))

    def analysis_members(self, problem: AnalysisProblem, result: AnalysisResult) -> Tensor | None:
        """Analysis members ``[K, *S]`` to cycle when ``result`` has none (``None``: no ensemble of
        the method's own; :class:`~aivarda.assimilation.letkf_ensemble.LETKFEnsemble` gives them)."""
        return None

    def analysis_window(self, problem: AnalysisProblem, result: AnalysisResult) -> Tensor:
        """The analysis trajectory ``[T, *S]`` (O−A)."""
        return self.propagation(problem).analysis_window(result.x_a.detach(), problem.background)


METHODS: Registry[Callable[[Any], Method]] = Registry("assimilation method", "aivarda.methods", key="method")
"""Method name → (config model, builder ``config -> Method``)."""


def parse_method_config(data: Any, source: str | None = None) -> AssimilationConfig:
    """Validate an ``assimilation`` section against the config of its ``method``."""
    return METHODS.parse(data, source)


def build_method(config: AssimilationConfig | dict[str, Any]) -> Method:
    """The method a config names."""
    cfg = parse_method_config(config)
    return METHODS.builder(cfg.method)(cfg)


def method_names() -> list[str]:
    return METHODS.names()


def assimilation_field(v: Any) -> AssimilationConfig:
    """Pydantic ``before`` validator body for an ``assimilation`` field (errors as ValueError so the
    enclosing config names the file and key)."""
    try:
        return parse_method_config(v)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


AssimilationSection = SerializeAsAny[AssimilationConfig]
"""The type of an ``assimilation`` field (dumps the method's own fields)."""


# ---------------------------------------------------------------------- built-in methods
class NoDAConfig(AssimilationConfig):
    method: Literal["none"] = "none"


class ThreeDVarConfig(AssimilationConfig):
    method: Literal["3dvar"] = "3dvar"


class FGATConfig(WindowConfig):
    method: Literal["3dvar-fgat"] = "3dvar-fgat"


class FourDVarConfig(WindowConfig, LETKFEnsembleOption):
    method: Literal["4dvar"] = "4dvar"
    checkpointing: bool = Field(default=True, description="gradient checkpointing per model step")
    inner_model: Literal["window", "linear_prior"] = Field(
        default="window",
        description="model of the inner loops: 'window' (the window model in every iteration; outer loops "
        "restart L-BFGS) or 'linear_prior' (multi-incremental: outer loops run the full window model, "
        "inner loops its fitted linear part; aivarda.assimilation.incremental)",
    )


@METHODS.register("none", NoDAConfig)
class NoDA(Method):
    """Free run: ``x_a = x_b``."""

    def analyse(self, problem: AnalysisProblem) -> AnalysisResult:
        x_b = problem.background
        z = torch.zeros(tuple(problem.transform.latent_shape), dtype=x_b.dtype, device=x_b.device)
        return AnalysisResult(x_b.clone(), z, torch.zeros_like(x_b), [], True, False)


@METHODS.register("3dvar", ThreeDVarConfig)
class ThreeDVar(Method):
    """3DVar: one window time, no model in the cost."""


class _WindowMethod(Method):
    """Observations at ``da_win`` times ``window_interval`` apart, with a window model."""

    needs: ClassVar[Needs] = Needs(window_model=True)
    config: WindowConfig

    def window_offsets(self) -> np.ndarray:
        return np.arange(self.config.da_win) * to_timedelta64(self.config.window_interval)

    @property
    def flow_error(self) -> float:
        return self.config.flow_error


@METHODS.register("3dvar-fgat", FGATConfig)
class ThreeDVarFGAT(_WindowMethod):
    """3DVar-FGAT: innovations ``y_t − H_t(x^b_t)`` against the background trajectory of the window
    model, the increment constant through the window (``x_t = x^b_t + U z``): the same observations
    as 4DVar without its tangent-linear/adjoint dynamics."""


@METHODS.register("4dvar", FourDVarConfig)
class FourDVar(LETKFEnsemble, _WindowMethod):
    """Strong-constraint 4DVar: ``x_t = M_{0→t}(x_b + U z)`` through the window model."""

    config: FourDVarConfig

    def propagation(self, problem: AnalysisProblem) -> Propagation:
        if problem.model is None:
            raise ConfigError("assimilation.method 4dvar: needs a window model")
        return ModelPropagation(problem.model, problem.window.steps, checkpoint=self.config.checkpointing)

    def inner_model(self, model: ForecastModel) -> ForecastModel:
        """The inner-loop model of a multi-incremental 4DVar (``inner_model: linear_prior``)."""
        if not isinstance(model, HasLinearPart):
            raise ConfigError("assimilation.inner_model: linear_prior needs a window model with a fitted linear prior")
        try:
            return model.linear_part()
        except AivardaError as exc:
            raise ConfigError(f"assimilation.inner_model: linear_prior: {exc}") from None

    def analyse(self, problem: AnalysisProblem) -> AnalysisResult:
        if self.config.inner_model == "window":
            return super().analyse(problem)
        if problem.model is None:
            raise ConfigError("assimilation.method 4dvar: needs a window model")
        return multi_incremental(
            problem.background, problem.background_window, problem.transform, problem.operator, problem.observations,
            problem.model, self.inner_model(problem.model), problem.window.steps, self.config.minimizer(problem.progress),
            bg_lamb=self.config.bg_lamb, flow_error=self.flow_error, checkpoint=self.config.checkpointing,
        )
