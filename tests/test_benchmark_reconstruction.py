"""The reconstruction benchmark on tiny sizes (`benchmarks/reconstruction_ixi.py --quick`) and its baseline network.

No timed asserts: only what must hold on any machine. The IXI volumes are never used here (a fresh clone lacks them).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from monai.metrics import PSNRMetric, SSIMMetric

sys.path.insert(0, str(ROOT / "benchmarks"))

from baseline_vqvae import BaselineVQVAE, evaluate, parameter_count  # noqa: E402
from reconstruction_ixi import BLUR_SIGMAS, CANDIDATES, FULL, QUICK, blur_references, check_candidates  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    """One `reconstruction_ixi.py --quick` run through its command line, as a user runs it."""
    out = tmp_path_factory.mktemp("reconstruction")
    done = subprocess.run([sys.executable, "benchmarks/reconstruction_ixi.py", "--quick", "--out-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    return {"result": json.loads((out / "reconstruction_ixi_quick.json").read_text()),
            "markdown": (out / "reconstruction_ixi_quick.md").read_text(), "stdout": done.stdout}


@pytest.mark.slow
def test_quick_run_has_a_row_per_candidate_and_the_baseline(quick_run):
    result, text = quick_run["result"], quick_run["markdown"]
    models = [row["model"] for row in result["rows"]]
    assert sorted(models) == sorted([*result["candidates"], "baseline"])
    assert result["candidates"] and set(result["candidates"]) <= set(CANDIDATES)
    for row in result["rows"]:
        assert 0 < row["ssim"] <= 1, row
        assert math.isfinite(row["psnr"]) and row["steps"] > 0 and row["parameters"] > 0, row
        assert row["test_slices"] == result["data"]["slices"]["test"], row
        assert f"| {row['model']} | {row['parameters']:,} | {row['ssim']:.4f}" in text, row["model"]
        if row["kind"] == "bundle" and row["top_perplexity"] is not None:  # two levels: read from the MLflow store
            assert 1.0 <= row["top_perplexity_lowest"] <= row["top_perplexity"], row
            assert f"| {row['model']} | {row['budget_minutes']:g} | {row['top_perplexity']} (" in text
    # the bundle ran train.yaml then evaluate.yaml; the baseline ran here, both on the same test slices
    assert {row["kind"] for row in result["rows"]} == {"bundle", "baseline"}
    assert result["image_size"] == QUICK.image_size
    assert result["command"].startswith("python benchmarks/reconstruction_ixi.py --quick")
    assert result["machine_info"]["cpu_model"] and str(result["machine_info"]["torch"]) in text
    assert "written:" in quick_run["stdout"]
    # the blur scale: one row per width, scored on the same test slices
    references = result["blur_references"]
    assert [ref["blur_sigma"] for ref in references] == list(BLUR_SIGMAS)
    for ref in references:
        assert f"| {ref['blur_sigma']:g} | {ref['ssim']:.4f} ± " in text, ref


@pytest.mark.slow
def test_blur_only_scores_the_scale_and_trains_nothing(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/reconstruction_ixi.py", "--quick", "--blur-only",
                           "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    result = json.loads((tmp_path / "reconstruction_ixi_quick.json").read_text())
    text = (tmp_path / "reconstruction_ixi_quick.md").read_text()
    assert result["rows"] == [] and result["minutes"] == [] and result["candidates"] == []
    assert [ref["blur_sigma"] for ref in result["blur_references"]] == list(BLUR_SIGMAS)
    assert "| blur sigma (px) | SSIM | PSNR |" in text and "| model |" not in text


def test_baseline_network_has_the_described_shape():
    network = BaselineVQVAE()
    images = torch.rand(2, 1, 128, 128)
    codes = network.encode(images)
    assert codes.shape == (2, 64, 32, 32)  # D=64 on a 32x32 grid from 128x128
    assert network.quantizer.codebook.weight.shape == (512, 64)  # K=512 codes of D=64
    assert network.quantizer.codebook.weight.abs().max() <= 1 / 512
    assert network.quantizer.commitment_cost == 0.25
    assert parameter_count(network) == pytest.approx(0.26e6, rel=0.06)
    strided = [m for m in network.encoder if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert [(m.out_channels, m.kernel_size) for m in strided] == [(64, (4, 4))] * 2
    transposed = [m for m in network.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.stride, m.kernel_size) for m in transposed] == [((2, 2), (4, 4))] * 2
    reconstruction, loss = network(images)
    assert reconstruction.shape == images.shape and loss.ndim == 0


def test_gradient_reaches_the_encoder_through_the_straight_through_estimator():
    torch.manual_seed(0)
    network = BaselineVQVAE()
    images = torch.rand(2, 1, 128, 128)
    reconstruction, _ = network(images)
    # the reconstruction loss alone: without the straight-through copy, argmin would cut the encoder off
    F.mse_loss(reconstruction, images).backward()
    first = network.encoder[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    # and the quantised values are codebook vectors (the nearest ones)
    quantized, _, indices = network.quantizer(network.encode(images))
    assert torch.allclose(quantized.permute(0, 2, 3, 1), network.quantizer.codebook.weight[indices], atol=1e-6)


def test_baseline_scores_with_evaluate_yaml_metrics():
    class Halve(torch.nn.Module):
        def forward(self, x):
            return 0.5 * x + 0.7, torch.zeros(())  # part of it above 1: clamped before scoring

    images = (torch.rand(5, 1, 32, 32) * 255).to(torch.uint8)
    scores = evaluate(Halve(), images, batch_size=2)
    target = images.float() / 255
    prediction = (0.5 * target + 0.7).clamp(0, 1)
    assert scores["ssim"] == pytest.approx(SSIMMetric(spatial_dims=2, data_range=1.0)(prediction, target)
                                           .flatten().tolist(), abs=1e-5)
    assert scores["psnr"] == pytest.approx(PSNRMetric(max_val=1.0)(prediction, target).flatten().tolist(), abs=1e-4)


def test_blur_references_lose_more_the_wider_the_blur():
    # a smooth image with one sharp edge: a wider blur softens the edge more
    image = torch.zeros(4, 1, 32, 32)
    image[:, :, 8:24, 8:24] = 0.8
    image += 0.1 * torch.linspace(0, 1, 32)
    references = blur_references((image * 255).to(torch.uint8), sigmas=(0.25, 1.0, 2.0))
    ssim = [ref["ssim"] for ref in references]
    psnr = [ref["psnr"] for ref in references]
    assert 1.0 >= ssim[0] > ssim[1] > ssim[2] > 0, ssim
    assert psnr[0] > psnr[1] > psnr[2], psnr


def test_candidates_override_keys_train_yaml_has(monkeypatch):
    check_candidates(list(CANDIDATES), FULL)
    check_candidates(list(CANDIDATES), QUICK)
    monkeypatch.setitem(CANDIDATES, "typo", {"chanels": "[8,16]"})
    with pytest.raises(SystemExit, match="chanels"):
        check_candidates(["typo"], FULL)


def test_lever_screening_trains_each_candidate_for_its_budget_and_scores_it():
    from reconstruction_levers import CANDIDATES as LEVERS
    from reconstruction_levers import run_candidate

    generator = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (8, 1, 128, 128), dtype=torch.uint8, generator=generator)
    validate = torch.randint(0, 256, (3, 1, 128, 128), dtype=torch.uint8, generator=generator)
    row = run_candidate("batch4", train, validate, minutes=0.002, seed=0, watch_every=1)
    assert row["settings"] == LEVERS["batch4"] and row["steps"] >= 1 and row["epochs"] == row["steps"] / 2
    assert 0 < row["ssim"] <= 1 and math.isfinite(row["psnr"]) and row["parameters"] > 0
    # the two-level default's top codebook is watched: 1 <= lowest <= last <= its 64 codes
    assert 1.0 <= row["top_perplexity_lowest"] <= row["top_perplexity"] <= 64
