"""Kill anywhere, for the commands that learn (``train-model``, ``learn-b vae``) and for a full
disk during cycling.

A training run is killed at a random moment — after any optimiser step, or inside any atomic write
of a checkpoint (temporary file written, not renamed; renamed, folder not flushed) — then resumed
(``--resume`` when a ``last.pt`` exists, else started again, as a user would); the final ``last.pt``
and ``best.pt`` must hold exactly the weights of an uninterrupted run. A cycling run that hits
``ENOSPC`` at a random write stops with that error and leaves the last committed cycle valid: the
resume gives the uninterrupted outputs.
"""

from __future__ import annotations

import errno
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_cycling import cycling_store  # noqa: F401
from test_kill_anywhere import Killed, Moments, kill_setup, outputs, run  # noqa: F401
from test_training import train_config, write_synthetic_store

from aivarda.config import validate
from aivarda.cycling.state import RunDirectory
from aivarda.learning import learn_vae, train_model
from aivarda.models.config import TrainConfig

pytestmark = pytest.mark.reliability
HYPOTHESIS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _weights(path: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return payload.get("state_dict") or payload["net"]


@contextmanager
def counted_steps(trainer: type, moments: Moments | None) -> Iterator[None]:
    """Count (and maybe kill at) every optimiser step of ``trainer`` and every atomic-write step."""
    if moments is None:
        yield
        return
    step = trainer.train_step

    def counted(self: Any, batch: Any) -> Any:
        result = step(self, batch)
        moments.tick()
        return result

    with moments.armed(), mock.patch.object(trainer, "train_step", counted):
        yield


def kill_then_resume(train: Callable[..., None], kill_at: int, out: Path) -> None:
    """``train(moments)`` killed at moment ``kill_at``, then ``train(resume=...)`` as a user would:
    ``--resume`` from ``out/last.pt``, or start again when it was killed before the first one."""
    with pytest.raises(Killed):
        train(moments=Moments(kill_at))
    resume = (out / "last.pt").is_file()
    event("resumed" if resume else "restarted")
    train(resume=resume)


def _train_model(store: Path, out: Path, moments: Moments | None = None, resume: bool = False) -> None:
    cfg = validate(TrainConfig, train_config(store, out, epochs=2), "cfg")
    with counted_steps(train_model.Trainer, moments):
        train_model.train(cfg, resume=resume, progress=False)


@pytest.fixture(scope="module")
def train_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, torch.Tensor]], int]:
    """The synthetic store, the uninterrupted run's final weights, the number of moments."""
    tmp = tmp_path_factory.mktemp("killtrain")
    store = write_synthetic_store(tmp / "synthetic.zarr")
    _train_model(store, tmp / "warm")  # statistics cached: not counted
    counter = Moments()
    _train_model(store, tmp / "ref", counter)
    return store, {n: _weights(tmp / "ref" / n) for n in ("last.pt", "best.pt")}, counter.count


@HYPOTHESIS
@given(data=st.data())
def test_train_model_killed_anywhere_resumes_to_the_same_weights(train_setup, data) -> None:
    store, expected, n_moments = train_setup
    kill_at = data.draw(st.integers(1, n_moments), label="kill moment")
    with tempfile.TemporaryDirectory(prefix="aivarda-killtrain-") as tmp:
        out = Path(tmp) / "run"
        kill_then_resume(lambda moments=None, resume=False: _train_model(store, out, moments, resume), kill_at, out)
        for name, weights in expected.items():
            got = _weights(out / name)
            assert got.keys() == weights.keys()
            assert all(torch.equal(got[k], weights[k]) for k in weights), name


def _train_vae(out: Path, moments: Moments | None = None, resume: bool = False) -> None:
    from test_vae import fake_samples, tiny_config

    cfg = tiny_config(out)
    with counted_steps(learn_vae.VaeTrainer, moments):
        learn_vae.train_vae(cfg, fake_samples(), resume=resume, progress=False)


@HYPOTHESIS
@given(data=st.data())
def test_learn_b_vae_killed_anywhere_resumes_to_the_same_weights(tmp_path_factory, data) -> None:
    from aivarda.background.vae import VaeCheckpoint

    ref = tmp_path_factory.mktemp("vae-ref") / "ref"
    if not (ref / "last.pt").is_file():
        counter = Moments()
        _train_vae(ref, counter)
        (ref / "moments").write_text(str(counter.count))
    n_moments = int((ref / "moments").read_text())
    kill_at = data.draw(st.integers(1, n_moments), label="kill moment")
    with tempfile.TemporaryDirectory(prefix="aivarda-killvae-") as tmp:
        out = Path(tmp) / "run"
        kill_then_resume(lambda moments=None, resume=False: _train_vae(out, moments, resume), kill_at, out)
        for name in ("last.pt", "best.pt"):
            a, _ = VaeCheckpoint.load(ref / name)
            b, _ = VaeCheckpoint.load(out / name)
            assert all(torch.equal(x, y) for x, y in zip(a.net.state_dict().values(), b.net.state_dict().values())), name


class DiskFull(Moments):
    """At moment ``k`` a write fails with ENOSPC (and keeps failing until the run stops)."""

    def tick(self, *_: object) -> None:
        self.count += 1
        if self.kill_at is not None and self.count >= self.kill_at:
            raise OSError(errno.ENOSPC, "No space left on device")


@HYPOTHESIS
@given(data=st.data())
def test_full_disk_leaves_the_last_cycle_valid(kill_setup, data) -> None:
    config, expected, n_moments = kill_setup
    full_at = data.draw(st.integers(1, n_moments), label="moment the disk is full")
    with tempfile.TemporaryDirectory(prefix="aivarda-enospc-") as tmp:
        out = Path(tmp) / "run"
        with pytest.raises(OSError, match="No space left on device"):
            run(config, out, DiskFull(full_at), resume=True)
        RunDirectory(out).unlock()
        run(config, out, resume=True)  # space freed: the resume completes from the last valid cycle
        assert outputs(out) == expected
