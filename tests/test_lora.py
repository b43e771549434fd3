"""LoRA-EnVar: per-cycle fine-tuning of the VAE decoder on the ensemble (``background_error: {type:
vae, finetune: {mode: lora | reset | full}}``) — which parameters change, reset, saved and reloaded
adapters, zero adapters = the static VAE, the samples' normalisation, trainable-parameter counts at
the released architecture, configuration and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import aivarda.assimilation.envar  # noqa: F401  (registers 3denvar, 4denvar)
from aivarda.assimilation import build_method
from aivarda.background.registry import TransformContext, build_transform, parse_transform_config
from aivarda.background.transforms import ReportingTransform, StatefulTransform
from aivarda.background.vae import VaeArchitecture, VaeCheckpoint, VaeNet, VaeTransform
from aivarda.background.vae.finetune import FinetuneConfig, ensemble_samples
from aivarda.background.vae.transform import FinetunedVaeTransform, VaeConfig
from aivarda.channels import ChannelLayout
from aivarda.cycling.state import RunDirectory, RunState
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid

LAYOUT = ChannelLayout(("u10m", "v10m", "t2m", "msl"), ("z", "t"), (500, 850))  # 8 channels
GRID = Grid.gaussian(16, 32)
TINY = {"latent_channels": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "window": 4}
D = TINY["embed_dim"]

pytestmark = pytest.mark.usefixtures("one_thread")


def checkpoint(seed: int = 0) -> VaeCheckpoint:
    """An untrained tiny VAE (random weights from ``seed``)."""
    torch.manual_seed(seed)
    net = VaeNet(len(LAYOUT), GRID.shape, VaeArchitecture(**TINY))
    return VaeCheckpoint(net, torch.linspace(1.0, 3.0, len(LAYOUT)), GRID, GRID, LAYOUT)


def members(seed: int, K: int = 8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 280.0 + torch.randn(K, len(LAYOUT), *GRID.shape, generator=gen) * torch.linspace(0.5, 4.0, len(LAYOUT))[:, None, None]


def finetuned(mode: str, **kw) -> FinetunedVaeTransform:
    return FinetunedVaeTransform(checkpoint(), FinetuneConfig(mode=mode, **kw))


def latent(n: int = 3) -> torch.Tensor:
    return torch.randn(n, *VaeNet(len(LAYOUT), GRID.shape, VaeArchitecture(**TINY)).latent_shape,
                       generator=torch.Generator().manual_seed(7))


def base_weights(t: VaeTransform) -> dict[str, torch.Tensor]:
    """The network's weights without adapters, under the names of the static network."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in t.net.state_dict().items() if ".lora_" not in k}


# ------------------------------------------------------------------------------ zero adapters
@pytest.mark.parametrize("mode", ["lora", "reset"])
def test_zero_initialised_adapters_decode_the_static_vae_bit_for_bit(mode: str) -> None:
    static, t = VaeTransform(checkpoint()), finetuned(mode)
    z = latent()
    assert torch.equal(t.decode(z), static.decode(z))
    assert torch.equal(t.decode(torch.zeros_like(z)), torch.zeros(3, *t.state_shape))  # centred: U(0) = 0
    # the adapters are there and non-trivial: A drawn, B = 0
    layers = t.finetuner.lora_layers()
    assert len(layers) == 3 * TINY["depth"]  # one qkv per Swin block of the decoder's three stages
    for _, m in layers:
        assert m.lora_A["default"].weight.abs().sum() > 0 and not m.lora_B["default"].weight.any()


# ------------------------------------------------------------------------------ what changes
def test_lora_step_changes_only_the_query_adapters() -> None:
    t = finetuned("lora")
    before = base_weights(t)
    adapters = {k: v.clone() for k, v in t.net.state_dict().items() if ".lora_" in k}
    static = VaeTransform(checkpoint())
    t.update(members(1))
    after = base_weights(t)
    assert after.keys() == before.keys() == static.net.state_dict().keys()
    for k in before:  # encoder and decoder base weights bit-identical
        assert torch.equal(after[k], before[k]), k
    changed = [k for k, v in t.net.state_dict().items() if ".lora_" in k and not torch.equal(v, adapters[k])]
    assert len(changed) == len(adapters)  # every A and B moved
    for _, m in t.finetuner.lora_layers():
        B = m.lora_B["default"].weight
        dim = B.shape[0] // 3
        assert B[:dim].abs().min() > 0  # query rows trained
        assert not B[dim:].any()  # key and value rows exactly 0 (masked gradient, Adam step 0)
    z = latent()
    assert not torch.equal(t.decode(z), static.decode(z))
    assert torch.equal(t.decode(torch.zeros_like(z)), torch.zeros(3, *t.state_shape))  # D(0) recomputed
    info = t.update_diagnostics()
    assert info["trainable_params"] == t.finetuner.n_trainable() and info["finetune_steps"] == 5 * 2  # K = 8, batch 4
    assert info["finetune_loss_last"] < info["finetune_loss_first"]


def test_qkv_rows_all_adapts_keys_and_values_too() -> None:
    t = finetuned("lora", qkv_rows="all")
    t.update(members(1))
    for _, m in t.finetuner.lora_layers():
        assert m.lora_B["default"].weight[D:].abs().max() > 0 or m.lora_B["default"].weight.shape[0] != 3 * D
    assert t.finetuner.n_trainable() == sum(p.numel() for p in t.finetuner.trainable())


def test_full_changes_the_decoder_weights_and_not_the_encoder() -> None:
    t = finetuned("full")
    before = base_weights(t)
    t.update(members(1))
    after = base_weights(t)
    assert not t.finetuner.lora_layers()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("encoder."))
    dec = [k for k in before if k.startswith("decoder.")]
    changed = [k for k in dec if not torch.equal(after[k], before[k])]
    assert len(changed) > 0.9 * len(dec)  # all but parameters without gradient (single-group bias)
    assert t.finetuner.n_trainable() == sum(p.numel() for p in t.net.decoder.parameters())
    assert t.update_diagnostics()["finetune_loss_last"] < t.update_diagnostics()["finetune_loss_first"]


def test_reset_reinitialises_the_adapters_every_cycle() -> None:
    """reset: the second fine-tuning starts from fresh adapters (a transform that skipped the first
    update and only knows the update count gives the same B); lora carries them over (differs)."""
    m1, m2, z = members(1), members(2), latent()
    for mode, same in (("reset", True), ("lora", False)):
        carried = finetuned(mode)
        carried.update(m1)
        carried.update(m2)
        fresh = finetuned(mode)
        state = fresh.state_dict()
        fresh.load_state_dict(state | {"updates": 1})
        fresh.update(m2)
        assert torch.equal(carried.decode(z), fresh.decode(z)) is same, mode
    # the re-initialised adapters are zero in B: before training the decoder is the static one again
    t = finetuned("reset")
    t.update(m1)
    t.finetuner._reset_adapters(123)
    t._offset = None
    assert torch.equal(t.decode(z), VaeTransform(checkpoint()).decode(z))


def test_fine_tuning_is_deterministic() -> None:
    a, b = finetuned("lora", seed=3), finetuned("lora", seed=3)
    for t in (a, b):
        t.update(members(1))
        t.update(members(2))
    z = latent()
    assert torch.equal(a.decode(z), b.decode(z))
    c = finetuned("lora", seed=4)
    c.update(members(1))
    c.update(members(2))
    assert not torch.equal(a.decode(z), c.decode(z))


# ------------------------------------------------------------------------------ saved state
@pytest.mark.parametrize("mode", ["lora", "reset", "full"])
def test_saved_and_reloaded_state_gives_bit_identical_increments(mode: str, tmp_path: Path) -> None:
    """Through the run directory's B-state file (checksummed torch file, weights_only), then one
    more fine-tuning each: still identical."""
    t = finetuned(mode)
    assert isinstance(t, StatefulTransform) and isinstance(t, ReportingTransform)
    t.update(members(1))
    run = RunDirectory(tmp_path / "run")
    run.commit(RunState(1, 3, True), {"row": {}}, 0, b_state=t.state_dict())
    restored = finetuned(mode)
    restored.load_state_dict(run.load_b_state(0))
    z = latent()
    assert torch.equal(restored.decode(z), t.decode(z))
    assert not torch.equal(restored.decode(z), VaeTransform(checkpoint()).decode(z))
    t.update(members(2))
    restored.update(members(2))
    assert torch.equal(restored.decode(z), t.decode(z))


def test_a_state_of_another_mode_is_refused() -> None:
    t = finetuned("lora")
    with pytest.raises(DataError, match="mode 'lora'.*mode 'full'"):
        finetuned("full").load_state_dict(t.state_dict())


# ------------------------------------------------------------------------------ samples
def test_samples_are_the_ensemble_deviations_normalised_as_the_nmc_samples() -> None:
    """Against numpy: d = x − x̄; each member's channel divided by its area-weighted spatial std;
    then by the area-weighted std pooled over members (learn-b vae's normalisation)."""
    x = members(5, K=6).double()
    x[:, 3] = 7.0  # a constant channel stays 0
    out = ensemble_samples(x, GRID.weights).numpy()
    d = (x - x.mean(0)).numpy()
    K, C, H, W = d.shape
    w = np.broadcast_to(GRID.weights[:, None], (H, W)).ravel()
    u = np.zeros_like(d)
    for k in range(K):
        for c in range(C):
            std = np.sqrt(np.cov(d[k, c].ravel(), aweights=w, bias=True))
            u[k, c] = d[k, c] / std if std > 0 else 0.0
    expect = np.zeros_like(u)
    wk = np.tile(w, K)
    for c in range(C):
        std = np.sqrt(np.cov(u[:, c].ravel(), aweights=wk, bias=True))
        expect[:, c] = u[:, c] / std if std > 0 else 0.0
    assert np.allclose(out, expect, atol=1e-5) and not out[:, 3].any()
    # unit area-weighted variance per channel, pooled over members (as δx / s of the NMC samples)
    for c in (0, 1, 2, 4, 7):
        assert np.sqrt(np.cov(out[:, c].ravel(), aweights=wk, bias=True)) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(DataError, match="K ≥ 2"):
        ensemble_samples(x[:1], GRID.weights)


# ------------------------------------------------------------------------------ released size
def test_lora_trains_about_a_thousandth_of_full_at_the_released_architecture() -> None:
    """Defaults of configs/learn_b_vae.yaml (69 channels on 64×128, embed 96, depth 2): rank-2
    query adapters on the decoder's 6 attention blocks: Σ r·(D_in + D_q) = 2r·depth·(D + 2D + D)."""
    torch.manual_seed(0)
    ckpt = VaeCheckpoint(VaeNet(69, (64, 128), VaeArchitecture()), torch.ones(69), Grid.gaussian(64, 128),
                         Grid.gaussian(64, 128), ChannelLayout.fengwu69())
    arch = ckpt.net.arch
    decoder = sum(p.numel() for p in ckpt.net.decoder.parameters())
    vae = sum(p.numel() for p in ckpt.net.parameters())
    lora = FinetunedVaeTransform(ckpt, FinetuneConfig(mode="lora")).finetuner.n_trainable()
    assert lora == 2 * 2 * arch.depth * (arch.embed_dim + 2 * arch.embed_dim + arch.embed_dim) == 3072
    assert decoder / lora >= 100 and vae / lora >= 1000  # ≈ 1/500 of the decoder, 1/1000 of the VAE
    assert vae == 3080916  # docs/vae.md


# ------------------------------------------------------------------------------ configuration
def test_config_declares_the_ensemble_need_by_its_mode() -> None:
    static = parse_transform_config({"type": "vae", "checkpoint": "best.pt"})
    assert not static.needs_ensemble and static.finetune.mode == "none"
    lora = parse_transform_config({"type": "vae", "checkpoint": "best.pt", "finetune": {"mode": "lora"}})
    assert isinstance(lora, VaeConfig) and lora.needs_ensemble
    f = lora.finetune
    assert (f.rank, f.target_modules, f.qkv_rows, f.learning_rate, f.epochs, f.batch_size, f.sigma) == (
        2, ["qkv"], "query", 1e-2, 5, 4, 2.0)
    assert FinetuneConfig(mode="full").learning_rate == 1e-5
    with pytest.raises(ValueError, match="rnak"):
        parse_transform_config({"type": "vae", "checkpoint": "best.pt", "finetune": {"mode": "lora", "rnak": 2}})
    # 3DEnVar takes a fine-tuned VAE as its ensemble B, not a static one
    method = build_method({"method": "3denvar", "background_error": {"type": "vae", "checkpoint": "x.pt", "finetune": {"mode": "lora"}}})
    assert method.needs.ensemble
    with pytest.raises(ConfigError, match="needs an ensemble B"):
        build_method({"method": "3denvar", "background_error": {"type": "vae", "checkpoint": "x.pt"}})


def test_unknown_target_module_and_trajectories_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        finetuned("lora", target_modules=["q_proj"])
    text = str(err.value)
    assert "\n" not in text and "target_modules" in text and "q_proj" in text and "qkv" in text
    ckpt_path = checkpoint().save(tmp_path / "best.pt")
    b = build_transform({"type": "vae", "checkpoint": str(ckpt_path), "finetune": {"mode": "lora"}},
                        TransformContext((len(LAYOUT), *GRID.shape)))
    assert isinstance(b, FinetunedVaeTransform)
    with pytest.raises(DataError, match="4dvar") as err:
        b.update(members(1)[:, None].expand(-1, 2, -1, -1, -1))  # [K, T, C, H, W] of 4denvar
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,method", [("exp_LoRA-3DEnVar", "3denvar"), ("exp_LoRA-4DEnVar", "4dvar")])
def test_shipped_lora_configs_validate(name: str, method: str) -> None:
    from aivarda.config import load_config
    from aivarda.cycling.config import CyclingConfig

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml", CyclingConfig)
    assert cfg.name == name and len(cfg.cycle_times()) == 124 and cfg.observations.fraction == 0.05
    assert cfg.dynamic_member == 8 and cfg.gap == 8 and cfg.assimilation.method == method
    b = cfg.assimilation.background_error
    assert isinstance(b, VaeConfig) and b.needs_ensemble and b.finetune == FinetuneConfig(mode="lora")
    # the lr is each mode's default, so `--set ...finetune.mode=full` gets 1e-5, not LoRA's 1e-2
    assert b.finetune.learning_rate == 1e-2
    assert b.finetune.model_copy(update={"mode": "full"}).learning_rate == 1e-5
    built = build_method(cfg.assimilation)
    assert built.needs.window_model == (method == "4dvar")
    if method == "4dvar":
        assert cfg.window_model is not None and cfg.assimilation.da_win == 6


def test_lora_on_an_letkf_ensemble_config_is_lora_3denvar_with_the_letkf_of_exp_letkf() -> None:
    from aivarda.config import load_config
    from aivarda.cycling.config import CyclingConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / "ablations" / "exp_LoRA-3DEnVar_letkf.yaml", CyclingConfig)
    base = load_config(root / "exp_LoRA-3DEnVar.yaml", CyclingConfig)
    letkf = load_config(root / "exp_LETKF.yaml", CyclingConfig)
    assert cfg.assimilation.ensemble_letkf == letkf.assimilation.letkf
    built = build_method(cfg.assimilation)
    assert built.needs.ensemble and built.needs.ensemble_source == "own"
    same = {"name", "output_dir", "assimilation"}
    assert cfg.model_dump(exclude=same) == base.model_dump(exclude=same)
    assert cfg.assimilation.model_dump(exclude={"ensemble_letkf"}) == base.assimilation.model_dump(exclude={"ensemble_letkf"})


def test_tiny_world_example_configs_validate() -> None:
    """The runnable example of docs/lora-envar.md §6."""
    from aivarda.background.vae.config import LearnVaeConfig
    from aivarda.config import load_config
    from aivarda.cycling.config import CyclingConfig

    results = Path(__file__).resolve().parents[1] / "docs" / "results"
    run = load_config(results / "lora_3denvar_tiny.yaml", CyclingConfig)
    assert run.assimilation.method == "3denvar" and run.assimilation.background_error.finetune.mode == "lora"
    assert run.dynamic_member == 8 and len(run.cycle_times()) == 4
    learn = load_config(results / "learn_b_vae_tiny.yaml", LearnVaeConfig)
    assert learn.vae.training.sigma == 2.0 and learn.output_dir.name == "learn_b_vae_tiny"
