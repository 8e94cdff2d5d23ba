"""The two-level VQ-VAE (VQ-VAE-2): its API, its spec and checkpoints, its codebook handlers, and training it."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import CONFIGS, ROOT, write_oasis_slices
from conftest import run_bundle as bundle
from conftest import tiny_vqvae_overrides as tiny_overrides
from ignite.engine import Engine
from mlflow import MlflowClient
from monai.networks.nets import VQVAE

from oasis_gen.engines.handlers import CodebookRestart, CodebookUsage
from oasis_gen.inferers.pixelcnn_inferer import decode_codes, encode_images
from oasis_gen.networks.vqvae import load_vqvae, named_quantizers, vqvae_from_spec, vqvae_spec
from oasis_gen.networks.vqvae2 import TwoLevelVQVAE
from oasis_gen.utils.errors import ConfigError

# 32x32 images, bottom grid 8x8 (K=16), top grid 2x2 (K=8)
TINY = {"image_size": 32, "num_downsamplings": 2, "channels": [4, 8], "num_embeddings": 16, "embedding_dim": 4}
TWO = {**TINY, "top_downsamplings": 2, "top_num_embeddings": 8}


def two_level(seed: int = 0) -> TwoLevelVQVAE:
    torch.manual_seed(seed)
    return vqvae_from_spec(vqvae_spec(**TWO))


def images(count: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 1, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ network


def test_every_api_call_has_the_shapes_of_both_levels():
    network, x = two_level(), images()
    top_z, bottom_z = network.encode(x)
    assert top_z.shape == (3, 4, 2, 2) and bottom_z.shape == (3, 4, 8, 8)
    (top_q, bottom_q), loss = network.quantize((top_z, bottom_z))
    assert top_q.shape == top_z.shape and bottom_q.shape == bottom_z.shape and loss.dim() == 0
    assert network.decode((top_q, bottom_q)).shape == (3, 1, 32, 32)
    top_codes, bottom_codes = network.index_quantize(x)
    assert top_codes.shape == (3, 2, 2) and bottom_codes.shape == (3, 8, 8)
    assert top_codes.dtype == bottom_codes.dtype == torch.int64
    assert 0 <= int(top_codes.min()) and int(top_codes.max()) < 8 and int(bottom_codes.max()) < 16
    assert network.decode_samples((top_codes, bottom_codes)).shape == (3, 1, 32, 32)
    reconstruction, loss = network(x)
    assert reconstruction.shape == (3, 1, 32, 32) and loss.dim() == 0 and loss.requires_grad
    top, bottom = network.quantizers
    assert top.quantizer.num_embeddings == 8 and bottom.quantizer.num_embeddings == 16


def test_decoding_the_codes_gives_the_eval_forward_reconstruction():
    network, x = two_level().eval(), images(4)
    with torch.no_grad():
        expected, expected_loss = network(x)
        codes = network.index_quantize(x)
        torch.testing.assert_close(network.decode_samples(codes), expected, atol=1e-5, rtol=0)
        quantized, loss = network.quantize(network.encode(x))
        torch.testing.assert_close(network.decode(quantized), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(loss, expected_loss, atol=1e-6, rtol=0)
        # the staged quantizers pick the same codes as index_quantize
        top, bottom = network.quantizers
        top_z, bottom_z = network.encode(x)
        assert torch.equal(top.quantize(top_z), codes[0]) and torch.equal(bottom.quantize(bottom_z), codes[1])


def test_the_bottom_codes_depend_on_the_top_codes():
    network, x = two_level(), images(2)
    with torch.no_grad():
        top_codes, bottom_codes = network.index_quantize(x)
        other_top = (top_codes + 1) % 8
        assert not torch.allclose(network.decode_samples((top_codes, bottom_codes)),
                                  network.decode_samples((other_top, bottom_codes)))


def test_training_updates_both_codebooks_and_encoding_leaves_them_alone():
    network, x = two_level(), images()
    before = [q.quantizer.embedding.weight.clone() for q in network.quantizers]
    with torch.no_grad():
        network.index_quantize(x)
        network.encode(x)
        network.eval()(x)
    assert all(torch.equal(q.quantizer.embedding.weight, w) for q, w in zip(network.quantizers, before, strict=True))
    network.train()(x)
    for quantizer, weight in zip(network.quantizers, before, strict=True):
        assert not torch.equal(quantizer.quantizer.embedding.weight, weight)
        assert float(quantizer.quantizer.ema_cluster_size.sum()) > 0


def test_gradients_reach_every_trainable_parameter():
    network, x = two_level(), images()
    reconstruction, loss = network(x)
    ((reconstruction - x).abs().mean() + loss).backward()
    missing = [name for name, p in network.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_top_only_rate_decodes_a_share_of_training_images_from_the_top_codes_alone():
    x = images(4)
    grads = {}
    for rate in (0.0, 0.99):
        torch.manual_seed(0)
        network = vqvae_from_spec(vqvae_spec(**TWO, top_only_rate=rate)).train()
        reconstruction, _ = network(x)
        reconstruction.sum().backward()  # the image path only: the commitment loss also reaches the bottom encoder
        grads[rate] = float(network.bottom_projection.conv.weight.grad.abs().sum())
    assert grads[0.0] > 0  # the bottom codes shape every reconstruction
    assert grads[0.99] == 0  # (seeded: no image of 4 kept its bottom codes) every image came from the top alone
    # evaluation decodes both levels whatever the rate
    torch.manual_seed(0)
    plain = vqvae_from_spec(vqvae_spec(**TWO)).eval()
    torch.manual_seed(0)
    dropping = vqvae_from_spec(vqvae_spec(**TWO, top_only_rate=0.5)).eval()
    with torch.no_grad():
        torch.testing.assert_close(dropping(x)[0], plain(x)[0], atol=0, rtol=0)


def _activations(module: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in module.modules() if "ReLU" in type(m).__name__}


def test_the_top_level_uses_leaky_relu_and_specs_saved_before_it_keep_relu():
    network = two_level()
    assert _activations(network.top_encoder) == _activations(network.top_decoder) == {"LeakyReLU"}
    assert _activations(network.bottom_encoder) == _activations(network.decoder) == {"ReLU"}
    older = {k: v for k, v in vqvae_spec(**TWO).state_dict().items() if k not in ("top_negative_slope",
                                                                                 "top_only_rate", "top_image_weight")}
    assert _activations(vqvae_from_spec(older).top_encoder) == {"ReLU"}  # a checkpoint's behaviour never changes
    assert vqvae_from_spec(older).top_image_head is None  # ... nor its weights: no head it never had


def test_training_adds_the_top_levels_coarse_image_term_to_the_loss():
    network, x = two_level(), images(4)
    plain = vqvae_from_spec(vqvae_spec(**TWO, top_image_weight=0))
    plain.load_state_dict({k: v for k, v in network.state_dict().items() if not k.startswith("top_image_head")})
    # the head reads the images averaged over each bottom cell (4x4 pixels here) from the decoded top codes (taken
    # before the training forward, whose EMA step moves the codebook after quantizing)
    with torch.no_grad():
        top_up = network.top_decoder(network.top_quantizer.embed(network.index_quantize(x)[0]))
        expected = (network.top_image_head(top_up) - torch.nn.functional.avg_pool2d(x, 4)).abs().mean()
    torch.manual_seed(5)
    _, loss = network.train()(x)
    torch.manual_seed(5)
    _, commitment = plain.train()(x)
    torch.testing.assert_close(network.last_terms["top_image_loss"], expected)
    torch.testing.assert_close(loss, commitment + 0.25 * expected)
    loss.backward()
    assert network.top_image_head.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.top_encoder.parameters())
    with torch.no_grad():  # evaluation returns the commitment losses alone, as MONAI's VQVAE
        torch.testing.assert_close(network.eval()(x)[1], plain.eval()(x)[1])


def test_both_quantizers_all_reduce_their_codebook_statistics_under_ddp():
    # as test_distributed's single-level check: MONAI's ddp_sync all-reduces the EMA statistics
    network = two_level()
    assert all(q.quantizer.ddp_sync is True for q in network.quantizers)
    wrapped = torch.nn.Module()
    wrapped.module = network  # what DistributedDataParallel looks like to named_quantizers
    assert list(named_quantizers(wrapped)) == ["top", ""]
    assert named_quantizers(wrapped)["top"] is network.top_quantizer.quantizer


def test_a_traced_two_level_network_matches_the_network():
    # bundle export (inference.yaml network_def + ckpt_export --use_trace) traces forward
    network, x = two_level().eval(), images(2)
    with torch.no_grad():
        traced = torch.jit.trace(network, x)
        torch.testing.assert_close(traced(x)[0], network(x)[0], atol=1e-6, rtol=0)


# ------------------------------------------------------------------ spec and checkpoints


def test_a_single_level_spec_and_network_are_unchanged():
    spec = vqvae_spec(**TINY)
    assert spec.state_dict() == {
        "image_size": 32, "num_downsamplings": 2, "channels": [4, 8], "num_res_layers": 1,
        "num_res_channels": [4, 8], "num_embeddings": 16, "embedding_dim": 4, "commitment_cost": 0.25,
        "decay": 0.99, "output_act": None, "grid_size": 8}
    assert vqvae_spec(**TINY, top_downsamplings=0).state_dict() == spec.state_dict()
    assert vqvae_spec(**TINY, top_downsamplings=0, top_num_embeddings=64).state_dict() == spec.state_dict()
    network = vqvae_from_spec(spec)
    assert type(network) is VQVAE and list(named_quantizers(network)) == [""]


def test_a_two_level_spec_records_the_top_level():
    spec = vqvae_spec(**TWO)
    assert spec["top_downsamplings"] == 2 and spec["top_num_embeddings"] == 8 and spec["top_grid_size"] == 2
    assert spec["grid_size"] == 8 and spec["top_only_rate"] == 0.0 and spec["top_negative_slope"] == 0.1
    assert spec["top_image_weight"] == 0.25
    assert vqvae_spec(**TWO, top_only_rate="0.25")["top_only_rate"] == 0.25  # a command-line string
    assert vqvae_spec(**TINY, top_downsamplings=1)["top_num_embeddings"] == 16  # None: the bottom's K
    assert vqvae_spec(**TINY, top_downsamplings=1, top_num_embeddings="null")["top_num_embeddings"] == 16


@pytest.mark.parametrize("sizes, key, message", [
    ({"top_downsamplings": 4}, "top_downsamplings", "8x8 is not divisible by 2\\*\\*top_downsamplings = 16"),
    ({"top_downsamplings": -1}, "top_downsamplings", "must be 0"),
    ({"top_downsamplings": "two"}, "top_downsamplings", "whole number"),
    ({"top_downsamplings": 1, "top_num_embeddings": 1}, "top_num_embeddings", "at least 2 codes"),
    ({"top_downsamplings": 1, "top_num_embeddings": "many"}, "top_num_embeddings", "expected null"),
    ({"top_downsamplings": 1, "top_only_rate": 1.0}, "top_only_rate", "must be in \\[0, 1\\), not 1.0"),
    ({"top_downsamplings": 1, "top_only_rate": "half"}, "top_only_rate", "expected a share"),
    ({"top_downsamplings": 1, "top_negative_slope": -0.1}, "top_negative_slope", "must be in \\[0, 1\\)"),
    ({"top_downsamplings": 1, "top_image_weight": -1}, "top_image_weight", "must be 0 or more, not -1"),
    ({"top_downsamplings": 1, "top_image_weight": "high"}, "top_image_weight", "expected a number"),
    ({"image_size": 24, "num_downsamplings": 2, "top_downsamplings": 2}, "top_downsamplings",
     "6x6 is not divisible .*at most 1 top downsamplings"),
])
def test_impossible_two_level_sizes_are_config_errors(sizes, key, message):
    with pytest.raises(ConfigError, match=message) as raised:
        vqvae_spec(**{**TINY, **sizes})
    assert raised.value.key == key


def test_a_two_level_checkpoint_round_trips_through_load_vqvae(tmp_path):
    spec = vqvae_spec(**TWO)
    network = two_level(3)
    network.train()(images())  # move the EMA buffers off their initial values
    path = tmp_path / "model.pt"
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, path)
    loaded, loaded_spec = load_vqvae(path)
    assert isinstance(loaded, TwoLevelVQVAE) and not loaded.training
    assert loaded_spec.state_dict() == spec.state_dict()
    state, expected = loaded.state_dict(), network.state_dict()
    assert set(state) == set(expected) and all(torch.equal(state[k], expected[k]) for k in state)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images())[0], network.eval()(images())[0], atol=0, rtol=0)


def test_images_encode_to_both_grids_and_decode_back_to_the_eval_reconstruction():
    network = two_level().eval()
    top, bottom = encode_images(network, images(), batch_size=1)
    assert top.shape == (3, 2, 2) and bottom.shape == (3, 8, 8) and top.dtype == bottom.dtype == torch.long
    with torch.no_grad():
        expected = network(images())[0].clamp(0, 1)
    torch.testing.assert_close(decode_codes(network, (top, bottom), batch_size=1), expected)
    with pytest.raises(ValueError, match="two-level VQ-VAE decodes"):
        decode_codes(network, bottom)
    with pytest.raises(ValueError, match="top codes must lie in"):
        decode_codes(network, (top + 100, bottom))


# ------------------------------------------------------------------ handlers


def run_engine(network: torch.nn.Module, handlers: list, iterations: int = 3, mode: str = "train",
               epochs: int = 1) -> Engine:
    """An ignite engine whose every iteration runs the network on a batch, as MONAI's trainer and evaluator do."""
    batches = [images(4, seed) for seed in range(iterations)]
    network.train(mode == "train")

    def step(engine: Engine, batch: torch.Tensor) -> None:
        with torch.no_grad():
            network(batch)

    engine = Engine(step)
    for handler in handlers:
        handler.attach(engine)
    engine.run(batches, max_epochs=epochs)
    return engine


def test_codebook_usage_reports_both_levels_and_keeps_single_level_names():
    two_level_network = two_level()
    engine = run_engine(two_level_network, [CodebookUsage(two_level_network)])
    metrics = engine.state.metrics
    assert set(metrics) == {"codebook_perplexity", "codebook_unused", "codebook_top_perplexity",
                            "codebook_top_unused"}
    assert 1.0 <= metrics["codebook_top_perplexity"] <= 8.0 and 1.0 <= metrics["codebook_perplexity"] <= 16.0
    assert 0.0 <= metrics["codebook_top_unused"] < 1.0
    evaluated = run_engine(two_level_network, [CodebookUsage(two_level_network, mode="eval", prefix="val_codebook")],
                           mode="eval")
    assert set(evaluated.state.metrics) == {"val_codebook_perplexity", "val_codebook_unused",
                                            "val_codebook_top_perplexity", "val_codebook_top_unused"}
    torch.manual_seed(0)
    single = vqvae_from_spec(vqvae_spec(**TINY))
    assert set(run_engine(single, [CodebookUsage(single)]).state.metrics) == {"codebook_perplexity",
                                                                             "codebook_unused"}


def test_codebook_usage_warns_once_when_a_codebook_collapses(caplog):
    network = two_level()
    top = network.top_quantizer.quantizer
    with torch.no_grad():  # every top code the same vector: each top position picks code 0
        top.embedding.weight.copy_(top.embedding.weight[:1].expand_as(top.embedding.weight))
    usage = CodebookUsage(network, mode="eval", prefix="val_codebook")
    with caplog.at_level("WARNING", logger="oasis_gen.engines.handlers.codebook"):
        engine = run_engine(network, [usage], mode="eval", epochs=2)
    assert engine.state.metrics["val_codebook_top_perplexity"] == 1.0
    warnings = [r.getMessage() for r in caplog.records if "top codebook has collapsed" in r.getMessage()]
    assert len(warnings) == 1  # once, though both epochs saw it
    assert "the top codebook has collapsed: validation uses 1 of its 8 codes" in warnings[0]
    # codes seeded on encoder outputs (CodebookRestart's first check) are all in use: no warning
    caplog.clear()
    healthy = two_level()
    run_engine(healthy, [CodebookRestart(healthy, interval=1)], iterations=2)
    with caplog.at_level("WARNING", logger="oasis_gen.engines.handlers.codebook"):
        engine = run_engine(healthy, [CodebookUsage(healthy, mode="eval")], mode="eval")
    assert engine.state.metrics["codebook_top_perplexity"] >= 2.0, engine.state.metrics
    assert not [r for r in caplog.records if "collapsed" in r.getMessage()]


def test_codebook_restart_reseeds_both_levels():
    network = two_level()
    top, bottom = (q.quantizer for q in network.quantizers)
    engine = run_engine(network, [CodebookRestart(network, interval=1)], iterations=2)
    metrics = engine.state.metrics
    assert set(metrics) == {"codebook_restarted", "codebook_top_restarted"}
    # 4 images give 16 top vectors for 8 codes and 256 bottom vectors for 16: random codes leave some unused
    assert metrics["codebook_top_restarted"] > 0 and metrics["codebook_restarted"] > 0
    # a restarted code sits on an encoder output: no code is left far out (MONAI's EMA sends unused ones to ~1e5)
    assert all(float(q.embedding.weight.norm(dim=1).max()) < 1e3 for q in (top, bottom))
    torch.manual_seed(0)
    single = vqvae_from_spec(vqvae_spec(**TINY))
    assert set(run_engine(single, [CodebookRestart(single, interval=1)]).state.metrics) == {"codebook_restarted"}


# ------------------------------------------------------------------ the bundle


@pytest.mark.slow
def test_train_yaml_trains_a_two_level_vqvae(tmp_path):
    data = write_oasis_slices(tmp_path / "data")
    out, store = tmp_path / "out", tmp_path / "mlruns"
    result = bundle("run", "training", "--config_file", str(CONFIGS / "train.yaml"),
                    *tiny_overrides(data, out, store, max_epochs=1, top_downsamplings=1))
    assert result.returncode == 0, result.stderr[-3000:]
    network, spec = load_vqvae(out / "checkpoints" / "model.pt")
    assert isinstance(network, TwoLevelVQVAE)
    assert spec["grid_size"] == 8 and spec["top_grid_size"] == 4 and spec["top_num_embeddings"] == 16
    with torch.no_grad():
        top_codes, bottom_codes = network.index_quantize(torch.rand(1, 1, 32, 32))
    assert top_codes.shape == (1, 4, 4) and bottom_codes.shape == (1, 8, 8)
    assert spec["top_image_weight"] == 0.25 and network.top_image_head is not None
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("oasis-gen").experiment_id])
    assert run.info.run_name.startswith("vqvae-32px-K16-D8-top4K16-")
    assert run.data.params["top_downsamplings"] == "1" and run.data.params["top_code_grid"] == "4"
    assert run.data.params["top_image_weight"] == "0.25"
    for name in ("top_image_loss", "codebook_top_perplexity", "codebook_top_unused", "codebook_perplexity",
                 "codebook_top_restarted", "val_codebook_top_perplexity", "val_codebook_top_unused", "val_ssim"):
        assert name in run.data.metrics, name


# ------------------------------------------------------------------ what the top level carries


def test_top_level_usage_measures_a_collapsed_and_a_working_top_level(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from top_level_usage import main, top_level_usage

    dataset = write_oasis_slices(tmp_path / "data", size=32)
    network = two_level()
    path = tmp_path / "model.pt"
    torch.save({"model": network.state_dict(), "spec": vqvae_spec(**TWO).state_dict()}, path)
    assert main([str(path), "--dataset-dir", str(dataset), "--split", "train", "--out-dir", str(tmp_path / "out")]) == 0
    row = json.loads((tmp_path / "out" / "top_level_usage.json").read_text())[0]
    assert row["slices"] == 12 and 1 <= row["distinct_top_maps"] <= 12
    x = images(4)
    assert row["l1_black"] > 0
    # a top level whose encoder output ignores the image: one map, 0 bits given the position
    with torch.no_grad():
        network.top_encoder.blocks[-1].conv.weight.zero_()
    usage = top_level_usage(network.eval(), x)
    assert usage["distinct_top_maps"] == 1 and usage["top_bits_given_position"] == 0.0
    assert usage["l1_black"] == pytest.approx(float(x.mean()))
