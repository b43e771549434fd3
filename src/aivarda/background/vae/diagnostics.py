"""How well a trained VAE decoder represents the background error it was trained on.

Randomisation test: decode ``z ~ N(0, I)`` and compare the per-channel variance of the increments
``δx = U(z)`` with that of the NMC samples. The variance of a set of fields ``x [N, C, H, W]`` is
the area-weighted mean over the grid of the point-wise variance across the set,

    v_c = Σ_{h,w} w_h var_n(x_{n,c,h,w}) / Σ_{h,w} w_h,

i.e. the mean of the diagonal of ``B`` for channel ``c``; the ratio ``v_c(U(z)) / v_c(NMC)`` is 1
for a decoder whose samples have the NMC samples' spread (the issue's acceptance: within a factor 2).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from aivarda.background.vae.transform import VaeTransform


def pointwise_variance(x: Tensor, weights: Tensor | np.ndarray) -> Tensor:
    """``v_c`` of fields ``[N, C, H, W]`` (module docstring) → ``[C]`` (float64)."""
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)[:, None]
    v = x.double().var(0, unbiased=True)  # [C, H, W]
    return (v * w).sum((1, 2)) / (w.sum() * x.shape[-1])


def decoder_samples(U: VaeTransform, n: int, seed: int = 0, batch: int = 8) -> Tensor:
    """``n`` increments ``U(z)``, ``z ~ N(0, I)`` (seeded) → ``[n, *U.state_shape]``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for b in range(0, n, batch):
            z = torch.randn(min(batch, n - b), *U.latent_shape, generator=gen)
            out.append(U.decode(z.to(U.err_std.dtype)))
    return torch.cat(out)


def decoder_variance_ratio(U: VaeTransform, samples: Tensor, n: int = 64, seed: int = 0) -> Tensor:
    """``v_c(U(z)) / v_c(samples)`` per channel ``[C]``; ``samples`` on ``U``'s state grid."""
    weights = U.state_grid.weights
    return pointwise_variance(decoder_samples(U, n, seed), weights) / pointwise_variance(samples, weights)
