"""The one rule for a (VQ-VAE, prior) pair, as sampling, inference and resuming prior training apply it."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from oasis_gen.generation.pair import check_pair, check_resume, load_pair
from oasis_gen.networks.pixelcnn import pixelcnn_from_spec, pixelcnn_spec
from oasis_gen.networks.spec import file_sha256
from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import CheckpointError

K, SIZE = 16, 32


def _vqvae(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    spec = vqvae_spec(image_size=SIZE, num_downsamplings=2, channels=(4, 8), num_embeddings=K, embedding_dim=4)
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, path)
    return path


def _prior(path: Path, vqvae: Path) -> Path:
    spec = pixelcnn_spec(K, SIZE // 4, channels=4, num_layers=2, vqvae_checkpoint=str(vqvae),
                         vqvae_sha256=file_sha256(vqvae))
    torch.save({"model": pixelcnn_from_spec(spec).state_dict(), "spec": spec.state_dict()}, path)
    return path


@pytest.fixture
def pair(tmp_path) -> dict:
    """A VQ-VAE, a prior trained on it, and another VQ-VAE file (other weights, so another hash)."""
    vqvae = _vqvae(tmp_path / "vqvae.pt", 0)
    return {"vqvae": vqvae, "prior": _prior(tmp_path / "prior.pt", vqvae), "other": _vqvae(tmp_path / "other.pt", 1),
            "tmp": tmp_path}


def _retrain_in_place(vqvae: Path) -> None:
    """Overwrite the VQ-VAE file with other weights of the same sizes, as training it further would."""
    replacement = _vqvae(vqvae.with_name("retrained.pt"), 7)
    shutil.move(replacement, vqvae)


@pytest.mark.parametrize("purpose", ["sample", "infer", "resume"])
def test_the_recorded_file_unchanged_matches(pair, purpose):
    loaded = load_pair(pair["prior"], pair["vqvae"], purpose=purpose)
    assert loaded.vqvae_hash_matches is True
    copy = shutil.copy(pair["vqvae"], pair["tmp"] / "copy.pt")  # same bytes elsewhere: the same VQ-VAE
    assert load_pair(pair["prior"], copy, purpose=purpose).vqvae_hash_matches is True


@pytest.mark.parametrize("purpose", ["sample", "infer"])
def test_the_recorded_file_retrained_in_place_warns_for_sampling_and_inference(pair, purpose, caplog):
    _retrain_in_place(pair["vqvae"])
    with caplog.at_level(logging.WARNING, logger="oasis_gen.generation.pair"):
        loaded = load_pair(pair["prior"], pair["vqvae"], purpose=purpose)
    assert loaded.vqvae_hash_matches is False
    assert f"the VQ-VAE {pair['vqvae']} changed since the prior {pair['prior']}" in caplog.text


def test_the_recorded_file_retrained_in_place_is_refused_for_resuming(pair):
    loaded = load_pair(pair["prior"])
    _retrain_in_place(pair["vqvae"])
    with pytest.raises(CheckpointError, match=r"prior.pt: the VQ-VAE .*vqvae.pt changed since this prior was trained"):
        load_pair(pair["prior"], pair["vqvae"], purpose="resume")
    with pytest.raises(CheckpointError, match=r"changed since this prior was trained .* use another output_dir"):
        check_resume(pair["prior"], pair["vqvae"], loaded.prior_spec)


@pytest.mark.parametrize("purpose", ["sample", "infer", "resume"])
def test_another_file_with_another_hash_is_refused_naming_both(pair, purpose):
    with pytest.raises(CheckpointError) as error:
        load_pair(pair["prior"], pair["other"], purpose=purpose)
    message = str(error.value)
    assert "this prior models the codes of another VQ-VAE" in message
    assert f"trained on {pair['vqvae']}" in message and f"not on {pair['other']}" in message


def test_a_prior_without_a_recorded_hash_cannot_be_checked(pair, caplog):
    spec = dict(torch.load(pair["prior"], weights_only=True)["spec"], vqvae_sha256=None)
    with caplog.at_level(logging.WARNING, logger="oasis_gen.generation.pair"):
        assert check_pair(spec, spec, pair["prior"], pair["other"]) is None
    assert "does not record the SHA-256" in caplog.text
    with pytest.raises(ValueError, match="purpose must be one of"):
        check_pair(spec, spec, pair["prior"], pair["other"], "train")
