"""Exact resume: a training killed with SIGKILL at any iteration and started again with the same command ends with the
weights of the run that was never interrupted (torch.equal, CPU), for the VQ-VAE and for the prior.

Each run is the real ``python -m monai.bundle run training`` in a subprocess. The killed runs merge one more config
file over the training config (:data:`KILL_AT`), which appends one handler to the trainer's: at the chosen iteration
the process sends itself SIGKILL, a real signal that nothing can catch. The resume is the same command without it.
The runs shuffle, flip slices at random (``augment``), re-seed dead codes (``CodebookRestart``) and, for the prior,
drop units out: every random draw of a training is covered.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, run_bundle, tiny_prior_overrides, tiny_vqvae_overrides, write_oasis_slices
from ignite.engine import Engine, Events

from oasis_gen.engines.handlers import TimeBudget, time_budget
from oasis_gen.engines.run_state import RunState

TRAIN = str(CONFIGS / "train.yaml")
TRAIN_PRIOR = str(CONFIGS / "train_prior.yaml")
EPOCHS = 3  # 12 train slices in batches of 4: 3 iterations an epoch, 9 in all
# merged over a training config: one more trainer handler, which kills the process after iteration @kill_at
KILL_AT = """\
kill_at: 1
+train#handlers:
  - {_target_: killer.KillAt, iteration: "@kill_at"}
"""
KILLER = """\
import os
import signal

from ignite.engine import Events


class KillAt:
    def __init__(self, iteration):
        self.iteration = int(iteration)

    def attach(self, engine):
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=self.iteration), self)

    def __call__(self, engine):
        os.kill(os.getpid(), signal.SIGKILL)
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("exact_resume")
    write_oasis_slices(work / "data", layout=(("train", 3, 4), ("validate", 1, 4)))
    (work / "kill_at.yaml").write_text(KILL_AT)
    (work / "killer.py").write_text(KILLER)
    return work


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model's weights and buffers and the optimizer's state tensors of a resumable checkpoint, by name."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    found = {f"model.{k}": v for k, v in state["model"].items()}
    for index, slots in state["optimizer"]["state"].items():
        found.update({f"optimizer.{index}.{k}": v for k, v in slots.items() if isinstance(v, torch.Tensor)})
    return found


def train(config: str, args: list[str], kill_at: int | None = None, work: Path | None = None):
    """One training run through the bundle CLI; with ``kill_at``, killed by SIGKILL after that iteration."""
    if kill_at is None:
        return run_bundle("run", "training", "--config_file", config, *args)
    path = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH", "")) if p)
    return run_bundle("run", "training", "--config_file", f"['{config}','{work / 'kill_at.yaml'}']", *args,
                      "--kill_at", str(kill_at), env={"PYTHONPATH": path})


def killed_and_resumed(config: str, args_for, kill_at: int, work: Path, name: str) -> Path:
    """Kill a run at ``kill_at``, resume it with the same command; return its output folder."""
    out = work / name
    killed = train(config, args_for(out), kill_at=kill_at, work=work)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = train(config, args_for(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    saved = (kill_at - 1) // 3  # epochs whose checkpoint was written before the kill
    if saved:
        assert f"resuming from {out / 'checkpoints' / f'last_checkpoint_epoch={saved}.pt'}" in log
    else:
        assert "no checkpoint to resume from: training starts at epoch 1" in log
    return out


def assert_same_weights(first: Path, second: Path) -> None:
    expected = weights(first / "checkpoints" / f"last_checkpoint_epoch={EPOCHS}.pt")
    found = weights(second / "checkpoints" / f"last_checkpoint_epoch={EPOCHS}.pt")
    assert found.keys() == expected.keys() and len(expected) > 10
    assert [k for k in expected if not torch.equal(expected[k], found[k])] == []


@pytest.fixture(scope="module")
def vqvae_args(work) -> callable:
    def args(out: Path) -> list[str]:
        return tiny_vqvae_overrides(work / "data", out, work / "mlruns", max_epochs=EPOCHS, augment="true",
                                    codebook_restart_interval=2, early_stop_patience=5)
    return args


def trained_whole(config: str, args: callable, out: Path) -> Path:
    """A run of ``config`` that nothing interrupts: the weights a resumed run must end with."""
    result = train(config, args(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def vqvae_uninterrupted(work, vqvae_args) -> Path:
    return trained_whole(TRAIN, vqvae_args, work / "vqvae_whole")


@pytest.mark.parametrize("kill_at", [2, 4, 9])  # in epoch 1 (nothing saved), first of epoch 2, last of epoch 3
def test_vqvae_killed_at_any_iteration_resumes_to_the_same_weights(work, vqvae_args, vqvae_uninterrupted, kill_at):
    out = killed_and_resumed(TRAIN, vqvae_args, kill_at, work, f"vqvae_killed_{kill_at}")
    assert_same_weights(vqvae_uninterrupted, out)


@pytest.fixture(scope="module")
def prior_args(work, vqvae_uninterrupted) -> callable:
    def args(out: Path) -> list[str]:
        return tiny_prior_overrides(work / "data", vqvae_uninterrupted / "checkpoints" / "model.pt", out,
                                    work / "mlruns", max_epochs=EPOCHS, dropout=0.2, num_pictures=0)
    return args


@pytest.fixture(scope="module")
def prior_uninterrupted(work, prior_args) -> Path:
    return trained_whole(TRAIN_PRIOR, prior_args, work / "prior_whole")


@pytest.mark.parametrize("kill_at", [3, 5, 8])  # last of epoch 1, second of epoch 2, second of epoch 3
def test_prior_killed_at_any_iteration_resumes_to_the_same_weights(work, prior_args, prior_uninterrupted, kill_at):
    out = killed_and_resumed(TRAIN_PRIOR, prior_args, kill_at, work, f"prior_killed_{kill_at}")
    assert_same_weights(prior_uninterrupted, out)


# ------------------------------------------------------------------ in process, fast


class Clock:
    """A stand-in for time.perf_counter; the engine of :func:`budget_run` moves it on ``step`` seconds an iteration."""

    def __init__(self, step: float):
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now


def budget_run(minutes: float, clock: Clock, saved: Mapping | None = None, max_epochs: int = 100
               ) -> tuple[int, TimeBudget]:
    """Train a do-nothing engine (one 60-second iteration an epoch) under a time budget; return epochs run."""
    def step(engine, batch):
        clock.now += clock.step

    engine = Engine(step)
    budget = TimeBudget(minutes)
    budget.attach(engine)
    state = RunState(handlers=[budget])
    if saved is not None:
        engine.add_event_handler(Events.STARTED, lambda engine: state.load_state_dict(saved))
    epochs = []
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs.append(engine.state.epoch))
    engine.run([0], max_epochs=max_epochs)
    return len(epochs), budget


def test_time_limited_run_resumed_trains_the_minutes_left(monkeypatch):
    clock = Clock(step=60.0)
    monkeypatch.setattr(time_budget.time, "perf_counter", clock)
    whole, budget = budget_run(10, clock)  # a 10-minute budget, one minute an epoch
    assert whole == 10  # it stops when another epoch as long as the longest would overrun
    # killed after 4 epochs: its checkpoint says 4 minutes were trained; the resumed run trains what is left
    after_four = {"trained_seconds": 240.0, "longest_epoch": 60.0}
    saved = RunState(handlers=[TimeBudget(10)]).state_dict()
    saved["handlers"] = {"TimeBudget": after_four}
    resumed, budget = budget_run(10, clock, saved)
    assert resumed == whole - 4
    assert budget.trained_seconds() == pytest.approx(whole * 60.0)
    # a checkpoint whose budget is spent: nothing more is trained
    saved["handlers"] = {"TimeBudget": {"trained_seconds": 560.0, "longest_epoch": 60.0}}
    assert budget_run(10, clock, saved)[0] == 0


def test_run_state_restores_every_random_state_and_loads_weights_only(tmp_path):
    import random

    import numpy as np

    generator = torch.Generator().manual_seed(3)
    loader = torch.utils.data.DataLoader(list(range(8)), shuffle=True, generator=generator)
    state = RunState(loaders=[loader])
    path = tmp_path / "state.pt"
    torch.save({"run_state": state.state_dict()}, path)
    expected = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=generator), list(loader))
    state.load_state_dict(torch.load(path, weights_only=True)["run_state"])
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(2, generator=generator), list(loader))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and torch.equal(expected[3], again[3])
    assert [int(x) for x in expected[4]] == [int(x) for x in again[4]]
