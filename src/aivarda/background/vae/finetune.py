"""Per-cycle fine-tuning of the VAE decoder on the ensemble (LoRA-EnVar, ``docs/lora-envar.md``).

Every cycle the B ``δx = U(z) = I(s ⊙ (D(z) − D(0)))`` of :mod:`aivarda.background.vae.transform`
is adapted to the ensemble of that cycle, so that the decoder ``D`` — and with it the background
error — becomes flow-dependent.

**Samples.** With members ``x_k [C, H, W]``, ``k = 1 … K`` (``K ≥ 2``), valid at the window start and
interpolated to the decoder's (control) grid, and ``w_h`` the grid's area weights (mean 1):

    d_k = x_k − x̄,                                         x̄ = (1/K) Σ_k x_k
    a_{k,c} = (Σ_{h,w} w_h (d_{k,c,h,w} − m_{k,c})² / Σ_{h,w} w_h)^½     (m_{k,c}: weighted mean of d_{k,c})
    u_k = d_k / a_k                                          each member's channel at unit spatial std
    b_c = (Σ_{k,h,w} w_h (u_{k,c,h,w} − n_c)² / Σ_{k,h,w} w_h)^½         (n_c: weighted mean over k, h, w)
    x_k = u_k / b_c                                          the fine-tuning samples

``a`` is each deviation's own per-channel spatial std, so every member weighs the same whatever its
lead (the oldest time-lagged member deviates the most); ``b`` is the NMC normalisation of
``aivarda learn-b vae`` (:func:`~aivarda.background.vae.checkpoint.channel_std`, area-weighted,
pooled over samples) applied to the ``u_k``, so the ``x_k`` have exactly the per-channel statistics of
the VAE's training samples ``δx / s`` (unit area-weighted variance over samples and grid) and the
decoder keeps working in the normalised units its output is multiplied back by ``s`` (the NMC std
of the checkpoint): the fine-tuning changes the structure of the increments, their per-channel
amplitude stays the NMC one. A channel with ``a_{k,c} = 0`` or ``b_c = 0`` is left at zero.

**Loss and optimiser.** The VAE loss of ``aivarda learn-b vae``
(:func:`~aivarda.background.vae.network.vae_loss`), per sample
``Σ (x̂ − x)² / (2σ²) + ½ Σ (μ² + σ_z² − log σ_z² − 1)`` with ``x̂ = D(μ + σ_z ε)``, averaged over the
batch; Adam (a new one every cycle), ``epochs`` passes over the ``K`` samples in batches of
``batch_size`` (the last one smaller when ``batch_size`` does not divide ``K``). The encoder is
frozen unless ``train_encoder``.

**Modes** (``finetune.mode``):

- ``lora``: rank-``r`` LoRA adapters (the ``peft`` library, ``LoraConfig(r, lora_alpha, target_modules)``)
  on the decoder's ``target_modules``: ``W x ↦ W x + (α/r) B A x`` with ``A [r, n_in]`` drawn as
  peft's default (Kaiming-uniform) and ``B [n_out, r] = 0``, so the first decode is the static
  VAE's bit for bit; only ``A``, ``B`` are trained (lr 1e-2) and carried from cycle to cycle.
  The decoder's attention (:class:`aivarda.models.fengwu.WindowAttention3D`) has two Linear layers:
  ``qkv``, the query, key and value projections fused in one ``[3D, D]`` matrix (rows ``0:D`` the
  query), and ``proj``, the output projection. With ``qkv_rows: query`` (default) the gradient of
  the rows ``D:3D`` of ``B`` is masked to zero, so they stay exactly 0 under Adam and the adapter
  changes the query projection only, ``ΔW_q = (α/r) B_q A``; ``qkv_rows: all`` adapts all three.
- ``reset``: the same adapters, re-initialised (``A`` redrawn, ``B = 0``) before every fine-tuning.
- ``full``: every parameter of the decoder is trained (lr 1e-5) and carried from cycle to cycle.
- ``none``: the static VAE (no update).

**Determinism.** Cycle ``n``'s fine-tuning (the ``n``-th update, counted by the B and restored on
``--resume``) draws its batch order and its ``ε`` from a generator seeded by
``SeedSequence([seed, n])``; the adapters' initial ``A`` (at build time and every reset) from
``SeedSequence([seed, n, 1])`` (``n = 0`` at build), so a run and a resumed run fine-tune identically.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from aivarda.background.vae.checkpoint import channel_std
from aivarda.background.vae.network import VaeNet, vae_loss
from aivarda.config import StrictModel
from aivarda.errors import ConfigError, DataError

ADAPTER = "default"
"""peft's adapter name (the only one)."""
DEFAULT_LR = {"lora": 1e-2, "reset": 1e-2, "full": 1e-5, "none": 0.0}


class FinetuneConfig(StrictModel):
    """``background_error.finetune`` of ``type: vae`` (module docstring); defaults as released."""

    mode: Literal["none", "lora", "full", "reset"] = Field(
        default="none", description="none: static VAE; lora: adapters carried over; reset: adapters re-initialised every cycle; full: all decoder weights"
    )
    rank: int = Field(default=2, ge=1, description="LoRA rank r")
    alpha: float | None = Field(default=None, gt=0, description="LoRA α (update scaled by α/r); default: r (scaling 1)")
    target_modules: list[str] = Field(
        default_factory=lambda: ["qkv"], min_length=1,
        description="peft target_modules: names (suffixes) of the Linear layers of the decoder that get adapters",
    )
    qkv_rows: Literal["query", "all"] = Field(
        default="query", description="rows of a fused 'qkv' Linear an adapter may change: the query projection, or q, k and v"
    )
    lr: float | None = Field(default=None, gt=0, description="Adam learning rate; default 1e-2 (lora, reset), 1e-5 (full)")
    epochs: int = Field(default=5, ge=1)
    batch_size: int = Field(default=4, ge=1)
    sigma: float = Field(default=2.0, gt=0, description="σ of the reconstruction term Σ(x̂ − x)²/(2σ²)")
    seed: int = Field(default=0, ge=0)
    train_encoder: bool = Field(default=False, description="also fine-tune the encoder (its adapters, or its weights in full mode)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]


def ensemble_samples(members: Tensor, weights: Tensor | np.ndarray) -> Tensor:
    """The fine-tuning samples ``x_k`` ``[K, C, H, W]`` of members ``[K, C, H, W]`` on a grid with
    row weights ``[H]`` (module docstring), in float64."""
    if members.ndim != 4 or members.shape[0] < 2:
        raise DataError(f"VAE fine-tuning: expected members [K ≥ 2, C, H, W], got {list(members.shape)}")
    d = members.double() - members.double().mean(0)
    a = torch.stack([channel_std(d[k : k + 1], weights).double() for k in range(d.shape[0])])  # [K, C]
    u = torch.where(a[:, :, None, None] > 0, d / a.clamp_min(1e-300)[:, :, None, None], torch.zeros((), dtype=d.dtype))
    b = channel_std(u, weights).double()  # [C]
    return torch.where(b[:, None, None] > 0, u / b.clamp_min(1e-300)[:, None, None], torch.zeros((), dtype=d.dtype))


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's global generator (CPU, and the CUDA one of ``device``) seeded with ``seed`` inside
    the block and restored after it (peft initialises adapters from the global generator)."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class VaeFinetuner:
    """Fine-tunes the decoder of ``net`` (in place) on the ensemble of each cycle (module docstring)."""

    def __init__(self, net: VaeNet, cfg: FinetuneConfig) -> None:
        if cfg.mode == "none":
            raise ValueError("VaeFinetuner: mode none fine-tunes nothing")
        self.net, self.cfg = net, cfg
        self.scope: nn.Module = net if cfg.train_encoder else net.decoder
        self.updates = 0
        self._masks: dict[str, Tensor] = {}
        if cfg.mode in ("lora", "reset"):
            self._inject()
        for p in net.parameters():
            p.requires_grad_(False)
        self.last: dict[str, float] = {}

    # ------------------------------------------------------------------ adapters
    def _inject(self) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.cfg
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha if cfg.alpha is not None else cfg.rank,
                          target_modules=list(cfg.target_modules), lora_dropout=0.0, bias="none")
        device = next(self.net.parameters()).device
        try:
            with _seeded(device, _seed(cfg.seed, 0, 1)):
                inject_adapter_in_model(lora, self.scope, adapter_name=ADAPTER)
        except ValueError as exc:
            linear = sorted({name.rsplit(".", 1)[-1] for name, m in self.scope.named_modules() if isinstance(m, nn.Linear)})
            raise ConfigError(
                f"background_error.finetune.target_modules: {cfg.target_modules} match no Linear layer of the "
                f"{'VAE' if cfg.train_encoder else 'decoder'} (its Linear layers: {linear}) — {str(exc).splitlines()[0]}"
            ) from None
        for name, module in self.lora_layers():
            out_features = module.lora_B[ADAPTER].weight.shape[0]
            if cfg.qkv_rows == "query" and name.rsplit(".", 1)[-1] == "qkv":
                if out_features % 3:
                    raise ConfigError(f"background_error.finetune.qkv_rows: {name} has {out_features} outputs, not 3 × the query's")
                mask = torch.zeros(out_features, 1)
                mask[: out_features // 3] = 1.0
                weight = module.lora_B[ADAPTER].weight
                self._masks[name] = mask
                weight.register_hook(lambda g, m=mask: g * m.to(g))

    def lora_layers(self) -> list[tuple[str, nn.Module]]:
        from peft.tuners.lora import LoraLayer

        return [(name, m) for name, m in self.scope.named_modules() if isinstance(m, LoraLayer)]

    def _reset_adapters(self, seed: int) -> None:
        device = next(self.net.parameters()).device
        with _seeded(device, seed), torch.no_grad():
            for _, module in self.lora_layers():
                module.reset_lora_parameters(ADAPTER, True)

    # ------------------------------------------------------------------ parameters
    def trainable(self) -> list[nn.Parameter]:
        """The parameters a fine-tuning changes (adapters, or every weight in full mode)."""
        if self.cfg.mode == "full":
            return list(self.scope.parameters())
        return [p for name, p in self.scope.named_parameters() if ".lora_A." in name or ".lora_B." in name]

    def n_trainable(self) -> int:
        """Number of values a fine-tuning can change (the masked key/value rows of a query-only
        adapter's ``B`` not counted)."""
        if self.cfg.mode == "full":
            return sum(p.numel() for p in self.trainable())
        n = 0
        for name, module in self.lora_layers():
            a, b = module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight
            rows = int(self._masks[name].sum()) if name in self._masks else b.shape[0]
            n += a.numel() + rows * b.shape[1]
        return n

    # ------------------------------------------------------------------ update
    def update(self, samples: Tensor) -> dict[str, float]:
        """Fine-tune on ``samples`` ``[K, C, H, W]`` (normalised, on the decoder's grid, the device
        and dtype of the network); returns ``{trainable_params, finetune_loss_first, finetune_loss_last,
        finetune_steps}`` (mean loss per sample of the first and the last epoch)."""
        cfg = self.cfg
        self.updates += 1
        n = self.updates
        if cfg.mode == "reset":
            self._reset_adapters(_seed(cfg.seed, n, 1))
        params = self.trainable()
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
        gen = torch.Generator().manual_seed(_seed(cfg.seed, n))
        K, device = samples.shape[0], samples.device
        epoch_loss: list[float] = []
        steps = 0
        try:
            for _ in range(cfg.epochs):
                order = torch.randperm(K, generator=gen)
                total = 0.0
                for i in range(0, K, cfg.batch_size):
                    idx = order[i : i + cfg.batch_size].to(device)
                    eps = torch.randn((len(idx), *self.net.latent_shape), generator=gen).to(samples)
                    x = samples[idx]
                    x_hat, mu, logvar = self.net(x, eps)
                    recon, kl = vae_loss(x, x_hat, mu, logvar, cfg.sigma)
                    loss = (recon + kl).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    steps += 1
                epoch_loss.append(total / K)
        finally:
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        if not all(math.isfinite(v) for v in epoch_loss):
            raise DataError(f"VAE fine-tuning of update {n}: the loss is not finite ({epoch_loss}); lower background_error.finetune.lr")
        self.last = {"trainable_params": float(self.n_trainable()), "finetune_loss_first": epoch_loss[0],
                     "finetune_loss_last": epoch_loss[-1], "finetune_steps": float(steps)}
        return self.last

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """What the next cycles depend on: the update count and the adapters (``lora``, ``reset``)
        or the fine-tuned weights (``full``), on the CPU."""
        if self.cfg.mode == "full":
            weights = {k: v.detach().cpu().clone() for k, v in self.scope.state_dict().items()}
        else:
            from peft import get_peft_model_state_dict

            weights = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.scope, adapter_name=ADAPTER).items()}
        return {"mode": self.cfg.mode, "updates": self.updates, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("mode") != self.cfg.mode:
            raise DataError(f"VAE fine-tuning state: saved for mode {state.get('mode')!r}, the B fine-tunes in mode {self.cfg.mode!r}")
        weights = state["weights"]
        if self.cfg.mode == "full":
            self.scope.load_state_dict(weights)
        else:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.scope, weights, adapter_name=ADAPTER)
            missing = [k for k in result.missing_keys if ".lora_" in k]
            if missing or result.unexpected_keys:
                raise DataError(f"VAE fine-tuning state: adapters do not match (missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]})")
        self.updates = int(state["updates"])
