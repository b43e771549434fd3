"""The VAE checkpoint file (``best.pt`` / ``last.pt`` of ``aivarda learn-b vae``).

A versioned torch file (:func:`aivarda.files.save_torch_file`, loaded with ``weights_only=True``)
holding the architecture, the weights of encoder and decoder, the per-channel NMC error std
``err_std [C]`` (physical units) the samples were divided by, the samples' grid (the grid the
decoder outputs), the state grid of the source, the channel layout, the training and validation
time spans, and (``last.pt`` only) the optimiser state for ``--resume``. ``best.pt`` also holds the
per-channel variance calibration ``k [C]`` and the per-channel, per-total-wavenumber spectral
calibration ``g [C, L]`` of ``learn-b vae`` (absent in older files: then none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from aivarda.background.vae.network import VaeArchitecture, VaeNet
from aivarda.channels import ChannelLayout
from aivarda.errors import DataError
from aivarda.files import load_torch_file, save_torch_file
from aivarda.grid import Grid

FORMAT = "aivarda-vae"
VERSION = 1


def channel_std(samples: Tensor, weights: Tensor | np.ndarray) -> Tensor:
    """Area-weighted per-channel std of samples ``[N, C, H, W]`` (row weights ``[H]``, mean 1):
    ``s_c = (Σ_{n,h,w} w_h (x − m_c)² / Σ w_h)^½`` with ``m_c`` the weighted mean → ``[C]``."""
    x = samples.double()
    w = torch.as_tensor(weights, dtype=torch.float64)[:, None]
    norm = w.sum() * x.shape[0] * x.shape[-1]
    mean = (x * w).sum((0, 2, 3)) / norm
    var = ((x - mean[:, None, None]).square() * w).sum((0, 2, 3)) / norm
    return var.sqrt().float()


def time_span(times: np.ndarray) -> list[str] | None:
    """``[first, last]`` ISO times of a set of valid times (None if empty)."""
    if len(times) == 0:
        return None
    t = np.sort(np.asarray(times, dtype="datetime64[s]"))
    return [str(t[0]), str(t[-1])]


@dataclass
class VaeCheckpoint:
    """A trained VAE and what it needs to decode increments in physical units."""

    net: VaeNet
    err_std: Tensor
    grid: Grid
    state_grid: Grid
    layout: ChannelLayout
    metadata: dict[str, Any] = field(default_factory=dict)
    calibration: Tensor | None = None
    """Per-channel factor ``k [C]`` on the decoder's increments (``aivarda.background.vae.diagnostics.
    variance_calibration``); None: not calibrated."""
    spectral_calibration: Tensor | None = None
    """Per-channel, per-total-wavenumber gain ``g [C, L]`` on the decoder's increments
    (``aivarda.background.vae.diagnostics.spectral_calibration``); None: not estimated."""

    def payload(self, training_state: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "architecture": self.net.arch.model_dump(mode="json"),
            "state_dict": self.net.state_dict(),
            "err_std": self.err_std.float().cpu(),
            "grid": self.grid.to_dict(),
            "state_grid": self.state_grid.to_dict(),
            "layout": self.layout.to_dict(),
            "metadata": self.metadata,
        }
        if self.calibration is not None:
            out["calibration"] = self.calibration.float().cpu()
        if self.spectral_calibration is not None:
            out["spectral_calibration"] = self.spectral_calibration.float().cpu()
        if training_state is not None:
            out["training_state"] = training_state
        return out

    def save(self, path: str | Path, training_state: dict[str, Any] | None = None) -> Path:
        return save_torch_file(path, self.payload(training_state))

    @classmethod
    def load(cls, path: str | Path) -> tuple[VaeCheckpoint, dict[str, Any]]:
        """The checkpoint and the raw payload (for ``training_state``)."""
        d = read_vae_file(path)
        try:
            arch = VaeArchitecture.model_validate(d["architecture"])
            grid, layout = Grid.from_dict(d["grid"]), ChannelLayout.from_dict(d["layout"])
            net = VaeNet(len(layout), grid.shape, arch)
            net.load_state_dict(d["state_dict"])
            calibration, spectral = d.get("calibration"), d.get("spectral_calibration")
            ckpt = cls(net, d["err_std"].float(), grid, Grid.from_dict(d["state_grid"]), layout, dict(d["metadata"]),
                       None if calibration is None else torch.as_tensor(calibration).float(),
                       None if spectral is None else torch.as_tensor(spectral).float())
        except (KeyError, TypeError, ValidationError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{path}: damaged VAE checkpoint ({type(exc).__name__}: {first})") from None
        if tuple(ckpt.err_std.shape) != (len(layout),):
            raise DataError(f"{path}: err_std has shape {list(ckpt.err_std.shape)}, expected [{len(layout)}]")
        k = ckpt.calibration
        if k is not None and (tuple(k.shape) != (len(layout),) or not bool(torch.isfinite(k).all()) or bool((k <= 0).any())):
            raise DataError(f"{path}: calibration must be {len(layout)} finite positive factors, got shape {list(k.shape)}")
        g = ckpt.spectral_calibration
        if g is not None and (g.ndim != 2 or g.shape[0] != len(layout) or not bool(torch.isfinite(g).all()) or bool((g < 0).any())):
            raise DataError(f"{path}: spectral_calibration must be [{len(layout)}, L] finite non-negative gains, "
                            f"got shape {list(g.shape)}")
        net.eval()
        return ckpt, d


def read_vae_file(path: str | Path) -> dict[str, Any]:
    return load_torch_file(path, FORMAT, VERSION, "VAE checkpoint", "train one with `aivarda learn-b vae CONFIG`")
