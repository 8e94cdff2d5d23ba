"""The prior bundle (train_prior.yaml) through the real ``python -m monai.bundle`` CLI, and its parts in process:
code metrics, the codes cache, slice-position labels and batch preparation."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import (
    CONFIGS,
    brain_slice,
    tiny_prior_overrides,
    tiny_vqvae_overrides,
    write_oasis_slices,
    write_png,
)
from conftest import run_bundle as bundle
from mlflow import MlflowClient
from monai.inferers import SimpleInferer

from oasis_gen.engines.handlers import samples_grid
from oasis_gen.engines.steps import PrepareCodeBatch
from oasis_gen.generation.codes import class_count, code_datasets, encode_codes, prior_spec, slice_labels
from oasis_gen.generation.pair import check_resume
from oasis_gen.inferers.pixelcnn_inferer import PriorCodeBits, VQVAEPixelCNNInferer
from oasis_gen.metrics import CodeAccuracy, CodeNLL
from oasis_gen.networks.pixelcnn import GatedPixelCNN, load_pixelcnn, pixelcnn_spec
from oasis_gen.networks.spec import file_sha256
from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import CheckpointError, ConfigError

TRAIN = str(CONFIGS / "train.yaml")
TRAIN_PRIOR = str(CONFIGS / "train_prior.yaml")
LAYOUT = (("train", 3, 4), ("validate", 1, 4))  # 12 train and 4 validation slices


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_oasis_slices(tmp_path_factory.mktemp("prior_data") / "data", layout=LAYOUT)


@pytest.fixture(scope="module")
def vqvae_ckpt(tiny_data, tmp_path_factory) -> Path:
    """A tiny VQ-VAE (32x32 images, 8x8 grid, K=16) trained for one epoch through train.yaml."""
    work = tmp_path_factory.mktemp("vqvae")
    result = bundle("run", "training", "--config_file", TRAIN,
                    *tiny_vqvae_overrides(tiny_data, work / "out", work / "mlruns", max_epochs=1))
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "out" / "checkpoints" / "model.pt"


@pytest.fixture(scope="module")
def prior_run(tiny_data, vqvae_ckpt, tmp_path_factory) -> dict:
    """One unconditional 1-epoch prior training run with weight averaging, shared by the tests that inspect its
    results."""
    work = tmp_path_factory.mktemp("prior")
    out, store = work / "out", work / "mlruns"
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(tiny_data, vqvae_ckpt, out, store, mlflow_model=True, ema_momentum=0.05))
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "store": store, "result": result}


@pytest.mark.slow
def test_prior_training_writes_checkpoints_that_rebuild_the_prior(prior_run, vqvae_ckpt):
    ckpts = prior_run["out"] / "checkpoints"
    assert (ckpts / "model.pt").is_file() and (ckpts / "last_checkpoint_epoch=1.pt").is_file()
    last = torch.load(ckpts / "last_checkpoint_epoch=1.pt", weights_only=True)
    assert {"model", "ema", "optimizer", "lr_scheduler", "trainer", "run_state", "spec"} <= set(last)
    # weight averaging: model.pt (what sampling and inference load) holds the averaged weights, not the trained ones
    best = torch.load(ckpts / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(best[key], last["ema"][key]) for key in last["ema"])
    assert any(not torch.equal(last["ema"][key], last["model"][key]) for key in last["model"])
    prior, spec = load_pixelcnn(ckpts / "model.pt")
    assert all(torch.equal(value, last["ema"][key]) for key, value in prior.state_dict().items())
    assert spec["num_embeddings"] == prior.num_embeddings == 16 and spec["grid_size"] == 8
    assert spec["num_classes"] is None and spec["channels"] == 8 and spec["num_layers"] == 2
    assert spec["vqvae_sha256"] == file_sha256(vqvae_ckpt) and spec["vqvae_checkpoint"] == str(vqvae_ckpt)
    assert prior(torch.randint(0, 16, (2, 8, 8))).shape == (2, 16, 8, 8)
    for split, count in (("train", 12), ("validate", 4)):
        cache = torch.load(prior_run["out"] / "codes" / f"codes_{split}.pt", weights_only=True)
        assert cache["codes"].shape == (count, 8, 8) and cache["codes"].dtype == torch.uint8
        assert cache["vqvae_sha256"] == spec["vqvae_sha256"] and len(cache["records"]) == count
    log = prior_run["result"].stdout + prior_run["result"].stderr
    assert "encoding the train split (12 slices)" in log and "reusing cached codes" not in log


@pytest.mark.slow
def test_without_weight_averaging_model_pt_holds_the_trained_weights(tiny_data, vqvae_ckpt, tmp_path):
    out = tmp_path / "out"
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(tiny_data, vqvae_ckpt, out, tmp_path / "mlruns", ema_momentum="null",
                                          codes_dir=vqvae_ckpt.parent.parent.parent / "prior_codes"))
    assert result.returncode == 0, result.stderr[-3000:]
    last = torch.load(out / "checkpoints" / "last_checkpoint_epoch=1.pt", weights_only=True)
    best = torch.load(out / "checkpoints" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(best[key], last["model"][key]) for key in last["model"])


@pytest.mark.slow
def test_prior_run_is_recorded_in_mlflow(prior_run, vqvae_ckpt, tiny_data):
    client = MlflowClient(f"sqlite:///{prior_run['store'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oasis-gen")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]  # trainer and validator share one run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "prior"
    assert run.info.run_name.startswith("prior-K16-8x8-L2-C8-")
    params = run.data.params
    assert params["vqvae_sha256"] == file_sha256(vqvae_ckpt) and params["vqvae_checkpoint"] == str(vqvae_ckpt)
    assert params["num_embeddings"] == "16" and params["code_grid"] == "8" and params["data.train.slices"] == "12"
    for name in ("val_nll_bits", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, name)] == [1], name
    assert 0.0 < run.data.metrics["val_nll_bits"] < 2 * math.log2(16)
    assert 0.0 <= run.data.metrics["val_accuracy"] <= 1.0
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 3  # 12 slices / batch 4
    inputs = sorted(d.dataset.name for d in client.get_run(run.info.run_id).inputs.dataset_inputs)
    # the slices whose codes it learnt, as MLflow inputs named by split and data folder
    assert inputs == [f"train:{tiny_data}", f"validate:{tiny_data}"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert pictures == ["samples/samples_epoch001.png"]
    stepped = [a.path.split("+")[:3] for a in client.list_artifacts(run.info.run_id, "images")
               if a.path.endswith(".png") and "compressed" not in a.path]
    assert stepped == [["images/samples", "step", "1"]]  # and as an image with its step, for the UI's image view
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]
    from PIL import Image

    picture = Image.open(prior_run["out"] / "pictures" / "samples_epoch001.png")
    assert picture.size == (2 * 32 + 2, 2 * 32 + 2)  # 2 samples, their code maps below


@pytest.mark.slow
def test_the_trained_prior_is_a_registered_mlflow_model_that_scores_as_the_checkpoint(prior_run):
    import mlflow.pytorch

    from oasis_gen.tracking.models import CHECKPOINT_TAG
    from oasis_gen.tracking.store import fluent_store

    uri = f"sqlite:///{prior_run['store'] / 'mlflow.db'}"
    checkpoint = prior_run["out"] / "checkpoints" / "model.pt"
    [version] = MlflowClient(uri).search_model_versions("name = 'oasis-gen-prior'")
    assert str(version.version) == "1" and version.tags[CHECKPOINT_TAG] == file_sha256(checkpoint)
    with fluent_store(uri):
        model = mlflow.pytorch.load_model("models:/oasis-gen-prior/1")
    codes = torch.load(prior_run["out"] / "codes" / "codes_validate.pt", weights_only=True)["codes"].long()
    prior, _ = load_pixelcnn(checkpoint)
    expected = VQVAEPixelCNNInferer().get_likelihood(codes, None, prior, quantized=True)
    with torch.no_grad():
        got = model(codes[:, None])  # one plane: the codes of an unconditional prior
    assert got.shape == (4, 8, 8) and torch.equal(got, expected)


@pytest.mark.slow
def test_second_run_reuses_the_cached_codes(prior_run, tiny_data, vqvae_ckpt, tmp_path):
    # a new output folder holding the first run's codes cache; this run is conditional on the slice position
    out = tmp_path / "out"
    shutil.copytree(prior_run["out"] / "codes", out / "codes")
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(tiny_data, vqvae_ckpt, out, tmp_path / "mlruns", num_classes=2))
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "reusing cached codes of the train split (12 grids)" in log
    assert "reusing cached codes of the validate split (4 grids)" in log and "encoding the" not in log
    _, spec = load_pixelcnn(out / "checkpoints" / "model.pt")
    assert spec["num_classes"] == 2


@pytest.mark.slow
def test_missing_vqvae_checkpoint_fails_with_one_clear_line(tiny_data, tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(tiny_data, missing, tmp_path / "out", tmp_path / "mlruns"))
    assert result.returncode != 0
    assert f"{missing}: checkpoint not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resuming_a_prior_made_for_another_codebook_is_refused(tiny_data, vqvae_ckpt, tmp_path):
    out = tmp_path / "out"
    other = pixelcnn_spec(num_embeddings=512, grid_size=8, channels=8, num_layers=2)
    (out / "checkpoints").mkdir(parents=True)
    stale = out / "checkpoints" / "last_checkpoint_epoch=3.pt"
    torch.save({"model": GatedPixelCNN(512, channels=8, num_layers=2).state_dict(), "spec": other.state_dict()},
               stale)
    result = bundle("run", "training", "--config_file", TRAIN_PRIOR,
                    *tiny_prior_overrides(tiny_data, vqvae_ckpt, out, tmp_path / "mlruns"))
    assert result.returncode != 0
    expected = f"{stale}: this prior models K=512 codes on a 8x8 grid, but the VQ-VAE {vqvae_ckpt} has K=16"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "codes").exists()  # refused before any encoding


# ------------------------------------------------------------------ in process, fast


def test_code_metrics_match_hand_computed_values():
    k = 16
    codes = torch.randint(0, k, (3, 4, 5), generator=torch.Generator().manual_seed(0))
    nll, accuracy = CodeNLL(), CodeAccuracy()
    nll(torch.zeros(3, k, 4, 5), codes)  # uniform logits: log2(K) bits per code
    assert nll.aggregate().item() == pytest.approx(math.log2(k))
    perfect = torch.nn.functional.one_hot(codes, k).movedim(-1, 1).float() * 50.0
    accuracy(perfect, codes)
    assert accuracy.aggregate().item() == 1.0
    nll.reset()
    nll(perfect, codes)
    assert nll.aggregate().item() == pytest.approx(0.0, abs=1e-6)
    # decollated lists (what MONAI evaluators pass), codes with a channel dim, and several batches
    accuracy.reset()
    wrong = torch.nn.functional.one_hot((codes + 1) % k, k).movedim(-1, 1).float()
    accuracy(list(perfect), list(codes))
    accuracy(wrong, codes[:, None])
    assert accuracy.aggregate().item() == pytest.approx(0.5)
    assert accuracy.get_buffer().shape == (6, 1)
    # K = 2, two positions: uniform at the first (1 bit), sure and right at the second (0 bits)
    logits = torch.tensor([[[[0.0, 100.0]], [[0.0, 0.0]]]])  # [1, K=2, 1, 2]
    two = CodeNLL()
    two(logits, torch.tensor([[[1, 0]]]))
    assert two.aggregate().item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="logits"):
        CodeNLL()(torch.zeros(2, 4, 3, 3), torch.zeros(2, 3, 4, dtype=torch.long))


def test_slice_labels_bucket_each_subjects_slice_range():
    records = [{"subject": "a", "slice": k} for k in range(10, 20)] + [{"subject": "b", "slice": 7}]
    assert slice_labels(records, None) == [0] * 11
    assert slice_labels(records, 2) == [0] * 5 + [1] * 5 + [0]
    assert slice_labels(records, 5) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0]
    assert class_count(None) is None and class_count("null") is None and class_count("4") == 4
    with pytest.raises(ConfigError, match="num_classes"):
        class_count("many")


def test_prepare_code_batch_passes_labels_to_the_network():
    batch = {"codes": torch.randint(0, 8, (2, 4, 4), dtype=torch.uint8), "label": torch.tensor([0, 2])}
    codes, target = PrepareCodeBatch()(batch)
    assert codes.dtype == torch.long and torch.equal(codes, target)
    prepared = PrepareCodeBatch(conditional=True)(batch)
    assert len(prepared) == 4 and prepared[2] == () and torch.equal(prepared[3]["labels"], torch.tensor([0, 2]))
    network = GatedPixelCNN(8, channels=4, num_layers=2, num_classes=3)
    assert network(prepared[0], *prepared[2], **prepared[3]).shape == (2, 8, 4, 4)


def test_prepare_code_batch_passes_the_top_codes_to_a_bottom_prior():
    top = torch.randint(0, 5, (2, 2, 2), dtype=torch.uint8)
    batch = {"codes": torch.randint(0, 8, (2, 4, 4), dtype=torch.uint8), "top": top, "label": torch.tensor([1, 0])}
    codes, target, args, kwargs = PrepareCodeBatch(cond_key="top")(batch)
    assert args == () and set(kwargs) == {"cond"} and kwargs["cond"].dtype == torch.long
    assert torch.equal(kwargs["cond"], top.long()) and torch.equal(codes, target)
    codes, _, _, kwargs = PrepareCodeBatch(conditional=True, cond_key="top")(batch)
    assert set(kwargs) == {"cond", "labels"}
    network = GatedPixelCNN(8, channels=4, num_layers=2, num_classes=2, cond_num_embeddings=5)
    # the call MONAI's engines make with a four-item batch
    assert SimpleInferer()(codes, network, **kwargs).shape == (2, 8, 4, 4)


def test_samples_grid_puts_code_maps_below_their_samples():
    grid = samples_grid(torch.rand(3, 1, 16, 16), torch.randint(0, 4, (3, 4, 4)), 4, columns=2)
    assert grid.shape == (4 * 16 + 3 * 2, 2 * 16 + 2, 3) and grid.dtype.name == "uint8"


def _save_vqvae(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    spec = vqvae_spec(image_size=16, num_downsamplings=2, channels=[4, 4], num_embeddings=8, embedding_dim=4)
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, path)


def test_codes_are_cached_until_the_vqvae_changes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="oasis_gen.generation.codes")
    records = [{"image": str(write_png(tmp_path / f"s{k}.png", brain_slice(20, k))), "subject": "x", "slice": k}
               for k in range(3)]
    ckpt, cache = tmp_path / "vqvae.pt", tmp_path / "codes"
    _save_vqvae(ckpt, seed=0)
    first = code_datasets(ckpt, {"train": records}, cache, batch_size=2, progress=False, num_classes=3)
    assert "encoding the train split (3 slices)" in caplog.text and (cache / "codes_train.pt").is_file()
    assert [r["label"] for r in first["train"]] == [0, 1, 2] and first["train"][0]["codes"].shape == (4, 4)
    assert first["train"][0]["codes"].dtype == torch.uint8
    caplog.clear()
    again = code_datasets(ckpt, {"train": records}, cache, batch_size=2, progress=False)
    assert "reusing cached codes of the train split" in caplog.text and "encoding" not in caplog.text
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(first["train"], again["train"], strict=True))
    assert [r["label"] for r in again["train"]] == [0, 0, 0]
    caplog.clear()
    _save_vqvae(ckpt, seed=1)
    code_datasets(ckpt, {"train": records}, cache, batch_size=2, progress=False)
    assert "the VQ-VAE checkpoint changed" in caplog.text
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint not found"):
        code_datasets(tmp_path / "missing.pt", {"train": records}, cache)


def test_encoding_never_moves_the_codebook(tmp_path):
    spec = vqvae_spec(image_size=16, num_downsamplings=2, channels=[4, 4], num_embeddings=8, embedding_dim=4)
    network = vqvae_from_spec(spec).train()
    before = network.quantizer.quantizer.embedding.weight.detach().clone()
    records = [{"image": str(write_png(tmp_path / f"s{k}.png", brain_slice(20, k))), "subject": "x", "slice": k}
               for k in range(3)]
    codes = encode_codes(network, records, image_size=16, batch_size=2)
    assert codes.shape == (3, 4, 4) and codes.dtype == torch.uint8 and int(codes.max()) < 8
    assert network.training  # its mode is given back
    assert torch.equal(network.quantizer.quantizer.embedding.weight, before)


def test_prior_spec_and_resume_checks_name_what_is_wrong(tmp_path):
    vq = vqvae_spec(image_size=32, num_downsamplings=2, channels=[4, 4], num_embeddings=16, embedding_dim=4)
    spec = prior_spec(vq, "vq.pt", "abc", channels=8, num_layers=2, num_classes="null")
    assert spec["num_embeddings"] == 16 and spec["grid_size"] == 8 and spec["num_classes"] is None
    assert spec["vqvae_checkpoint"] == "vq.pt" and spec["vqvae_sha256"] == "abc"
    with pytest.raises(ConfigError, match="config 'kernel_size': kernel_size must be an odd integer"):
        prior_spec(vq, "vq.pt", "abc", kernel_size=4)
    vq_file = tmp_path / "vq.pt"
    vq_file.write_bytes(b"a VQ-VAE checkpoint")
    spec = prior_spec(vq, vq_file, file_sha256(vq_file), channels=8, num_layers=2)
    check_resume(None, vq_file, spec)  # nothing to resume: nothing to check
    saved = tmp_path / "last_checkpoint_epoch=1.pt"
    other = prior_spec(vq, vq_file, file_sha256(vq_file), channels=16, num_layers=2)
    torch.save({"model": {}, "spec": other.state_dict()}, saved)
    with pytest.raises(ConfigError, match=r"trained with channels=16 \(config: 8\)"):
        check_resume(saved, vq_file, spec)
    torch.save({"model": {}, "spec": {**spec.state_dict(), "grid_size": 16}}, saved)
    with pytest.raises(CheckpointError, match=r"models K=16 codes on a 16x16 grid, but the VQ-VAE .*vq.pt has K=16 "
                                              r"on 8x8: use another output_dir"):
        check_resume(saved, vq_file, spec)
    torch.save({"model": {}, "spec": spec.state_dict()}, saved)
    check_resume(saved, vq_file, spec)


def test_prior_code_bits_reads_the_conditions_from_its_planes():
    torch.manual_seed(0)
    prior = GatedPixelCNN(num_embeddings=16, channels=8, num_layers=2, num_classes=3, cond_num_embeddings=4,
                          cond_factor=2).eval()
    codes, top, labels = torch.randint(0, 16, (2, 8, 8)), torch.randint(0, 4, (2, 4, 4)), torch.tensor([0, 2])
    planes = torch.stack([codes, labels[:, None, None].expand(2, 8, 8),
                          top.repeat_interleave(2, 1).repeat_interleave(2, 2)], dim=1)
    assert PriorCodeBits.planes(prior) == 3
    expected = VQVAEPixelCNNInferer().get_likelihood(codes, None, prior, labels, quantized=True, cond=top)
    torch.testing.assert_close(PriorCodeBits(prior)(planes), expected)
    other = planes.clone()
    other[:, 1] = 1  # another slice position changes the bits
    assert not torch.allclose(PriorCodeBits(prior)(other), expected)
