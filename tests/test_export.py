"""TorchScript export of the VQ-VAE through the real ``python -m monai.bundle ckpt_export`` CLI (inference.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, brain_slice, write_png
from conftest import run_bundle as bundle

from oasis_gen.data.readers import read_slice
from oasis_gen.inference import ModelView
from oasis_gen.networks.vqvae import load_vqvae, vqvae_from_spec, vqvae_spec

INFERENCE = str(CONFIGS / "inference.yaml")
METADATA = str(CONFIGS / "metadata.json")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny VQ-VAE (32x32, 8x8 grid, K=16; not the default architecture) saved the way training saves model.pt."""
    torch.manual_seed(0)
    spec = vqvae_spec(image_size=32, num_downsamplings=2, channels=[8, 16], num_embeddings=16, embedding_dim=8)
    path = tmp_path_factory.mktemp("vqvae") / "checkpoints" / "model.pt"
    path.parent.mkdir(parents=True)
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, path)
    return path


def export(checkpoint: Path, target: Path, *extra: str):
    return bundle("ckpt_export", "network_def", "--filepath", str(target), "--vqvae_ckpt", str(checkpoint),
                  "--ckpt_file", str(checkpoint),
                  "--key_in_ckpt", "model", "--config_file", INFERENCE, "--meta_file", METADATA, *extra)


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("export") / "vqvae.ts"
    result = export(checkpoint, target, "--use_trace", "True", "--input_shape", "[1, 1, 32, 32]")
    assert result.returncode == 0, result.stderr[-3000:]
    return target


def test_exported_network_matches_the_checkpoint(exported, checkpoint, tmp_path):
    scripted = torch.jit.load(str(exported))
    network, spec = load_vqvae(checkpoint)
    # a real slice of another size, as inference feeds it: read, resized and padded to the model's 32x32
    scan = write_png(tmp_path / "slice.png", brain_slice(40, 7, width=30))
    images, _ = ModelView(spec["image_size"]).to_model(read_slice(scan)[None])
    images = torch.cat([images, images.flip(-1)])
    with torch.no_grad():
        expected, expected_loss = network(images)
        got, got_loss = scripted(images)
    assert got.shape == (2, 1, 32, 32)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_loss, expected_loss, atol=1e-5, rtol=0)
    # a traced module follows the input's size: the network is fully convolutional
    with torch.no_grad():
        bigger = torch.rand(1, 1, 64, 48)
        torch.testing.assert_close(scripted(bigger)[0], network(bigger)[0], atol=1e-5, rtol=0)


def test_export_carries_the_metadata_and_the_config(exported):
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(exported), _extra_files=extra)
    metadata = json.loads(extra["metadata.json"])
    assert metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert set(metadata["network_data_format"]["outputs"]) == {"pred", "quantization_loss"}
    config = json.loads(extra["inference.json"])
    assert config["network_def"]["_target_"] == "oasis_gen.networks.vqvae.vqvae_from_spec"


def test_export_without_a_checkpoint_fails_with_one_clear_line(tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    missing.parent.mkdir()
    missing.write_bytes(b"not a checkpoint")
    result = export(missing, tmp_path / "vqvae.ts", "--use_trace", "True")
    assert result.returncode != 0
    assert f"{missing}: not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "vqvae.ts").exists()
