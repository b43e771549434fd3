"""Diagnostics that apply to any background-error model given as a control transform.

Randomisation: :func:`prior_samples` decodes seeded draws ``z ~ N(0, I)``, whose statistics
(variance, spectra) are those of ``B`` for a linear ``U``.

Single-observation analysis: one observation of state element ``(c, i, j)`` with innovation
``d = y − x_b`` and error std ``σ`` gives the 3DVar analysis increment

    δx = U(ẑ),   ẑ = argmin_z ½‖z‖² + (1/λ) ½ (U(z)_{c,i,j} − d)² / σ²,

which for a linear ``U`` is the column of ``B = U Uᵀ`` through the observation,
``B e · d / (B_ii + λσ²)``; for a nonlinear ``U`` (a VAE decoder) it is found by L-BFGS with the
gradient from autograd, as the variational methods do. The figure of this increment next to the
same for another B is the classic way to look at what a B does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aivarda.background.transforms import ControlTransform


def prior_samples(U: ControlTransform, n: int, seed: int = 0, batch: int = 8,
                  dtype: torch.dtype = torch.float32, draw_dtype: torch.dtype | None = None) -> Tensor:
    """``n`` increments ``U(z)``, ``z ~ N(0, I)`` decoded in ``dtype``, in batches of ``batch`` →
    ``[n, *U.state_shape]``. ``z`` is drawn in ``draw_dtype`` (default ``dtype``) from a generator
    seeded by ``seed``: the draws of one seed are the same for any ``dtype`` when ``draw_dtype`` is fixed."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for b in range(0, n, batch):
            z = torch.randn(min(batch, n - b), *U.latent_shape, generator=gen, dtype=draw_dtype or dtype)
            out.append(U.decode(z.to(dtype)))
    return torch.cat(out)


def single_observation_analysis(
    U: ControlTransform, channel: int, i: int, j: int, innovation: float, sigma: float, lam: float = 1.0,
    iterations: int = 200, dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, dict[str, float]]:
    """``δx [*state_shape]`` of the single-observation analysis (module docstring) and a summary
    (``j_initial``, ``j_final``, ``increment_at_obs``, ``iterations``)."""
    z = torch.zeros(U.latent_shape, dtype=dtype, requires_grad=True)
    inv = 1.0 / (lam * sigma**2)

    def cost() -> Tensor:
        dx = U.decode(z)
        return 0.5 * (z * z).sum() + 0.5 * inv * (dx[channel, i, j] - innovation) ** 2

    with torch.no_grad():
        j0 = float(cost())
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=iterations, history_size=20, tolerance_grad=1e-10,
                            tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        value = cost()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        dx = U.decode(z).detach()
        j1 = float(cost())
    n_iter = int(opt.state[opt._params[0]].get("n_iter", 0))
    return dx, {"j_initial": j0, "j_final": j1, "increment_at_obs": float(dx[channel, i, j]), "iterations": n_iter}
