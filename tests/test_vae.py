"""VAE-Var background error: network, training (loss, checkpoints, resume), the decoder as a
nonlinear control transform (gradient check, centring, upsampling), errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import aivarda.background.vae.transform  # noqa: F401  (registers background_error type "vae")
from aivarda.background.registry import TransformContext, build_transform, parse_transform_config
from aivarda.background.vae import VaeArchitecture, VaeCheckpoint, VaeNet, VaeTransform, vae_loss
from aivarda.background.vae.config import LearnVaeConfig
from aivarda.background.vae.diagnostics import decoder_variance_ratio, pointwise_variance
from aivarda.channels import ChannelLayout
from aivarda.cli import main as cli_main
from aivarda.config import load_config
from aivarda.errors import ConfigError, DataError
from aivarda.grid import Grid
from aivarda.learning.learn_vae import split_by_time, train_vae
from aivarda.learning.nmc import NmcSamples

LAYOUT = ChannelLayout(("u10m", "v10m", "t2m", "msl"), ("z", "t"), (500, 850))  # 8 channels
GRID = Grid.equiangular(16, 32)
TINY = {"latent_channels": 4, "embed_dim": 16, "depth": 2, "num_heads": 2, "window": 4}
PHYS_STD = torch.tensor([3.0, 3.0, 1.5, 150.0, 400.0, 300.0, 1.2, 1.0])


def fake_samples(n: int = 24, seed: int = 0, state_grid: Grid = GRID) -> NmcSamples:
    """NMC-like samples ``[n, 8, 16, 32]``: three smooth spatial patterns with random amplitudes
    shared (with fixed loadings) by all channels, plus a little noise; physical-unit scales."""
    gen = torch.Generator().manual_seed(seed)
    lat = torch.tensor(np.deg2rad(GRID.lat), dtype=torch.float32)[:, None]
    lon = torch.tensor(np.deg2rad(GRID.lon), dtype=torch.float32)[None, :]
    patterns = torch.stack([torch.cos(lat) * torch.sin(2 * lon), torch.cos(lat) ** 2 * torch.cos(3 * lon), torch.sin(2 * lat) * torch.cos(lon)])
    loadings = torch.randn(8, 3, generator=gen)
    amp = torch.randn(n, 3, generator=gen)
    x = torch.einsum("ck,nk,khw->nchw", loadings, amp, patterns) + 0.05 * torch.randn(n, 8, *GRID.shape, generator=gen)
    times = np.datetime64("2000-01-03T00") + np.arange(n) * np.timedelta64(6, "h")
    return NmcSamples(x * PHYS_STD[:, None, None], times.astype("datetime64[ns]"), GRID, state_grid, LAYOUT, "forecast", {"span": "train"})


def tiny_config(out: Path, **training) -> LearnVaeConfig:
    t = {"lr": 1e-2, "epochs": 3, "sigma": 0.5, "val_fraction": 0.2, "device": "cpu", "checkpoint_every": 1000} | training
    return LearnVaeConfig.model_validate({"name": "tiny", "output_dir": out, "vae": {"architecture": TINY, "training": t}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vae")
    summary = train_vae(tiny_config(out, epochs=10), fake_samples(), progress=False)
    return out, summary


# ------------------------------------------------------------------------------------------ network
def test_network_shapes_and_backward() -> None:
    torch.manual_seed(0)
    arch = VaeArchitecture(**TINY)
    net = VaeNet(8, GRID.shape, arch)
    assert net.latent_shape == (4, 8, 16)  # latent_stride 2: control grid 8×16
    x = torch.randn(3, 8, *GRID.shape)
    eps = torch.randn(3, *net.latent_shape)
    x_hat, mu, logvar = net(x, eps)
    assert x_hat.shape == x.shape and mu.shape == logvar.shape == (3, *net.latent_shape)
    recon, kl = vae_loss(x, x_hat, mu, logvar, sigma=2.0)
    assert recon.shape == kl.shape == (3,)
    (recon + kl).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    full = VaeNet(8, GRID.shape, VaeArchitecture(**TINY | {"latent_stride": 1}))
    assert full.latent_shape == (4, 16, 32)
    assert full.decode(torch.randn(2, 4, 16, 32)).shape == (2, 8, 16, 32)


def test_loss_terms_match_their_formulas() -> None:
    """Σ(x̂ − x)²/(2σ²) and the Gaussian KL against N(0, I), element by element."""
    gen = torch.Generator().manual_seed(1)
    x, x_hat = torch.randn(2, 3, 4, generator=gen), torch.randn(2, 3, 4, generator=gen)
    mu, logvar = torch.randn(2, 5, generator=gen), torch.randn(2, 5, generator=gen)
    recon, kl = vae_loss(x, x_hat, mu, logvar, sigma=2.0)
    assert torch.allclose(recon, ((x_hat - x) ** 2).sum((1, 2)) / 8.0)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)


# ------------------------------------------------------------------------------------------ training
def test_split_is_by_valid_time() -> None:
    times = np.array(["2000-01-05", "2000-01-01", "2000-01-04", "2000-01-02", "2000-01-03"], dtype="datetime64[ns]")
    train, val = split_by_time(times, 0.4)
    assert times[val].min() > times[train].max() and len(val) == 2 and len(train) == 3


def test_training_reduces_validation_loss(trained: tuple[Path, dict]) -> None:
    out, summary = trained
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 10 and summary["steps"] == 10 * 4  # 19 training samples, batch 4 → 4 steps/epoch
    assert log[-1]["val_loss"] < 0.8 * log[0]["val_loss"], [r["val_loss"] for r in log]
    ckpt, payload = VaeCheckpoint.load(out / "best.pt")
    # err_std: the area-weighted per-channel std of the 19 training samples
    train, val = fake_samples().samples[:19].numpy(), fake_samples().samples[19:]
    w = np.broadcast_to(GRID.weights[None, :, None], (19, 16, 32))
    expect = [np.sqrt(np.cov(train[:, c].ravel(), aweights=w.ravel(), bias=True)) for c in range(8)]
    assert np.allclose(ckpt.err_std.numpy(), expect, rtol=1e-4)
    # well below the loss of the trivial reconstruction x̂ = 0 (no KL): Σ x² / (2σ²) per sample
    x = val / ckpt.err_std[:, None, None]
    assert log[-1]["val_loss"] < 0.8 * float(x.square().sum((1, 2, 3)).mean() / (2 * 0.5**2))
    assert "training_state" not in payload
    assert ckpt.metadata["val_loss"] == pytest.approx(min(r["val_loss"] for r in log))
    # 24 six-hourly samples from 2000-01-03T00: validation = the latest 5
    assert ckpt.metadata["train_span"] == ["2000-01-03T00:00:00", "2000-01-07T12:00:00"]
    assert ckpt.metadata["val_span"] == ["2000-01-07T18:00:00", "2000-01-08T18:00:00"]


def test_resume_gives_the_uninterrupted_weights(tmp_path: Path) -> None:
    samples = fake_samples()
    train_vae(tiny_config(tmp_path / "a"), samples, progress=False)
    cfg = tiny_config(tmp_path / "b")
    paused = train_vae(cfg, samples, stop_after=6, progress=False)  # mid-epoch 2 (4 steps per epoch)
    assert paused["steps"] == 6
    resumed = train_vae(cfg, samples, resume=True, progress=False)
    assert resumed["steps"] == 12
    a, pa = VaeCheckpoint.load(tmp_path / "a" / "last.pt")
    b, pb = VaeCheckpoint.load(tmp_path / "b" / "last.pt")
    for (name, wa), wb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        assert torch.equal(wa, wb), name
    assert pa["training_state"]["step"] == pb["training_state"]["step"] == 12
    assert a.metadata["val_loss"] == b.metadata["val_loss"]


# ------------------------------------------------------------------------------------------ transform
def _transform(path: Path, state_shape: tuple[int, ...], **cfg) -> VaeTransform:
    t = build_transform({"type": "vae", "checkpoint": str(path)} | cfg, TransformContext(state_shape, torch.float64))
    assert isinstance(t, VaeTransform)
    return t


def test_decode_centred_and_uncentred(trained: tuple[Path, dict]) -> None:
    path = trained[0] / "best.pt"
    U = _transform(path, (8, 16, 32))
    assert U.latent_shape == (4, 8, 16) and U.state_shape == (8, 16, 32)
    z = torch.zeros(2, *U.latent_shape, dtype=torch.float64)
    assert torch.equal(U.decode(z), torch.zeros(2, 8, 16, 32, dtype=torch.float64))  # z = 0 is the background
    raw = _transform(path, (8, 16, 32), centre=False)
    ckpt, _ = VaeCheckpoint.load(path)
    with torch.no_grad():
        d0 = ckpt.net.double().decode(z[:1])[0] * ckpt.err_std.double()[:, None, None]
    assert torch.allclose(raw.decode(z[0]), d0)
    zr = torch.randn(*U.latent_shape, dtype=torch.float64)
    assert torch.allclose(raw.decode(zr) - U.decode(zr), d0)


def test_decoder_prior_samples_have_sample_like_variance(trained: tuple[Path, dict]) -> None:
    """δx = U(z), z ~ N(0, I): the per-channel spread is of the order of the NMC samples' (the
    briefly trained toy decoder is not degenerate, and carries the physical units: without the
    err_std factor the z500/t500 ratios would be ~1e-5)."""
    U = _transform(trained[0] / "best.pt", (8, 16, 32))
    samples = fake_samples().samples
    ratio = decoder_variance_ratio(U, samples, n=64)
    assert ratio.shape == (8,) and bool(((ratio > 0.01) & (ratio < 10)).all()), ratio
    # the variance is the area-weighted mean of the point-wise variance across samples
    w = GRID.weights[None, :, None] * np.ones((1, 1, 32))
    v = samples.double().numpy().var(0, ddof=1)
    assert np.allclose(pointwise_variance(samples, GRID.weights).numpy(), (v * w).sum((1, 2)) / w.sum())


def test_gradient_check_of_the_cost_through_the_decoder() -> None:
    """J(z) = ½‖z‖² + ½‖H(x_b + U(z)) − y‖²/σ_o² with a nonlinear H: autograd gradient vs finite
    differences (torch.autograd.gradcheck, float64, tiny untrained net)."""
    torch.manual_seed(0)
    net = VaeNet(8, (16, 32), VaeArchitecture(**TINY | {"latent_channels": 1, "embed_dim": 4, "depth": 1, "num_heads": 1}))
    ckpt = VaeCheckpoint(net, PHYS_STD.clone(), GRID, GRID, LAYOUT)
    U = VaeTransform(ckpt, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x_b = torch.randn(8, 16, 32, dtype=torch.float64, generator=gen)
    rows, cols = torch.randint(0, 16, (12,), generator=gen), torch.randint(0, 32, (12,), generator=gen)
    y = torch.randn(12, dtype=torch.float64, generator=gen)

    def J(z: torch.Tensor) -> torch.Tensor:
        x = x_b + U.decode(z)
        hx = x[6, rows, cols] + 0.1 * x[0, rows, cols] ** 2  # t500 plus a nonlinear wind term
        return 0.5 * (z**2).sum() + 0.5 * ((hx - y) / 0.7).square().sum()

    z = (0.3 * torch.randn(*U.latent_shape, dtype=torch.float64, generator=gen)).requires_grad_(True)
    assert torch.autograd.gradcheck(J, (z,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_decode_on_a_finer_state_grid(tmp_path: Path) -> None:
    """Control (decoder) grid 16×32, state grid 16×64 with the same latitudes: bilinear
    upsampling keeps the control values at shared longitudes and averages neighbours between."""
    fine = Grid.equiangular(16, 64)
    train_vae(tiny_config(tmp_path, epochs=1), fake_samples(state_grid=fine), progress=False)
    U = _transform(tmp_path / "best.pt", (8, 16, 64))
    coarse = _transform(tmp_path / "best.pt", (8, 16, 32))
    z = torch.randn(*U.latent_shape, dtype=torch.float64)
    dx, dc = U.decode(z), coarse.decode(z)
    assert dx.shape == (8, 16, 64)
    assert torch.allclose(dx[..., ::2], dc, atol=1e-10)
    assert torch.allclose(dx[..., 1::2], 0.5 * (dc + dc.roll(-1, -1)), atol=1e-10)
    other = _transform(tmp_path / "best.pt", (8, 32, 64), state_grid={"kind": "gaussian", "nlat": 32, "nlon": 64})
    assert other.decode(z).shape == (8, 32, 64)


# ------------------------------------------------------------------------------------------ errors
def test_bad_checkpoint_and_config_errors(trained: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="VAE checkpoint not found"):
        _transform(tmp_path / "missing.pt", (8, 16, 32))
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else"}, foreign)
    with pytest.raises(DataError, match="not an aivarda VAE checkpoint"):
        _transform(foreign, (8, 16, 32))
    payload = torch.load(trained[0] / "best.pt", weights_only=True)
    del payload["state_dict"]["decoder.head.weight"]
    torch.save(payload, damaged := tmp_path / "damaged.pt")
    with pytest.raises(DataError, match="damaged VAE checkpoint"):
        _transform(damaged, (8, 16, 32))
    with pytest.raises(ConfigError, match=r"decodes 8 channels on equiangular 16×32.*\[69, 16, 32\]"):
        _transform(trained[0] / "best.pt", (69, 16, 32))
    with pytest.raises(ValueError, match="checkpoint"):
        parse_transform_config({"type": "vae"})
    with pytest.raises(ConfigError, match="multiple of 2·window = 8"):
        VaeNet(8, (16, 24), VaeArchitecture(**TINY))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"vae": {"architecture": {"latent_stride": 3}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: vae.architecture: .*latent_stride \(3\) must divide patch_size \(2\)"):
        load_config(bad, LearnVaeConfig)
    bad.write_text(yaml.safe_dump({"vae": {"training": {"sigmaa": 2}}}))
    with pytest.raises(ConfigError, match="vae.training.sigmaa: unknown key"):
        load_config(bad, LearnVaeConfig)


def test_variance_calibration(trained: tuple[Path, dict], tmp_path: Path) -> None:
    """k_c = (v_c(NMC train) / v_c(U₀(z)))^½: with k the randomisation test on the training samples
    gives 1 for the same decoder samples; another draw stays close; calibration: none ignores k; a
    file without k loads as uncalibrated, one with a bad k is refused in one line."""
    from aivarda.background.vae.diagnostics import variance_calibration
    from aivarda.learning.learn_vae import calibrate_checkpoint

    path = tmp_path / "best.pt"
    ckpt, _ = VaeCheckpoint.load(trained[0] / "best.pt")
    ckpt.calibration = None
    ckpt.save(path)
    samples = fake_samples()
    train = samples.samples[:19]
    raw = _transform(path, (8, 16, 32), calibration="variance")
    assert raw.calibration == "none"  # the file has no k
    before = decoder_variance_ratio(raw, train, n=64)
    k = calibrate_checkpoint(path, samples, n=64, seed=0)
    torch.testing.assert_close(k.double(), before.rsqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(k, variance_calibration(VaeCheckpoint.load(path)[0], train, n=64, seed=0))
    U = _transform(path, (8, 16, 32), calibration="variance")
    assert U.calibration == "variance"
    assert _transform(path, (8, 16, 32)).calibration == "none"  # the default: the raw decoder
    torch.testing.assert_close(decoder_variance_ratio(U, train, n=64), torch.ones(8, dtype=torch.float64), rtol=1e-5, atol=0)
    other = decoder_variance_ratio(U, train, n=64, seed=1)
    assert bool(((other > 0.5) & (other < 2)).all()), other
    z = torch.randn(*U.latent_shape, dtype=torch.float64)
    off = _transform(path, (8, 16, 32), calibration="none")
    torch.testing.assert_close(U.decode(z), off.decode(z) * k.double()[:, None, None])
    bad, payload = VaeCheckpoint.load(path)
    payload["calibration"] = -torch.ones(8)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="calibration must be 8 finite positive"):
        VaeCheckpoint.load(tmp_path / "bad.pt")


def test_spectral_calibration(trained: tuple[Path, dict], tmp_path: Path) -> None:
    """g_{c,l} = (P_{c,l}(NMC train) / P_{c,l}(U₀(z)))^½: with g the decoder draws it was fitted
    with have the training samples' power at every total wavenumber of every channel (so their
    variance); other draws stay within a factor 2 per channel; the filter is linear in D(z) − D(0)
    (gains of 1 give the raw decoder); a checkpoint without g is refused for calibration: spectral,
    bad gains in one line."""
    from aivarda.background.vae.diagnostics import decoder_samples, mean_power_spectrum
    from aivarda.learning.learn_vae import calibrate_checkpoint
    from aivarda.sphere import SphereOps

    path = tmp_path / "best.pt"
    ckpt, _ = VaeCheckpoint.load(trained[0] / "best.pt")
    ckpt.calibration = ckpt.spectral_calibration = None
    ckpt.save(path)
    with pytest.raises(ConfigError, match="no spectral calibration; estimate it with `aivarda learn-b vae CONFIG --calibrate-only`"):
        _transform(path, (8, 16, 32), calibration="spectral")
    samples = fake_samples()
    train = samples.samples[:19]
    calibrate_checkpoint(path, samples, n=64, seed=0)
    ckpt, _ = VaeCheckpoint.load(path)
    ops = SphereOps(GRID)
    assert ckpt.spectral_calibration is not None and tuple(ckpt.spectral_calibration.shape) == (8, ops.lmax)
    U = _transform(path, (8, 16, 32), calibration="spectral")
    assert U.calibration == "spectral"
    p_nmc = mean_power_spectrum(train, ops)
    p_dec = mean_power_spectrum(decoder_samples(U, 64, seed=0), ops)
    resolved = p_nmc > 1e-6 * p_nmc.amax(-1, keepdim=True)
    torch.testing.assert_close(p_dec[resolved], p_nmc[resolved], rtol=1e-3, atol=0)
    other = decoder_variance_ratio(U, train, n=64, seed=1)
    assert bool(((other > 0.5) & (other < 2)).all()), other
    raw = _transform(path, (8, 16, 32), calibration="none")
    ones = VaeTransform(ckpt, GRID, calibration="spectral", dtype=torch.float64)
    ones.spectral = (ones.spectral[0], torch.ones_like(ones.spectral[1]))
    z = torch.randn(2, *U.latent_shape, dtype=torch.float64)
    torch.testing.assert_close(ones.decode(z), ops.truncate(raw.decode(z)))
    _, payload = VaeCheckpoint.load(path)
    payload["spectral_calibration"] = torch.ones(8, 3, 2)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(DataError, match=r"spectral_calibration must be \[8, L\] finite non-negative gains"):
        VaeCheckpoint.load(tmp_path / "bad.pt")


def test_cli_trains_resumes_and_reports_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # output_dir is relative to the working directory, samples to the YAML
    samples = fake_samples()
    samples.save(tmp_path / "nmc.pt")
    cfg = {"name": "cli", "samples": "nmc.pt", "output_dir": "out",
           "vae": {"architecture": TINY, "training": {"epochs": 2, "device": "cpu", "val_fraction": 0.2}}}
    (tmp_path / "vae.yaml").write_text(yaml.safe_dump(cfg))
    args = ["learn-b", "vae", str(tmp_path / "vae.yaml"), "--quiet", "--json"]
    assert cli_main([*args, "--stop-after", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 3
    assert cli_main(args) == 2  # last.pt exists and no --resume
    assert "pass --resume" in capsys.readouterr().err
    assert cli_main([*args, "--resume"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 8 and math.isfinite(summary["val_loss"])
    assert summary["train_span"][0] == "2000-01-03T00:00:00" and summary["n_val_samples"] == 5
    assert summary["output_dir"] == str(tmp_path / "out") and (tmp_path / "out" / "best.pt").is_file()
    # a finished run calibrates best.pt on its training samples; the paused one above did not
    ckpt, _ = VaeCheckpoint.load(tmp_path / "out" / "best.pt")
    assert ckpt.calibration is not None and ckpt.metadata["calibration"]["nmc_samples"] == 19
    assert ckpt.spectral_calibration is not None
    assert summary["calibration"]["median"] == pytest.approx(float(ckpt.calibration.median()))
    assert cli_main([*args, "--calibrate-only"]) == 0  # re-estimates, same seed → same factors
    again, _ = VaeCheckpoint.load(tmp_path / "out" / "best.pt")
    assert torch.equal(again.calibration, ckpt.calibration)
    assert torch.equal(again.spectral_calibration, ckpt.spectral_calibration)
    capsys.readouterr()
    (tmp_path / "vae.yaml").write_text(yaml.safe_dump(cfg | {"samples": "nope.pt"}))
    assert cli_main([*args, "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt: NMC sample file not found" in err


def test_vae_records_what_it_was_trained_on_and_the_guard_uses_it(tmp_path: Path) -> None:
    """The VAE carries its NMC samples' provenance records; a run whose ``background_error`` is the
    VAE is refused on the times the samples read, passes on others; a file without records has
    unknown provenance (a warning, never an error)."""
    from aivarda.artefacts import trained_on_of_background_error, trained_on_of_file
    from aivarda.errors import LeakageError
    from aivarda.provenance import TimeSpan, TrainedOn, check_out_of_sample, records_to_json

    T = np.datetime64
    nmc = TrainedOn("NMC samples", (TimeSpan(T("2000-01-01T00"), T("2000-01-08T18"), "train"),), store="/x/s.zarr",
                    fingerprint="aaaa", origin=T("2000-01-01"), verb="drawn from")
    samples = fake_samples()
    samples.metadata["trained_on"] = records_to_json([nmc])
    train_vae(tiny_config(tmp_path / "v", epochs=1), samples, progress=False)
    path = tmp_path / "v" / "best.pt"
    (record,) = trained_on_of_background_error({"type": "vae", "checkpoint": str(path)})
    assert record.spans == nmc.spans and record.fingerprint == "aaaa" and record.what == "best.pt (VAE background error)"
    assert trained_on_of_file(path) == [record]
    with pytest.raises(LeakageError, match=r"best.pt \(VAE background error\) was trained on 2000-01-01T00:00"):
        check_out_of_sample(TimeSpan(T("2000-01-05T00"), T("2000-01-06T00")), [record], store_fingerprint="aaaa",
                            origin="2000-01-01")
    assert check_out_of_sample(TimeSpan(T("2000-08-01T00"), T("2000-08-31T18")), [record], store_fingerprint="aaaa",
                               origin="2000-01-01") == []
    ckpt, _ = VaeCheckpoint.load(path)
    ckpt.metadata.pop("trained_on")
    ckpt.save(tmp_path / "old.pt")
    (old,) = trained_on_of_file(tmp_path / "old.pt")
    assert old.spans == () and "no record" in old.note
