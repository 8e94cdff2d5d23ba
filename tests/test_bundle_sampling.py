"""Sampling and completion through the real ``python -m monai.bundle`` CLI, plus the pieces they are built from."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, brain_slice, write_png
from conftest import run_bundle as bundle
from mlflow import MlflowClient
from PIL import Image

from oasis_gen.generation.pair import check_pair, load_pair
from oasis_gen.generation.sampling import complete_scan, generate, region_mask
from oasis_gen.generation.writers import write_samples
from oasis_gen.inferers.pixelcnn_inferer import decode_codes, encode_images
from oasis_gen.metrics import fid, mmd, ms_ssim_diversity, ms_ssim_settings
from oasis_gen.networks.pixelcnn import pixelcnn_from_spec, pixelcnn_spec
from oasis_gen.networks.spec import file_sha256
from oasis_gen.networks.vqvae import vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import CheckpointError, ConfigError
from oasis_gen.utils.files import is_temporary

SAMPLE = str(CONFIGS / "sample.yaml")
K, GRID, SIZE = 16, 8, 32


def save_prior(path: Path, num_embeddings: int, vqvae_path: Path, sha: str | None, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    spec = pixelcnn_spec(num_embeddings, GRID, channels=8, num_layers=3, vqvae_checkpoint=str(vqvae_path),
                         vqvae_sha256=sha)
    torch.save({"model": pixelcnn_from_spec(spec).state_dict(), "spec": spec.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """Tiny real checkpoints (untrained): a 32px VQ-VAE with K=16 on an 8x8 grid, priors for it and for K=32."""
    work = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    spec = vqvae_spec(image_size=SIZE, num_downsamplings=2, channels=(8, 16), num_embeddings=K, embedding_dim=8)
    vqvae_path = work / "vqvae.pt"
    torch.save({"model": vqvae_from_spec(spec).state_dict(), "spec": spec.state_dict()}, vqvae_path)
    sha = file_sha256(vqvae_path)
    return {
        "vqvae": vqvae_path,
        "prior": save_prior(work / "prior.pt", K, vqvae_path, sha),
        "prior_k32": save_prior(work / "prior_k32.pt", 2 * K, vqvae_path, sha),
        "prior_other_hash": save_prior(work / "prior_other_hash.pt", K, vqvae_path, "0" * 64),
        "scan": write_png(work / "scan.png", brain_slice(SIZE, seed=3)),
        "work": work,
    }


@pytest.fixture(scope="module")
def sampled(models) -> dict:
    """One CLI run: 5 samples, and 3 completions of the bottom half of a slice (the VQ-VAE path from the prior)."""
    out, store = models["work"] / "samples", models["work"] / "mlruns"
    result = bundle("run", "sampling", "--config_file", SAMPLE, "--prior_ckpt", str(models["prior"]),
                    "--output_dir", str(out), "--tracking_uri", str(store), "--num_samples", "5", "--seed", "1",
                    "--complete_scan", str(models["scan"]), "--region", "bottom_half", "--num_completions", "3",
                    "--progress", "false")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"out": out, "store": store, "result": result}


# ------------------------------------------------------------------ the CLI


@pytest.mark.slow
def test_sampling_writes_slices_codes_and_grid(sampled):
    out = sampled["out"]
    for i in range(5):
        with Image.open(out / f"sample_{i:03d}.png") as picture:
            assert picture.mode == "L" and picture.size == (SIZE, SIZE)
        codes = np.load(out / f"codes_{i:03d}.npy")
        assert codes.shape == (GRID, GRID) and codes.dtype == np.int64
        assert codes.min() >= 0 and codes.max() < K
        assert (out / f"codes_{i:03d}.png").is_file()
    assert not (out / "sample_005.png").exists()
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (5 * SIZE + 4 * 2, 2 * SIZE + 6)  # samples on top, code maps below
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["num_samples"] == 5 and summary["metrics"]["samples_per_second"] > 0


@pytest.mark.slow
def test_sampling_is_recorded_in_mlflow(sampled, models):
    client = MlflowClient(f"sqlite:///{sampled['store'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("oasis-gen")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("sample-K16-8grid-T1.0-complete-")
    params = run.data.params
    assert params["num_samples"] == "5" and params["seed"] == "1" and params["region"] == "bottom_half"
    assert params["models.prior_ckpt"] == str(models["prior"]) and params["models.vqvae_ckpt"] == str(models["vqvae"])
    assert params["models.prior.num_embeddings"] == "16" and params["models.vqvae_hash_matches"] == "True"
    assert run.data.tags["stage"] == "sample"
    assert run.data.metrics["samples_per_second"] > 0 and run.data.metrics["completion_seconds"] > 0
    assert [a.path for a in client.list_artifacts(run.info.run_id, "samples")] == ["samples/grid.png"]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "completion")] == ["completion/grid.png"]


@pytest.mark.slow
def test_completion_keeps_the_codes_outside_the_region(sampled, models):
    from oasis_gen.data import eval_transforms
    from oasis_gen.networks.vqvae import load_vqvae

    folder = sampled["out"] / "completion"
    vqvae, _ = load_vqvae(models["vqvae"])
    image = eval_transforms(SIZE, "uint8")({"image": str(models["scan"])})["image"].as_tensor() / 255.0
    with torch.no_grad():
        own = vqvae.index_quantize(image[None])[0].numpy()
    assert np.array_equal(np.load(folder / "codes_original.npy"), own)
    keep = ~region_mask("bottom_half", GRID).numpy()
    assert np.array_equal(np.load(folder / "region.npy"), ~keep)
    for i in range(3):
        completed = np.load(folder / f"codes_{i:03d}.npy")
        assert np.array_equal(completed[keep], own[keep])
        assert (folder / f"completion_{i:03d}.png").is_file()
    assert (folder / "original.png").is_file() and (folder / "masked.png").is_file()
    with Image.open(folder / "grid.png") as grid:
        assert grid.size == ((2 + 3) * SIZE + 4 * 2, 2 * SIZE + 2)  # original | masked | 3 completions, codes


@pytest.mark.slow
def test_a_prior_for_other_codes_fails_with_one_clear_line(models, tmp_path):
    result = bundle("run", "sampling", "--config_file", SAMPLE, "--prior_ckpt", str(models["prior_k32"]),
                    "--output_dir", str(tmp_path / "out"), "--tracking_uri", str(tmp_path / "mlruns"))
    assert result.returncode != 0
    assert "models K=32 codes on a 8x8 grid, but the VQ-VAE" in result.stderr and "has K=16 on 8x8" in result.stderr
    assert "Traceback" not in result.stderr
    assert sum(line.startswith("oasis-gen: error:") for line in result.stderr.splitlines()) == 1
    assert not (tmp_path / "out" / "grid.png").exists()


# ------------------------------------------------------------------ the pieces


@pytest.fixture(scope="module")
def loaded(models):
    return load_pair(models["prior"])


def test_region_masks():
    assert region_mask("bottom_half", 8).shape == (8, 8) and region_mask("bottom_half", 8).dtype == torch.bool
    assert region_mask("bottom_half", 8)[4:].all() and not region_mask("bottom_half", 8)[:4].any()
    assert torch.equal(region_mask("top_half", 8), ~region_mask("bottom_half", 8))
    assert torch.equal(region_mask("left_half", 8), region_mask("top_half", 8).T)
    assert torch.equal(region_mask("right_half", (4, 6))[0], torch.tensor([False] * 3 + [True] * 3))
    center = region_mask("center", 8)
    assert center.sum() == 16 and center[2:6, 2:6].all()
    rows = region_mask("rows:2-3", 8)
    assert rows[2:4].all() and rows.sum() == 16
    assert region_mask("rows:7", 8).sum() == 8


@pytest.mark.parametrize("name", ["middle", "rows:5-2", "rows:3-8", "rows:", "bottom-half"])
def test_bad_region_names_are_config_errors(name):
    with pytest.raises(ConfigError, match="region"):
        region_mask(name, 8)


def test_decode_codes_gives_images_in_unit_range(loaded):
    codes = torch.randint(0, K, (3, GRID, GRID))
    images = decode_codes(loaded.vqvae, codes)
    assert images.shape == (3, 1, SIZE, SIZE) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert not loaded.vqvae.training
    with pytest.raises(ValueError, match="codes must lie in"):
        decode_codes(loaded.vqvae, torch.full((1, GRID, GRID), K))


def test_generate_is_reproducible_and_completion_keeps_given_codes(loaded):
    first = generate(loaded.prior, loaded.vqvae, 2, temperature=1.0, seed=4, grid=loaded.grid)
    again = generate(loaded.prior, loaded.vqvae, 2, temperature=1.0, seed=4, grid=loaded.grid)
    assert torch.equal(first[0], again[0]) and first[1].shape == (2, 1, SIZE, SIZE)
    threads = torch.get_num_threads()
    image = torch.from_numpy(brain_slice(SIZE, seed=5).astype(np.float32) / 255)[None]
    original, completed, images = complete_scan(loaded.prior, loaded.vqvae, image, "rows:0-1", seed=0, num_samples=2)
    assert torch.get_num_threads() == threads  # restored after single-threaded sampling
    assert torch.equal(original, encode_images(loaded.vqvae, image[None])[0])
    assert torch.equal(completed[:, 2:], original[2:].expand(2, -1, -1)) and images.shape == (2, 1, SIZE, SIZE)
    with pytest.raises(ConfigError, match="unconditional"):
        generate(loaded.prior, loaded.vqvae, 1, label=2, grid=loaded.grid)
    with pytest.raises(ConfigError, match="temperature"):
        generate(loaded.prior, loaded.vqvae, 1, temperature=0, grid=loaded.grid)


def test_write_samples_removes_numbered_files_of_a_larger_run(loaded, tmp_path):
    codes, images = generate(loaded.prior, loaded.vqvae, 3, seed=0, grid=loaded.grid)
    write_samples(tmp_path, codes, images, K)
    write_samples(tmp_path, codes[:2], images[:2], K)
    assert sorted(p.name for p in tmp_path.glob("sample_*.png")) == ["sample_000.png", "sample_001.png"]
    assert not [p for p in tmp_path.iterdir() if is_temporary(p.name)]


def test_missing_checkpoints_are_clear_errors(models, tmp_path):
    # the CLI prints these as one line (same hook as the K mismatch above)
    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        load_pair(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"gone\.pt: checkpoint not found"):
        load_pair(models["prior"], tmp_path / "gone.pt")
    moved = tmp_path / "moved.pt"
    save_prior(moved, K, tmp_path / "moved_vqvae.pt", None)
    with pytest.raises(CheckpointError, match="recorded in the prior .* not found"):
        load_pair(moved)


def test_compatibility_checks(models, loaded, caplog):
    with pytest.raises(CheckpointError, match=r"K=32 codes on a 8x8 grid, but the VQ-VAE .* has K=16 on 8x8"):
        load_pair(models["prior_k32"], models["vqvae"])
    # the prior records this very file with another hash: retrained in place, which sampling tolerates
    with caplog.at_level(logging.WARNING, logger="oasis_gen.generation.pair"):
        other = load_pair(models["prior_other_hash"])
    assert other.vqvae_hash_matches is False and "changed since the prior" in caplog.text
    assert loaded.vqvae_hash_matches is True
    spec = dict(loaded.prior_spec.state_dict(), vqvae_sha256=None)
    assert check_pair(spec, loaded.vqvae_spec, "prior.pt", models["vqvae"]) is None


def test_generation_metrics_sanity():
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    other = torch.randn(200, 6, generator=generator, dtype=torch.float64)
    assert fid(real, real) == pytest.approx(0.0, abs=1e-6)
    assert fid(real, other) < 0.5 < fid(real, other + 1.0)  # same distribution vs shifted by 1 in 6 dims
    assert abs(mmd(real, other)) < mmd(real, other + 1.0)
    assert abs(mmd(real, other, kernel="linear")) < mmd(real, other + 1.0, kernel="linear")
    assert fid(real[:4], other[:4]) >= 0  # fewer images than features: singular covariances still work
    images = torch.rand(1, 1, 32, 32, generator=generator).expand(4, -1, -1, -1)
    assert ms_ssim_diversity(images) == pytest.approx(0.0, abs=1e-4)
    assert ms_ssim_diversity(torch.rand(4, 1, 32, 32, generator=generator)) > 0.5
    assert ms_ssim_settings(128) == (3, 7) and ms_ssim_settings(32) == (3, 7) and ms_ssim_settings(16) == (3, 3)
