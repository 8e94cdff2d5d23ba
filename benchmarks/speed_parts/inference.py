"""Inference speed: one synthetic brain volume through ``bundle/configs/inference.yaml``'s ``inferring``.

The checkpoints are made for the purpose from the bundle's default architectures (train.yaml, train_prior.yaml)
with untrained weights: speed does not depend on what the weights learned.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from kit import ROOT, bundle_parser, config_prior, config_vqvae

from oasis_gen.bundle.configs import configs_dir
from oasis_gen.networks.spec import checkpoint_sha256

INFERENCE_CODE = ROOT / "oasis_gen" / "inference"


def inference_available() -> str | None:
    """None when inference.yaml and oasis_gen.inference exist, else what is missing."""
    missing = [str(path.relative_to(ROOT)) for path in (configs_dir() / "inference.yaml", INFERENCE_CODE)
               if not path.exists()]
    return f"pending: {', '.join(missing)} not written yet" if missing else None


def synthetic_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A float32 volume with a noisy ellipsoid of tissue in the middle (a stand-in for a skull-stripped brain)."""
    rng = np.random.default_rng(seed)
    axes = np.meshgrid(*[np.linspace(-1, 1, size, dtype=np.float32) for size in shape], indexing="ij", sparse=True)
    inside = axes[0] ** 2 / 0.7 + axes[1] ** 2 / 0.8 + axes[2] ** 2 / 0.6 < 1
    return np.where(inside, 200 + 50 * rng.random(shape, dtype=np.float32), 0).astype(np.float32)


def write_volume(path: Path, shape: tuple[int, int, int]) -> Path:
    """Write a synthetic volume as NIfTI (1 mm voxels): a scratch input of the benchmark."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(synthetic_volume(shape), np.eye(4)), str(path))
    return path


def save_checkpoint(path: Path, network: torch.nn.Module, spec: Any) -> Path:
    """Save weights and architecture the way the bundle's checkpoint savers do (``model`` and ``spec``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": network.state_dict(), "spec": spec.state_dict()}, path)
    return path


def untrained_checkpoints(work: Path, **vqvae_overrides: Any) -> tuple[Path, Path]:
    """Checkpoints of train.yaml's VQ-VAE (overrides as on its command line) and of train_prior.yaml's prior for
    its codes, both with untrained weights: ``(vqvae, prior)``. For a two-level VQ-VAE the prior is the bottom one,
    recording a top prior saved beside it."""
    vqvae_path = save_checkpoint(work / "vqvae" / "model.pt", *config_vqvae(**vqvae_overrides))
    vqvae_spec = torch.load(vqvae_path, weights_only=True)["spec"]
    sha256 = checkpoint_sha256(vqvae_path)
    top: dict[str, str] = {}
    if vqvae_spec.get("top_downsamplings"):
        top_prior = config_prior(vqvae_spec, vqvae_path, sha256, level="top")
        top["top_prior_ckpt"] = str(save_checkpoint(work / "prior_top" / "checkpoints" / "model.pt", *top_prior))
    prior = config_prior(vqvae_spec, vqvae_path, sha256, **top)
    return vqvae_path, save_checkpoint(work / "prior" / "checkpoints" / "model.pt", *prior)


def time_inference(scan: Path, vqvae_ckpt: Path, work: Path, store: Path, prior_ckpt: Path | None = None
                   ) -> dict[str, Any]:
    """Run inference.yaml's ``inferring`` on one scan in this process, timing model loading, the scan itself
    (read, networks, outputs written) and the summary with its MLflow run."""
    parser = bundle_parser("inference.yaml", input=str(scan), inference_dir=str(work / "inference"),
                           vqvae_ckpt=str(vqvae_ckpt), prior_ckpt=str(prior_ckpt) if prior_ckpt else None,
                           tracking_uri=str(store), progress=False)
    times: dict[str, float] = {}
    start = time.perf_counter()
    parser.get_parsed_content("initialize")
    # the evaluator's run is one step of `inferring`: resolved here, it is not run again below
    run_step = f"inferring#{parser['inferring'].index('$@evaluator.run()')}"
    for key, step in (("scans", "scans"), ("models", "models"), ("report", run_step)):
        mark = time.perf_counter()
        parser.get_parsed_content(step)
        times[key] = time.perf_counter() - mark
    mark = time.perf_counter()
    parser.get_parsed_content("inferring")  # the summary, the MLflow run and the final check
    times["summary_and_mlflow"] = time.perf_counter() - mark
    times["total"] = time.perf_counter() - start
    report = parser.get_parsed_content("report")
    slices = int(report.slices)
    return {"scan": scan.name, "slices": slices, "image_size": int(parser.get_parsed_content("models").image_size),
            "prior": prior_ckpt is not None, "scans_done": len(report.done), "times": times,
            "seconds_per_volume": times["report"], "slices_per_s": slices / times["report"]}


def inference_speed(work: Path, store: Path, volume_shape: tuple[int, int, int], **vqvae_overrides: Any
                    ) -> dict[str, Any]:
    """Seconds for one synthetic volume through inference.yaml, without and with a prior ("pending" until the
    inference config exists)."""
    pending = inference_available()
    if pending:
        return {"status": pending}
    volume = write_volume(work / "scan" / "volume.nii", volume_shape)
    vqvae, prior = untrained_checkpoints(work, **vqvae_overrides)
    return {"status": "measured", "volume_shape": list(volume_shape), "untrained_weights": True,
            "without_prior": time_inference(volume, vqvae, work / "without_prior", store),
            "with_prior": time_inference(volume, vqvae, work / "with_prior", store, prior)}
