"""The GEN_BE control-variable transform ``U`` (``background_error: {type: genbe, file: ...}``).

``δx = U z = I ∘ W ∘ K ∘ V ∘ S (z)`` with

- ``z [N_cv, K]``: one real spectral control vector (``K = L²`` degrees of freedom, see
  :mod:`~aivarda.sphere`) per vertical mode of every control variable
  (``N_cv = Σ_v P_v``; ψ, χ, z, q, t on ``P`` levels, each surface field one mode);
- ``S``: horizontal correlation, ``h_k = Y(a_l(s_k) ⊙ z_k)``, an isotropic Gaussian spectrum of
  calibrated scale ``s_k`` normalised so that ``var h_k = 1`` at every point;
- ``V``: vertical modes, ``v_u = E_v Λ_v^½ h_v`` per variable;
- ``K``: balance, ``v = v_u + R_v(φ) ψ`` for the balanced variables (χ, z, t, surface fields);
- ``W``: ``(ψ, χ) → (u, v) = k × ∇ψ + ∇χ``;
- ``I``: bilinear interpolation from the control grid to the state grid (if they differ).

``B = U Uᵀ``. ``U`` is linear; ``adjoint`` returns ``Uᵀ δx`` (the exact transpose, obtained by
reverse-mode differentiation of the linear map, checked by the dot-product test). ``scale``
multiplies ``U`` (``B`` by ``scale²``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from aivarda.background.genbe.fit import GenBeStatistics
from aivarda.background.registry import (
    TransformConfig,
    TransformContext,
    register_transform,
)
from aivarda.background.transforms import ControlTransform, _batch_shape
from aivarda.errors import ConfigError
from aivarda.paths import expand_path
from aivarda.sphere import Regrid, SphereOps


class GenBeTransform:
    """``U`` of fitted GEN_BE statistics (module docstring); ``[..., N_cv, K] → [..., C, H, W]``."""

    def __init__(self, stats: GenBeStatistics, scale: float = 1.0, dtype: torch.dtype = torch.float32):
        self.stats = stats
        self.scale = float(scale)
        self.dtype = dtype
        self.ops = SphereOps(stats.control_grid, stats.radius, stats.lmax)
        self.regrid = Regrid(stats.control_grid, stats.state_grid)
        self.layout = stats.layout
        self.state_shape = (len(stats.layout), *stats.state_grid.shape)
        self.variables = stats.variables
        self.n_modes = sum(int(v["levels"]) for v in self.variables)
        self.latent_shape = (self.n_modes, self.ops.n_dofs)
        amps, self._mode_slices = [], {}
        start = 0
        for var in self.variables:
            name, P = var["name"], int(var["levels"])
            amps.append(self.ops.gaussian_amplitudes(stats.spectral_scale[name].double()))
            self._mode_slices[name] = slice(start, start + P)
            start += P
        self.amplitudes = torch.cat(amps).to(dtype)  # [N_cv, K]
        self.sqrt_vertical = {
            v["name"]: (stats.eigenvectors[v["name"]] * stats.eigenvalues[v["name"]].clamp_min(0).sqrt()).to(dtype)
            for v in self.variables
        }
        self.regression = {k: r.to(dtype) for k, r in stats.regression.items()}

    # ------------------------------------------------------------------ the stages of U
    def horizontal(self, z: Tensor) -> Tensor:
        """``S``: ``[..., N_cv, K] → [..., N_cv, H_c, W_c]`` unit-variance correlated fields."""
        return self.ops.dofs_to_field(z * self.amplitudes.to(z))

    def unbalanced(self, z: Tensor) -> dict[str, Tensor]:
        """``V ∘ S``: the unbalanced control variables ``{name: [..., P, H_c, W_c]}``."""
        h = self.horizontal(z)
        modes = torch.split(h, [sl.stop - sl.start for sl in self._mode_slices.values()], dim=-3)
        return {
            name: torch.einsum("ik,...khw->...ihw", self.sqrt_vertical[name].to(h), part)
            for name, part in zip(self._mode_slices, modes)
        }

    def control_fields(self, z: Tensor) -> dict[str, Tensor]:
        """``K ∘ V ∘ S``: full (balanced + unbalanced) control variables on the control grid."""
        fields = self.unbalanced(z)
        if self.regression:
            psi = fields["psi"]
            for name, R in self.regression.items():
                fields[name] = fields[name] + torch.einsum("hij,...jhw->...ihw", R.to(psi), psi)
        return fields

    def decode(self, z: Tensor) -> Tensor:
        """``δx = U z``: ``[..., N_cv, K] → [..., C, H, W]`` in physical units."""
        batch = _batch_shape(z, self.latent_shape, "GenBeTransform.decode")
        fields = self.control_fields(z)
        H, W = self.stats.control_grid.shape
        parts: list[tuple[list[int], Tensor]] = []
        for var in self.variables:
            name = var["name"]
            if name == "psi":
                u, v = self.ops.streamfunction_to_wind(fields["psi"], fields["chi"])
                parts.append((var["channels"], torch.cat([u, v], dim=-3)))
            elif name != "chi":
                parts.append((var["channels"], fields[name]))
        parts.sort(key=lambda part: part[0][0])
        index = [c for ch, _ in parts for c in ch]
        values = torch.cat([p for _, p in parts], dim=-3)
        if index == list(range(len(self.layout))):  # every channel, in order (FengWu's layouts)
            out = values
        else:
            out = z.new_zeros(*batch, len(self.layout), H, W).index_copy(-3, torch.tensor(index, device=z.device), values)
        return self.scale * self.regrid(out)

    def adjoint(self, dx: Tensor) -> Tensor:
        """``Uᵀ δx``: ``[..., C, H, W] → [..., N_cv, K]`` (reverse mode through the linear ``U``)."""
        batch = _batch_shape(dx, self.state_shape, "GenBeTransform.adjoint")
        with torch.enable_grad():
            z0 = torch.zeros(*batch, *self.latent_shape, dtype=dx.dtype, device=dx.device, requires_grad=True)
            (g,) = torch.autograd.grad(self.decode(z0), z0, dx, create_graph=dx.requires_grad)
        return g


class GenBeConfig(TransformConfig):
    """``background_error: {type: genbe, file: genbe.pt, scale: 1.0}``; ``file`` may use
    ``${AIVARDA_HOME}``."""

    type: Literal["genbe"] = "genbe"
    file: Path = Field(description="GEN_BE statistics from `aivarda learn-b genbe`")
    scale: float = Field(default=1.0, gt=0, description="multiplies U (B by scale²)")


@register_transform("genbe", GenBeConfig)
def _build_genbe(cfg: GenBeConfig, context: TransformContext) -> ControlTransform:
    stats = GenBeStatistics.load(expand_path(cfg.file))
    transform = GenBeTransform(stats, cfg.scale, context.dtype)
    if tuple(context.state_shape) != transform.state_shape:
        raise ConfigError(
            f"background_error.file: {cfg.file} was fitted for states {list(transform.state_shape)} "
            f"({len(stats.layout)} channels on {stats.state_grid.describe()}), the analysis has {list(context.state_shape)}"
        )
    return transform
