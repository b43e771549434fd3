"""The VAE decoder as a nonlinear control-variable transform
(``background_error: {type: vae, checkpoint: best.pt}``).

With ``D`` the trained decoder (normalised units), ``s`` the per-channel NMC error std ``[C]``
stored in the checkpoint and ``I`` bilinear interpolation from the decoder's grid (the NMC samples'
grid, the control grid) to the analysis state grid (identity when they are equal),

    δx = U(z) = I( k ⊙ s ⊙ (D(z) − D(0)) )          (centre: true, the default)
    δx = U(z) = I( k ⊙ s ⊙ D(z) )                    (centre: false, as the released VAE-Var code)

with ``z [L, H/r, W/r]`` the latent (``latent_shape``) and ``J_b = ½‖z‖²``. ``U`` is nonlinear, so
there is no adjoint: gradients of the cost w.r.t. ``z`` come from autograd through ``D``.

Why centre: the released method adds ``D(z)`` to the background and starts the minimisation at
``z = 0``, so its first guess is ``x_b + s ⊙ D(0)``, which is not the background unless the
decoder happens to map 0 to 0. Subtracting ``D(0)`` makes ``z = 0`` the background exactly
(``δx = 0``), so that ``J_b = ½‖z‖²`` is centred on ``x_b`` as for every linear transform, and an
analysis without observations is the background. ``D(0)`` is a constant, so the gradient is
unchanged.

``calibration: none``, the default, uses the raw decoder (as the released VAE-Var code; chosen on
the tuning world, docs/vae.md §7). ``k [C]`` is the checkpoint's per-channel variance calibration
(``calibration: variance``, when the checkpoint has one; else 1): the factor that gives the decoder's samples ``U(z)``,
``z ~ N(0, I)``, the variance of the training NMC samples. ``calibration: spectral`` instead filters
each channel of ``D(z) − D(0)`` in spherical harmonics with the checkpoint's gains ``g [C, L]``,

    δx = U(z) = I( s ⊙ S_g(D(z) − D(0)) ),    S_g(f)_c = synthesis(g_{c,l} · analysis(f_c)_{l,m}),

so that the samples have the training NMC samples' power at every total wavenumber ``l`` of every
channel (and so their variance); ``S_g`` is linear and fixed, the decoder keeps the nonlinear
structure. ``learn-b vae`` estimates both calibrations after training; docs/vae.md §3 and §6 say
what they change. ``scale`` multiplies ``U`` (as ``genbe``'s).
The decoder runs in ``context.dtype`` on the device of ``z``.

With ``finetune: {mode: lora | reset | full}`` the B is flow-dependent (LoRA-EnVar,
``docs/lora-envar.md``): its config declares ``needs_ensemble``, and every cycle
:meth:`FinetunedVaeTransform.update` fine-tunes the decoder on the members of the cycle
(:mod:`aivarda.background.vae.finetune`); ``D(0)`` is recomputed after each update. Its
``state_dict``/``load_state_dict`` (the adapters or weights, and the update count) are saved by the
cycling runner with each committed cycle and restored by ``--resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from aivarda.background.genbe.config import GridSection
from aivarda.background.registry import TransformConfig, TransformContext, register_transform
from aivarda.background.transforms import ControlTransform, _batch_shape
from aivarda.background.vae.checkpoint import VaeCheckpoint
from aivarda.background.vae.finetune import FinetuneConfig, VaeFinetuner, ensemble_samples
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid
from aivarda.paths import expand_path
from aivarda.sphere import Regrid, SphereOps

Calibration = Literal["variance", "spectral", "none"]


class VaeTransform:
    """``δx = U(z)`` of a trained VAE decoder (module docstring); ``[..., L, h, w] → [..., C, H, W]``."""

    def __init__(
        self,
        ckpt: VaeCheckpoint,
        state_grid: Grid | None = None,
        *,
        centre: bool = True,
        scale: float = 1.0,
        calibration: Calibration = "none",
        dtype: torch.dtype = torch.float32,
    ):
        self.net = ckpt.net.to(dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        std = ckpt.err_std
        self.spectral: tuple[SphereOps, Tensor] | None = None
        self.calibration: Calibration = "none"  # the one applied ("variance" without k in the file: none)
        if calibration == "variance" and ckpt.calibration is not None:
            std = std * ckpt.calibration
            self.calibration = "variance"
        elif calibration == "spectral":
            if ckpt.spectral_calibration is None:
                raise ConfigError(
                    "background_error.calibration: spectral, but the checkpoint has no spectral calibration; "
                    "estimate it with `aivarda learn-b vae CONFIG --calibrate-only`"
                )
            ops = SphereOps(ckpt.grid)
            gains = ckpt.spectral_calibration
            if gains.shape[1] != ops.lmax:
                raise DataError(f"VAE checkpoint: spectral_calibration has {gains.shape[1]} degrees, the decoder grid {ops.lmax}")
            self.spectral = (ops, gains.to(dtype)[:, :, None])
            self.calibration = "spectral"
        self.err_std = std.to(dtype)[:, None, None]
        self.layout = ckpt.layout
        self.control_grid = ckpt.grid
        self.state_grid = state_grid or ckpt.grid
        self.regrid = Regrid(self.control_grid, self.state_grid)
        self.centre, self.scale = bool(centre), float(scale)
        self.latent_shape = tuple(self.net.latent_shape)
        self.state_shape = (len(self.layout), *self.state_grid.shape)
        self._offset: Tensor | None = None

    def offset(self, like: Tensor) -> Tensor:
        """``D(0)`` (normalised units, ``[C, H_c, W_c]``; zero when ``centre`` is off), computed once."""
        if self._offset is None or self._offset.dtype != like.dtype or self._offset.device != like.device:
            if self.centre:
                with torch.no_grad():
                    z0 = torch.zeros(1, *self.latent_shape, dtype=like.dtype, device=like.device)
                    self._offset = self.net.to(like.device).decode(z0)[0]
            else:
                self._offset = torch.zeros((), dtype=like.dtype, device=like.device)
        return self._offset

    def decode(self, z: Tensor) -> Tensor:
        """``δx = U(z)`` in physical units; differentiable in ``z`` (autograd through ``D``)."""
        batch = _batch_shape(z, self.latent_shape, "VaeTransform.decode")
        flat = z.reshape(-1, *self.latent_shape)
        self.net.to(z.device)
        out = self.net.decode(flat) - self.offset(flat)
        if self.spectral is not None:
            ops, gains = self.spectral
            out = ops.synthesis(ops.analysis(out) * gains.to(out.device)).to(out.dtype)
        out = out * self.err_std.to(flat)
        return self.scale * self.regrid(out).reshape(*batch, *self.state_shape)


class FinetunedVaeTransform(VaeTransform):
    """A :class:`VaeTransform` whose decoder is fine-tuned on the members of every cycle
    (``update``); ``D(z)`` with zero-initialised adapters is the static decoder's bit for bit."""

    def __init__(self, ckpt: VaeCheckpoint, finetune: FinetuneConfig, state_grid: Grid | None = None, **kwargs: Any):
        super().__init__(ckpt, state_grid, **kwargs)
        self.finetuner = VaeFinetuner(self.net, finetune)
        self.to_control = Regrid(self.state_grid, self.control_grid)

    def update(self, members: Tensor) -> None:
        """Fine-tune on ``members`` ``[K, C, H, W]`` valid at the window start (on the state grid)."""
        if members.ndim != 4 or tuple(members.shape[1:]) != self.state_shape:
            raise DataError(
                f"background_error type vae: fine-tuning takes the K members valid at the window start "
                f"[K, {', '.join(map(str, self.state_shape))}], got {list(members.shape)} (window trajectories "
                f"[K, T, C, H, W] come from method 4denvar; a VAE B carried through the window is method 4dvar)"
            )
        self.net.to(members.device)
        x = self.to_control(members.to(torch.float64))
        samples = ensemble_samples(x, self.control_grid.weights)
        dtype = next(self.net.parameters()).dtype
        self.finetuner.update(samples.to(dtype))
        self._offset = None  # D(0) of the new decoder

    def update_diagnostics(self) -> dict[str, float]:
        """Of the last update: trainable parameters, first/last epoch loss, optimiser steps, seconds."""
        return dict(self.finetuner.last)

    def state_dict(self) -> dict[str, Any]:
        return self.finetuner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.finetuner.load_state_dict(state)
        self._offset = None


class VaeConfig(TransformConfig):
    """``background_error: {type: vae, checkpoint: best.pt, centre: true, scale: 1.0}``;
    ``checkpoint`` may use ``${AIVARDA_HOME}``/``${AIVARDA_ASSETS}``."""

    type: Literal["vae"] = "vae"
    checkpoint: Path = Field(description="best.pt (or last.pt) of `aivarda learn-b vae`")
    centre: bool = Field(default=True, description="subtract D(0) so that z = 0 is the background")
    scale: float = Field(default=1.0, gt=0, description="multiplies U")
    calibration: Calibration = Field(
        default="none",
        description="none: the raw decoder; variance: the checkpoint's per-channel factor k (when it has one); "
        "spectral: its per-channel, per-wavenumber gains g",
    )
    state_grid: GridSection | None = Field(
        default=None, description="grid of the analysis state (default: the checkpoint's source grid)"
    )
    finetune: FinetuneConfig = Field(
        default_factory=FinetuneConfig, description="per-cycle fine-tuning of the decoder on the ensemble (LoRA-EnVar)"
    )

    @property
    def needs_ensemble(self) -> bool:  # type: ignore[override]
        """Fine-tuned every cycle on the members (any mode but none)."""
        return self.finetune.mode != "none"


@register_transform("vae", VaeConfig)
def _build_vae(cfg: VaeConfig, context: TransformContext) -> ControlTransform:
    path = expand_path(cfg.checkpoint)
    ckpt, _ = VaeCheckpoint.load(path)
    C = len(ckpt.layout)
    candidates = [cfg.state_grid.grid()] if cfg.state_grid is not None else [ckpt.grid, ckpt.state_grid]
    for grid in candidates:
        if tuple(context.state_shape) == (C, *grid.shape):
            if cfg.finetune.mode != "none":
                return FinetunedVaeTransform(ckpt, cfg.finetune, grid, centre=cfg.centre, scale=cfg.scale,
                                             calibration=cfg.calibration, dtype=context.dtype)
            return VaeTransform(ckpt, grid, centre=cfg.centre, scale=cfg.scale, calibration=cfg.calibration,
                                dtype=context.dtype)
    grids = " or ".join(g.describe() for g in candidates)
    raise ConfigError(
        f"background_error.checkpoint: {path} decodes {C} channels on {grids}, the analysis has states "
        f"{list(context.state_shape)}" + ("" if cfg.state_grid else "; set background_error.state_grid")
    )
