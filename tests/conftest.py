"""Shared fixtures: tiny real scans written to temporary folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

# two test workers share two cores (make test: pytest -n 2): one torch thread each, in the workers and in every
# process they start, instead of four threads fighting over two cores (about 8 % of the suite's time)
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundle" / "configs"


def brain_slice(size: int = 24, seed: int = 0, width: int | None = None) -> np.ndarray:
    """An 8-bit slice with a bright ellipse on a dark background, a little different per seed."""
    rng = np.random.default_rng(seed)
    h, w = size, width or size
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = h * (0.3 + 0.1 * rng.random()), w * (0.3 + 0.1 * rng.random())
    inside = ((yy - h / 2) / ry) ** 2 + ((xx - w / 2) / rx) ** 2 < 1
    img = np.where(inside, 120 + 100 * rng.random((h, w)), 0)
    return img.astype(np.uint8)


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write an array as a PNG (mode as PIL names it), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def brain_volume(shape=(20, 22, 18), seed: int = 0) -> np.ndarray:
    """A float volume with an ellipsoid of tissue in the middle."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    inside = zz**2 / 0.6 + yy**2 / 0.6 + xx**2 / 0.6 < 1
    return np.where(inside, 200 + 50 * rng.random(shape), 0).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Write a NIfTI volume (.nii or .nii.gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine), str(path))
    return path


def write_analyze(path: Path, data: np.ndarray) -> Path:
    """Write an Analyze 7.5 pair (.hdr/.img) as OASIS-1 ships, returning the .img path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.AnalyzeImage(data, np.diag([1.0, 1.0, 1.0, 1.0])), str(path))
    return path


@pytest.fixture
def oasis_slices(tmp_path: Path) -> Path:
    """An OASIS keras-layout slice tree: 3 splits, 2 subjects each, 3 slices each, plus a seg folder."""
    root = tmp_path / "oasis"
    seed = 0
    for split, subjects in (("train", ("001", "002")), ("validate", ("003", "004")), ("test", ("005", "006"))):
        for subject in subjects:
            for k in range(3):
                seed += 1
                name = f"case_{subject}_slice_{k}.nii.png"
                write_png(root / f"keras_png_slices_{split}" / name, brain_slice(24, seed))
                write_png(root / f"keras_png_slices_seg_{split}" / f"seg_{subject}_slice_{k}.nii.png",
                          (brain_slice(24, seed) > 0).astype(np.uint8) * 3)
    return root


def run_bundle(*args: str, cwd: Path = ROOT, timeout: int = 300, env: dict | None = None,
               module: str = "monai.bundle") -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ...`` (or another module) as a user would, returning its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("OASIS_GEN_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def overrides(**values: object) -> list[str]:
    """Bundle command-line overrides (``--key value`` ...) from keyword arguments."""
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def tiny_vqvae_overrides(data: Path, out: Path, store: Path, **extra: object) -> list[str]:
    """Overrides that make train.yaml train a tiny single-level VQ-VAE (32px, 8x8 grid, K=16) in seconds (pass
    ``top_downsamplings`` and ``top_num_embeddings`` for two levels)."""
    values = {"dataset_dir": data, "output_dir": out, "tracking_uri": store, "image_size": 32, "batch_size": 4,
              "channels": "[8,16]", "num_embeddings": 16, "embedding_dim": 8, "top_downsamplings": 0,
              "top_num_embeddings": "null", "progress": "False", "log_every": 1, "mlflow_model": "False", **extra}
    return overrides(**values)


def tiny_prior_overrides(data: Path, vqvae: Path, out: Path, store: Path, **extra: object) -> list[str]:
    """Overrides that make train_prior.yaml train a tiny Gated PixelCNN (8 channels, 2 layers) for one epoch."""
    values = {"dataset_dir": data, "vqvae_ckpt": vqvae, "output_dir": out, "tracking_uri": store, "channels": 8,
              "num_layers": 2, "batch_size": 4, "max_epochs": 1, "num_pictures": 2, "progress": "False",
              "log_every": 1, "mlflow_model": "False", **extra}
    return overrides(**values)


def write_oasis_slices(root: Path, size: int = 40, layout=(("train", 3, 4), ("validate", 1, 4), ("test", 2, 3))
                       ) -> Path:
    """Slices in the OASIS keras layout: per split, (name, subjects, slices per subject); subjects numbered on."""
    seed, subject = 0, 0
    for split, subjects, slices in layout:
        for _ in range(subjects):
            subject += 1
            for k in range(slices):
                seed += 1
                write_png(root / f"keras_png_slices_{split}" / f"case_{subject:03d}_slice_{k}.nii.png",
                          brain_slice(size, seed))
    return root
