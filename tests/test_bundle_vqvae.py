"""The VQ-VAE bundle through the real ``python -m monai.bundle`` CLI: training, MLflow, evaluation, resume, errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, ROOT, write_oasis_slices
from conftest import run_bundle as bundle
from conftest import tiny_vqvae_overrides as tiny_overrides
from mlflow import MlflowClient

TRAIN = str(CONFIGS / "train.yaml")
EVALUATE = str(CONFIGS / "evaluate.yaml")
SCHEMA = ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """12 train, 4 validation and 6 test slices of 40x40 in the OASIS layout."""
    return write_oasis_slices(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> dict:
    """One 2-epoch training run through the CLI, shared by the tests that inspect its results."""
    work = tmp_path_factory.mktemp("run")
    out, store = work / "out", work / "mlruns"
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_overrides(tiny_data, out, store, max_epochs=2, log_every=2, mlflow_model=True))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "store": store, "result": result, "data": tiny_data}


def runs_of(store: Path) -> list:
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oasis-gen")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def test_training_writes_checkpoints_that_rebuild_the_model(trained):
    ckpts = trained["out"] / "checkpoints"
    assert (ckpts / "model.pt").is_file() and (ckpts / "last_checkpoint_epoch=2.pt").is_file()
    last = torch.load(ckpts / "last_checkpoint_epoch=2.pt", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "trainer", "run_state", "spec"} <= set(last)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] == 6  # ignite keeps iterations
    from oasis_gen.networks.vqvae import load_vqvae

    network, spec = load_vqvae(ckpts / "model.pt")
    assert spec["image_size"] == 32 and spec["num_embeddings"] == 16 and spec["grid_size"] == 8
    reconstruction, _ = network(torch.rand(1, 1, 32, 32))
    assert reconstruction.shape == (1, 1, 32, 32)


def test_runs_on_different_data_folders_log_different_dataset_names_and_digests(trained, tmp_path):
    other = write_oasis_slices(tmp_path / "other_data", size=36)
    store = tmp_path / "mlruns"
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_overrides(other, tmp_path / "out", store, max_epochs=1))
    assert result.returncode == 0, result.stderr[-3000:]
    first = runs_of(trained["store"])
    second = runs_of(store)
    seen = []
    for client, runs in (first, second):
        inputs = client.get_run(runs[0].info.run_id).inputs.dataset_inputs
        seen.append({d.dataset.name.split(":")[0]: (d.dataset.name, d.dataset.digest) for d in inputs})
    for split in ("train", "validate"):
        (name_a, digest_a), (name_b, digest_b) = seen[0][split], seen[1][split]
        assert name_a == f"{split}:{trained['data']}" and name_b == f"{split}:{other}"
        assert digest_a != digest_b and digest_a and digest_b


def test_training_holds_the_network_channels_last_and_its_checkpoint_loads_in_either_layout(trained):
    from oasis_gen.engines.steps import PrepareImageBatch
    from oasis_gen.networks.vqvae import load_vqvae

    state = torch.load(trained["out"] / "checkpoints" / "model.pt", weights_only=True)["model"]
    weights = [value for value in state.values() if value.dim() == 4 and value.shape[1] > 1]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
                           for w in weights)  # train.yaml's channels_last: true
    network, _ = load_vqvae(trained["out"] / "checkpoints" / "model.pt")
    network.eval()
    from monai.data import MetaTensor

    cached = MetaTensor(torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8), meta={"filename_or_obj": "a.png"})
    images, _ = PrepareImageBatch(channels_last=True)({"image": cached})
    assert images.is_contiguous(memory_format=torch.channels_last) and images.dtype == torch.float32
    assert type(images) is torch.Tensor  # no MetaTensor bookkeeping through the network
    assert torch.allclose(images * 255, cached.as_tensor().float(), atol=1e-3)
    with torch.no_grad():
        plain = network(images.contiguous())[0]
        nhwc = network.to(memory_format=torch.channels_last)(images)[0]
    assert torch.allclose(plain, nhwc, atol=1e-5)


def test_training_run_is_recorded_in_mlflow(trained):
    client, runs = runs_of(trained["store"])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # trainer and validator share one run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name.startswith("vqvae-32px-K16-D8-")
    params = run.data.params
    assert params["image_size"] == "32" and params["num_embeddings"] == "16" and params["max_epochs"] == "2"
    assert params["data.train.slices"] == "12" and params["data.validate.subjects"] == "1"
    assert int(params["parameters"]) > 1000
    assert run.data.tags["stage"] == "vqvae"
    inputs = {d.dataset.name: d for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
    # the slices it learnt from, as MLflow inputs named by split and data folder, with the split as their context
    train, validate = f"train:{trained['data']}", f"validate:{trained['data']}"
    assert set(inputs) == {train, validate}
    assert '"num_rows": 12' in inputs[train].dataset.profile and '"num_rows": 4' in inputs[validate].dataset.profile
    assert str(trained["data"]) in inputs[train].dataset.source  # the folder
    assert {t.key: t.value for t in inputs[train].tags}["mlflow.data.context"] == "train"
    # MLflow 3's UI opens the experiment on its runs
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in losses] == [2, 4, 6]  # 12 slices / batch 4 = 3 iterations per epoch, logged every 2nd
    for name in ("val_ssim", "val_psnr", "val_mse", "codebook_perplexity", "codebook_unused", "recon_loss"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2], name
    assert 0.0 <= run.data.metrics["codebook_unused"] < 1.0
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "reconstructions")]
    assert pictures == ["reconstructions/reconstructions_epoch001.png", "reconstructions/reconstructions_epoch002.png"]
    stepped = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")
               and "compressed" not in a.path]
    # the same pictures as images with a step: the UI's image view steps through the epochs
    assert sorted(path.split("+")[:3] for path in stepped) == [["images/reconstructions", "step", "1"],
                                                               ["images/reconstructions", "step", "2"]]
    assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]
    picture = Path(client.download_artifacts(run.info.run_id, pictures[0], str(trained["out"] / "dl")))
    from PIL import Image

    assert Image.open(picture).size[0] == 3 * 32 + 2 * 2  # original | reconstruction | difference


def test_the_trained_vqvae_is_a_registered_mlflow_model_that_reconstructs_as_the_checkpoint(trained):
    import mlflow
    import mlflow.pytorch

    from oasis_gen.data import decode_intensity, eval_transforms
    from oasis_gen.networks.spec import file_sha256
    from oasis_gen.networks.vqvae import load_vqvae
    from oasis_gen.tracking.store import fluent_store

    client, runs = runs_of(trained["store"])
    [version] = client.search_model_versions("name='oasis-gen-vqvae'")
    assert str(version.version) == "1" and version.run_id == runs[0].info.run_id
    assert version.tags["checkpoint_sha256"] == file_sha256(trained["out"] / "checkpoints" / "model.pt")
    environment = os.environ.get("MLFLOW_TRACKING_URI")
    with fluent_store(str(trained["store"])):
        info = mlflow.models.get_model_info("models:/oasis-gen-vqvae/1")
        model = mlflow.pytorch.load_model("models:/oasis-gen-vqvae/1")
    assert os.environ.get("MLFLOW_TRACKING_URI") == environment  # the process is left as it was
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 1, 32, 32]
    slice_files = sorted((trained["data"] / "keras_png_slices_test").glob("*.png"))[:3]
    images = torch.stack([decode_intensity(eval_transforms(32)({"image": str(f)})["image"]) for f in slice_files])
    network, _ = load_vqvae(trained["out"] / "checkpoints" / "model.pt")
    with torch.no_grad():
        # exactly the checkpoint's reconstructions, of one slice or of a batch (the batch size is not fixed)
        for batch in (images[:1].float(), images.float()):
            assert torch.equal(model(batch), network(batch)[0].clamp(0, 1))


def test_evaluation_writes_one_row_per_test_slice(trained):
    result = bundle("run", "evaluating", "--config_file", EVALUATE, "--dataset_dir", str(trained["data"]),
                    "--output_dir", str(trained["out"]), "--tracking_uri", str(trained["store"]),
                    "--progress", "False")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(trained["out"] / "evaluation" / "per_image.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 6
    assert {r["subject"] for r in rows} == {"005", "006"} and {r["slice"] for r in rows} == {"0", "1", "2"}
    assert all(0.0 <= float(r["ssim"]) <= 1.0 and float(r["mse"]) >= 0 for r in rows)
    assert rows[0]["file"].endswith("case_005_slice_0.nii.png")
    summary = json.loads((trained["out"] / "evaluation" / "summary.json").read_text())
    mean_ssim = sum(float(r["ssim"]) for r in rows) / len(rows)
    assert summary["ssim"]["mean"] == pytest.approx(mean_ssim, abs=1e-5) and summary["ssim"]["count"] == 6
    client, runs = runs_of(trained["store"])
    evaluation = [r for r in runs if r.data.tags.get("stage") == "evaluate"]
    assert len(evaluation) == 1
    assert evaluation[0].data.metrics["ssim_mean"] == pytest.approx(summary["ssim"]["mean"], abs=1e-5)
    assert evaluation[0].data.params["vqvae_model_version"] == "oasis-gen-vqvae/1"  # the model it evaluated
    logged = [a.path for a in client.list_artifacts(evaluation[0].info.run_id, "evaluation")]
    assert "evaluation/per_image.csv" in logged


def test_resume_continues_from_the_saved_epoch(trained, tmp_path):
    # a copy, so the shared run above stays as it was for the other tests
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_overrides(trained["data"], out, tmp_path / "mlruns", max_epochs=3))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "resuming from" in log and "last_checkpoint_epoch=2.pt (epoch 2)" in log
    assert "Epoch[1]" not in log and "Epoch[3]" in log  # only the third epoch ran
    last = torch.load(out / "checkpoints" / "last_checkpoint_epoch=3.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 3 * 3
    # the one before is kept, for a resume to fall back to should the newest fail to load
    assert sorted(p.name for p in (out / "checkpoints").glob("last_*.pt")) == [
        "last_checkpoint_epoch=2.pt", "last_checkpoint_epoch=3.pt"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset_dir": "/nonexistent/oasis"}, "/nonexistent/oasis: dataset folder not found"),
        ({"image_size": 30}, "image_size': 30 is not divisible by 2**num_downsamplings = 4"),
        ({"reconstruction_loss": "l3"}, "reconstruction loss must be one of"),
        ({"max_epoch": 3}, "config 'max_epoch': the config has no such setting (given as --max_epoch); did you mean "
                           "--max_epochs?"),
    ],
)
def test_bad_overrides_fail_with_one_clear_message(tiny_data, tmp_path, overrides, message):
    args = tiny_overrides(tiny_data, tmp_path / "out", tmp_path / "mlruns", max_epochs=1, **overrides)
    result = bundle("run", "training", "--config_file", TRAIN, *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_metadata_passes_the_monai_schema():
    if not SCHEMA.is_file():
        pytest.skip(f"MONAI metadata schema not found at {SCHEMA}")
    result = bundle("verify_metadata", "--meta_file", str(ROOT / "bundle" / "configs" / "metadata.json"),
                    "--filepath", str(SCHEMA))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "metadata is verified with no error" in result.stdout + result.stderr
