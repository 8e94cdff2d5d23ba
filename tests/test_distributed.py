"""Multi-process training through the real torchrun command: two CPU processes over gloo train the VQ-VAE
(train.yaml + multi_gpu_train.yaml) and the prior (train_prior.yaml + multi_gpu_train_prior.yaml); the ranks must
end bit-identical, save unwrapped checkpoints, record one MLflow run and report metrics over the whole split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, ROOT, tiny_prior_overrides, tiny_vqvae_overrides, write_oasis_slices
from monai.bundle import ConfigParser
from monai.handlers import StatsHandler

from oasis_gen.engines import distributed
from oasis_gen.engines.handlers import TimeBudget
from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import ConfigError

TRAIN = str(CONFIGS / "train.yaml")
MULTI = str(CONFIGS / "multi_gpu_train.yaml")
TRAIN_PRIOR = str(CONFIGS / "train_prior.yaml")
MULTI_PRIOR = str(CONFIGS / "multi_gpu_train_prior.yaml")
# 12 train slices (6 per rank: 2 batches of at most 4) and 3 validation slices (2 on rank 0, 1 on rank 1)
LAYOUT = (("train", 3, 4), ("validate", 1, 3))
PROCESSES = 2


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``torchrun --standalone --nnodes=1 --nproc_per_node=2 ...`` as a user would, returning its output."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("OASIS_GEN_TRACEBACK", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
               f"--nproc_per_node={PROCESSES}", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def bundle_files(*paths: str) -> str:
    """The ``--config_file`` value that merges several configs."""
    return "[" + ",".join(f"'{p}'" for p in paths) + "]"


def mlflow_runs(store: Path) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oasis-gen")
    return client, client.search_runs([experiment.experiment_id])


def assert_replicas_agree(out: Path, epoch: int) -> dict[str, str]:
    """Both ranks' checksums in replicas.json are equal; return rank 0's per-tensor checksums."""
    report = json.loads((out / "replicas.json").read_text())
    assert report["epoch"] == epoch and report["world_size"] == PROCESSES
    assert report["agree"] is True and report["differing"] == []
    first, second = report["ranks"]
    assert (first["rank"], second["rank"]) == (0, 1)
    assert first["tensors"] == second["tensors"] and first["sha256"] == second["sha256"]
    return first["tensors"]


def metric_at(client, run_id: str, name: str, step: int) -> float:
    return next(m.value for m in client.get_metric_history(run_id, name) if m.step == step)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_oasis_slices(tmp_path_factory.mktemp("ddp_data") / "data", layout=LAYOUT)


@pytest.fixture(scope="module")
def vqvae_run(tiny_data, tmp_path_factory) -> dict:
    """The tiny VQ-VAE (32px, K=16) trained for 2 epochs by 2 processes."""
    work = tmp_path_factory.mktemp("ddp_vqvae")
    out, store = work / "out", work / "mlruns"
    result = torchrun("-m", "monai.bundle", "run", "training", "--config_file", bundle_files(TRAIN, MULTI),
                      *tiny_vqvae_overrides(tiny_data, out, store, max_epochs=2))
    assert result.returncode == 0, result.stderr[-4000:]
    return {"out": out, "store": store, "log": result.stdout + result.stderr, "data": tiny_data}


@pytest.fixture(scope="module")
def prior_run(vqvae_run, tmp_path_factory) -> dict:
    """A tiny prior (K=16 codes of the VQ-VAE above, 8x8 grids) trained for 2 epochs by 2 processes."""
    work = tmp_path_factory.mktemp("ddp_prior")
    out, store = work / "out", work / "mlruns"
    vqvae = vqvae_run["out"] / "checkpoints" / "model.pt"
    result = torchrun("-m", "monai.bundle", "run", "training", "--config_file", bundle_files(TRAIN_PRIOR, MULTI_PRIOR),
                      *tiny_prior_overrides(vqvae_run["data"], vqvae, out, store, max_epochs=2))
    assert result.returncode == 0, result.stderr[-4000:]
    return {"out": out, "store": store, "log": result.stdout + result.stderr, "vqvae": vqvae}


# ------------------------------------------------------------------ VQ-VAE


@pytest.mark.slow
def test_vqvae_ranks_end_identical_and_save_the_unwrapped_network(vqvae_run):
    from oasis_gen.networks.vqvae import load_vqvae

    log, ckpts = vqvae_run["log"], vqvae_run["out"] / "checkpoints"
    assert "rank 0 of 2 started (backend gloo, device cpu)" in log and "rank 1 of 2 started" in log
    tensors = assert_replicas_agree(vqvae_run["out"], epoch=2)
    # the EMA codebook (a parameter without gradient and two buffers) is among what the ranks agree on
    assert {"quantizer.quantizer.embedding.weight", "quantizer.quantizer.ema_w",
            "quantizer.quantizer.ema_cluster_size"} <= set(tensors)
    last = torch.load(ckpts / "last_checkpoint_epoch=2.pt", weights_only=True)
    assert last["trainer"]["epoch_length"] == 2  # each rank's share: 6 of the 12 slices, in batches of 4
    network, spec = load_vqvae(ckpts / "last_checkpoint_epoch=2.pt")
    assert set(last["model"]) == set(vqvae_from_spec(spec).state_dict())  # no "module." prefix
    assert distributed.state_checksums(network) == tensors  # the saved weights are, bit for bit, the ranks' ones
    best, _ = load_vqvae(ckpts / "model.pt")
    assert best(torch.rand(1, 1, 32, 32))[0].shape == (1, 1, 32, 32)
    # console stats on rank 0 only: one line per epoch for the two processes together
    assert log.count("Epoch[2] Metrics -- codebook_perplexity") == 1


@pytest.mark.slow
def test_vqvae_run_is_recorded_once_with_metrics_over_the_whole_split(vqvae_run):
    from oasis_gen.data import check_dataset, eval_transforms
    from oasis_gen.data.transforms import decode_intensity
    from oasis_gen.engines.steps import ReconstructionInferer
    from oasis_gen.networks.vqvae import load_vqvae

    client, runs = mlflow_runs(vqvae_run["store"])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("vqvae-32px-K16-D8-")
    assert (vqvae_run["out"] / "mlflow_run_name.txt").read_text().strip() == run.info.run_name
    assert run.data.params["world_size"] == "2" and run.data.params["data.train.slices"] == "12"
    run_id = run.info.run_id
    assert len(client.get_metric_history(run_id, "train_loss")) == 2 * 2  # rank 0's 2 iterations per epoch
    for name in ("val_ssim", "val_psnr", "val_mse", "val_codebook_perplexity", "codebook_perplexity"):
        assert [m.step for m in client.get_metric_history(run_id, name)] == [1, 2], name
    assert metric_at(client, run_id, "codebook_restarted", 1) > 0  # restarts were broadcast from rank 0
    pictures = [a.path for a in client.list_artifacts(run_id, "reconstructions")]
    assert pictures == ["reconstructions/reconstructions_epoch001.png", "reconstructions/reconstructions_epoch002.png"]
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/model.pt"]
    # the logged validation MSE is that of all 3 slices, gathered from both ranks, not of rank 0's 2 slices
    network, _ = load_vqvae(vqvae_run["out"] / "checkpoints" / "last_checkpoint_epoch=2.pt")
    records = check_dataset(vqvae_run["data"], required_splits=["train", "validate"], progress=False).usable()
    transform = eval_transforms(32, "uint8")
    images = torch.stack([decode_intensity(torch.as_tensor(transform(r)["image"])) for r in records["validate"]])
    assert images.shape == (3, 1, 32, 32)
    with torch.no_grad():
        errors = ((ReconstructionInferer()(images, network) - images) ** 2).flatten(1).mean(dim=1)
    assert metric_at(client, run_id, "val_mse", 2) == pytest.approx(float(errors.mean()), rel=1e-4)
    assert metric_at(client, run_id, "val_mse", 2) != pytest.approx(float(errors[[0, 2]].mean()), rel=1e-4)


@pytest.mark.slow
def test_vqvae_resume_loads_the_checkpoint_on_every_rank(vqvae_run, tmp_path):
    out, store = tmp_path / "out", tmp_path / "mlruns"  # a copy, so the shared run above stays as it was
    shutil.copytree(vqvae_run["out"], out)
    result = torchrun("-m", "monai.bundle", "run", "training", "--config_file", bundle_files(TRAIN, MULTI),
                      *tiny_vqvae_overrides(vqvae_run["data"], out, store, max_epochs=3))
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    assert log.count("last_checkpoint_epoch=2.pt (epoch 2)") == PROCESSES  # "resuming from ...", once per rank
    assert "Epoch[1]" not in log and "Epoch[3]" in log
    assert_replicas_agree(out, epoch=3)  # a rank that had not loaded the checkpoint would differ
    assert sorted(p.name for p in (out / "checkpoints").glob("last_*.pt")) == [
        "last_checkpoint_epoch=2.pt", "last_checkpoint_epoch=3.pt"]  # the one before kept, as in one process
    client, runs = mlflow_runs(store)
    assert len(runs) == 1 and runs[0].info.run_name == (out / "mlflow_run_name.txt").read_text().strip()
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_ssim")] == [3]


# ------------------------------------------------------------------ prior


@pytest.mark.slow
def test_prior_ranks_end_identical_and_save_the_unwrapped_network(prior_run):
    from oasis_gen.networks.pixelcnn import load_pixelcnn, pixelcnn_from_spec

    log, ckpts = prior_run["log"], prior_run["out"] / "checkpoints"
    tensors = assert_replicas_agree(prior_run["out"], epoch=2)
    last = torch.load(ckpts / "last_checkpoint_epoch=2.pt", weights_only=True)
    assert last["trainer"]["epoch_length"] == 2
    prior, spec = load_pixelcnn(ckpts / "last_checkpoint_epoch=2.pt")
    assert set(last["model"]) == set(pixelcnn_from_spec(spec).state_dict())
    assert distributed.state_checksums(prior) == tensors
    best, spec = load_pixelcnn(ckpts / "model.pt")
    assert spec["num_embeddings"] == 16 and best(torch.randint(0, 16, (1, 8, 8))).shape == (1, 16, 8, 8)
    # rank 0 encodes the codes once; rank 1 reuses its cache
    assert log.count("encoding the train split (12 slices)") == 1
    assert log.count("reusing cached codes of the train split (12 grids)") == 1


@pytest.mark.slow
def test_prior_run_is_recorded_once_with_metrics_over_the_whole_split(prior_run):
    from oasis_gen.metrics import CodeNLL
    from oasis_gen.networks.pixelcnn import load_pixelcnn

    client, runs = mlflow_runs(prior_run["store"])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "prior"
    assert run.data.params["world_size"] == "2"
    run_id = run.info.run_id
    assert len(client.get_metric_history(run_id, "train_loss")) == 2 * 2
    assert [m.step for m in client.get_metric_history(run_id, "val_accuracy")] == [1, 2]
    assert [a.path for a in client.list_artifacts(run_id, "samples")] == ["samples/samples_epoch001.png",
                                                                          "samples/samples_epoch002.png"]
    # the logged NLL is that of all 3 validation grids, gathered from both ranks
    prior, _ = load_pixelcnn(prior_run["out"] / "checkpoints" / "last_checkpoint_epoch=2.pt")
    codes = torch.load(prior_run["out"] / "codes" / "codes_validate.pt", weights_only=True)["codes"].long()
    nll = CodeNLL()
    with torch.no_grad():
        nll(prior(codes), codes)
    assert metric_at(client, run_id, "val_nll_bits", 2) == pytest.approx(float(nll.aggregate()), rel=1e-4)


# ------------------------------------------------------------------ the helpers, in 2 real processes

# kept light (no MONAI, no MLflow) so the two processes start quickly
WORKER = """
import json, sys
import torch
from ignite.engine import Engine
from torch import nn
from oasis_gen.engines import distributed


class Console:  # stands for a rank-0-only handler such as StatsHandler
    pass


class Budget:  # stands for a handler every rank runs, such as TimeBudget
    pass


folder = sys.argv[1]
distributed.init_process_group()
rank = distributed.rank()
found = {"backend": torch.distributed.get_backend(), "world_size": distributed.world_size()}
found["sum"] = distributed.all_reduce_sum(torch.tensor([rank + 1])).tolist()
found["decision"] = distributed.rank_zero_decides(rank == 0)
found["gathered"] = distributed.gather_objects(rank * 10)
found["kept"] = [type(h).__name__ for h in distributed.on_this_rank([Console(), None, Budget()], [Console])]
torch.manual_seed(rank)  # different initial weights: DDP must start every rank from rank 0's
network = distributed.data_parallel(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), torch.device("cpu"))
check = distributed.ReplicaCheck(network, folder)
engine = Engine(lambda engine, batch: None)
check.attach(engine)
engine.run([0], max_epochs=1)
distributed.barrier()
found["first"] = json.load(open(folder + "/replicas.json"))["agree"]
if rank == 1:
    network.module[1].running_mean.add_(1.0)
try:
    engine.run([0], max_epochs=2)
except distributed.ReplicaMismatchError as error:
    found["error"] = str(error)
del check, engine, network  # as a training run ends: nothing holds the process group when it is destroyed
distributed.destroy_process_group()
json.dump(found, open(f"{folder}/found_{rank}.json", "w"))
"""


@pytest.mark.slow
def test_helpers_agree_across_two_processes_and_the_replica_check_catches_a_drift(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    result = torchrun(str(script), str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    found = [json.loads((tmp_path / f"found_{rank}.json").read_text()) for rank in range(PROCESSES)]
    for rank, values in enumerate(found):
        assert values["backend"] == "gloo" and values["world_size"] == 2
        assert values["sum"] == [3] and values["decision"] is True and values["gathered"] == [0, 10]
        assert values["kept"] == (["Console", "Budget"] if rank == 0 else ["Budget"])
        assert values["first"] is True
        assert values["error"].startswith(f"{tmp_path / 'replicas.json'}: the 2 ranks hold different networks "
                                          "after epoch 2: 1 of 7 tensors differ (1.running_mean)"), values["error"]
    report = json.loads((tmp_path / "replicas.json").read_text())
    assert report["agree"] is False and report["differing"] == ["1.running_mean"] and report["epoch"] == 2


# ------------------------------------------------------------------ in process, fast


def test_the_vqvae_quantizer_all_reduces_its_codebook_statistics():
    spec = vqvae_spec(image_size=16, num_downsamplings=2, channels=[4, 4], num_embeddings=8, embedding_dim=4)
    assert vqvae_from_spec(spec).quantizer.quantizer.ddp_sync is True


def test_outside_torchrun_the_helpers_act_as_one_process(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.rank() == 0 and distributed.world_size() == 1 and not distributed.is_distributed()
    assert distributed.local_device() == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    counts = torch.tensor([1, 2])
    assert distributed.all_reduce_sum(counts) is counts and distributed.rank_zero_decides(True) is True
    assert distributed.gather_objects("x") == ["x"]
    handlers = [StatsHandler(), None, TimeBudget()]
    assert distributed.on_this_rank(handlers, [StatsHandler]) == [handlers[0], handlers[2]]
    monkeypatch.setenv("RANK", "1")
    assert distributed.on_this_rank(handlers, [StatsHandler]) == [handlers[2]]
    with pytest.raises(ConfigError, match="the multi-GPU configs run under torchrun .* not set\\); launch with: "
                                          "torchrun --standalone"):
        distributed.init_process_group()
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "2")):  # set by hand: no rendezvous
        monkeypatch.setenv(name, value)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=r"under torchrun \(MASTER_ADDR, MASTER_PORT not set\); launch with: "):
        distributed.init_process_group()


def test_more_processes_than_gpus_is_refused_with_the_launch_that_fits():
    distributed.check_gpu_count(local_rank=1, local_processes=2, gpus=2)  # one process per GPU: fine
    with pytest.raises(ConfigError, match=r"config 'nproc_per_node': 4 processes on this machine, but it has 2 GPUs: "
                                          r"one process per GPU, launch with --nproc_per_node=2 "):
        distributed.check_gpu_count(local_rank=3, local_processes=4, gpus=2)
    with pytest.raises(ConfigError, match="2 processes on this machine, but it has 1 GPU: "):
        distributed.check_gpu_count(local_rank=0, local_processes=2, gpus=1)


@pytest.mark.slow
def test_a_validate_split_smaller_than_the_processes_stops_with_one_line(tmp_path):
    data = write_oasis_slices(tmp_path / "data", layout=(("train", 3, 4), ("validate", 1, 1)))
    result = torchrun("-m", "monai.bundle", "run", "training", "--config_file", bundle_files(TRAIN, MULTI),
                      *tiny_vqvae_overrides(data, tmp_path / "out", tmp_path / "mlruns", max_epochs=1))
    assert result.returncode != 0
    errors = {line for line in (result.stdout + result.stderr).splitlines() if "oasis-gen: error:" in line}
    expected = ("oasis-gen: error: config 'nproc_per_node': the validate split has 1 slice, fewer than the 2 "
                "processes (each needs one): launch at most --nproc_per_node=1, or give the validate split more slices")
    assert errors and all(line.endswith(expected) for line in errors), result.stderr[-4000:]
    # the only traceback is torchrun's own report that a process failed, none from inside the ranks
    tracebacks = result.stderr.split("Traceback (most recent call last):")[1:]
    assert all("torch/distributed/run.py" in t and "oasis_gen" not in t.split("ChildFailedError")[0]
               for t in tracebacks), result.stderr[-4000:]


def test_state_checksums_are_exact_and_name_every_parameter_and_buffer():
    network = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    checksums = distributed.state_checksums(network)
    assert sorted(checksums) == sorted(network.state_dict())
    with torch.no_grad():
        network[0].weight[0, 0] = torch.nextafter(network[0].weight[0, 0], torch.tensor(2.0))  # one ulp
    changed = distributed.state_checksums(network)
    assert [name for name in checksums if checksums[name] != changed[name]] == ["0.weight"]
    assert distributed.combined_sha256(checksums) != distributed.combined_sha256(changed)
    assert distributed.tensor_sha256(torch.zeros(2)) != distributed.tensor_sha256(torch.zeros(2, dtype=torch.float64))


def test_multi_gpu_configs_change_only_the_attach_step_of_training():
    """The multi-GPU files replace the checkpoint-attaching step by its id, never a `training` list position."""
    for single, multi in ((TRAIN, MULTI), (TRAIN_PRIOR, MULTI_PRIOR)):
        alone = ConfigParser.load_config_files(single)
        merged = ConfigParser.load_config_files([single, multi])
        assert alone["attach_checkpointing"] == "$[handler.attach(@train#trainer) for handler in @train#checkpointing]"
        assert "on_this_rank(@train#checkpointing" in merged["attach_checkpointing"], multi
        assert "$@attach_checkpointing" in alone["training"], single
        assert merged["training"] == alone["training"], multi  # the steps and their order are the single process's
        assert not any(key.startswith("training#") for key in ConfigParser.load_config_file(multi)), multi
        assert merged["initialize"][:len(alone["initialize"])] == alone["initialize"]  # single-process steps first
        assert merged["train"]["handlers"][-1] == "@replica_check"
