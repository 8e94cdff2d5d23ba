"""Determinism on the CPU: the same seed, data and config give the same metrics and weights; another seed does not.

Each run goes through the real ``python -m monai.bundle`` CLI into its own output folder; the metrics are read
from the MLflow store (not from the trainer), the weights from the checkpoints. The runs shuffle the training
data, flip slices at random (``augment``), load batches in a worker process and re-seed dead codes
(CodebookRestart), so every random draw of a training run is covered.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, run_bundle, tiny_vqvae_overrides, write_oasis_slices
from mlflow import MlflowClient

TRAIN = str(CONFIGS / "train.yaml")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Three 2-epoch trainings on the same data: two with seed 0, one with seed 1 (output folder, MLflow run)."""
    work = tmp_path_factory.mktemp("determinism")
    data = write_oasis_slices(work / "data")
    store = work / "mlruns"
    outputs = {"first": (work / "seed0_a", 0), "again": (work / "seed0_b", 0), "other_seed": (work / "seed1", 1)}
    for out, seed in outputs.values():
        result = run_bundle("run", "training", "--config_file", TRAIN,
                            *tiny_vqvae_overrides(data, out, store, max_epochs=2, seed=seed, augment="true",
                                                  num_workers=1, codebook_restart_interval=2))
        assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oasis-gen")
    by_output = {r.data.params["output_dir"]: r for r in client.search_runs([experiment.experiment_id])}
    return {name: {"out": out, "run": by_output[str(out)], "client": client} for name, (out, _) in outputs.items()}


def metric_histories(run: dict) -> dict[str, list[tuple[int, float]]]:
    """Every metric the run logged, as (step, value) pairs in step order."""
    client, run_id = run["client"], run["run"].info.run_id
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
            for name in run["run"].data.metrics}


def tensors(path: Path) -> dict[str, torch.Tensor]:
    """The model's weights and buffers and the optimizer's state tensors in a checkpoint, by name."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    found = {f"model.{k}": v for k, v in state["model"].items()}
    if "optimizer" in state:
        for index, slots in state["optimizer"]["state"].items():
            found.update({f"optimizer.{index}.{k}": v for k, v in slots.items() if isinstance(v, torch.Tensor)})
    return found


def test_same_seed_gives_the_same_validation_metrics(runs):
    first, again = metric_histories(runs["first"]), metric_histories(runs["again"])
    assert {"val_ssim", "val_psnr", "val_mse", "val_codebook_perplexity", "train_loss"} <= set(first)
    assert [step for step, _ in first["val_ssim"]] == [1, 2]
    assert first == again


@pytest.mark.parametrize("name", ["last_checkpoint_epoch=2.pt", "model.pt"])
def test_same_seed_gives_the_same_weights(runs, name):
    first = tensors(runs["first"]["out"] / "checkpoints" / name)
    again = tensors(runs["again"]["out"] / "checkpoints" / name)
    assert first.keys() == again.keys() and len(first) > 10
    assert [k for k in first if not torch.equal(first[k], again[k])] == []


def test_another_seed_gives_other_weights_and_metrics(runs):
    first = tensors(runs["first"]["out"] / "checkpoints" / "last_checkpoint_epoch=2.pt")
    other = tensors(runs["other_seed"]["out"] / "checkpoints" / "last_checkpoint_epoch=2.pt")
    assert first.keys() == other.keys()
    differing = [k for k in first if k.startswith("model.") and not torch.equal(first[k], other[k])]
    assert len(differing) > len([k for k in first if k.startswith("model.")]) // 2
    assert metric_histories(runs["first"])["val_ssim"] != metric_histories(runs["other_seed"])["val_ssim"]
