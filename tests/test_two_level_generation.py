"""Generation on a two-level VQ-VAE: a top prior over the coarse grid, a bottom prior given the top codes, composed
by the inferer for sampling, completion and likelihood; the bundle path trains both through train_prior.yaml and
samples through sample.yaml with plausibility figures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CONFIGS, run_bundle, tiny_prior_overrides, tiny_vqvae_overrides, write_oasis_slices

from oasis_gen.generation.codes import prior_spec
from oasis_gen.generation.pair import check_pair, load_pair
from oasis_gen.inferers.pixelcnn_inferer import TwoLevelPrior, VQVAEPixelCNNInferer, encode_images
from oasis_gen.inferers.pixelcnn_sampling import complete_codes, sample_codes_naive
from oasis_gen.networks.pixelcnn import GatedPixelCNN, load_pixelcnn
from oasis_gen.networks.vqvae import level_sizes, vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import CheckpointError, ConfigError

SPEC = vqvae_spec(image_size=32, num_downsamplings=2, channels=[4, 8], num_embeddings=16, embedding_dim=4,
                  top_downsamplings=2, top_num_embeddings=8)  # bottom 8x8 of K=16, top 2x2 of K=8


def networks(seed: int = 0):
    torch.manual_seed(seed)
    vqvae = vqvae_from_spec(SPEC).eval()
    top = GatedPixelCNN(num_embeddings=8, channels=8, num_layers=2)
    bottom = GatedPixelCNN(num_embeddings=16, channels=8, num_layers=2, cond_num_embeddings=8, cond_factor=4)
    return vqvae, TwoLevelPrior(top, bottom).eval()


def test_level_sizes_and_the_prior_spec_of_each_level():
    assert level_sizes(SPEC, "bottom") == (16, 8) and level_sizes(SPEC, "top") == (8, 2)
    top = prior_spec(SPEC, "vq.pt", "abc", level="top", channels=8, num_layers=2)
    bottom = prior_spec(SPEC, "vq.pt", "abc", level="bottom", top_prior_checkpoint="top.pt", channels=8,
                        num_layers=2)
    assert (top["num_embeddings"], top["grid_size"], top["level"]) == (8, 2, "top") and "cond_factor" not in top.values
    assert (bottom["cond_num_embeddings"], bottom["cond_factor"], bottom["top_prior_checkpoint"]) == (8, 4, "top.pt")
    single = vqvae_spec(image_size=32, num_downsamplings=2, channels=[4, 8], num_embeddings=16, embedding_dim=4)
    assert "level" not in prior_spec(single, "vq.pt", "abc", channels=8, num_layers=2).values
    with pytest.raises(ConfigError, match="one level"):
        prior_spec(single, "vq.pt", "abc", level="top")
    with pytest.raises(ConfigError, match="level"):
        level_sizes(SPEC, "middle")


def test_sampling_draws_the_top_grid_then_the_bottom_given_it_as_the_naive_sampler_does():
    vqvae, prior = networks()
    images, (top, bottom) = VQVAEPixelCNNInferer().sample(vqvae, prior, 3, (8, 8),
                                                          generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    expected_top = sample_codes_naive(prior.top, 3, (2, 2), generator=generator)
    expected_bottom = sample_codes_naive(prior.bottom, 3, (8, 8), generator=generator, cond=expected_top)
    assert torch.equal(top, expected_top) and torch.equal(bottom, expected_bottom)
    assert images.shape == (3, 1, 32, 32) and 0 <= float(images.min()) <= float(images.max()) <= 1


def test_the_likelihood_map_sums_to_the_bits_of_both_levels():
    vqvae, prior = networks()
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    inferer = VQVAEPixelCNNInferer()
    bits = inferer.get_likelihood(images, vqvae, prior)
    top, bottom = encode_images(vqvae, images)
    total = (inferer.get_likelihood(top, None, prior.top, quantized=True).flatten(1).sum(1)
             + inferer.get_likelihood(bottom, None, prior.bottom, quantized=True, cond=top).flatten(1).sum(1))
    assert bits.shape == (2, 8, 8)
    torch.testing.assert_close(bits.flatten(1).sum(1), total)


def test_completion_resamples_the_top_positions_above_the_region_then_the_bottom_region_only():
    vqvae, prior = networks()
    top, bottom = encode_images(vqvae, torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2)))
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[5:] = True  # bottom rows 5-7 lie under top row 1 only
    assert prior.top_region(region).tolist() == [[False, False], [True, True]]
    given = (top.expand(4, 2, 2), bottom.expand(4, 8, 8))
    _, (new_top, new_bottom) = VQVAEPixelCNNInferer().complete(vqvae, prior, given, region,
                                                              generator=torch.Generator().manual_seed(3))
    assert torch.equal(new_top[:, 0], given[0][:, 0]) and torch.equal(new_bottom[:, :5], given[1][:, :5])
    generator = torch.Generator().manual_seed(3)
    expected_top = complete_codes(prior.top, given[0], prior.top_region(region), generator=generator)
    expected = complete_codes(prior.bottom, given[1], region, generator=generator, cond=expected_top)
    assert torch.equal(new_top, expected_top) and torch.equal(new_bottom, expected)


def test_a_two_level_prior_needs_a_conditioned_bottom_and_matching_codebooks():
    top = GatedPixelCNN(num_embeddings=8, channels=8, num_layers=2)
    with pytest.raises(ValueError, match="conditioned on the top codes"):
        TwoLevelPrior(top, GatedPixelCNN(num_embeddings=16, channels=8, num_layers=2))
    with pytest.raises(ValueError, match="K=4 top codes"):
        TwoLevelPrior(top, GatedPixelCNN(num_embeddings=16, channels=8, num_layers=2, cond_num_embeddings=4))


def test_the_pair_rule_checks_each_prior_against_its_own_level(tmp_path):
    top = prior_spec(SPEC, "vq.pt", "", level="top", channels=8, num_layers=2)
    bottom = prior_spec(SPEC, "vq.pt", "", level="bottom", channels=8, num_layers=2)
    assert check_pair(top, SPEC, "top.pt", "vq.pt") is None
    assert check_pair(bottom, SPEC, "b.pt", "vq.pt") is None
    with pytest.raises(CheckpointError, match="K=8 bottom codes on a 2x2 grid, but the VQ-VAE vq.pt has K=16 "
                                              "bottom codes on 8x8"):
        check_pair({**top.values, "level": "bottom"}, SPEC, "top.pt", "vq.pt")


# ------------------------------------------------------------------ the bundle path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny two-level VQ-VAE, its top prior and its bottom prior, trained through the bundle configs."""
    root = tmp_path_factory.mktemp("two_level")
    data = write_oasis_slices(root / "data", size=32, layout=(("train", 3, 4), ("validate", 2, 3), ("test", 2, 3)))
    store = root / "mlruns"
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train.yaml"),
                      *tiny_vqvae_overrides(data, root / "vqvae", store, max_epochs=1, top_downsamplings=2,
                                            top_num_embeddings=8))
    assert done.returncode == 0, done.stderr[-3000:]
    vqvae = root / "vqvae" / "checkpoints" / "model.pt"
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train_prior.yaml"),
                      *tiny_prior_overrides(data, vqvae, root / "prior_top", store, level="top"))
    assert done.returncode == 0, done.stderr[-3000:]
    top = root / "prior_top" / "checkpoints" / "model.pt"
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train_prior.yaml"),
                      *tiny_prior_overrides(data, vqvae, root / "prior", store, top_prior_ckpt=top,
                                            codes_dir=root / "prior_top" / "codes"))
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "data": data, "store": store, "vqvae": vqvae, "top": top,
            "bottom": root / "prior" / "checkpoints" / "model.pt", "bottom_log": done.stdout + done.stderr}


@pytest.mark.slow
def test_both_priors_train_through_the_bundle_and_the_bottom_one_records_the_top_one(trained):
    top_spec, bottom_spec = load_pixelcnn(trained["top"])[1], load_pixelcnn(trained["bottom"])[1]
    assert (top_spec["level"], top_spec["grid_size"], top_spec["num_embeddings"]) == ("top", 2, 8)
    assert (bottom_spec["level"], bottom_spec["grid_size"], bottom_spec["cond_factor"]) == ("bottom", 8, 4)
    assert bottom_spec["top_prior_checkpoint"] == str(trained["top"])
    assert "reusing cached codes of the train split" in trained["bottom_log"]  # one codes cache, both grids
    cache = torch.load(trained["root"] / "prior_top" / "codes" / "codes_train.pt", weights_only=True)
    assert cache["top_codes"].shape == (12, 2, 2) and cache["codes"].shape == (12, 8, 8)
    assert (trained["root"] / "prior" / "pictures" / "samples_epoch001.png").is_file()
    pair = load_pair(trained["bottom"])
    assert pair.two_level and pair.top_prior_path == trained["top"]


@pytest.mark.slow
def test_a_two_level_pair_without_a_top_prior_is_refused_clearly(trained, tmp_path):
    checkpoint = torch.load(trained["bottom"], weights_only=True)
    del checkpoint["spec"]["top_prior_checkpoint"]
    lone = tmp_path / "bottom.pt"
    torch.save(checkpoint, lone)
    with pytest.raises(ConfigError, match="--top_prior_ckpt"):
        load_pair(lone)
    assert load_pair(lone, top_prior_ckpt=trained["top"]).two_level
    with pytest.raises(ConfigError, match="is the top prior"):
        load_pair(trained["top"])


@pytest.mark.slow
def test_sampling_a_two_level_model_writes_samples_a_completion_and_plausibility_beside_floors(trained):
    out = trained["root"] / "samples"
    scan = sorted((trained["data"] / "keras_png_slices_test").glob("*.png"))[0]
    done = run_bundle("run", "sampling", "--config_file", str(CONFIGS / "sample.yaml"), "--prior_ckpt",
                      str(trained["bottom"]), "--output_dir", str(out), "--tracking_uri", str(trained["store"]),
                      "--num_samples", "6", "--dataset_dir", str(trained["data"]), "--complete_scan", str(scan),
                      "--plausibility_epochs", "2", "--progress", "False")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    for key in ("c2st_accuracy", "c2st_accuracy_floor", "one_region_share", "one_region_share_floor",
                "mirror_iou_reference", "nn_copy_share", "nll_bits_per_code", "nll_bits_per_slice",
                "c2st_accuracy_reconstruction", "mirror_iou_reconstruction", "c2st_prior_accuracy",
                "c2st_prior_accuracy_floor", "diversity", "diversity_reference", "texture_distance",
                "texture_distance_reconstruction"):
        assert np.isfinite(metrics[key]), key
    assert metrics["nll_codes_per_slice"] == 8 * 8 + 2 * 2
    assert metrics["nll_bits_per_slice"] == pytest.approx(metrics["nll_bits_per_code"] * 68, rel=1e-4)
    table = (out / "plausibility.md").read_text()
    assert "| C2ST accuracy (0.5 = indistinguishable) |" in table and "bits per code" in table
    assert "reconstructions (perfect prior)" in table
    original = np.load(out / "completion" / "codes_original.npy")
    completed = [np.load(path) for path in sorted((out / "completion").glob("codes_0*.npy"))]
    assert original.shape == (8, 8) and len(completed) == 4
    assert all(np.array_equal(grid[:4], original[:4]) for grid in completed)  # the top half is kept


@pytest.mark.slow
def test_sampling_truncation_per_level_reaches_both_samplers(trained):
    # top-k 1 on both levels is greedy: every sample is the same; a bad value stops the run with one clear line
    out = trained["root"] / "samples_greedy"
    done = run_bundle("run", "sampling", "--config_file", str(CONFIGS / "sample.yaml"), "--prior_ckpt",
                      str(trained["bottom"]), "--output_dir", str(out), "--tracking_uri", str(trained["store"]),
                      "--num_samples", "3", "--top_k#top", "1", "--top_k#bottom", "1", "--progress", "False")
    assert done.returncode == 0, done.stderr[-3000:]
    grids = [np.load(path) for path in sorted(out.glob("codes_0*.npy"))]
    assert len(grids) == 3 and all(np.array_equal(grid, grids[0]) for grid in grids)
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["top_k"] == {"top": 1, "bottom": 1} and settings["top_p"] == {"top": None, "bottom": None}
    done = run_bundle("run", "sampling", "--config_file", str(CONFIGS / "sample.yaml"), "--prior_ckpt",
                      str(trained["bottom"]), "--output_dir", str(trained["root"] / "bad"), "--tracking_uri",
                      str(trained["store"]), "--top_p#bottom", "1.5", "--progress", "False")
    assert done.returncode != 0 and "top_p" in done.stderr and "bottom level" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_bottom_prior_without_its_top_prior_is_refused_at_the_start_saying_what_to_run(trained, tmp_path):
    out = tmp_path / "prior"
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train_prior.yaml"),
                      *tiny_prior_overrides(trained["data"], trained["vqvae"], out, tmp_path / "mlruns"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("oasis-gen: error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert errors[0].startswith(f"oasis-gen: error: config 'top_prior_ckpt': the VQ-VAE {trained['vqvae']} has two "
                                "levels")
    assert (f"--vqvae_ckpt {trained['vqvae']} --level top --output_dir {out}_top), then run this again with "
            f"--top_prior_ckpt {out}_top/checkpoints/model.pt") in errors[0]
    assert not (out / "codes").exists() and not (out / "checkpoints").exists()  # refused before any work
    done = run_bundle("run", "training", "--config_file", str(CONFIGS / "train_prior.yaml"),
                      *tiny_prior_overrides(trained["data"], trained["vqvae"], out, tmp_path / "mlruns",
                                            top_prior_ckpt=trained["bottom"]))
    assert done.returncode != 0
    assert (f"oasis-gen: error: {trained['bottom']}: not a top prior (its level is bottom): pass the prior trained "
            "with --level top as --top_prior_ckpt") in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_oasis_gen_train_prior_trains_the_top_prior_then_the_bottom_one(trained, tmp_path):
    out = tmp_path / "runs" / "prior"
    done = run_bundle("train-prior", str(trained["data"]), "--vqvae-ckpt", str(trained["vqvae"]), "--output-dir",
                      str(out), "--epochs", "1", "--tracking-uri", str(tmp_path / "mlruns"), "--channels", "8",
                      "--num_layers", "2", "--batch_size", "4", "--num_pictures", "0", "--progress", "False",
                      "--mlflow_model", "False", module="oasis_gen")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{trained['vqvae']} has two levels: training its top prior ({out}_top), then its bottom prior ({out})" \
        in done.stdout
    top = tmp_path / "runs" / "prior_top" / "checkpoints" / "model.pt"
    assert load_pixelcnn(top)[1]["level"] == "top"
    bottom_spec = load_pixelcnn(out / "checkpoints" / "model.pt")[1]
    assert bottom_spec["level"] == "bottom" and bottom_spec["top_prior_checkpoint"] == str(top)
    assert (out / "codes" / "codes_train.pt").is_file() and not (tmp_path / "runs" / "prior_top" / "codes").exists()
    assert load_pair(out / "checkpoints" / "model.pt").two_level  # what sampling and inference load
