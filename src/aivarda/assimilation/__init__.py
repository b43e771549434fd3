"""Variational assimilation: the cost function, the minimiser, windows and the method registry."""

from aivarda.assimilation.cost import CostTerms, Observations, VariationalCost
from aivarda.assimilation.methods import (
    METHODS,
    AnalysisProblem,
    AssimilationConfig,
    Method,
    Needs,
    build_method,
    method_names,
    parse_method_config,
)
from aivarda.assimilation.minimizer import AnalysisResult, Minimizer
from aivarda.assimilation.window import BackgroundTrajectory, ModelPropagation, Propagation, Window

__all__ = [
    "METHODS",
    "AnalysisProblem",
    "AnalysisResult",
    "AssimilationConfig",
    "BackgroundTrajectory",
    "CostTerms",
    "Method",
    "Minimizer",
    "ModelPropagation",
    "Needs",
    "Observations",
    "Propagation",
    "VariationalCost",
    "Window",
    "build_method",
    "method_names",
    "parse_method_config",
]
