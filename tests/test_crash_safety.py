"""Crash safety: runs killed with SIGKILL resume from their last checkpoint, saves are atomic, and checkpoints
that cannot resume a training stop it with one clear line (and are left where they are)."""

from __future__ import annotations

import ast
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, ROOT, tiny_prior_overrides, tiny_vqvae_overrides, write_oasis_slices
from conftest import run_bundle as bundle
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from oasis_gen.engines.checkpoints import (
    AtomicCheckpointSaver,
    AtomicDiskSaver,
    KeepLatestCheckpoint,
    is_leftover,
    latest_checkpoint,
    remove_leftovers,
    resume_checkpoint,
)
from oasis_gen.engines.run_state import RunState
from oasis_gen.networks.pixelcnn import pixelcnn_from_spec, pixelcnn_spec
from oasis_gen.networks.spec import ModelSpec, read_checkpoint
from oasis_gen.networks.vqvae import load_vqvae, vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import CheckpointError

TRAIN = str(CONFIGS / "train.yaml")
TRAIN_PRIOR = str(CONFIGS / "train_prior.yaml")
# the sizes tiny_vqvae_overrides gives train.yaml
TINY = {"image_size": 32, "num_downsamplings": 2, "channels": [8, 16], "num_embeddings": 16, "embedding_dim": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """12 train, 4 validation and 6 test slices of 40x40 in the OASIS layout (3 iterations per epoch)."""
    return write_oasis_slices(tmp_path_factory.mktemp("crash") / "data")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One MLflow store for the module's runs (creating a store's tables takes a few seconds)."""
    return tmp_path_factory.mktemp("crash_store") / "mlruns"


def save_resumable(path: Path, spec: ModelSpec, build=vqvae_from_spec, epochs: int = 1, epoch_length: int = 3
                   ) -> Path:
    """Write what train.yaml's CheckpointSaver writes after ``epochs`` epochs, for the network of ``spec``."""
    network = build(spec)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "spec": spec.state_dict(), "run_state": RunState().state_dict(),
                "trainer": {"iteration": epochs * epoch_length, "epoch_length": epoch_length, "max_epochs": 4}}, path)
    return path


def start_training(args: list[str], log: Path, config: str = TRAIN) -> subprocess.Popen:
    """Start ``python -m monai.bundle run training`` as a user would, its output going to a log file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("OASIS_GEN_TRACEBACK", None)
    with open(log, "w") as stream:
        return subprocess.Popen([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
                                 *args], cwd=ROOT, env=env, stdout=stream, stderr=subprocess.STDOUT)


def kill_when(process: subprocess.Popen, ready, what: str, timeout: float = 300.0) -> None:
    """SIGKILL a process as soon as ``ready()`` is true (polled every few milliseconds)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            pytest.fail(f"the run ended (exit code {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"no {what} within {timeout:.0f} s")
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def resumable_files(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.glob("last_*.pt"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_leftover(p.name))


# ------------------------------------------------------------------ killed runs, through the real CLI


@pytest.mark.slow
def test_run_killed_after_its_first_checkpoint_resumes_and_finishes(tiny_data, store, tmp_path):
    out = tmp_path / "out"
    ckpts = out / "checkpoints"
    args = tiny_vqvae_overrides(tiny_data, out, store, max_epochs=4)
    first = start_training(args, tmp_path / "killed.log")
    kill_when(first, lambda: (ckpts / "last_checkpoint_epoch=1.pt").is_file(), "first checkpoint")
    assert first.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(ckpts)
    epoch = int(re.search(r"=(\d+)\.pt$", killed_at)[1])
    assert 1 <= epoch < 4  # normally 1: the kill comes within milliseconds of the file's rename

    result = bundle("run", "training", "--config_file", TRAIN, *args)  # the same command again
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"resuming from {killed_at} (epoch {epoch})" in log
    assert f"Restored all variables from {killed_at}" in log
    assert all(f"Epoch[{e}]" not in log for e in range(1, epoch + 1))  # nothing trained twice
    assert all(f"Epoch[{e}] Complete" in log for e in range(epoch + 1, 5))
    assert resumable_files(ckpts) == ["last_checkpoint_epoch=3.pt", "last_checkpoint_epoch=4.pt"]  # the one before too
    assert leftovers(ckpts) == []
    last = torch.load(ckpts / "last_checkpoint_epoch=4.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 4 * last["trainer"]["epoch_length"] == 12
    network, spec = load_vqvae(ckpts / "model.pt")
    assert spec["num_embeddings"] == 16 and network(torch.rand(1, 1, 32, 32))[0].shape == (1, 1, 32, 32)
    best = torch.load(ckpts / "model.pt", weights_only=True)["checkpointer"]["_saved"]
    assert len(best) == 1 and 0.0 < float(best[0][0]) <= 1.0  # the best SSIM, kept for the next resume


@pytest.mark.slow
def test_run_killed_before_any_checkpoint_starts_again_from_scratch(tiny_data, store, tmp_path):
    out = tmp_path / "out"
    ckpts = out / "checkpoints"
    log = tmp_path / "killed.log"
    args = tiny_vqvae_overrides(tiny_data, out, store, max_epochs=2)
    first = start_training(args, log)
    # data checked and cached, the trainer just started its first epoch
    kill_when(first, lambda: "no checkpoint to resume from" in log.read_text(), "start of the first epoch")
    assert latest_checkpoint(ckpts) is None

    result = bundle("run", "training", "--config_file", TRAIN, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    log_text = result.stdout + result.stderr
    assert "no checkpoint to resume from: training starts at epoch 1" in log_text
    assert "Epoch[1] Complete" in log_text and "Epoch[2] Complete" in log_text
    assert resumable_files(ckpts) == ["last_checkpoint_epoch=1.pt", "last_checkpoint_epoch=2.pt"]
    assert leftovers(ckpts) == []
    assert torch.load(ckpts / "last_checkpoint_epoch=2.pt", weights_only=True)["trainer"]["iteration"] == 6


CHILD = r"""
import sys
from pathlib import Path
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from oasis_gen.engines.checkpoints import EPOCH, AtomicDiskSaver, latest_checkpoint

folder = Path(sys.argv[1])
latest = latest_checkpoint(folder)
start = int(EPOCH.search(latest)[1]) if latest else 0
weights = torch.nn.Linear(1000, 1000)  # 4 MB per save: long enough to be killed half-way through one
saver = Checkpoint({"model": weights}, AtomicDiskSaver(folder), filename_prefix="last", n_saved=1,
                   score_name="epoch", score_function=lambda engine: start + engine.state.epoch)
engine = Engine(lambda engine, batch: None)
engine.add_event_handler(Events.EPOCH_COMPLETED, saver)
engine.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: print("saved", flush=True))
engine.run([0], max_epochs=1_000_000)
"""


@pytest.mark.slow
def test_kills_in_the_middle_of_saves_always_leave_a_whole_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    rng = random.Random(0)
    epochs = []
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline().strip() == "saved"  # its first checkpoint is written; it goes on saving
        time.sleep(rng.uniform(0.1, 0.4))  # a save takes a few ms and they follow each other: most kills land in one
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        latest = latest_checkpoint(folder)
        assert latest is not None
        state = read_checkpoint(latest)  # whole: it loads, with every weight
        assert state["weight"].shape == (1000, 1000) and state["bias"].shape == (1000,)
        epochs.append(int(re.search(r"=(\d+)\.pt$", latest)[1]))
    assert epochs == sorted(epochs) and epochs[-1] > epochs[0]  # each process went on from the previous one
    assert all(read_checkpoint(p)["weight"].shape == (1000, 1000) for p in folder.glob("last_*.pt"))
    remove_leftovers(folder)
    assert leftovers(folder) == []


FAULT = r"""
import os
import signal
import sys
from pathlib import Path
import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint
import oasis_gen.utils.files
from oasis_gen.engines.checkpoints import AtomicDiskSaver

folder = Path(sys.argv[1])
weights = torch.nn.Linear(10, 10)
saver = Checkpoint({"model": weights}, AtomicDiskSaver(folder), filename_prefix="last", n_saved=1,
                   score_name="epoch", score_function=lambda engine: engine.state.epoch)
engine = Engine(lambda engine, batch: None)
engine.state.epoch = 1
saver(engine)
# the fault: the machine stops between the write (synced) of epoch 2's checkpoint and its rename
oasis_gen.utils.files.os.replace = lambda source, target: os.kill(os.getpid(), signal.SIGKILL)
with torch.no_grad():
    weights.weight.fill_(2.0)
engine.state.epoch = 2
saver(engine)
"""


@pytest.mark.slow
def test_fault_between_write_and_rename_leaves_the_previous_checkpoint_loadable(tmp_path):
    folder = tmp_path / "checkpoints"
    child = subprocess.run([sys.executable, "-c", FAULT, str(folder)], cwd=ROOT, capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert resumable_files(folder) == ["last_model_epoch=1.pt"]  # ignite asked to remove it: kept
    written = leftovers(folder)
    assert len(written) == 1 and (folder / written[0]).stat().st_size > 0  # the new one, never renamed
    state = read_checkpoint(folder / "last_model_epoch=1.pt")
    assert state["weight"].shape == (10, 10) and not torch.all(state["weight"] == 2.0)
    assert latest_checkpoint(folder) == str(folder / "last_model_epoch=1.pt")
    remove_leftovers(folder)
    assert leftovers(folder) == []


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import oasis_gen.utils.files as files

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("rename", str(source), str(target)))
        real_replace(source, target)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", replace)
    target = files.write_text(tmp_path / "a.txt", "whole")
    (rename,) = [e for e in events if e[0] == "rename"]
    assert events == [("fsync", rename[1]), rename, ("fsync", str(tmp_path))]
    assert rename[2] == str(target) and target.read_text() == "whole"


def test_checkpoint_that_fails_to_load_is_named_and_the_previous_one_used(tmp_path, tiny_network, caplog):
    network, spec = tiny_network
    previous = save_resumable(tmp_path / "last_checkpoint_epoch=2.pt", spec, epochs=2)
    newest = save_resumable(tmp_path / "last_checkpoint_epoch=3.pt", spec, epochs=3)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with caplog.at_level(logging.WARNING):
        assert resume_checkpoint(tmp_path, True, network=network, spec=spec, max_epochs=5) == str(previous)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{newest}: the checkpoint is damaged or not a PyTorch checkpoint (")
    assert warnings[0].endswith(f"resuming from the previous checkpoint instead: {previous}")
    assert newest.is_file()  # left for the next save of its epoch to replace
    previous.write_bytes(b"")  # none loads: the newest is named in the error
    with pytest.raises(CheckpointError, match=re.escape(f"{newest}: cannot resume: the checkpoint is damaged")):
        resume_checkpoint(tmp_path, True, network=network, spec=spec, max_epochs=5)


@pytest.mark.slow
def test_run_whose_last_checkpoint_is_damaged_resumes_from_the_one_before(tiny_data, store, tmp_path):
    out = tmp_path / "out"
    ckpts = out / "checkpoints"
    first = bundle("run", "training", "--config_file", TRAIN,
                   *tiny_vqvae_overrides(tiny_data, out, store, max_epochs=2))
    assert first.returncode == 0, first.stderr[-3000:]
    damaged = ckpts / "last_checkpoint_epoch=2.pt"
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 3])
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_vqvae_overrides(tiny_data, out, store, max_epochs=3))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"{damaged}: the checkpoint is damaged or not a PyTorch checkpoint (" in log
    assert f"resuming from {ckpts / 'last_checkpoint_epoch=1.pt'} (epoch 1)" in log
    assert "Epoch[2] Complete" in log and "Epoch[3] Complete" in log
    assert resumable_files(ckpts) == ["last_checkpoint_epoch=2.pt", "last_checkpoint_epoch=3.pt"]
    assert read_checkpoint(damaged)["trainer"]["iteration"] == 6  # replaced by a whole one


# ------------------------------------------------------------------ checkpoints that cannot resume, through the CLI


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "another architecture"])
def test_checkpoint_that_cannot_resume_stops_the_run_with_one_line(tiny_data, tmp_path, case):
    out = tmp_path / "out"
    ckpt = out / "checkpoints" / "last_checkpoint_epoch=1.pt"
    if case == "truncated":
        save_resumable(ckpt, vqvae_spec(**TINY))
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        message = f"{ckpt}: cannot resume: the checkpoint is damaged or not a PyTorch checkpoint ("
    else:
        save_resumable(ckpt, vqvae_spec(**{**TINY, "channels": [16, 32]}))
        message = (f"{ckpt}: cannot resume: it was trained with another architecture: channels=[16, 32] "
                   "(config: [8, 16])")
    before = ckpt.read_bytes()
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_vqvae_overrides(tiny_data, out, tmp_path / "mlruns", max_epochs=2))
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("oasis-gen: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "pass --resume false or another --output_dir" in errors[0]
    assert "Traceback" not in result.stderr
    assert ckpt.read_bytes() == before  # nothing deleted or changed
    assert resumable_files(out / "checkpoints") == ["last_checkpoint_epoch=1.pt"]


@pytest.mark.slow
def test_vqvae_checkpoint_in_a_prior_output_dir_stops_the_prior_with_one_line(tiny_data, tmp_path):
    spec = vqvae_spec(**TINY)
    vqvae_ckpt = tmp_path / "vqvae" / "model.pt"
    vqvae_ckpt.parent.mkdir()
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, vqvae_ckpt)
    out = tmp_path / "prior"
    stray = save_resumable(out / "checkpoints" / "last_checkpoint_epoch=2.pt", spec, epochs=2)
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(tiny_data, vqvae_ckpt, out, tmp_path / "mlruns", max_epochs=3))
    assert result.returncode != 0
    assert (f"oasis-gen: error: {stray}: cannot resume: it holds a VQ-VAE, but this run trains a Gated PixelCNN "
            "prior; delete it") in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert stray.is_file() and not (out / "codes").exists()  # refused before any encoding


# ------------------------------------------------------------------ in process, fast


@pytest.fixture
def tiny_network():
    spec = vqvae_spec(**TINY)
    return vqvae_from_spec(spec), spec


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "the checkpoint is empty (0 bytes)"),
    (b"\x8a\x0f random bytes \x00\xff" * 300, "the checkpoint is damaged or not a PyTorch checkpoint"),
    (b"half of a zip", "the checkpoint is damaged or not a PyTorch checkpoint"),
])
def test_damaged_checkpoint_is_refused_by_name_and_kept(tmp_path, tiny_network, content, problem):
    ckpt = tmp_path / "last_checkpoint_epoch=3.pt"
    ckpt.write_bytes(content)
    network, spec = tiny_network
    with pytest.raises(CheckpointError) as caught:
        resume_checkpoint(tmp_path, "true", network=network, spec=spec, max_epochs=5)
    message = str(caught.value)
    assert message.startswith(f"{ckpt}: cannot resume: {problem}") and "\n" not in message
    assert message.endswith("or pass --resume false or another --output_dir to start a new training")
    assert ckpt.read_bytes() == content


def test_checkpoint_of_another_network_or_size_is_refused_by_name(tmp_path, tiny_network):
    network, spec = tiny_network
    ckpt = tmp_path / "last_checkpoint_epoch=1.pt"
    prior = pixelcnn_spec(num_embeddings=16, grid_size=8, channels=8, num_layers=2)
    save_resumable(ckpt, prior, build=pixelcnn_from_spec)
    with pytest.raises(CheckpointError, match="it holds a Gated PixelCNN prior, but this run trains a VQ-VAE"):
        resume_checkpoint(tmp_path, True, network=network, spec=spec)
    save_resumable(ckpt, vqvae_spec(**{**TINY, "num_embeddings": 32}))
    with pytest.raises(CheckpointError, match=r"num_embeddings=32 \(config: 16\); keep those values, or delete"):
        resume_checkpoint(tmp_path, True, network=network, spec=spec)
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, ckpt)  # a best model, not resumable
    with pytest.raises(CheckpointError, match="not a resumable checkpoint of oasis-gen .it lacks optimizer, "
                                              "lr_scheduler, trainer, run_state."):
        resume_checkpoint(tmp_path, True, network=network, spec=spec)
    save_resumable(ckpt, spec, epochs=3)
    with pytest.raises(CheckpointError, match="it has trained 3 epochs, more than max_epochs=2; pass --max_epochs 4"):
        resume_checkpoint(tmp_path, True, network=network, spec=spec, max_epochs=2)
    assert resume_checkpoint(tmp_path, True, network=network, spec=spec, max_epochs=3) == str(ckpt)
    assert resume_checkpoint(tmp_path, "false", network=network, spec=spec) is None
    assert ckpt.is_file()


def test_leftovers_of_interrupted_saves_are_never_resumed_and_are_cleaned(tmp_path, tiny_network):
    network, spec = tiny_network
    good = save_resumable(tmp_path / "last_checkpoint_epoch=2.pt", spec, epochs=2)
    ours = tmp_path / ".last_checkpoint_epoch=3.pt.4242.0a1b2c3d.partial"  # oasis_gen.utils.files.atomic_path's name
    ignites = tmp_path / "tmpk2j4_x9q"  # tempfile's name, as ignite's atomic DiskSaver leaves it
    for leftover in (ours, ignites):
        leftover.write_bytes(good.read_bytes()[:100])
    assert latest_checkpoint(tmp_path) == str(good)
    assert resume_checkpoint(tmp_path, True, network=network, spec=spec) == str(good)
    assert not ours.exists() and not ignites.exists() and good.is_file()


def test_failed_save_keeps_the_previous_checkpoint_and_leaves_no_temporary_file(tmp_path):
    class Extra:
        """A part of the checkpoint that cannot be pickled when ``broken``: torch.save fails half-way."""

        broken = False

        def state_dict(self):
            return {"hook": (lambda: None) if self.broken else None}

    weights, extra = torch.nn.Linear(4, 4), Extra()
    saver = Checkpoint({"model": weights, "extra": extra}, AtomicDiskSaver(tmp_path), filename_prefix="last",
                       n_saved=1, score_name="epoch", score_function=lambda engine: engine.state.epoch)
    engine = Engine(lambda engine, batch: None)
    engine.state.epoch = 1
    saver(engine)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint_epoch=1.pt"]
    extra.broken, engine.state.epoch = True, 2
    with pytest.raises(Exception, match="pickle"):
        saver(engine)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint_epoch=1.pt"]  # ignite asked to remove it: kept
    extra.broken, engine.state.epoch = False, 3
    saver(engine)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint_epoch=3.pt"]  # removed once the new one is in place
    assert torch.equal(read_checkpoint(tmp_path / "last_checkpoint_epoch=3.pt")["model"]["weight"], weights.weight)


def validate(saver: AtomicCheckpointSaver, ssim: float) -> None:
    """One validation whose key metric is ``ssim``, with the saver attached as in train.yaml."""
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: engine.state.metrics.update(val_ssim=ssim))
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)


def test_best_model_is_replaced_after_a_resume_only_by_a_better_one(tmp_path):
    network = torch.nn.Linear(2, 2)

    def best_saver(resume: bool) -> AtomicCheckpointSaver:  # validate#handlers' saver of a fresh process
        return AtomicCheckpointSaver(str(tmp_path), {"model": network, "spec": ModelSpec(kind="test")},
                                     resume=resume, save_key_metric=True, key_metric_name="val_ssim",
                                     key_metric_n_saved=1, key_metric_filename="model.pt", key_metric_save_state=True)

    def saved_bias() -> float:
        return float(read_checkpoint(tmp_path / "model.pt")["model"]["bias"][0])

    with torch.no_grad():
        network.bias.fill_(1.0)
        first = best_saver(resume=False)
        validate(first, 0.8)
        network.bias.fill_(2.0)
        validate(first, 0.6)  # worse: kept
        assert saved_bias() == 1.0
        resumed = best_saver(resume=True)  # the run is killed and resumed
        validate(resumed, 0.7)  # worse than 0.8 before the kill: kept (MONAI's saver would replace it)
        assert saved_bias() == 1.0
        network.bias.fill_(3.0)
        validate(resumed, 0.9)
        assert saved_bias() == 3.0
        network.bias.fill_(4.0)
        validate(best_saver(resume=False), 0.1)  # a new training (resume false) starts its own best
        assert saved_bias() == 4.0
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_fresh_run_keeps_its_own_checkpoint_over_an_older_runs_later_ones(tmp_path):
    old = save_resumable(tmp_path / "last_checkpoint_epoch=5.pt", vqvae_spec(**TINY), epochs=5)
    new = save_resumable(tmp_path / "last_checkpoint_epoch=1.pt", vqvae_spec(**TINY), epochs=1)
    trainer = Engine(lambda engine, batch: None)
    trainer.state.epoch = 1  # a run with resume false has just saved its first epoch
    KeepLatestCheckpoint(tmp_path)(trainer)
    assert new.is_file() and not old.exists()


def test_every_torch_load_reads_weights_only():
    """Every torch.load in the project (package, tests, benchmarks) passes weights_only=True."""
    unsafe = []
    for folder in ("oasis_gen", "tests", "benchmarks"):
        for source in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    flags = [k.value for k in node.keywords if k.arg == "weights_only"]
                    if not (flags and isinstance(flags[0], ast.Constant) and flags[0].value is True):
                        unsafe.append(f"{source.relative_to(ROOT)}:{node.lineno}")
    for config in sorted((ROOT / "bundle" / "configs").glob("*.yaml")):
        unsafe += [f"{config.name}: {line.strip()}" for line in config.read_text().splitlines()
                   if "torch.load(" in line and "weights_only=True" not in line]
    assert unsafe == []
