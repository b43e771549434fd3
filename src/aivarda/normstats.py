"""Per-channel normalisation statistics of a state (``NormStats``): a value type shared by the
forecast models (their normalisation), the statistics cache (:mod:`aivarda.data.stats`, which
computes them from a field source) and the drivers (σ_clim of the observing system, σ_b)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aivarda.errors import DataError
from aivarda.files import atomic_write_text


@dataclass
class NormStats:
    """Per-channel statistics, tensors of shape ``[C]`` (float64) in the order of ``channels``."""

    channels: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor
    diff_mean: torch.Tensor
    diff_std: torch.Tensor
    diff_hours: float
    n_samples: int
    span: tuple[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "diff_mean": self.diff_mean.tolist(),
            "diff_std": self.diff_std.tolist(),
            "diff_hours": self.diff_hours,
            "n_samples": self.n_samples,
            "span": None if self.span is None else list(self.span),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        def vec(key: str) -> torch.Tensor:
            return torch.tensor(d[key], dtype=torch.float64)

        return cls(
            channels=tuple(d["channels"]),
            mean=vec("mean"),
            std=vec("std"),
            diff_mean=vec("diff_mean"),
            diff_std=vec("diff_std"),
            diff_hours=float(d["diff_hours"]),
            n_samples=int(d["n_samples"]),
            span=None if d.get("span") is None else (str(d["span"][0]), str(d["span"][1])),
        )

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (a partial file is never left behind)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: not a valid statistics file ({type(exc).__name__}: {exc})") from None

    def nonfinite_channels(self) -> list[str]:
        """Channels whose mean, std or difference statistics are NaN/Inf."""
        table = torch.stack([self.mean, self.std, self.diff_mean, self.diff_std])
        return [c for c, ok in zip(self.channels, torch.isfinite(table).all(0).tolist(), strict=True) if not ok]

    def finite(self) -> bool:
        return not self.nonfinite_channels()

    def select(self, names: tuple[str, ...] | list[str]) -> NormStats:
        """The statistics of a subset of channels, in the given order."""
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise DataError(f"statistics: channels {missing} not available (have {list(self.channels)})")
        idx = torch.tensor([self.channels.index(n) for n in names])
        return NormStats(
            tuple(names), self.mean[idx], self.std[idx], self.diff_mean[idx], self.diff_std[idx],
            self.diff_hours, self.n_samples, self.span,
        )

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(x − mean) / std`` per channel for ``x [..., C, H, W]``."""
        return (x - _bc(self.mean, x)) / _bc(self.std, x)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalise`."""
        return z * _bc(self.std, z) + _bc(self.mean, z)


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[C]`` → ``[C, 1, 1]`` on ``like``'s device and dtype."""
    return v.to(device=like.device, dtype=like.dtype)[:, None, None]
