"""``aivarda train-model CONFIG``: train a forecast network on a field source.

Samples are trajectories ``(x_t, x_{t+dt}, …, x_{t+k·dt})`` of the training span (``k`` =
``rollout_steps``; ``k = 1`` is plain one-step training, ``k > 1`` multi-step rollout fine-tuning).
The loss is the latitude-weighted MSE of the autoregressive rollout in normalised units,

    L = 1/(k·C·H·W) Σ_j Σ_{c,h,w} w_h · ((x̂_{t+j·dt} − x_{t+j·dt})_{c,h,w} / s_c)²,

with ``w_h`` the area weights (mean 1) and ``s_c`` the tendency std ``σ_Δ`` (``loss_norm:
tendency``) or the state std ``σ`` (``loss_norm: state``). AdamW, linear warm-up then cosine decay,
gradient clipping, bfloat16 autocast on CUDA.

Distributed: launch the same command with ``torchrun --nproc_per_node N`` (or across nodes);
``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` select DistributedDataParallel over NCCL (CUDA) or Gloo
(CPU). ``batch_size`` is the global batch, split evenly over the processes; every process draws
its share of the same seeded permutation (DistributedSampler), so a run gives the same weights
(up to reduction order) whatever the number of processes. Only rank 0 writes.

Outputs in ``output_dir``: ``last.pt`` (model + optimiser/scheduler/step/RNG for ``--resume``,
written every ``checkpoint_every`` steps and at every epoch end), ``best.pt`` (lowest validation
loss), ``train_log.jsonl`` (one line per epoch). Both checkpoints load with
:func:`aivarda.models.checkpoint.load_forecast_model`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from aivarda.config import DataConfig
from aivarda.data.fingerprint import trained_on_record
from aivarda.data.sources import (
    FieldSource,
    Wb2ZarrSource,
    data_time_range,
    holdout_cut,
    layout_from_channels,
    store_layout,
)
from aivarda.data.stats import load_or_compute_norm_stats
from aivarda.errors import ConfigError, DataError
from aivarda.files import check_writable_dir
from aivarda.models.checkpoint import (
    build_forecast_model,
    checkpoint_dict,
    read_checkpoint,
    save_checkpoint,
)
from aivarda.models.config import TrainConfig, TrainDataConfig, load_train_config
from aivarda.models.normalised import NeuralForecastModel
from aivarda.normstats import NormStats
from aivarda.parallel import DistInfo, end_distributed, is_rank0, rank0_first, setup_distributed
from aivarda.provenance import TimeSpan, TrainedOn, records_to_json
from aivarda.timeaxis import from_hours


# ---------------------------------------------------------------------------------------- data
class TrajectoryDataset(Dataset):
    """Item ``i``: the states ``[k+1, C, H, W]`` at ``t_i + j·dt``, ``j = 0…k``, for start times
    ``t_i`` whose whole trajectory lies in the source."""

    def __init__(
        self, source: FieldSource, starts: np.ndarray, dt_hours: float, k: int,
        cache: bool | dict[np.datetime64, Tensor] | None = True,
    ) -> None:
        self.source = source
        self.starts = np.asarray(starts, dtype="datetime64[ns]")
        self.offsets = np.array([int(round(j * dt_hours * 3600)) for j in range(k + 1)], dtype="timedelta64[s]")
        # True: a cache of its own; a dict: share that cache (another dataset's); False/None: none
        self.cache: dict[np.datetime64, Tensor] | None = cache if isinstance(cache, dict) else ({} if cache else None)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Tensor:
        times = (self.starts[i] + self.offsets).astype("datetime64[ns]")
        if self.cache is None:
            return self.source.states(times)
        missing = np.array([t for t in times if t not in self.cache], dtype="datetime64[ns]")
        if missing.size:
            for t, x in zip(missing, self.source.states(missing)):
                self.cache[t] = x.clone()
        return torch.stack([self.cache[t] for t in times])


def trajectory_starts(times: np.ndarray, dt_hours: float, k: int) -> np.ndarray:
    """Times ``t`` with ``t + j·dt`` in ``times`` for every ``j = 1…k``."""
    times = np.asarray(times, dtype="datetime64[ns]")
    ok = np.ones(times.size, dtype=bool)
    for j in range(1, k + 1):
        ok &= np.isin(times + from_hours(j * dt_hours), times)
    return times[ok]


def store_path(data: DataConfig) -> Path:
    """The store a data section names: the (cached, generated on first use) nature run or ``path``."""
    if data.source == "nature_run":
        from aivarda.data.nature_run import ensure_nature_run

        return Path(ensure_nature_run(progress=is_rank0()))
    if data.path is None:
        raise ConfigError("data.path: required when data.source is 'zarr'")
    return Path(data.path)


def open_training_sources(data: TrainDataConfig) -> tuple[Wb2ZarrSource, Wb2ZarrSource | None]:
    """The training source and the validation source (``val_span``, else the last
    ``val_fraction`` of ``train_span``, else none). The two never share a time."""
    path = store_path(data)
    layout = layout_from_channels(data.variables) if data.variables else store_layout(path)
    train = Wb2ZarrSource(path, layout, span=data.train_span, time_range=data_time_range(data))
    if data.val_span is not None:
        return train, Wb2ZarrSource(path, layout, span=data.val_span, time_range=data_time_range(data))
    if data.val_fraction == 0:
        return train, None
    cut = holdout_cut(train.times.size, data.val_fraction, f"{path}: span {data.train_span!r}")
    val = Wb2ZarrSource(path, layout, span=data.train_span, time_range=(train.times[cut], train.times[-1]))
    train = Wb2ZarrSource(path, layout, span=data.train_span, time_range=(train.times[0], train.times[cut - 1]))
    return train, val


def training_statistics(source: Wb2ZarrSource, cfg: TrainConfig, progress: bool = True) -> NormStats:
    """From ``data.stats`` or computed on the training times with ``diff_hours = dt`` (cached
    under ``$AIVARDA_HOME/stats``)."""
    if cfg.data.stats is not None:
        if not cfg.data.stats.is_file():
            raise ConfigError(f"{cfg.data.stats}: statistics file not found (data.stats)")
        return NormStats.load(cfg.data.stats)
    return load_or_compute_norm_stats(
        source, diff_hours=cfg.model.dt, max_samples=cfg.data.stats_samples, progress=progress
    )


def training_record(
    cfg: TrainConfig, source: Wb2ZarrSource, val_source: Wb2ZarrSource | None, start: dict[str, Any] | None
) -> list[TrainedOn]:
    """What the model learns from: its training span and the validation span that selects
    ``best.pt`` (first record), then what the ``init_from`` weights learned from."""
    from aivarda.artefacts import trained_on_of_checkpoint

    spans = [TimeSpan.of(source.times, "train")]
    if val_source is not None:
        spans.append(TimeSpan.of(val_source.times, "validation"))
    records = [trained_on_record(f"forecast model {cfg.name}", source, spans)]
    if start is not None:
        inherited = trained_on_of_checkpoint(start, name=Path(cfg.init_from).name)  # type: ignore[arg-type]
        records += [replace(r, note=f"initial weights (init_from); {r.note}".rstrip("; ")) for r in inherited]
    return records


# ---------------------------------------------------------------------------------------- loss / schedule
def weighted_mse(pred: Tensor, target: Tensor, scale: Tensor, weights: Tensor) -> Tensor:
    """``mean(w_h · ((pred − target)/s_c)²)`` over all axes; ``scale`` ``[C, 1, 1]``, ``weights`` ``[H]``."""
    err = (pred.float() - target.float()) / scale
    return (weights[:, None] * err.square()).mean()


def lr_lambda(warmup: int, total: int, min_ratio: float):
    """Multiplier of the base learning rate at step ``s``: ``s/warmup`` during warm-up, then
    ``min + (1 − min)·½(1 + cos(π·progress))``."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


class Rollout(nn.Module):
    """``(x_0 [B, C, H, W], k) → [k, B, C, H, W]``: the module DistributedDataParallel wraps."""

    def __init__(self, model: NeuralForecastModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, k: int) -> Tensor:
        return self.model.rollout(x, k)


# ---------------------------------------------------------------------------------------- distributed
def _all_sum(values: list[float], info: DistInfo) -> list[float]:
    if info.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------------- trainer
def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def make_optimizer(
    model: NeuralForecastModel, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on biases, norms and embeddings' 1-D parameters) + warm-up/cosine."""
    params = list(model.net.parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
    )
    schedule = lr_lambda(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


class Trainer:
    """One training run (one process of it under torchrun); see the module docstring."""

    def __init__(self, cfg: TrainConfig, progress: bool = True) -> None:
        self.cfg = cfg
        self.info, self.local_batch = process_setup(cfg.device, cfg.batch_size, "batch_size")
        info = self.info
        self.rank0 = info.rank == 0
        self.progress = progress and self.rank0
        self.k, dt = cfg.rollout_steps, cfg.model.dt
        torch.manual_seed(cfg.seed)

        start = read_checkpoint(cfg.init_from) if cfg.init_from is not None else None
        with rank0_first(info):  # generates the nature run / computes statistics once, the others read
            source, val_source = open_training_sources(cfg.data)
            # fine-tuning keeps the normalisation the given weights were trained with
            stats = start["norm_stats"] if start is not None else training_statistics(source, cfg, self.progress)
        self.source = source
        self.trained_on = training_record(cfg, source, val_source, start)
        self.model = build_forecast_model(
            cfg.model.architecture, stats, source.grid, source.layout, dt,
            residual=cfg.model.residual, checkpoint=cfg.grad_checkpointing, linear_prior=cfg.model.linear_prior, allow_module=True,
        )
        self.prior_fit: dict[str, float] | None = None
        if start is not None:
            try:
                self.model.net.load_state_dict(start["state_dict"])
                if self.model.prior is not None:
                    self.model.prior.load_state_dict((start.get("linear_prior") or {})["state_dict"])
            except (RuntimeError, KeyError, TypeError) as exc:
                first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
                raise ConfigError(f"init_from: {cfg.init_from} does not fit model.architecture/linear_prior ({first})") from None
        self.model.to(info.device)
        self.local_rollout = Rollout(self.model)
        self.rollout: nn.Module = self.local_rollout
        if info.world_size > 1:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            self.rollout = nn.parallel.DistributedDataParallel(self.local_rollout, device_ids=device_ids)

        self.train_ds = TrajectoryDataset(source, trajectory_starts(source.times, dt, self.k), dt, self.k, cfg.data.cache)
        val_starts = trajectory_starts(val_source.times, dt, self.k) if val_source is not None else np.array([], "datetime64[ns]")
        self.val_ds = TrajectoryDataset(val_source or source, val_starts, dt, self.k, cfg.data.cache)
        self.sampler = DistributedSampler(
            self.train_ds, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{source.path}: span {cfg.data.train_span!r} gives {len(self.train_ds)} training trajectories "
                f"({self.k} × {dt:g} h), fewer than one batch of {cfg.batch_size}"
            )
        self.total_steps = min(cfg.max_steps or 10**12, cfg.epochs * self.steps_per_epoch)
        self.optimizer, self.scheduler = make_optimizer(self.model, cfg, self.total_steps)

        self.weights = torch.as_tensor(source.grid.weights, dtype=torch.float32, device=info.device)
        self.scale = self.model.diff_std if cfg.loss_norm == "tendency" else self.model.std
        use_amp = cfg.amp and info.device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
        self.out = Path(cfg.output_dir)
        self.step, self.best_val = 0, math.inf

    def fit_prior(self, source: FieldSource) -> dict[str, float]:
        """Least-squares fit of the linear prior on the one-step pairs of the training span
        (every process fits the same, deterministically)."""
        from aivarda.models.linear_prior import fit_linear_prior

        dt = self.cfg.model.dt
        # through the training cache: the states read here are not read again for training
        pairs_ds = TrajectoryDataset(source, trajectory_starts(source.times, dt, 1), dt, 1, cache=self.train_ds.cache)
        loader = DataLoader(pairs_ds, batch_size=16, num_workers=self.cfg.num_workers)
        model = self.model.cpu()
        pairs = [(model.normalise(b[:, 0]), model.normalise(b[:, 1])) for b in loader]
        weights = torch.as_tensor(source.grid.weights, dtype=torch.float32)
        return fit_linear_prior(self.model.prior, pairs, weights, progress=self.progress)

    # ------------------------------------------------------------------ checkpoints
    def metadata(self, epoch: int, train_loss: float, val_loss: float) -> dict[str, Any]:
        return {
            **run_metadata(self, epoch, train_loss, val_loss),
            "store": str(self.source.path),
            "train_span": self.cfg.data.train_span,
            "linear_prior_fit": self.prior_fit,
            "trained_on": records_to_json(self.trained_on),
        }

    def save(self, name: str, epoch: int, train_loss: float, val_loss: float, training_state: bool) -> None:
        """Rank 0 writes ``output_dir/name``; with the optimiser/scheduler/step/RNG for ``--resume``."""
        if not self.rank0:
            return
        payload = checkpoint_dict(self.model, self.metadata(epoch, train_loss, val_loss))
        if training_state:
            payload["training_state"] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "step": self.step,
                "best_val": self.best_val,
                "rng": _rng_state(self.info.device),
            }
        save_checkpoint(self.out / name, payload)

    def resume(self) -> None:
        """Restore weights, optimiser, scheduler, step and RNG from ``output_dir/last.pt``."""
        last = last_checkpoint(self.out)
        payload = read_checkpoint(last)
        state = training_state(payload, last)
        self.model.net.load_state_dict(payload["state_dict"])
        if self.model.prior is not None:
            self.model.prior.load_state_dict(payload["linear_prior"]["state_dict"])
            self.prior_fit = payload["metadata"].get("linear_prior_fit")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.best_val = int(state["step"]), float(state["best_val"])
        _set_rng_state(state["rng"], self.info.device)

    # ------------------------------------------------------------------ steps
    def loss(self, batch: Tensor, net: nn.Module) -> Tensor:
        """Rollout loss of a batch of trajectories ``[B, k+1, C, H, W]``."""
        batch = batch.to(self.info.device)
        with self.autocast:
            pred = net(batch[:, 0], self.k)
        return weighted_mse(pred, batch[:, 1:].transpose(0, 1), self.scale, self.weights)

    def train_step(self, batch: Tensor) -> float:
        loss = self.loss(batch, self.rollout)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return loss.item()

    def validate(self) -> float:
        """Mean loss over the validation trajectories (all processes), NaN without any."""
        if len(self.val_ds) == 0:
            return math.nan
        info = self.info
        sampler = DistributedSampler(self.val_ds, num_replicas=info.world_size, rank=info.rank, shuffle=False)
        loader = DataLoader(self.val_ds, batch_size=self.local_batch, sampler=sampler, num_workers=self.cfg.num_workers)
        total = count = 0.0
        self.model.eval()
        with torch.no_grad():
            for batch in loader:
                total += self.loss(batch, self.local_rollout).item() * len(batch)
                count += len(batch)
        self.model.train()
        total, count = _all_sum([total, count], info)
        return total / count

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return epoch_batches(self, epoch)

    # ------------------------------------------------------------------ loop
    def run(self, stop_after: int | None = None) -> dict[str, Any]:
        if self.model.prior is not None and not bool(self.model.prior.fitted):
            self.prior_fit = self.fit_prior(self.source)
            self.model.to(self.info.device)
        if self.rank0:
            self.out.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"train {self.cfg.name}", unit="step",
                   disable=not self.progress)
        self.model.train()

        def batches(epoch: int, done_in_epoch: int) -> Any:
            return DataLoader(self.train_ds, batch_sampler=self.epoch_batches(epoch)[done_in_epoch:],
                              num_workers=self.cfg.num_workers)

        def step(batch: Any) -> tuple[float, dict[str, str]]:
            loss = self.train_step(batch)
            return loss, {"loss": f"{loss:.4g}", "lr": f"{self.scheduler.get_last_lr()[0]:.2e}"}

        epoch, train_loss, (val_loss,), seconds = run_epochs(
            self, batches, step, lambda: (self.validate(),), self.cfg.checkpoint_every, bar, stop_after
        )
        return {
            "steps": self.step,
            "epochs": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": self.best_val,
            "seconds_per_step": float(np.median(seconds)) if seconds else math.nan,
            "train_trajectories": len(self.train_ds),
            "val_trajectories": len(self.val_ds),
            "parameters": sum(p.numel() for p in self.model.net.parameters()),
            "world_size": self.info.world_size,
            "linear_prior_fit": self.prior_fit,
            "output_dir": str(self.out),
        }


def epoch_batches(trainer: Any, epoch: int) -> list[list[int]]:
    """This process's batches of an epoch: its share (``trainer.sampler``, a DistributedSampler) of
    the epoch's seeded permutation, ``trainer.local_batch`` indices each."""
    trainer.sampler.set_epoch(epoch)
    order = list(trainer.sampler)
    b = trainer.local_batch
    return [order[i : i + b] for i in range(0, trainer.steps_per_epoch * b, b)]


def run_metadata(trainer: Any, epoch: int, train_loss: float, val_loss: float) -> dict[str, Any]:
    """What every trainer's checkpoint records about the run (the trainer adds its own fields)."""
    return {
        "name": trainer.cfg.name,
        "config": trainer.cfg.model_dump(mode="json"),
        "step": trainer.step,
        "epoch": epoch,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "world_size": trainer.info.world_size,
        "torch": str(torch.__version__),
    }


def last_checkpoint(out: Path) -> Path:
    """``out/last.pt`` to resume from (one DataError line when there is none)."""
    last = out / "last.pt"
    if not last.is_file():
        raise DataError(f"{last}: nothing to resume (no last.pt in output_dir)")
    return last


def training_state(payload: dict[str, Any], last: Path) -> dict[str, Any]:
    """The training state (optimiser, step, …) a ``last.pt`` carries for ``--resume``."""
    if "training_state" not in payload:
        raise DataError(f"{last}: checkpoint has no training state to resume from")
    return payload["training_state"]


def process_setup(device: str, batch_size: int, key: str) -> tuple[Any, int]:
    """This process of a (possibly distributed) training: its :func:`setup_distributed` info and
    its share of the global batch (``key`` names the batch-size field in the error)."""
    info = setup_distributed(device)
    if batch_size % info.world_size:
        raise ConfigError(f"{key} ({batch_size}) must be divisible by the number of processes ({info.world_size})")
    return info, batch_size // info.world_size


def run_epochs(
    trainer: Any,
    batches: Callable[[int, int], Iterable[Any]],
    step: Callable[[Any], tuple[float, dict[str, str]]],
    validate: Callable[[], tuple[float, ...]],
    checkpoint_every: int,
    bar: Any,
    stop_after: int | None,
    log_extra: Callable[[tuple[float, ...]], dict[str, Any]] = lambda val: {},
) -> tuple[int, float, tuple[float, ...], list[float]]:
    """The epoch loop every trainer shares (``trainer`` has ``step``, ``total_steps``,
    ``steps_per_epoch``, ``info``, ``save`` and what :func:`end_of_epoch` needs).

    ``batches(epoch, done)`` yields the batches of ``epoch`` after the first ``done`` (a resumed
    epoch continues where it stopped); ``step(batch)`` trains on one and returns its loss and the
    progress-bar fields; ``validate()`` returns the validation loss first (``log_extra`` turns the
    rest into fields of the training log). ``last.pt`` is written
    every ``checkpoint_every`` steps and at ``stop_after``; each completed epoch ends with
    :func:`end_of_epoch`; at the end the bar is closed and the processes wait for each other.
    Returns the epoch, the last training loss, the last validation tuple and
    the seconds of each step."""
    train_loss, val, seconds = math.nan, (math.nan,), []
    epoch = trainer.step // trainer.steps_per_epoch
    while trainer.step < trainer.total_steps:
        run_sum = run_n = 0.0
        for batch in batches(epoch, trainer.step - epoch * trainer.steps_per_epoch):
            t0 = time.perf_counter()
            loss, postfix = step(batch)
            seconds.append(time.perf_counter() - t0)
            run_sum, run_n = run_sum + loss, run_n + 1
            bar.update(1)
            bar.set_postfix(**postfix, epoch=epoch)
            if trainer.step % checkpoint_every == 0 and trainer.step < trainer.total_steps:
                trainer.save("last.pt", epoch, run_sum / run_n, val[0], training_state=True)
            if trainer.step >= trainer.total_steps or trainer.step == stop_after:
                break
        if trainer.step == stop_after and trainer.step < trainer.total_steps:
            trainer.save("last.pt", epoch, run_sum / max(run_n, 1), val[0], training_state=True)
            break
        total, n = _all_sum([run_sum, run_n], trainer.info)
        train_loss, val = total / max(n, 1), validate()
        end_of_epoch(trainer, epoch, train_loss, val[0], log_extra(val))
        if trainer.step % trainer.steps_per_epoch == 0:
            epoch += 1
    bar.close()
    if trainer.info.world_size > 1:
        dist.barrier()
    return epoch, train_loss, val, seconds


def end_of_epoch(trainer: Any, epoch: int, train_loss: float, val_loss: float, extra: dict[str, Any]) -> None:
    """What every trainer writes at the end of an epoch: ``best.pt`` when the validation loss
    improved (or cannot be measured), a ``train_log.jsonl`` line (rank 0; ``extra`` added) and
    ``last.pt`` with the training state for ``--resume``."""
    if math.isnan(val_loss) or val_loss < trainer.best_val:
        trainer.best_val = val_loss if not math.isnan(val_loss) else trainer.best_val
        trainer.save("best.pt", epoch, train_loss, val_loss, training_state=False)
    if trainer.rank0:
        with open(trainer.out / "train_log.jsonl", "a") as log:
            record = {"epoch": epoch, "step": trainer.step, "train_loss": train_loss, "val_loss": val_loss, **extra}
            log.write(json.dumps(record) + "\n")
    trainer.save("last.pt", epoch, train_loss, val_loss, training_state=True)


def train(
    cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Train as configured; returns a summary (steps, losses, median seconds per step, paths).

    ``resume`` continues from ``output_dir/last.pt`` (weights, optimiser, scheduler, step, RNG);
    ``stop_after`` pauses after that many steps in total (``last.pt`` written; the schedule still
    spans the whole run), so a long training can run in slices.
    """
    trainer = Trainer(cfg, progress)
    if resume:
        trainer.resume()
    return trainer.run(stop_after)


def main(args: argparse.Namespace) -> int:
    """CLI handler of ``aivarda train-model``."""
    cfg = load_train_config(args.config)
    if getattr(args, "max_steps", None):
        cfg.max_steps = args.max_steps
    if getattr(args, "out", None):
        cfg.output_dir = Path(args.out).resolve()
    check_writable_dir(cfg.output_dir, "output_dir")  # before any training, not at the first checkpoint
    summary = train(
        cfg,
        resume=bool(getattr(args, "resume", False)),
        stop_after=getattr(args, "stop_after", None),
        progress=not getattr(args, "quiet", False),
    )
    if is_rank0():
        print(json.dumps(summary, indent=None if getattr(args, "json", False) else 2))
    end_distributed()
    return 0
