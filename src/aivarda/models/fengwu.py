"""FengWu-style network: per-variable-group encoders, a shifted-window transformer fusing the
groups, per-group decoders.

Shapes (``B`` batch, ``C`` channels, ``H×W`` grid, ``p`` patch size, ``D`` embedding width,
``G`` groups = the surface group plus one group per upper-air variable z, q, u, v, t):

1. encoder of group ``g``: its ``c_g`` channels ``[B, c_g, H, W]`` → patch embedding
   (``p×p`` convolution with stride ``p``, then LayerNorm) → tokens ``[B, h, w, D]`` with
   ``h = ⌈H/(p·w_h)⌉·w_h`` (rows padded at the south edge) and ``w = W/p``;
2. the group tokens are stacked to ``[B, G, h, w, D]`` and get a learned group embedding and a
   learned latitude embedding (the sphere is symmetric in longitude, not in latitude);
3. ``depth`` Swin blocks: multi-head self-attention inside 3-D windows ``G × w_h × w_w`` (every
   window holds all groups, so attention fuses the variables) with a relative position bias
   over (Δlat, Δlon) plus a group-pair bias; every second block shifts the windows by half a
   window. Longitude is periodic: the cyclic shift wraps east to west and those windows are
   *not* masked; latitude is not periodic, so windows that wrap north to south are masked;
4. decoder of group ``g``: LayerNorm, linear ``D → c_g·p²``, pixel shuffle → ``[B, c_g, H, W]``.

The output is the normalised tendency of each channel (residual prediction, see
:mod:`aivarda.models.normalised`). With ``zero_init_output`` the decoders start at zero, so an
untrained model is persistence plus the mean tendency.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from aivarda.channels import ChannelLayout
from aivarda.config import StrictModel
from aivarda.errors import ConfigError
from aivarda.grid import Grid
from aivarda.models.registry import ARCHITECTURES


class FengWuConfig(StrictModel):
    """Hyper-parameters of the FengWu-style network (``architecture: {name: fengwu, ...}``)."""

    name: Literal["fengwu"] = "fengwu"
    patch_size: int = Field(4, ge=1, description="patch edge p in grid points")
    embed_dim: int = Field(96, ge=4, description="token width D")
    depth: int = Field(4, ge=1, description="number of transformer blocks (shift on every second)")
    num_heads: int = Field(4, ge=1)
    window: tuple[int, int] = Field((4, 8), description="window (rows, columns) in tokens")
    mlp_ratio: float = Field(4.0, gt=0)
    zero_init_output: bool = True

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError("window sizes must be ≥ 1")
        return v

    @model_validator(mode="after")
    def _heads(self) -> FengWuConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        return self

    def build(self, grid: Grid, layout: ChannelLayout) -> FengWuNet:
        return FengWuNet(
            channel_groups(layout),
            grid.shape,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            window=self.window,
            mlp_ratio=self.mlp_ratio,
            zero_init_output=self.zero_init_output,
        )


def channel_groups(layout: ChannelLayout) -> list[tuple[str, slice]]:
    """The variable groups of a layout in channel order: ``("surface", 0:n_surface)`` (if any)
    then one ``(variable, slice)`` per upper-air variable."""
    groups = [("surface", slice(0, len(layout.surface)))] if layout.surface else []
    return groups + [(v, layout.variable_slice(v)) for v in layout.upper_air]


class WindowAttention3D(nn.Module):
    """Multi-head self-attention inside windows of ``G × w_h × w_w`` tokens with a learned
    relative position bias (Δlat, Δlon) and a group-pair bias.

    Input ``[..., N, D]`` with ``N = G·w_h·w_w``; ``mask`` ``[nW, N, N]`` (additive) or ``None``.
    """

    def __init__(self, dim: int, num_heads: int, groups: int, window: tuple[int, int]) -> None:
        super().__init__()
        wh, ww = window
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        self.group_bias = nn.Parameter(torch.zeros(groups * groups, num_heads))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        nn.init.trunc_normal_(self.group_bias, std=0.02)
        g, i, j = torch.meshgrid(torch.arange(groups), torch.arange(wh), torch.arange(ww), indexing="ij")
        g, i, j = g.flatten(), i.flatten(), j.flatten()
        di = i[:, None] - i[None, :] + wh - 1
        dj = j[:, None] - j[None, :] + ww - 1
        self.register_buffer("rel_index", di * (2 * ww - 1) + dj, persistent=False)
        self.register_buffer("group_index", g[:, None] * groups + g[None, :], persistent=False)
        self._bias_cache: tuple[tuple[int, ...], Tensor] | None = None

    def bias(self) -> Tensor:
        """``[heads, N, N]``. A frozen network (the forecast model inside an analysis: its
        parameters do not require gradients) builds it once per set of weights and reuses it; a
        change of the weights (training, ``load_state_dict``, a move to another device) rebuilds it."""
        if self.rel_bias.requires_grad or self.group_bias.requires_grad:
            return self._build_bias()
        key = (self.rel_bias._version, self.group_bias._version, self.rel_bias.data_ptr(), self.group_bias.data_ptr())
        if self._bias_cache is None or self._bias_cache[0] != key:
            with torch.no_grad():
                self._bias_cache = (key, self._build_bias())
        return self._bias_cache[1]

    def _build_bias(self) -> Tensor:
        b = self.rel_bias[self.rel_index] + self.group_bias[self.group_index]
        return b.permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        # x: [B, nW, N, D]
        B, nW, N, D = x.shape
        qkv = self.qkv(x).reshape(B * nW, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B·nW, heads, N, d] (4-D for the fused kernels)
        bias = self.bias().to(q.dtype)[None]  # [1, heads, N, N]
        if mask is not None:  # different per window: [B·nW, heads, N, N]
            bias = (bias + mask[:, None].to(q.dtype)).expand(B, -1, -1, -1, -1).reshape(B * nW, *bias.shape[1:])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(B, nW, N, D))


class SwinBlock(nn.Module):
    """Pre-norm transformer block on ``[B, G, h, w, D]`` with (shifted) window attention."""

    def __init__(
        self, dim: int, num_heads: int, groups: int, window: tuple[int, int], shift: bool, mlp_ratio: float
    ) -> None:
        super().__init__()
        self.window = window
        self.shift = (window[0] // 2, window[1] // 2) if shift else (0, 0)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, num_heads, groups, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def lat_mask(self, h: int, w: int) -> Tensor | None:
        """Additive mask ``[nW, N, N]`` that stops windows wrapping north↔south after the cyclic
        shift from attending across the pole gap (longitude wraps freely)."""
        sh = self.shift[0]
        if sh == 0:
            return None
        wh, ww = self.window
        region = torch.zeros(h, dtype=torch.long)
        region[h - wh : h - sh] = 1
        region[h - sh :] = 2
        # region of each token in each window, ordered like the window partition (G, wh, ww)
        r = region.reshape(h // wh, 1, wh, 1).expand(h // wh, w // ww, wh, ww).reshape(-1, 1, wh * ww)
        groups = self.attn.group_index.shape[0] // (wh * ww)
        r = r.expand(-1, groups, -1).reshape(-1, groups * wh * ww)  # [nW, N]
        return (r[:, :, None] != r[:, None, :]).float() * -1e4

    def forward(self, x: Tensor) -> Tensor:
        B, G, h, w, D = x.shape
        wh, ww = self.window
        y = self.norm1(x)
        if self.shift != (0, 0):
            y = torch.roll(y, shifts=(-self.shift[0], -self.shift[1]), dims=(2, 3))
        # partition: [B, G, h/wh, wh, w/ww, ww, D] → [B, nW, G·wh·ww, D]
        y = y.reshape(B, G, h // wh, wh, w // ww, ww, D).permute(0, 2, 4, 1, 3, 5, 6)
        y = y.reshape(B, (h // wh) * (w // ww), G * wh * ww, D)
        mask = self.lat_mask(h, w)
        y = self.attn(y, None if mask is None else mask.to(y.device))
        y = y.reshape(B, h // wh, w // ww, G, wh, ww, D).permute(0, 3, 1, 4, 2, 5, 6).reshape(B, G, h, w, D)
        if self.shift != (0, 0):
            y = torch.roll(y, shifts=self.shift, dims=(2, 3))
        x = x + y
        return x + self.mlp(self.norm2(x))


class GroupEncoder(nn.Module):
    """``[B, c_g, H_pad, W] → [B, H_pad/p, W/p, D]``: patch embedding + LayerNorm."""

    def __init__(self, channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.embed(x).permute(0, 2, 3, 1))


class GroupDecoder(nn.Module):
    """``[B, h, w, D] → [B, c_g, h·p, w·p]``: LayerNorm, linear to ``c_g·p²``, pixel shuffle."""

    def __init__(self, channels: int, dim: int, patch: int, zero_init: bool) -> None:
        super().__init__()
        self.patch = patch
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, channels * patch * patch)
        if zero_init:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        y = self.head(self.norm(x)).permute(0, 3, 1, 2)  # [B, c·p², h, w]
        return F.pixel_shuffle(y, self.patch)


class FengWuNet(nn.Module):
    """The network ``[B, C, H, W] → [B, C, H, W]`` described in the module docstring."""

    def __init__(
        self,
        groups: list[tuple[str, slice]],
        grid_shape: tuple[int, int],
        *,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        window: tuple[int, int],
        mlp_ratio: float,
        zero_init_output: bool,
    ) -> None:
        super().__init__()
        H, W = grid_shape
        p, (wh, ww) = patch_size, window
        if W % (p * ww):
            raise ConfigError(
                f"architecture: the grid's {W} longitudes must be divisible by patch_size·window[1] = {p * ww}"
            )
        self.group_names = [name for name, _ in groups]
        self.slices = [s for _, s in groups]
        self.grid_shape = (H, W)
        self.pad_h = math.ceil(H / (p * wh)) * p * wh - H
        h = (H + self.pad_h) // p
        self.encoders = nn.ModuleList(GroupEncoder(s.stop - s.start, embed_dim, p) for s in self.slices)
        self.group_embed = nn.Parameter(torch.zeros(len(groups), 1, 1, embed_dim))
        self.lat_embed = nn.Parameter(torch.zeros(1, h, 1, embed_dim))
        nn.init.trunc_normal_(self.group_embed, std=0.02)
        nn.init.trunc_normal_(self.lat_embed, std=0.02)
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dim, num_heads, len(groups), window, shift=bool(i % 2), mlp_ratio=mlp_ratio)
            for i in range(depth)
        )
        self.decoders = nn.ModuleList(
            GroupDecoder(s.stop - s.start, embed_dim, p, zero_init_output) for s in self.slices
        )

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.grid_shape
        if tuple(x.shape[-2:]) != (H, W):
            raise ValueError(f"FengWuNet built for a {H}×{W} grid got {tuple(x.shape[-2:])}")
        if self.pad_h:
            x = F.pad(x, (0, 0, 0, self.pad_h), mode="replicate")
        tokens = torch.stack([enc(x[:, s]) for enc, s in zip(self.encoders, self.slices)], dim=1)
        tokens = tokens + self.group_embed + self.lat_embed  # [B, G, h, w, D]
        for block in self.blocks:
            tokens = block(tokens)
        out = [dec(tokens[:, g]) for g, dec in enumerate(self.decoders)]
        return torch.cat(out, dim=1)[:, :, :H, :]


ARCHITECTURES.register("fengwu", FengWuConfig)(FengWuConfig.build)
