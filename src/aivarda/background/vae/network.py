"""FengWu-lite windowed-attention U-Net encoder and decoder of the background-error VAE.

Both halves are one :class:`SwinUNet`: a field ``[B, c_in, H_in, W_in]`` is patch-embedded
(``k×k`` convolution with stride ``k``, LayerNorm) into tokens ``[B, h, w, D]`` plus a learned
latitude embedding, then

    stage 1 (``depth`` Swin blocks, width D, window w×w, every second block shifted)
    → patch merging (2×2 tokens → one of width 2D) → stage 2 (``depth`` blocks, width 2D)
    → patch expansion (one token of width 2D → 2×2 of width D), concatenated with the stage-1
      output (U-Net skip) and projected back to D → stage 3 (``depth`` blocks, width D)
    → LayerNorm, linear ``D → c_out·k'²``, pixel shuffle by ``k'`` → ``[B, c_out, h·k', w·k']``.

The Swin blocks are :class:`aivarda.models.fengwu.SwinBlock` with a single variable group (the
sphere is periodic in longitude, windows wrapping north↔south are masked).

With patch size ``p`` and latent stride ``r`` (``r`` divides ``p``), the token grid is
``h × w = H/p × W/p`` and the latent ``z`` lives on the control grid ``H/r × W/r``:

- encoder ``E``: ``x [B, C, H, W] → (μ, log σ_z²)``, each ``[B, L, H/r, W/r]`` (``k = p``,
  ``k' = p/r``, ``c_out = 2L``);
- decoder ``D``: ``z [B, L, H/r, W/r] → x̂ [B, C, H, W]`` (``k = p/r``, ``k' = p``).

``x`` is an NMC sample divided by the per-channel NMC error std. ``H/p`` and ``W/p`` must be
multiples of ``2·window`` (two stages of windows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from aivarda.config import StrictModel
from aivarda.errors import ConfigError
from aivarda.models.fengwu import SwinBlock


class VaeArchitecture(StrictModel):
    """Hyper-parameters of the VAE (``vae.architecture``); defaults after the released
    VAE-Var configs (patch 2, width 96, window 4, 32 latent channels)."""

    latent_channels: int = Field(32, ge=1, description="L: channels of the latent z")
    latent_stride: int = Field(
        2, ge=1, description="r: the latent is on the samples' grid coarsened r times (must divide patch_size)"
    )
    patch_size: int = Field(2, ge=1, description="p: patch edge in grid points")
    embed_dim: int = Field(96, ge=4, description="token width D of stages 1 and 3 (2D in stage 2)")
    depth: int = Field(2, ge=1, description="Swin blocks per stage")
    num_heads: int = Field(4, ge=1)
    window: int = Field(4, ge=1, description="square attention window in tokens")
    mlp_ratio: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> VaeArchitecture:
        if self.patch_size % self.latent_stride:
            raise ValueError(f"latent_stride ({self.latent_stride}) must divide patch_size ({self.patch_size})")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        return self

    def latent_shape(self, grid_shape: tuple[int, int]) -> tuple[int, int, int]:
        H, W = grid_shape
        return (self.latent_channels, H // self.latent_stride, W // self.latent_stride)


class _Stage(nn.Module):
    """``depth`` Swin blocks on ``[B, h, w, D]`` (one group), every second shifted."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, 1, (window, window), shift=bool(i % 2), mlp_ratio=mlp_ratio) for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(1)
        for block in self.blocks:
            x = block(x)
        return x.squeeze(1)


class PatchMerge(nn.Module):
    """``[B, h, w, D] → [B, h/2, w/2, 2D]``: each 2×2 block of tokens concatenated, LayerNorm, linear."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.proj = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        B, h, w, D = x.shape
        x = x.reshape(B, h // 2, 2, w // 2, 2, D).permute(0, 1, 3, 2, 4, 5).reshape(B, h // 2, w // 2, 4 * D)
        return self.proj(self.norm(x))


class PatchExpand(nn.Module):
    """``[B, h, w, 2D] → [B, 2h, 2w, D]``: linear to ``4D``, each token split into 2×2, LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        B, h, w, _ = x.shape
        y = self.proj(x).reshape(B, h, w, 2, 2, -1).permute(0, 1, 3, 2, 4, 5)
        return self.norm(y.reshape(B, 2 * h, 2 * w, -1))


class SwinUNet(nn.Module):
    """``[B, c_in, h·k, w·k] → [B, c_out, h·k', w·k']`` (module docstring)."""

    def __init__(
        self, c_in: int, c_out: int, tokens: tuple[int, int], k_in: int, k_out: int, arch: VaeArchitecture
    ) -> None:
        super().__init__()
        h, w = tokens
        D, win = arch.embed_dim, arch.window
        if h % (2 * win) or w % (2 * win) or h < 2 * win:
            raise ConfigError(
                f"vae.architecture: a token grid of {h}×{w} (grid / patch_size) must be a multiple of "
                f"2·window = {2 * win} in both directions; change window/patch_size or regrid the samples (nmc.grid)"
            )
        self.k_out = k_out
        self.embed = nn.Conv2d(c_in, D, kernel_size=k_in, stride=k_in)
        self.embed_norm = nn.LayerNorm(D)
        self.lat_embed = nn.Parameter(torch.zeros(1, h, 1, D))
        nn.init.trunc_normal_(self.lat_embed, std=0.02)
        self.stage1 = _Stage(D, arch.depth, arch.num_heads, win, arch.mlp_ratio)
        self.down = PatchMerge(D)
        self.stage2 = _Stage(2 * D, arch.depth, 2 * arch.num_heads, win, arch.mlp_ratio)
        self.up = PatchExpand(D)
        self.skip = nn.Linear(2 * D, D)
        self.stage3 = _Stage(D, arch.depth, arch.num_heads, win, arch.mlp_ratio)
        self.head_norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, c_out * k_out * k_out)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed_norm(self.embed(x).permute(0, 2, 3, 1)) + self.lat_embed  # [B, h, w, D]
        s1 = self.stage1(t)
        s2 = self.stage2(self.down(s1))
        s3 = self.stage3(self.skip(torch.cat([self.up(s2), s1], dim=-1)))
        y = self.head(self.head_norm(s3)).permute(0, 3, 1, 2)  # [B, c_out·k'², h, w]
        return F.pixel_shuffle(y, self.k_out) if self.k_out > 1 else y


class VaeNet(nn.Module):
    """Encoder ``E`` and decoder ``D`` for ``C`` channels on an ``H×W`` grid (module docstring).

    ``forward(x, ε) = (D(μ + e^{½ log σ_z²} ε), μ, log σ_z²)`` — the reparameterised sample; the
    standard normal ``ε`` (shape ``[B, *latent_shape]``) is drawn by the caller.
    """

    LOGVAR_RANGE = (-30.0, 20.0)

    def __init__(self, channels: int, grid_shape: tuple[int, int], arch: VaeArchitecture) -> None:
        super().__init__()
        H, W = grid_shape
        p, r = arch.patch_size, arch.latent_stride
        if H % p or W % p:
            raise ConfigError(f"vae.architecture: the {H}×{W} grid is not divisible by patch_size {p}")
        tokens = (H // p, W // p)
        self.channels, self.grid_shape, self.arch = channels, (H, W), arch
        self.latent_shape = arch.latent_shape((H, W))
        L = arch.latent_channels
        self.encoder = SwinUNet(channels, 2 * L, tokens, p, p // r, arch)
        self.decoder = SwinUNet(L, channels, tokens, p // r, p, arch)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, C, H, W] → (μ, log σ_z²)``, each ``[B, L, H/r, W/r]``."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(*self.LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """``z [B, L, H/r, W/r] → x̂ [B, C, H, W]`` (normalised units)."""
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def vae_loss(x: Tensor, x_hat: Tensor, mu: Tensor, logvar: Tensor, sigma: float) -> tuple[Tensor, Tensor]:
    """Per-sample negative ELBO terms, each ``[B]``:

    ``recon = Σ (x̂ − x)² / (2σ²)`` and ``kl = ½ Σ (μ² + σ_z² − log σ_z² − 1)`` (sums over all
    channels and grid points / latent elements)."""
    recon = (x_hat.float() - x.float()).square().flatten(1).sum(1) / (2.0 * sigma**2)
    kl = 0.5 * (mu.float().square() + logvar.float().exp() - logvar.float() - 1.0).flatten(1).sum(1)
    return recon, kl
