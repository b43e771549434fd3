"""Minimisation of a :class:`VariationalCost` with L-BFGS (docs/architecture.md).

``outer_loops`` × ``inner_iterations``: each outer loop starts a fresh ``torch.optim.LBFGS``
(history ``history_size``, strong-Wolfe line search) from the current control variable, i.e.
the curvature pairs are rebuilt around the latest iterate (the seeds' GEN_BE setting is 4×5,
VAE 2×10). After every L-BFGS iteration the diagnostics ``J, J_b, J_o, ‖∇J‖`` are recorded.

Stopping: converged when ``‖∇J‖ ≤ tolerance·‖∇J(z_0)‖`` or when one iteration changes ``J`` by
less than ``j_tolerance·|J|``. Safety: a NaN/Inf in ``J`` or ``∇J``, or divergence — ``J`` at the
final iterate, evaluated afresh, above ``J(z_0)`` (the strong-Wolfe line search itself never
accepts an increase, so this catches models that are not deterministic, e.g. dropout left on) —
makes the analysis fall back to the background (``z = 0``) with a warning.

Evaluations are cached by control value: L-BFGS re-evaluates the point its line search accepted
at the start of each iteration, which costs nothing here.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from aivarda.assimilation.cost import CostTerms, VariationalCost

log = logging.getLogger(__name__)


@dataclass
class AnalysisResult:
    """Outcome of one analysis.

    ``x_a = x_b + U(z)`` is the analysis at the window start (``[*S]``); ``increment = x_a − x_b``;
    ``diagnostics`` holds one dict per iteration (``outer``, ``iteration``, ``J``, ``J_b``, ``J_o``,
    ``grad_norm``, ``evaluations``); ``converged`` is true when a tolerance was met;
    ``fallback`` is true when the minimisation failed and ``x_a`` is the background;
    ``members`` the analysis ensemble ``[K, *S]`` of a method that analyses its own ensemble
    (``x_a`` is then their mean), else ``None``.
    """

    x_a: Tensor
    z: Tensor
    increment: Tensor
    diagnostics: list[dict[str, float]] = field(default_factory=list)
    converged: bool = False
    fallback: bool = False
    members: Tensor | None = None


class _NonFinite(RuntimeError):
    pass


@dataclass
class _Evaluation:
    z: Tensor
    terms: CostTerms
    grad: Tensor

    @property
    def grad_norm(self) -> float:
        return float(self.grad.norm())


class Minimizer:
    """L-BFGS with outer loops; :meth:`minimize` returns an :class:`AnalysisResult`."""

    def __init__(
        self,
        outer_loops: int = 4,
        inner_iterations: int = 5,
        history_size: int = 10,
        tolerance: float = 1e-5,
        j_tolerance: float = 1e-12,
        max_line_search: int = 20,
        progress: bool = False,
    ):
        if outer_loops < 1 or inner_iterations < 1:
            raise ValueError("Minimizer: outer_loops and inner_iterations must be >= 1")
        self.outer_loops = outer_loops
        self.inner_iterations = inner_iterations
        self.history_size = history_size
        self.tolerance = tolerance
        self.j_tolerance = j_tolerance
        self.max_line_search = max_line_search
        self.progress = progress

    def _evaluate(self, cost: VariationalCost, z: Tensor) -> _Evaluation:
        with torch.enable_grad():
            zz = z.detach().clone().requires_grad_(True)
            terms = cost(zz)
            (grad,) = torch.autograd.grad(terms.total, zz)
            grad = grad.contiguous()  # LBFGS views the gradient flat (an ensemble B's may be strided)
        terms = CostTerms(terms.total.detach(), terms.background.detach(), terms.observation.detach())
        return _Evaluation(zz.detach(), terms, grad)

    def minimize(self, cost: VariationalCost, z0: Tensor | None = None) -> AnalysisResult:
        """Minimise ``J`` from ``z0`` (default 0, i.e. the background)."""
        dtype, device = cost.background.dtype, cost.background.device
        z = torch.zeros(cost.latent_shape, dtype=dtype, device=device) if z0 is None else z0.detach().clone()
        z.requires_grad_(True)
        cache: deque[_Evaluation] = deque(maxlen=8)
        n_evals = 0

        def evaluate() -> _Evaluation:
            nonlocal n_evals
            zd = z.detach()
            for ev in cache:
                if torch.equal(ev.z, zd):
                    return ev
            ev = self._evaluate(cost, zd)
            n_evals += 1
            cache.append(ev)
            if not (math.isfinite(float(ev.terms.total)) and bool(torch.isfinite(ev.grad).all())):
                raise _NonFinite
            return ev

        def closure() -> Tensor:
            ev = evaluate()
            z.grad = ev.grad.clone()
            return ev.terms.total

        diagnostics: list[dict[str, float]] = []

        def record(outer: int, iteration: int, ev: _Evaluation) -> None:
            row = {
                "outer": outer,
                "iteration": iteration,
                "J": float(ev.terms.total),
                "J_b": float(ev.terms.background),
                "J_o": float(ev.terms.observation),
                "grad_norm": ev.grad_norm,
                "evaluations": n_evals,
            }
            diagnostics.append(row)
            log.debug("outer %(outer)d iter %(iteration)d: J=%(J).6g J_b=%(J_b).6g J_o=%(J_o).6g |grad|=%(grad_norm).3g", row)

        converged = False
        pbar = None
        try:
            first = evaluate()
            record(0, 0, first)
            j0, g0 = float(first.terms.total), first.grad_norm
            converged = g0 == 0.0
            iteration = 0
            if self.progress:
                from tqdm.auto import tqdm

                pbar = tqdm(total=self.outer_loops * self.inner_iterations, desc="minimise", leave=False)
            for outer in range(self.outer_loops):
                if converged:
                    break
                opt = torch.optim.LBFGS(
                    [z],
                    lr=1.0,
                    max_iter=1,
                    max_eval=self.max_line_search + 1,
                    tolerance_grad=0.0,
                    tolerance_change=0.0,
                    history_size=self.history_size,
                    line_search_fn="strong_wolfe",
                )
                j_prev = float(diagnostics[-1]["J"])
                for _ in range(self.inner_iterations):
                    opt.step(closure)
                    iteration += 1
                    ev = evaluate()
                    record(outer, iteration, ev)
                    if pbar is not None:
                        pbar.update(1)
                        pbar.set_postfix(J=f"{float(ev.terms.total):.4g}", grad=f"{ev.grad_norm:.2g}")
                    j = float(ev.terms.total)
                    if ev.grad_norm <= self.tolerance * g0 or abs(j_prev - j) <= self.j_tolerance * abs(j):
                        converged = True
                        break
                    j_prev = j
            with torch.no_grad():  # fresh evaluation: catches models that are not deterministic
                j_final = float(cost(z.detach()).total)
            if not math.isfinite(j_final):
                raise _NonFinite
            if j_final > j0 + 1e-5 * abs(j0):  # beyond float32 round-off of a long sum
                return self._fallback(cost, diagnostics, f"J rose from {j0:.6g} to {j_final:.6g}")
        except _NonFinite:
            return self._fallback(cost, diagnostics, "non-finite J or gradient")
        finally:
            if pbar is not None:
                pbar.close()
        z_a = z.detach()
        with torch.no_grad():
            x_a = cost.state(z_a)
        return AnalysisResult(x_a, z_a, x_a - cost.background, diagnostics, converged, False)

    def _fallback(self, cost: VariationalCost, diagnostics: list[dict[str, Any]], why: str) -> AnalysisResult:
        msg = f"minimisation failed ({why}); the analysis falls back to the background"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.warning(msg)
        x_b = cost.background
        z = torch.zeros(cost.latent_shape, dtype=x_b.dtype, device=x_b.device)
        return AnalysisResult(x_b.clone(), z, torch.zeros_like(x_b), diagnostics, False, True)
