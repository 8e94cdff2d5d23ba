"""IndexedEMAQuantizer: MONAI's EMAQuantizer step for step, without the one-hot matrix, in every VQ-VAE built."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.networks.layers.vector_quantizer import EMAQuantizer

from oasis_gen.networks.quantizer import IndexedEMAQuantizer, quantizer_copy
from oasis_gen.networks.vqvae import named_quantizers, vqvae_from_spec, vqvae_spec

ROOT = Path(__file__).resolve().parents[1]


def test_training_steps_match_monai_ema_quantizer():
    torch.manual_seed(0)
    monai = EMAQuantizer(spatial_dims=2, num_embeddings=16, embedding_dim=4, decay=0.8)
    indexed = quantizer_copy(monai)
    unused = []
    for step in range(6):
        inputs = torch.randn(3, 4, 5, 5) * (1.0 + step)
        expected, got = monai(inputs.clone().requires_grad_()), indexed(inputs.clone().requires_grad_())
        assert torch.equal(expected[2], got[2]), step
        unused.append(int((torch.bincount(got[2].flatten(), minlength=16) == 0).sum()))
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])
        for name in ("ema_cluster_size", "ema_w", "embedding.weight"):
            torch.testing.assert_close(indexed.state_dict()[name], monai.state_dict()[name], msg=name)
    # the moving averages of used and of unused codes were both compared
    assert any(unused) and min(unused) < 16, unused


def test_gradients_pass_straight_through_as_in_monai():
    torch.manual_seed(1)
    monai = EMAQuantizer(spatial_dims=2, num_embeddings=8, embedding_dim=3)
    indexed = quantizer_copy(monai)
    grads = []
    for quantizer in (monai, indexed):
        torch.manual_seed(2)
        inputs = torch.randn(2, 3, 4, 4, requires_grad=True)
        quantized, loss, _ = quantizer(inputs)
        (quantized.square().sum() + loss).backward()
        grads.append(inputs.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_quantize_keeps_monai_contract_and_evaluation_leaves_the_codebook():
    torch.manual_seed(3)
    monai = EMAQuantizer(spatial_dims=2, num_embeddings=8, embedding_dim=3)
    indexed = quantizer_copy(monai).eval()
    inputs = torch.randn(2, 3, 4, 4)
    for expected, got in zip(monai.quantize(inputs), indexed.quantize(inputs), strict=True):
        torch.testing.assert_close(got, expected)
    before = {name: value.clone() for name, value in indexed.state_dict().items()}
    indexed(inputs)
    for name, value in indexed.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize("top_downsamplings", [0, 1])
def test_every_vqvae_built_uses_it(top_downsamplings):
    spec = vqvae_spec(image_size=16, channels=(4, 8), num_embeddings=8, embedding_dim=4,
                      top_downsamplings=top_downsamplings, top_num_embeddings=4 if top_downsamplings else None)
    quantizers = named_quantizers(vqvae_from_spec(spec))
    assert len(quantizers) == (2 if top_downsamplings else 1)
    assert all(type(q) is IndexedEMAQuantizer for q in quantizers.values())


def test_checkpoints_written_with_monai_quantizer_load_strictly():
    # checkpoints saved before this class keep loading: the same parameter and buffer names and shapes
    torch.manual_seed(5)
    monai = EMAQuantizer(spatial_dims=2, num_embeddings=8, embedding_dim=4)
    monai(torch.randn(2, 4, 3, 3))  # moving averages away from their initial values
    indexed = IndexedEMAQuantizer(spatial_dims=2, num_embeddings=8, embedding_dim=4)
    indexed.load_state_dict(monai.state_dict(), strict=True)
    for name, value in monai.state_dict().items():
        assert torch.equal(indexed.state_dict()[name], value), name


def test_copying_leaves_the_seed_sequence_alone():
    # the copy's throw-away initial codebook must not shift what a seeded run draws next
    monai = EMAQuantizer(spatial_dims=2, num_embeddings=8, embedding_dim=4)
    torch.manual_seed(4)
    quantizer_copy(monai)
    after_copy = torch.rand(3)
    torch.manual_seed(4)
    assert torch.equal(torch.rand(3), after_copy)


def test_quick_speed_run_writes_both_variants(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/quantizer_speed.py", "--quick", "--num-embeddings", "0",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    result = json.loads((tmp_path / "quantizer_speed_quick.json").read_text())
    text = (tmp_path / "quantizer_speed_quick.md").read_text()
    (row,) = result["rows"]
    for variant in ("monai", "indexed"):
        assert row[variant]["images_per_s"] > 0 and row[variant]["steps"] >= 5
    assert f"| {row['num_embeddings']} | 32 | {row['batch_size']} |" in text
