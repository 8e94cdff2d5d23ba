"""The networks' pass over a batch of planes: the VQ-VAE's view (:class:`CodesInferer`, a MONAI inferer), the
reconstructions' scores and the prior's bits per code (:func:`run_networks`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from monai.inferers import Inferer
from monai.metrics import PSNRMetric, SSIMMetric

from oasis_gen.inference.models import InferenceModels, code_nll_bits

__all__ = ["CodesInferer", "NetworkOutputs", "run_networks"]


@dataclass
class NetworkOutputs:
    """The networks' results for a batch of planes (on the CPU)."""

    reconstructions: torch.Tensor  # [N, 1, size, size] in [0, 1]
    codes: torch.Tensor  # [N, h, w] int64 (the bottom codes of a two-level VQ-VAE)
    ssim: torch.Tensor  # [N]
    psnr: torch.Tensor  # [N]
    bits: torch.Tensor | None  # [N, h, w] bits per code, with a prior
    top_codes: torch.Tensor | None = None  # [N, t, t] int64, two-level VQ-VAE only


class CodesInferer(Inferer):
    """
    A VQ-VAE's view of planes ``[N, 1, size, size]``: encoded, quantized and decoded in batches of ``batch_size``
    (both levels of a two-level VQ-VAE), with mixed precision on CUDA when ``amp``.

    Returns ``{"reconstructions": [N, 1, size, size] in [0, 1], "codes": [N, h, w] int64 (the bottom codes),
    "top_codes": [N, t, t] int64 or None}`` on the CPU.
    """

    def __init__(self, batch_size: int = 32, amp: bool = False):
        self.batch_size = max(int(batch_size), 1)
        self.amp = bool(amp)

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any
                 ) -> dict[str, torch.Tensor | None]:
        device = next(network.parameters()).device
        parts: dict[str, list[torch.Tensor]] = {"reconstructions": [], "codes": [], "top_codes": []}
        with torch.inference_mode():
            for start in range(0, inputs.shape[0], self.batch_size):
                images = inputs[start:start + self.batch_size].to(device, non_blocking=True)
                with torch.autocast("cuda", enabled=self.amp and device.type == "cuda"):
                    codes = network.index_quantize(images)
                    reconstructions = network.decode_samples(codes)
                parts["reconstructions"].append(reconstructions.float().clamp_(0.0, 1.0).cpu())
                if isinstance(codes, tuple):  # a two-level VQ-VAE: (top, bottom)
                    parts["top_codes"].append(codes[0].long().cpu())
                    codes = codes[1]
                parts["codes"].append(codes.long().cpu())
        return {key: torch.cat(values) if values else None for key, values in parts.items()}


def run_networks(models: InferenceModels, inputs: torch.Tensor, labels: torch.Tensor | None = None,
                 batch_size: int = 32, amp: bool = False, inferer: CodesInferer | None = None) -> NetworkOutputs:
    """Encode, quantize and decode planes ``[N, 1, size, size]`` (with ``inferer``, by default a
    :class:`CodesInferer` of ``batch_size`` and ``amp``); score them; prior NLL per (bottom) code."""
    joined = (inferer or CodesInferer(batch_size, amp))(inputs, models.vqvae)
    reconstructions = joined["reconstructions"]
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0)(reconstructions, inputs).flatten()
    psnr = PSNRMetric(max_val=1.0)(reconstructions, inputs).flatten()
    bits = None
    if models.prior is not None:
        scored = joined["codes"] if joined["top_codes"] is None else (joined["top_codes"], joined["codes"])
        bits = code_nll_bits(models.prior, scored, labels, batch_size, amp)
    return NetworkOutputs(reconstructions, joined["codes"], ssim, psnr, bits, joined["top_codes"])
