"""What MONAI engines need for the VQ-VAE beyond their defaults: batch preparation, loss and inferer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.inferers import Inferer
from monai.losses import SSIMLoss
from monai.utils import convert_to_tensor
from torch import nn

from oasis_gen.data.transforms import decode_intensity
from oasis_gen.utils.errors import ConfigError


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` (NHWC) or the usual contiguous layout, for a network's weights and its batches."""
    return torch.channels_last if channels_last else torch.contiguous_format


class PrepareImageBatch(PrepareBatch):
    """Move a batch's compactly cached images to the device, decode them to float [0, 1], pair them with themselves.

    An autoencoder's target is its input, so this returns ``(images, images)``, plain tensors.

    Args:
        key: the images' key in the batch.
        channels_last: lay the images out channels-last (NHWC), as a network held in that layout runs fastest on.
    """

    def __init__(self, key: str = "image", channels_last: bool = False):
        self.key = key
        self.memory_format = memory_format(channels_last)

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # a plain tensor: MONAI's MetaTensor would track its metadata through every operation of the network (~160k
        # MetaTensor.__torch_function__ calls in 300 steps of a profiled IXI run); the batch keeps its metadata
        images = convert_to_tensor(batchdata[self.key], track_meta=False).to(device=device, non_blocking=non_blocking)
        images = decode_intensity(images).contiguous(memory_format=self.memory_format)
        return images, images


class VQVAELoss(nn.Module):
    """Reconstruction loss (L1 or MSE, optionally plus SSIM) plus the quantizer's commitment loss.

    Takes the VQ-VAE's ``(reconstruction, quantization_loss)`` output as the prediction; the last terms are kept
    in ``last_terms`` so handlers can log them.
    """

    def __init__(self, reconstruction: str = "l1", quantization_weight: float = 1.0, ssim_weight: float = 0.0):
        super().__init__()
        losses = {"l1": nn.L1Loss(), "mse": nn.MSELoss()}
        if reconstruction not in losses:
            raise ConfigError("reconstruction_loss", f"reconstruction loss must be one of {sorted(losses)}, "
                                                     f"not {reconstruction!r}")
        self.reconstruction = losses[reconstruction]
        self.quantization_weight = float(quantization_weight)
        self.ssim_weight = float(ssim_weight)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0) if self.ssim_weight > 0 else None
        self.last_terms: dict[str, float] = {}

    def forward(self, output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        reconstruction, quantization_loss = output
        reconstruction = reconstruction.float()
        recon = self.reconstruction(reconstruction, target)
        total = recon + self.quantization_weight * quantization_loss.float()
        terms = {"recon_loss": recon.detach(), "quant_loss": quantization_loss.detach()}
        if self.ssim is not None:
            ssim = self.ssim(reconstruction, target)
            total = total + self.ssim_weight * ssim
            terms["ssim_loss"] = ssim.detach()
        self.last_terms = {k: float(v) for k, v in terms.items()}
        return total


class ReconstructionInferer(Inferer):
    """Run a VQ-VAE and return only its reconstruction, clipped to the [0, 1] image range."""

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        reconstruction, _ = network(inputs, *args, **kwargs)
        return reconstruction.float().clamp(0.0, 1.0)


class PrepareCodeBatch(PrepareBatch):
    """Move a batch of code grids to the device as int64 and pair them with themselves (the prior's target).

    Returns ``(codes, codes)`` for an unconditional prior. For a prior conditioned on a class label and/or on a
    spatial grid (``cond_key``: e.g. the top codes of a two-level VQ-VAE, for the bottom prior) it returns
    ``(codes, codes, (), {"cond": cond, "labels": labels})`` with the keys that apply: MONAI's trainers and
    evaluators unpack four items as inputs, targets, args and kwargs, and their inferer calls
    ``network(codes, cond=cond, labels=labels)``.
    """

    def __init__(self, conditional: bool = False, codes_key: str = "codes", label_key: str = "label",
                 cond_key: str | None = None):
        self.conditional = bool(conditional)
        self.codes_key = codes_key
        self.label_key = label_key
        self.cond_key = cond_key or None

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, tuple, dict[str, torch.Tensor]]:
        def grids(key: str) -> torch.Tensor:
            return torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking).long()

        codes = grids(self.codes_key)
        extra: dict[str, torch.Tensor] = {}
        if self.cond_key is not None:
            extra["cond"] = grids(self.cond_key)
        if self.conditional:
            extra["labels"] = grids(self.label_key)
        return (codes, codes, (), extra) if extra else (codes, codes)
