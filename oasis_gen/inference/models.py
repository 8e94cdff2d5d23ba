"""The networks inference runs: the VQ-VAE, and optionally a prior that must model that very VQ-VAE's codes.

Atypicality is the prior's surprise at each code of a scan: the negative log-likelihood in bits of the code
actually there, given the codes before it in raster order, from one teacher-forced forward pass of the Gated
PixelCNN (:meth:`oasis_gen.networks.pixelcnn_inferer.VQVAEPixelCNNInferer.get_likelihood`, the per-code
definition of :class:`oasis_gen.metrics.CodeNLL`). What is typical is measured the same way on the prior's own
validation codes, when its code cache is at hand.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oasis_gen.bundle_checks import install_error_hook, optional
from oasis_gen.errors import ConfigError
from oasis_gen.generation.codes import slice_labels
from oasis_gen.generation.pair import load_pair
from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.networks.pixelcnn_inferer import VQVAEPixelCNNInferer
from oasis_gen.networks.spec import ModelSpec, file_sha256
from oasis_gen.networks.vqvae import load_vqvae, require_single_level

logger = logging.getLogger(__name__)

__all__ = ["InferenceModels", "code_nll_bits", "export_checkpoint", "load_inference_models", "prior_label",
           "typical_nll"]


@dataclass
class InferenceModels:
    """The VQ-VAE (and the prior, when given) in eval mode on one device, with their specs and files."""

    vqvae: torch.nn.Module
    vqvae_spec: ModelSpec
    vqvae_path: Path
    device: torch.device
    prior: GatedPixelCNN | None = None
    prior_spec: ModelSpec | None = None
    prior_path: Path | None = None
    typical: dict[str, Any] | None = None  # NLL of the prior's validation codes (see typical_nll)

    @property
    def image_size(self) -> int:
        """Side of the square slices the VQ-VAE takes."""
        return int(self.vqvae_spec["image_size"])

    @property
    def num_embeddings(self) -> int:
        """``K``, the codebook size."""
        return int(self.vqvae_spec["num_embeddings"])

    def describe(self) -> dict[str, Any]:
        """Checkpoints and architectures as nested plain values (for run parameters)."""
        described: dict[str, Any] = {"vqvae_ckpt": str(self.vqvae_path), "vqvae": self.vqvae_spec.state_dict(),
                                     "prior_ckpt": str(self.prior_path) if self.prior_path else None}
        if self.prior_spec is not None:
            described["prior"] = {k: v for k, v in self.prior_spec.state_dict().items() if k != "vqvae_checkpoint"}
        return described


def export_checkpoint(default: str | Path) -> str:
    """
    The checkpoint a ``python -m monai.bundle ckpt_export ... --ckpt_file PATH`` command line exports, else
    ``default``: the network is then rebuilt from the spec saved in the very file whose weights are exported.

    ``ckpt_export`` runs no ``initialize`` section, so under it this also installs the hook that reports
    oasis-gen's errors (a corrupt checkpoint) as one line.
    """
    argv = sys.argv
    if "ckpt_export" in argv:
        install_error_hook()
        for position, token in enumerate(argv):
            if token == "--ckpt_file" and position + 1 < len(argv):
                return argv[position + 1]
            if token.startswith("--ckpt_file="):
                return token.split("=", 1)[1]
    return str(default)


def load_inference_models(
    vqvae_ckpt: str | Path,
    prior_ckpt: str | Path | None = None,
    device: str | torch.device = "cpu",
    typical_codes: str | Path | None = "auto",
    batch_size: int = 32,
    typical_grids: int = 64,
) -> InferenceModels:
    """
    Load the VQ-VAE and, if ``prior_ckpt`` is given, a prior trained on its codes.

    Args:
        typical_codes: cached validation codes to measure the prior's typical NLL on: ``"auto"`` looks for
            ``codes/codes_validate.pt`` in the prior's training folder (what ``train_prior.yaml`` writes),
            ``None`` skips it.
        typical_grids: at most this many of those grids (evenly spread) are scored: on a CPU the prior costs
            about 0.1 s per 32x32 grid at the default sizes, and the percentiles need no more.

    Raises:
        CheckpointError: a checkpoint is missing, corrupt or of the wrong kind, or the prior does not belong
            with this VQ-VAE (:func:`oasis_gen.generation.pair.check_pair`: other ``K`` or grid, or another
            checkpoint file by its SHA-256; the same file retrained in place only gives a warning).
    """
    device = torch.device(device)
    vqvae_path = Path(str(vqvae_ckpt))
    vqvae, vqvae_spec = load_vqvae(vqvae_path, device)
    require_single_level(vqvae, "bundle inference (it writes one code grid per slice)")
    models = InferenceModels(vqvae, vqvae_spec, vqvae_path, device)
    prior_ckpt = optional(prior_ckpt)
    if prior_ckpt is None:
        return models
    pair = load_pair(prior_ckpt, vqvae_path, device, "infer", vqvae=(vqvae, vqvae_spec))
    models.prior, models.prior_spec, models.prior_path = pair.prior, pair.prior_spec, pair.prior_path
    models.typical = typical_nll(models, typical_codes, batch_size, typical_grids)
    return models


def prior_label(prior: GatedPixelCNN | None, label: Any) -> int | None:
    """A fixed slice-position bucket for every slice (``None``: each slice's own, as training assigns them)."""
    label = optional(label)
    if label is None:
        return None
    if prior is None or prior.num_classes is None:
        raise ConfigError("label", f"only a prior conditioned on the slice position takes a label (got {label!r})")
    try:
        number = int(str(label))
    except ValueError:
        raise ConfigError("label", f"expected a whole number, not {label!r}") from None
    if not 0 <= number < prior.num_classes:
        raise ConfigError("label", f"this prior knows buckets 0..{prior.num_classes - 1}, not {number}")
    return number


def code_nll_bits(prior: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | None = None,
                  batch_size: int = 32, amp: bool = False) -> torch.Tensor:
    """
    Per-code negative log-likelihood in bits of code grids ``[N, h, w]`` under the prior (teacher forcing: one
    forward pass per batch), as float32 ``[N, h, w]`` on the CPU.
    """
    device = prior.embedding.weight.device
    parts = []
    inferer = VQVAEPixelCNNInferer()
    with torch.inference_mode(), torch.autocast("cuda", enabled=bool(amp) and device.type == "cuda"):
        for start in range(0, codes.shape[0], max(int(batch_size), 1)):
            grids = codes[start:start + batch_size].to(device).long()
            batch_labels = None if labels is None else labels[start:start + batch_size].to(device)
            parts.append(inferer.get_likelihood(grids, None, prior, batch_labels, quantized=True).float().cpu())
    return torch.cat(parts) if parts else torch.zeros((0, *codes.shape[1:]))


def typical_nll(models: InferenceModels, typical_codes: str | Path | None, batch_size: int = 32,
                max_grids: int = 64) -> dict[str, Any] | None:
    """
    What is typical for the prior: the mean and the 5th/50th/95th percentiles over grids of the mean bits per
    code of its validation codes (the cache ``train_prior.yaml`` wrote for this VQ-VAE; at most ``max_grids``
    of them, evenly spread), or ``None`` when no such cache is found.
    """
    if models.prior is None or models.prior_path is None:
        return None
    source = optional(typical_codes)
    if source is None:
        return None
    path = (models.prior_path.parent.parent / "codes" / "codes_validate.pt" if str(source) == "auto"
            else Path(str(source)))
    if not path.is_file():
        if str(source) != "auto":
            logger.warning("no validation codes at %s: the typical atypicality is left out", path)
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        codes, records = cache["codes"], cache["records"]
    except Exception as err:  # a truncated or foreign file only costs the reference, not the run
        logger.warning("cannot read the validation codes %s (%s: %s): the typical atypicality is left out",
                       path, type(err).__name__, err)
        return None
    if cache.get("vqvae_sha256") != file_sha256(models.vqvae_path) or len(codes) == 0:
        logger.warning("the validation codes %s are not this VQ-VAE's: the typical atypicality is left out", path)
        return None
    labels = None
    if models.prior.num_classes is not None:
        labels = torch.tensor(slice_labels(records, models.prior.num_classes), dtype=torch.long)
    picks = torch.from_numpy(np.unique(np.linspace(0, len(codes) - 1, min(len(codes), max(int(max_grids), 1)))
                                       .round().astype(np.int64)))
    per_grid = code_nll_bits(models.prior, codes[picks], None if labels is None else labels[picks],
                             batch_size).flatten(1).mean(1).numpy()
    p05, p50, p95 = (float(v) for v in np.percentile(per_grid, [5, 50, 95]))
    return {"source": str(path), "grids": int(len(per_grid)), "bits_mean": float(per_grid.mean()),
            "bits_p05": p05, "bits_median": p50, "bits_p95": p95,
            "uniform_bits": math.log2(models.num_embeddings)}

