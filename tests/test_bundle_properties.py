"""The workflow properties MONAI's tools look for (``check_properties``: MONAI Label, Deploy, FL, ``create_workflow``)
are present in the training, evaluation and inference configs, and resolve to working objects.

MONAI's check of the *optional* training properties reads every entry of ``train#handlers`` as a dict; the training
configs list the MLflow handler by reference (``"@train#mlflow"``, shared with the run recorder), so for them the
required properties are checked (``BundleWorkflow.check_properties``) and the evaluation config gets MONAI's whole
check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, brain_slice, brain_volume, write_nifti, write_oasis_slices, write_png
from monai.bundle import BundleWorkflow, ConfigWorkflow
from monai.engines import SupervisedEvaluator

from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec

pytestmark = pytest.mark.slow
TINY = {"image_size": 32, "batch_size": 4, "channels": [8, 16], "num_embeddings": 16, "embedding_dim": 8,
        "top_downsamplings": 0, "top_num_embeddings": None, "progress": False}


def workflow(config: str, kind: str, **overrides: object) -> ConfigWorkflow:
    flow = ConfigWorkflow(config_file=str(CONFIGS / config), workflow_type=kind, **overrides)
    flow.initialize()
    return flow


def test_the_training_config_has_monais_train_properties(tmp_path):
    data = write_oasis_slices(tmp_path / "data", size=32)
    flow = workflow("train.yaml", "train", dataset_dir=str(data), output_dir=str(tmp_path / "out"),
                    tracking_uri=str(tmp_path / "mlruns"), **TINY)
    assert BundleWorkflow.check_properties(flow) == []
    assert Path(flow.bundle_root) == CONFIGS.parent
    assert flow.max_epochs == 30 and len(flow.train_dataset) == 12
    images = torch.rand(2, 1, 32, 32)
    reconstruction, _ = flow.train_inferer(images, flow.parser.get_parsed_content("network"))
    assert reconstruction.shape == images.shape


def tiny_checkpoint(tmp_path: Path) -> Path:
    spec = vqvae_spec(image_size=32, num_downsamplings=2, channels=[8, 16], num_embeddings=16, embedding_dim=8)
    checkpoint = tmp_path / "vqvae" / "checkpoints" / "model.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, checkpoint)
    return checkpoint


def test_the_prior_training_config_has_monais_train_properties(tmp_path):
    data = write_oasis_slices(tmp_path / "data", size=32)
    flow = workflow("train_prior.yaml", "train", dataset_dir=str(data), vqvae_ckpt=str(tiny_checkpoint(tmp_path)),
                    output_dir=str(tmp_path / "prior"), tracking_uri=str(tmp_path / "mlruns"), channels=8,
                    num_layers=2, batch_size=4, progress=False)
    assert BundleWorkflow.check_properties(flow) == []
    assert len(flow.train_dataset) == 12 and flow.train_dataset[0]["codes"].shape == (8, 8)


def test_the_evaluation_config_has_monais_inference_properties(tmp_path):
    data = write_oasis_slices(tmp_path / "data", size=32)
    tiny_checkpoint(tmp_path)
    flow = workflow("evaluate.yaml", "infer", dataset_dir=str(data), output_dir=str(tmp_path / "vqvae"),
                    tracking_uri=str(tmp_path / "mlruns"), progress=False)
    assert flow.check_properties() == []
    assert len(flow.dataset) == 6 and flow.evaluator.network is flow.network_def
    reconstruction = flow.inferer(torch.rand(1, 1, 32, 32), flow.network_def)
    assert reconstruction.shape == (1, 1, 32, 32)


def test_the_inference_config_is_a_monai_inference_workflow(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path)
    scans = tmp_path / "scans"
    write_png(scans / "slice.png", brain_slice(32, 3))
    write_nifti(scans / "head.nii.gz", brain_volume((20, 22, 12)))
    flow = workflow("inference.yaml", "infer", input=str(scans), vqvae_ckpt=str(checkpoint),
                    inference_dir=str(tmp_path / "out"), tracking_uri=str(tmp_path / "mlruns"), progress=False,
                    run_id="inferring")
    assert flow.check_properties() == []
    assert flow.dataset_dir == str(scans) and Path(flow.bundle_root) == CONFIGS.parent
    assert [[scan.name for scan in group] for group in flow.dataset] == [["head"], ["slice"]]
    assert isinstance(flow.evaluator, SupervisedEvaluator) and flow.evaluator.inferer is flow.inferer
    # network_def is built from the architecture in the checkpoint; the checkpoint's weights fit it exactly
    state = torch.load(checkpoint, weights_only=True)["model"]
    network = flow.network_def
    network.load_state_dict(state)
    assert sorted(network.state_dict()) == sorted(state)
    out = flow.inferer(torch.rand(3, 1, 32, 32), network.eval())
    assert out["reconstructions"].shape == (3, 1, 32, 32) and out["codes"].shape == (3, 8, 8)
    flow.run()
    assert (tmp_path / "out" / "head" / "reconstruction.nii.gz").is_file()
    assert (tmp_path / "out" / "slice" / "reconstruction.png").is_file()
    assert flow.evaluator.state.iteration == 2
    assert [r.status for r in flow.parser.get_parsed_content("report").results] == ["ok", "ok"]
