"""How well a trained VAE decoder represents the background error it was trained on.

Randomisation test: decode ``z ~ N(0, I)`` and compare the per-channel variance of the increments
``δx = U(z)`` with that of the NMC samples. The variance of a set of fields ``x [N, C, H, W]`` is
the area-weighted mean over the grid of the point-wise variance across the set,

    v_c = Σ_{h,w} w_h var_n(x_{n,c,h,w}) / Σ_{h,w} w_h,

i.e. the mean of the diagonal of ``B`` for channel ``c``; the ratio ``v_c(U(z)) / v_c(NMC)`` is 1
for a decoder whose samples have the NMC samples' spread (the issue's acceptance: within a factor 2).

Spectra: the horizontal power per total wavenumber ``l`` (:meth:`SphereOps.power_spectrum`) of
each member's deviation from the set's mean, averaged over the set, and summed over bands of ``l``
(:func:`band_power`); the ratio of the decoder samples' band power to the NMC samples' says at which
scales the learned B has too much or too little variance.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from aivarda.background.diagnostics import prior_samples
from aivarda.background.vae.checkpoint import VaeCheckpoint
from aivarda.background.vae.transform import VaeTransform
from aivarda.sphere import SphereOps


def pointwise_variance(x: Tensor, weights: Tensor | np.ndarray) -> Tensor:
    """``v_c`` of fields ``[N, C, H, W]`` (module docstring) → ``[C]`` (float64)."""
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float64)[:, None]
    v = x.double().var(0, unbiased=True)  # [C, H, W]
    return (v * w).sum((1, 2)) / (w.sum() * x.shape[-1])


def decoder_samples(U: VaeTransform, n: int, seed: int = 0, batch: int = 8) -> Tensor:
    """``n`` increments ``U(z)``, ``z ~ N(0, I)`` (seeded; drawn in float32 whatever the decoder's
    dtype) → ``[n, *U.state_shape]``."""
    return prior_samples(U, n, seed, batch, dtype=U.err_std.dtype, draw_dtype=torch.float32)


def raw_decoder_samples(ckpt: VaeCheckpoint, n: int = 64, seed: int = 0) -> Tensor:
    """``n`` draws (``seed``) of ``U₀(z)``, the uncalibrated, centred decoder transform of ``ckpt`` on
    its own grid: what both calibrations are fitted to."""
    return decoder_samples(VaeTransform(ckpt, ckpt.grid, centre=True, calibration="none"), n, seed)


def variance_calibration(ckpt: VaeCheckpoint, samples: Tensor, n: int = 64, seed: int = 0,
                         draws: Tensor | None = None) -> Tensor:
    """Per-channel factors ``k_c = (v_c(NMC) / v_c(U₀(z)))^½`` ``[C]`` with ``U₀`` the uncalibrated,
    centred decoder transform of ``ckpt`` and ``samples [N, C, H, W]`` the NMC samples it was
    trained on (physical units, on the checkpoint's grid): with ``k`` applied, the randomisation
    test gives a ratio of exactly 1 on these samples for these ``n`` decoder samples (``seed``).
    A channel whose decoder or sample variance is zero gets ``k = 1``. ``draws``: those decoder
    samples when already made (:func:`raw_decoder_samples` of the same ``n`` and ``seed``)."""
    if draws is None:
        draws = raw_decoder_samples(ckpt, n, seed)
    weights = ckpt.grid.weights
    k = (pointwise_variance(draws, weights) / pointwise_variance(samples, weights)).rsqrt()
    return torch.where(torch.isfinite(k) & (k > 0), k, torch.ones_like(k)).float()


def spectral_calibration(ckpt: VaeCheckpoint, samples: Tensor, n: int = 64, seed: int = 0,
                         draws: Tensor | None = None) -> Tensor:
    """Per-channel, per-total-wavenumber gains ``g_{c,l} = (P_{c,l}(NMC) / P_{c,l}(U₀(z)))^½``
    ``[C, L]`` with ``P`` the mean power spectra (:func:`mean_power_spectrum`) of the NMC samples
    ``[N, C, H, W]`` it was trained on (physical units, on the checkpoint's grid) and of ``n``
    draws of ``U₀``, the uncalibrated, centred decoder transform (``seed``): with ``g`` applied to
    every draw's spectrum, those draws have the NMC samples' power in every ``l`` of every channel
    (and so their variance). A degree where either power is zero gets ``g = 0`` (nothing to match
    or nothing to scale). ``draws``: as :func:`variance_calibration`'s."""
    if draws is None:
        draws = raw_decoder_samples(ckpt, n, seed)
    ops = SphereOps(ckpt.grid)
    p_dec = mean_power_spectrum(draws, ops)
    p_nmc = mean_power_spectrum(samples, ops)
    g = (p_nmc / p_dec).sqrt()
    return torch.where(torch.isfinite(g) & (p_nmc > 0), g, torch.zeros_like(g)).float()


def decoder_variance_ratio(U: VaeTransform, samples: Tensor, n: int = 64, seed: int = 0) -> Tensor:
    """``v_c(U(z)) / v_c(samples)`` per channel ``[C]``; ``samples`` on ``U``'s state grid."""
    weights = U.state_grid.weights
    return pointwise_variance(decoder_samples(U, n, seed), weights) / pointwise_variance(samples, weights)


DEFAULT_BANDS: tuple[tuple[int, int], ...] = ((0, 3), (4, 7), (8, 15), (16, 31), (32, 63))
"""Total-wavenumber bands ``(l_first, l_last)`` of the spectrum comparison (octaves; T42 has
``l ≤ 63`` on its 64×128 Gaussian grid)."""


def mean_power_spectrum(x: Tensor, ops: SphereOps, batch: int = 16) -> Tensor:
    """Mean over the set of the horizontal power spectra of ``x [N, C, H, W]`` about the set's
    mean (``ops.power_spectrum`` of ``x_n − x̄``, ``N/(N−1)``-corrected) → ``[C, L]``."""
    dev = x.double() - x.double().mean(0, keepdim=True)
    total = None
    for b in range(0, dev.shape[0], batch):
        p = ops.power_spectrum(dev[b : b + batch]).sum(0)
        total = p if total is None else total + p
    assert total is not None
    return total / max(dev.shape[0] - 1, 1)


def band_power(spectrum: Tensor, bands: tuple[tuple[int, int], ...] = DEFAULT_BANDS) -> Tensor:
    """Power summed over each band of total wavenumbers: ``[..., L]`` → ``[..., len(bands)]``
    (bands beyond the truncation are clipped to it)."""
    L = spectrum.shape[-1]
    return torch.stack([spectrum[..., a : min(b, L - 1) + 1].sum(-1) for a, b in bands], dim=-1)
