"""The time-lagged ensemble, kept on disk.

Each analysis ``x_a(n)`` (cycle ``n``) is forecast ``1 … K`` cycles ahead (``K = dynamic_member``,
one cycle = ``cycle_time`` = ``steps_per_cycle`` model steps). At cycle ``m`` the members are the
forecasts valid at ``t_m``:

    x_k(m) = M^k(x_a(m − k)),    k = 1 … K     (leads 6 … 48 h for 6-hour cycles, K = 8)

and the lead-1 member ``x_1(m)`` is the background. A member is stored when it is forecast, as
``ENSEMBLE_DIR/valid_MMMMM/lead_KK.npy`` (``float32 [C, H, W]``, written atomically, with a SHA-256
sidecar ``lead_KK.npy.sha256``), and the directory of cycle ``m`` is removed once cycle ``m + 1`` is
committed (so that a resume can redo cycle ``m``; all are removed after the last cycle): at most
``K(K+1)/2 + K`` states are on disk, and only the background (or the members, for an ensemble B)
are in memory. A member read back is verified against its checksum and, when the ensemble knows
the channel layout, checked finite and inside the plausible range of each variable
(:func:`aivarda.ranges.check_state`).

Before the first cycle there are no analyses; the members come from the truth by time-lagging
(the seeds' ``gap``): the "analysis" at the virtual cycle ``−j`` (``j = 1 … K``) is
``M^{gap−1}(x_t(t_{−j−gap+1}))``, so the first background is a ``gap``-cycle forecast of the truth
``gap`` cycles earlier (48 h for ``gap = 8``) and the lead-``k`` member of cycle 0 a
``(gap + k − 1)``-cycle forecast.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from aivarda.channels import ChannelLayout
from aivarda.errors import DataError
from aivarda.files import atomic_write, checksum_file, verify_checksum, write_checksum
from aivarda.models.base import ForecastModel, iterate_trajectory
from aivarda.ranges import check_state


def forecast_trajectory(model: ForecastModel, x0: Tensor, n_cycles: int, steps_per_cycle: int) -> Tensor:
    """``[M^{s}(x0), M^{2s}(x0), …]`` for ``n_cycles`` cycles of ``s = steps_per_cycle`` steps:
    ``[n_cycles, *x0.shape]`` (no gradients; ``x0`` may carry batch dimensions)."""
    with torch.no_grad():
        return torch.stack(list(iterate_trajectory(model, x0, [steps_per_cycle] * n_cycles)))


class LaggedEnsemble:
    """Time-lagged members on disk for cycles ``0 … n_cycles − 1`` (see the module docstring)."""

    def __init__(self, directory: str | Path, members: int, n_cycles: int,
                 layout: ChannelLayout | None = None) -> None:
        if members < 1:
            raise ValueError("LaggedEnsemble: members must be >= 1")
        self.directory = Path(directory)
        self.members = int(members)
        self.n_cycles = int(n_cycles)
        self.layout = layout

    def _file(self, valid: int, lead: int) -> Path:
        return self.directory / f"valid_{valid:05d}" / f"lead_{lead:02d}.npy"

    def put(self, origin: int, trajectory: Tensor) -> None:
        """Store the forecasts of the analysis of cycle ``origin``: ``trajectory[k − 1]`` is valid at
        cycle ``origin + k`` (``k = 1 … K``); those valid after the last cycle are not kept."""
        for k in range(1, min(self.members, trajectory.shape[0]) + 1):
            self._write(origin + k, k, trajectory[k - 1])

    def _write(self, valid: int, lead: int, state: Tensor) -> None:
        """Store one member (with its checksum) unless ``valid`` is outside the run's cycles."""
        if 0 <= valid < self.n_cycles:
            array = state.detach().to("cpu", torch.float32).numpy()
            path = atomic_write(self._file(valid, lead), lambda tmp, a=array: np.save(tmp, a))
            write_checksum(path)

    def _load(self, path: Path, cycle: int) -> Tensor:
        """A member read back: checksum verified (when it has one), finite, plausible."""
        what = f"ensemble member of cycle {cycle}"
        if checksum_file(path).is_file():
            verify_checksum(path, what)
        try:
            x = torch.from_numpy(np.load(path))
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: {what} is damaged ({exc})") from None
        if self.layout is not None:
            return check_state(x, self.layout, f"{path}: {what}")
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{path}: {what} holds NaN/Inf values")
        return x

    def put_members(self, valid: int, members: Tensor) -> None:
        """Store an ensemble that is not time-lagged (``[K, C, H, W]``, e.g. the forecasts of an
        LETKF's analysis members) as the members ``1 … K`` of cycle ``valid`` (replacing any stored
        there; nothing is kept after the last cycle)."""
        if members.shape[0] != self.members:
            raise DataError(f"{self.directory}: {members.shape[0]} members for cycle {valid}, expected {self.members}")
        for k in range(1, self.members + 1):
            self._write(valid, k, members[k - 1])

    def leads(self, cycle: int) -> list[int]:
        """Leads (in cycles) of the members stored for ``cycle``."""
        folder = self.directory / f"valid_{cycle:05d}"
        return sorted(int(p.stem.split("_")[1]) for p in folder.glob("lead_*.npy")) if folder.is_dir() else []

    def background(self, cycle: int) -> Tensor:
        """The lead-1 member of ``cycle``: ``[C, H, W]``."""
        path = self._file(cycle, 1)
        if not path.is_file():
            raise DataError(f"{path}: background of cycle {cycle} is missing from the ensemble store")
        return self._load(path, cycle)

    def ensemble(self, cycle: int) -> Tensor:
        """All members of ``cycle`` by lead: ``[K, C, H, W]``."""
        leads = self.leads(cycle)
        if len(leads) != self.members:
            raise DataError(f"{self.directory}: cycle {cycle} has members of leads {leads}, expected 1…{self.members}")
        return torch.stack([self._load(self._file(cycle, k), cycle) for k in leads])

    def discard_through(self, cycle: int) -> None:
        """Once ``cycle`` is committed: remove the members of cycles ``< cycle`` (those of ``cycle``
        are kept so that a resume can redo it), or all of them after the last cycle."""
        last = cycle if cycle >= self.n_cycles - 1 else cycle - 1
        for folder in self.directory.glob("valid_*"):
            if int(folder.name.split("_")[1]) <= last:
                shutil.rmtree(folder, ignore_errors=True)

    def initialise(self, model: ForecastModel, truth: Tensor, gap: int, steps_per_cycle: int) -> None:
        """Members of cycles ``0 … K − 1`` that come before any analysis, by time-lagging the truth.

        ``truth`` is ``[K, C, H, W]``: row ``j − 1`` the truth at ``t_{−j−gap+1}`` (``j = 1 … K``).
        All ``K`` virtual analyses are forecast together as one batch.
        """
        if gap < 1:
            raise ValueError("LaggedEnsemble.initialise: gap must be >= 1")
        with torch.no_grad():
            x = model.forecast(truth, (gap - 1) * steps_per_cycle) if gap > 1 else truth
        trajectories = forecast_trajectory(model, x, self.members, steps_per_cycle)  # [K(lead), K(j), C, H, W]
        for j in range(1, truth.shape[0] + 1):
            self.put(-j, trajectories[:, j - 1])


def initial_truth_times(start: np.datetime64, cycle: np.timedelta64, gap: int, members: int) -> np.ndarray:
    """``[K]`` times of the truth states :meth:`LaggedEnsemble.initialise` needs: ``t_{−j−gap+1}``,
    ``j = 1 … K``, for cycle 0 at ``start`` and cycles ``cycle`` apart."""
    j = np.arange(1, members + 1)
    return (np.datetime64(start, "ns") - (j + gap - 1) * cycle).astype("datetime64[ns]")



