"""Variational assimilation: the cost function, the minimiser and the method registry."""

from aivarda.assimilation.cost import CostTerms, Observations, VariationalCost
from aivarda.assimilation.methods import (
    AnalysisProblem,
    AssimilationConfig,
    analyse,
    get_method,
    method_names,
    register_method,
)
from aivarda.assimilation.minimizer import AnalysisResult, Minimizer

__all__ = [
    "AnalysisProblem",
    "AnalysisResult",
    "AssimilationConfig",
    "CostTerms",
    "Minimizer",
    "Observations",
    "VariationalCost",
    "analyse",
    "get_method",
    "method_names",
    "register_method",
]
