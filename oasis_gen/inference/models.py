"""The networks inference runs: the VQ-VAE, and optionally a prior that must model that very VQ-VAE's codes.

Atypicality is the prior's surprise at each code of a scan: the negative log-likelihood in bits of the code
actually there, given the codes before it in raster order, from one teacher-forced forward pass of the Gated
PixelCNN (:meth:`oasis_gen.inferers.pixelcnn_inferer.VQVAEPixelCNNInferer.get_likelihood`, the per-code
definition of :class:`oasis_gen.metrics.CodeNLL`).
What is typical is measured the same way on the prior's own
validation codes, when its code cache is at hand.

A two-level VQ-VAE (VQ-VAE-2) has a top and a bottom code grid and a prior for each (the bottom one conditioned
on the top grid, composed as a :class:`~oasis_gen.inferers.pixelcnn_inferer.TwoLevelPrior`). Its atypicality
is still one map at the bottom grid: each bottom code's bits given the top grid plus an even share of the bits
of the top code above it, so a map sums to the slice's total bits (top and bottom) as a single-level one does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from oasis_gen.generation.codes import slice_labels
from oasis_gen.generation.pair import load_pair
from oasis_gen.inferers.pixelcnn_inferer import Codes, TwoLevelPrior, VQVAEPixelCNNInferer
from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.networks.spec import ModelSpec, file_sha256
from oasis_gen.networks.vqvae import is_two_level, level_sizes, load_vqvae
from oasis_gen.utils.config_values import optional
from oasis_gen.utils.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["InferenceModels", "code_nll_bits", "load_inference_models", "prior_label",
           "typical_nll"]


@dataclass
class InferenceModels:
    """The VQ-VAE (and the prior, when given) in eval mode on one device, with their specs and files."""

    vqvae: torch.nn.Module
    vqvae_spec: ModelSpec
    vqvae_path: Path
    device: torch.device
    prior: GatedPixelCNN | TwoLevelPrior | None = None  # a TwoLevelPrior for a two-level VQ-VAE
    prior_spec: ModelSpec | None = None  # the (bottom) prior's
    prior_path: Path | None = None
    typical: dict[str, Any] | None = None  # NLL of the prior's validation codes (see typical_nll)
    top_prior_spec: ModelSpec | None = None  # two levels: the top prior's
    top_prior_path: Path | None = None

    @property
    def image_size(self) -> int:
        """Side of the square slices the VQ-VAE takes."""
        return int(self.vqvae_spec["image_size"])

    @property
    def num_embeddings(self) -> int:
        """``K``, the (bottom) codebook size."""
        return int(self.vqvae_spec["num_embeddings"])

    @property
    def two_level(self) -> bool:
        """Whether the VQ-VAE has a top code grid above the bottom one."""
        return is_two_level(self.vqvae_spec)

    @property
    def uniform_bits(self) -> float:
        """
        Bits per (bottom) code of a prior that knows nothing: ``log2(K)``, plus for two levels the share of a
        top code's ``log2(K_top)`` that each bottom code carries on the atypicality map.
        """
        bits = math.log2(self.num_embeddings)
        if self.two_level:
            (top_k, top_grid), (_, grid) = level_sizes(self.vqvae_spec, "top"), level_sizes(self.vqvae_spec)
            bits += math.log2(top_k) * (top_grid / grid) ** 2
        return bits

    def describe(self) -> dict[str, Any]:
        """Checkpoints and architectures as nested plain values (for run parameters)."""
        described: dict[str, Any] = {"vqvae_ckpt": str(self.vqvae_path), "vqvae": self.vqvae_spec.state_dict(),
                                     "prior_ckpt": str(self.prior_path) if self.prior_path else None}
        if self.prior_spec is not None:
            described["prior"] = self.prior_spec.architecture()
        if self.top_prior_spec is not None:  # only two-level runs get these keys: single-level ones stay as they were
            described["top_prior_ckpt"] = str(self.top_prior_path)
            described["top_prior"] = self.top_prior_spec.architecture()
        return described




def load_inference_models(
    vqvae_ckpt: str | Path,
    prior_ckpt: str | Path | None = None,
    device: str | torch.device = "cpu",
    typical_codes: str | Path | None = "auto",
    batch_size: int = 32,
    typical_grids: int = 64,
    top_prior_ckpt: str | Path | None = None,
) -> InferenceModels:
    """
    Load the VQ-VAE and, if ``prior_ckpt`` is given, a prior trained on its codes.

    Args:
        prior_ckpt: the prior; for a two-level VQ-VAE its bottom prior (conditioned on the top codes).
        typical_codes: cached validation codes to measure the prior's typical NLL on: ``"auto"`` looks for
            ``codes/codes_validate.pt`` in the prior's training folder (what ``train_prior.yaml`` writes),
            ``None`` skips it.
        typical_grids: at most this many of those grids (evenly spread) are scored: on a CPU the prior costs
            about 0.1 s per 32x32 grid at the default sizes, and the percentiles need no more.
        top_prior_ckpt: for a two-level VQ-VAE, its top prior; ``None``: the one the bottom prior records.

    Raises:
        CheckpointError: a checkpoint is missing, corrupt or of the wrong kind, or the prior does not belong
            with this VQ-VAE (:func:`oasis_gen.generation.pair.check_pair`: other ``K`` or grid, or another
            checkpoint file by its SHA-256; the same file retrained in place only gives a warning).
        ConfigError: a top prior for a single-level VQ-VAE or without a bottom prior, or a two-level VQ-VAE's
            prior without any top prior (none given, none recorded).
    """
    device = torch.device(device)
    vqvae_path = Path(str(vqvae_ckpt))
    vqvae, vqvae_spec = load_vqvae(vqvae_path, device)
    models = InferenceModels(vqvae, vqvae_spec, vqvae_path, device)
    prior_ckpt, top_prior_ckpt = optional(prior_ckpt), optional(top_prior_ckpt)
    if top_prior_ckpt is not None and not models.two_level:
        raise ConfigError("top_prior_ckpt", f"the VQ-VAE {vqvae_path} has one level: it takes no top prior "
                                            "(leave top_prior_ckpt null)")
    if prior_ckpt is None:
        if top_prior_ckpt is not None:
            raise ConfigError("top_prior_ckpt", "a top prior scores only together with its bottom prior: "
                                                "pass --prior_ckpt path/to/prior/model.pt too")
        return models
    pair = load_pair(prior_ckpt, vqvae_path, device, "infer", vqvae=(vqvae, vqvae_spec),
                     top_prior_ckpt=top_prior_ckpt)
    models.prior, models.prior_spec, models.prior_path = pair.prior, pair.prior_spec, pair.prior_path
    models.top_prior_spec, models.top_prior_path = pair.top_prior_spec, pair.top_prior_path
    models.typical = typical_nll(models, typical_codes, batch_size, typical_grids)
    return models


def prior_label(prior: GatedPixelCNN | TwoLevelPrior | None, label: Any) -> int | None:
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


def code_nll_bits(prior: GatedPixelCNN | TwoLevelPrior, codes: Codes, labels: torch.Tensor | None = None,
                  batch_size: int = 32, amp: bool = False) -> torch.Tensor:
    """
    Per-code negative log-likelihood in bits of code grids ``[N, h, w]`` (``(top, bottom)`` grids for a
    :class:`TwoLevelPrior`) under the prior (teacher forcing: one forward pass per batch), as float32
    ``[N, h, w]`` at the (bottom) grid on the CPU; for two levels each map sums to the slice's total bits.
    """
    device = next(prior.parameters()).device
    bottom = codes[1] if isinstance(codes, (tuple, list)) else codes
    step = max(int(batch_size), 1)
    parts = []
    inferer = VQVAEPixelCNNInferer()
    with torch.inference_mode(), torch.autocast("cuda", enabled=bool(amp) and device.type == "cuda"):
        for start in range(0, bottom.shape[0], step):
            grids: Codes = (tuple(level[start:start + step].to(device).long() for level in codes)  # type: ignore[assignment]
                            if isinstance(codes, (tuple, list)) else codes[start:start + step].to(device).long())
            batch_labels = None if labels is None else labels[start:start + step].to(device)
            parts.append(inferer.get_likelihood(grids, None, prior, batch_labels, quantized=True).float().cpu())
    return torch.cat(parts) if parts else torch.zeros((0, *bottom.shape[1:]))


def typical_nll(models: InferenceModels, typical_codes: str | Path | None, batch_size: int = 32,
                max_grids: int = 64) -> dict[str, Any] | None:
    """
    What is typical for the prior: the mean and the 5th/50th/95th percentiles over grids of the mean bits per
    code of its validation codes (the cache ``train_prior.yaml`` wrote for this VQ-VAE; at most ``max_grids``
    of them, evenly spread), or ``None`` when no such cache is found.

    For a two-level VQ-VAE the cache holds both grids (``top_codes`` and ``codes``); the bits are those of the
    atypicality map (top and bottom).
    """
    if models.prior is None or models.prior_path is None:
        return None
    source = optional(typical_codes)
    if source is None:
        return None
    auto = str(source) == "auto"
    path = _cache_path(models.prior_path) if auto else Path(str(source))
    cache = _read_cache(models, path, warn_missing=not auto)
    if cache is None:
        return None
    codes, records = cache["codes"], cache["records"]
    if models.two_level:
        codes = _two_level_codes(cache, path)
        if codes is None:
            return None
    grids = len(codes[1]) if isinstance(codes, tuple) else len(codes)
    labels = None
    if models.prior.num_classes is not None:
        labels = torch.tensor(slice_labels(records, models.prior.num_classes), dtype=torch.long)
    picks = torch.from_numpy(np.unique(np.linspace(0, grids - 1, min(grids, max(int(max_grids), 1)))
                                       .round().astype(np.int64)))
    picked = tuple(level[picks] for level in codes) if isinstance(codes, tuple) else codes[picks]
    per_grid = code_nll_bits(models.prior, picked, None if labels is None else labels[picks],
                             batch_size).flatten(1).mean(1).numpy()
    p05, p50, p95 = (float(v) for v in np.percentile(per_grid, [5, 50, 95]))
    return {"source": str(path), "grids": int(len(per_grid)), "bits_mean": float(per_grid.mean()),
            "bits_p05": p05, "bits_median": p50, "bits_p95": p95, "uniform_bits": models.uniform_bits}


def _cache_path(prior_path: Path) -> Path:
    """Where ``train_prior.yaml`` caches the validation codes of the prior saved at ``prior_path``."""
    return prior_path.parent.parent / "codes" / "codes_validate.pt"


def _read_cache(models: InferenceModels, path: Path, warn_missing: bool) -> dict[str, Any] | None:
    """A code cache of this VQ-VAE with some grids in it, else ``None`` (with a warning saying why)."""
    if not path.is_file():
        if warn_missing:
            logger.warning("no validation codes at %s: the typical atypicality is left out", path)
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"codes", "records"} - set(cache)
        if missing:
            raise KeyError(", ".join(sorted(missing)))
    except Exception as err:  # a truncated or foreign file only costs the reference, not the run
        logger.warning("cannot read the validation codes %s (%s: %s): the typical atypicality is left out",
                       path, type(err).__name__, err)
        return None
    if cache.get("vqvae_sha256") != file_sha256(models.vqvae_path) or len(cache["codes"]) == 0:
        logger.warning("the validation codes %s are not this VQ-VAE's: the typical atypicality is left out", path)
        return None
    return cache


def _two_level_codes(cache: dict[str, Any], path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(top, bottom)`` validation grids of a two-level VQ-VAE's code cache, else ``None`` (warned)."""
    top = cache.get("top_codes")
    if isinstance(top, torch.Tensor) and len(top) == len(cache["codes"]):
        return top, cache["codes"]
    logger.warning("the validation codes %s hold no top codes: the typical atypicality is left out", path)
    return None
