"""Bundle inference (inference.yaml) on a two-level VQ-VAE with its top prior and its conditioned bottom prior:
through the real ``python -m monai.bundle`` CLI on PNG slices and a NIfTI volume, and its parts in process."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS, brain_slice, brain_volume, overrides, write_nifti, write_png
from conftest import run_bundle as bundle
from PIL import Image

from oasis_gen.inference import ModelView, find_inputs, load_inference_models, read_planes, typical_nll
from oasis_gen.inferers.pixelcnn_inferer import TwoLevelPrior, decode_codes, encode_images
from oasis_gen.networks.pixelcnn import pixelcnn_from_spec, pixelcnn_spec
from oasis_gen.networks.spec import file_sha256
from oasis_gen.networks.vqvae import load_vqvae, vqvae_from_spec, vqvae_spec
from oasis_gen.utils.errors import ConfigError

INFERENCE = str(CONFIGS / "inference.yaml")
METADATA = str(CONFIGS / "metadata.json")
# 32x32 slices, bottom grid 8x8 (K=16), top grid 2x2 (K=8): each top code spans 4x4 bottom codes
TWO = {"image_size": 32, "num_downsamplings": 2, "channels": [4, 8], "num_embeddings": 16, "embedding_dim": 4,
       "top_downsamplings": 2, "top_num_embeddings": 8}


def _vqvae(path: Path) -> Path:
    """A random two-level VQ-VAE whose codebooks are seeded from its own encodings of brain-like slices, so that
    the scans below use several codes of each level (a random codebook maps every position to one code)."""
    torch.manual_seed(0)
    spec = vqvae_spec(**TWO)
    network = vqvae_from_spec(spec).eval()
    slices = torch.from_numpy(np.stack([brain_slice(32, seed) for seed in range(8)])[:, None] / 255.0).float()
    with torch.no_grad():
        for level, quantizer in enumerate(network.quantizers):
            z = network.encode(slices)[level]  # the bottom one under the top codebook seeded just before
            vectors = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
            picks = torch.randperm(len(vectors))[:quantizer.quantizer.num_embeddings]
            quantizer.quantizer.embedding.weight.copy_(vectors[picks])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, path)
    return path


def _prior(path: Path, vqvae: Path, level: str, seed: int, top: Path | None = None) -> Path:
    """A tiny random prior of one level, with weights big enough that its bits differ from code to code."""
    torch.manual_seed(seed)
    k, grid = (8, 2) if level == "top" else (16, 8)
    cond = {} if level == "top" else {"cond_num_embeddings": 8, "cond_factor": 4}
    spec = pixelcnn_spec(k, grid, channels=4, num_layers=2, vqvae_checkpoint=str(vqvae),
                         vqvae_sha256=file_sha256(vqvae), **cond)
    spec.values["level"] = level
    if top is not None:
        spec.values["top_prior_checkpoint"] = str(top)
    network = pixelcnn_from_spec(spec)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(3.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("two_level")
    vqvae = _vqvae(work / "vqvae" / "checkpoints" / "model.pt")
    top = _prior(work / "prior_top" / "checkpoints" / "model.pt", vqvae, "top", 1)
    bottom = _prior(work / "prior" / "checkpoints" / "model.pt", vqvae, "bottom", 2, top=top)
    # the same bottom prior, recording no top prior
    unrecorded = work / "prior_alone" / "model.pt"
    unrecorded.parent.mkdir()
    saved = torch.load(bottom, weights_only=True)
    del saved["spec"]["top_prior_checkpoint"]
    torch.save(saved, unrecorded)
    return {"vqvae": vqvae, "top": top, "bottom": bottom, "unrecorded": unrecorded, "work": work}


def write_scans(root: Path) -> Path:
    write_png(root / "case_001_slice_0.nii.png", brain_slice(32, 1))
    patched = brain_slice(32, 2)
    patched[4:12, 4:12] = 255
    write_png(root / "patched.png", patched)
    write_nifti(root / "vol.nii.gz", brain_volume((12, 14, 10)))
    return root


def infer(scans: Path, out: Path, store: Path, **values: object):
    return bundle("run", "inferring", "--config_file", INFERENCE, "--input", str(scans), "--inference_dir", str(out),
                  "--tracking_uri", str(store), "--progress", "False", *overrides(**values))


def expected_total_bits(pair: TwoLevelPrior, top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """Each slice's total bits, top and bottom, straight from the two networks' logits."""
    with torch.no_grad():
        top_bits = F.cross_entropy(pair.top.eval()(top), top, reduction="none").flatten(1).sum(1)
        bottom_bits = F.cross_entropy(pair.bottom.eval()(bottom, cond=top), bottom, reduction="none").flatten(1).sum(1)
    return (top_bits + bottom_bits) / math.log(2.0)


@pytest.fixture(scope="module")
def recorded_run(checkpoints) -> dict:
    """One CLI run over PNG slices and a NIfTI volume; the top prior comes from the bottom prior's record."""
    work = checkpoints["work"]
    scans, out = write_scans(work / "scans"), work / "out"
    result = infer(scans, out, work / "mlruns", vqvae_ckpt=checkpoints["vqvae"], prior_ckpt=checkpoints["bottom"])
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "summary.csv") as stream:
        rows = {row["scan"]: row for row in csv.DictReader(stream)}
    return {"scans": scans, "out": out, "rows": rows}


def model_inputs(path: Path) -> torch.Tensor:
    """A scan's planes as the VQ-VAE sees them."""
    return ModelView(32).to_model(read_planes(find_inputs(path)[0]).planes)[0]


@pytest.mark.slow
def test_two_level_outputs_are_the_vqvaes_codes_and_reconstructions(recorded_run, checkpoints):
    out, scans = recorded_run["out"], recorded_run["scans"]
    assert {r["status"] for r in recorded_run["rows"].values()} == {"ok"}
    vqvae, _ = load_vqvae(checkpoints["vqvae"])
    images = model_inputs(scans / "case_001_slice_0.nii.png")
    top, bottom = encode_images(vqvae, images)
    folder = out / "case_001_slice_0"
    assert np.array_equal(np.load(folder / "codes.npy"), bottom[0].numpy())
    assert np.array_equal(np.load(folder / "codes_top.npy"), top[0].numpy())
    expected = decode_codes(vqvae, (top, bottom))[0, 0].numpy()  # a 32x32 slice: the model's own geometry
    with Image.open(folder / "reconstruction.png") as picture:
        written = np.asarray(picture, dtype=np.float32) / 255.0
    assert np.abs(written - expected).max() <= 1 / 255 + 1e-6  # 8-bit rounding only
    volume = out / "vol"
    assert np.load(volume / "codes.npy").shape == (10, 8, 8) and np.load(volume / "codes_top.npy").shape == (10, 2, 2)
    assert nib.load(str(volume / "reconstruction.nii.gz")).shape == (12, 14, 10)


@pytest.mark.slow
def test_two_level_atypicality_map_sums_to_the_total_bits_of_both_levels(recorded_run, checkpoints):
    out, scans, rows = recorded_run["out"], recorded_run["scans"], recorded_run["rows"]
    models = load_inference_models(checkpoints["vqvae"], checkpoints["bottom"], typical_codes=None)
    assert isinstance(models.prior, TwoLevelPrior) and models.top_prior_path == checkpoints["top"]
    for name, source in (("case_001_slice_0", "case_001_slice_0.nii.png"), ("patched", "patched.png")):
        grid = np.load(out / name / "atypicality_codes.npy")
        assert grid.shape == (8, 8) and np.isfinite(grid).all() and grid.min() >= 0
        top, bottom = encode_images(models.vqvae, model_inputs(scans / source))
        total = float(expected_total_bits(models.prior, top, bottom)[0])
        assert grid.sum() == pytest.approx(total, rel=1e-5)
        assert float(rows[name]["atypicality_bits"]) == pytest.approx(total / 64, rel=1e-5)
        assert np.load(out / name / "atypicality.npy").shape == (32, 32)
    volume_grid = np.load(out / "vol" / "atypicality_codes.npy")
    assert volume_grid.shape == (10, 8, 8) and np.load(out / "vol" / "atypicality.npy").shape == (12, 14, 10)
    with open(out / "vol" / "metrics.csv") as stream:
        scored = np.array([r["scored"] == "True" for r in csv.DictReader(stream)])
    assert float(rows["vol"]["atypicality_bits"]) == pytest.approx(volume_grid[scored].mean(), rel=1e-5)
    settings = json.loads((out / "summary.json").read_text())["settings"]["models"]
    assert settings["top_prior_ckpt"] == str(checkpoints["top"]) and settings["top_prior"]["level"] == "top"


@pytest.mark.slow
def test_a_top_prior_given_on_the_command_line_scores_the_same(recorded_run, checkpoints, tmp_path):
    scans, out = recorded_run["scans"], tmp_path / "out"
    result = infer(scans, out, tmp_path / "mlruns", vqvae_ckpt=checkpoints["vqvae"],
                   prior_ckpt=checkpoints["unrecorded"], top_prior_ckpt=checkpoints["top"])
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("case_001_slice_0", "patched", "vol"):
        np.testing.assert_array_equal(np.load(out / name / "atypicality_codes.npy"),
                                      np.load(recorded_run["out"] / name / "atypicality_codes.npy"))


@pytest.mark.slow
def test_a_two_level_vqvae_without_a_top_prior_stops_with_one_line(checkpoints, tmp_path):
    scans = write_png(tmp_path / "scans" / "a.png", brain_slice(32, 3)).parent
    result = infer(scans, tmp_path / "out", tmp_path / "mlruns", vqvae_ckpt=checkpoints["vqvae"],
                   prior_ckpt=checkpoints["unrecorded"])
    assert result.returncode == 1
    assert "does not record its top prior: pass --top_prior_ckpt" in result.stderr
    assert "--top_prior_ckpt" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_two_level_vqvae_exports_to_torchscript(checkpoints, tmp_path):
    target = tmp_path / "vqvae.ts"
    result = bundle("ckpt_export", "network_def", "--filepath", str(target), "--vqvae_ckpt", str(checkpoints["vqvae"]),
                    "--ckpt_file", str(checkpoints["vqvae"]),
                    "--key_in_ckpt", "model", "--config_file", INFERENCE, "--meta_file", METADATA,
                    "--use_trace", "True", "--input_shape", "[1, 1, 32, 32]")
    assert result.returncode == 0, result.stderr[-3000:]
    traced = torch.jit.load(str(target))
    network, _ = load_vqvae(checkpoints["vqvae"])
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(traced(images)[0], network(images)[0], atol=1e-5, rtol=0)


# ------------------------------------------------------------------ in process, fast


def test_top_prior_errors_are_config_errors(checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="config 'top_prior_ckpt': the prior .* does not record its top prior"):
        load_inference_models(checkpoints["vqvae"], checkpoints["unrecorded"])
    with pytest.raises(ConfigError, match="config 'top_prior_ckpt': a top prior scores only together"):
        load_inference_models(checkpoints["vqvae"], None, top_prior_ckpt=checkpoints["top"])
    single = vqvae_spec(**{k: v for k, v in TWO.items() if not k.startswith("top_")})
    path = tmp_path / "single.pt"
    torch.save({"model": vqvae_from_spec(single).state_dict(), "spec": single.state_dict()}, path)
    with pytest.raises(ConfigError, match="config 'top_prior_ckpt': the VQ-VAE .*single.pt has one level"):
        load_inference_models(path, None, top_prior_ckpt=checkpoints["top"])
    models = load_inference_models(checkpoints["vqvae"])  # no prior: reconstructions and codes only
    assert models.prior is None and models.two_level
    assert models.uniform_bits == pytest.approx(4.0 + 3.0 / 16)


def _records(count: int) -> list[dict]:
    return [{"image": f"s{k}.png", "subject": "1", "slice": k} for k in range(count)]


def test_typical_nll_of_two_levels_reads_both_grids_of_the_validation_codes(checkpoints):
    vqvae, work = checkpoints["vqvae"], checkpoints["work"]
    models = load_inference_models(vqvae, checkpoints["bottom"], typical_codes=None)
    generator = torch.Generator().manual_seed(0)
    top = torch.randint(0, 8, (5, 2, 2), generator=generator, dtype=torch.uint8)
    bottom = torch.randint(0, 16, (5, 8, 8), generator=generator, dtype=torch.uint8)
    expected = expected_total_bits(models.prior, top.long(), bottom.long()) / 64
    sha = file_sha256(vqvae)
    bottom_cache = work / "prior" / "codes" / "codes_validate.pt"
    bottom_cache.parent.mkdir(exist_ok=True)
    try:
        # the top grids in the bottom prior's own cache
        torch.save({"codes": bottom, "top_codes": top, "records": _records(5), "vqvae_sha256": sha}, bottom_cache)
        typical = typical_nll(models, "auto")
        assert typical["grids"] == 5 and typical["bits_mean"] == pytest.approx(float(expected.mean()), rel=1e-5)
        assert typical["uniform_bits"] == pytest.approx(4.0 + 3.0 / 16)
        # a cache without top grids: left out, not a failure
        torch.save({"codes": bottom, "records": _records(5), "vqvae_sha256": sha}, bottom_cache)
        assert typical_nll(models, "auto") is None
    finally:
        bottom_cache.unlink(missing_ok=True)
