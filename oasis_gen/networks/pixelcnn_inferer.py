"""A VQ-VAE and its Gated PixelCNN prior as one MONAI inferer: training forward pass, sampling, likelihood.

Shaped like MONAI's :class:`monai.inferers.VQVAETransformerInferer`, with the PixelCNN in place of the
transformer: the code grid is kept 2D (the network is convolutional, raster order is built in), so no
``Ordering`` and no begin-of-sequence token are needed, and sampling uses the incremental sampler of
:mod:`oasis_gen.networks.pixelcnn_sampling`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer

from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.networks.pixelcnn_sampling import evaluating, sample_codes

__all__ = ["VQVAEPixelCNNInferer", "decode_codes", "encode_images"]


def _device(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


def encode_images(vqvae: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """
    Code indices of images ``[N, 1, H, W]`` in [0, 1]: int64 ``[N, h, w]`` on the VQ-VAE's device.

    Runs in eval mode without gradients (in train mode MONAI's EMA quantizer would update its codebook).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape [N, 1, H, W], got {shape}")
    device = _device(vqvae)
    with evaluating(vqvae):
        parts = [vqvae.index_quantize(images[start:start + batch_size].to(device).float())
                 for start in range(0, images.shape[0], batch_size)]
    return torch.cat(parts).long()


def decode_codes(vqvae: torch.nn.Module, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """
    Slices of code grids ``[N, h, w]``: float32 ``[N, 1, H, W]`` clamped to [0, 1], on the VQ-VAE's device.

    Runs in eval mode without gradients.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a tensor of shape [N, h, w], got {shape}")
    num_embeddings = int(vqvae.quantizer.quantizer.num_embeddings)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_embeddings):
        raise ValueError(f"codes must lie in [0, {num_embeddings}) for this VQ-VAE, "
                         f"got values in [{int(codes.min())}, {int(codes.max())}]")
    device = _device(vqvae)
    with evaluating(vqvae):
        parts = [vqvae.decode_samples(codes[start:start + batch_size].to(device).long())
                 for start in range(0, codes.shape[0], batch_size)]
    return torch.cat(parts).float().clamp_(0.0, 1.0)


class VQVAEPixelCNNInferer(Inferer):
    """
    Inference with a VQ-VAE and a Gated PixelCNN prior over its code grids.

    * ``inferer(images, vqvae, prior)``: the prior's logits ``[N, K, h, w]`` on the images' codes (the
      training forward pass; the VQ-VAE is not trained through it);
    * :meth:`sample`: new images and their codes, drawn from the prior and decoded;
    * :meth:`get_likelihood`: the prior's surprise at each code of images (or of code grids), in bits.
    """

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        vqvae: torch.nn.Module,
        prior: GatedPixelCNN,
        labels: torch.Tensor | int | None = None,
        return_codes: bool = False,
        **kwargs: Any,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Logits of the prior on the codes of ``inputs``.

        Args:
            inputs: images ``[N, 1, H, W]`` in [0, 1].
            vqvae: the first stage (encoded in eval mode, without gradients).
            prior: the Gated PixelCNN (run as it is, so gradients flow when it trains).
            labels: class labels ``[N]`` (or one ``int``) for a conditional prior.
            return_codes: also return the code grids, the targets of the logits.
            kwargs: further keyword arguments of the prior's forward.

        Returns:
            logits ``[N, K, h, w]``, or ``(logits, codes)`` with ``return_codes``.
        """
        codes = encode_images(vqvae, inputs).to(_device(prior))
        logits = prior(codes, labels=labels, **kwargs)
        return (logits, codes) if return_codes else logits

    def sample(
        self,
        vqvae: torch.nn.Module,
        prior: GatedPixelCNN,
        num_samples: int,
        grid: tuple[int, int],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
        progress: bool = False,
        cond: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Draw new images: code grids from the prior (incremental sampler), decoded by the VQ-VAE.

        Args:
            vqvae: the first stage, which decodes the codes.
            prior: the Gated PixelCNN.
            num_samples: number of images ``N``.
            grid: ``(h, w)`` of the code grids (both networks are convolutional: they cannot tell it).
            temperature: ``> 0``; logits are divided by it before the softmax.
            generator: random generator on the prior's device, for reproducible samples.
            labels: class labels ``[N]`` (or one ``int``) for a conditional prior.
            progress: show a progress bar over code rows.
            cond: conditioning grids ``[N, h / cond_factor, w / cond_factor]`` (or one) for a prior with
                spatial conditioning (e.g. the top codes of a two-level VQ-VAE).

        Returns:
            ``(images, codes)``: float32 ``[N, 1, H, W]`` in [0, 1] and int64 ``[N, h, w]``.
        """
        codes = sample_codes(prior, num_samples, tuple(grid), temperature, labels, generator, progress=progress,
                             cond=cond)
        return decode_codes(vqvae, codes), codes

    def get_likelihood(
        self,
        inputs: torch.Tensor,
        vqvae: torch.nn.Module | None,
        prior: GatedPixelCNN,
        labels: torch.Tensor | int | None = None,
        quantized: bool = False,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The prior's negative log-likelihood of each code, in bits, given the codes before it in raster order.

        Args:
            inputs: images ``[N, 1, H, W]`` in [0, 1], or code grids ``[N, h, w]`` with ``quantized``.
            vqvae: the first stage that encodes the images (unused, may be ``None``, with ``quantized``).
            prior: the Gated PixelCNN (one teacher-forced forward pass, eval mode, no gradients).
            labels: class labels ``[N]`` (or one ``int``) for a conditional prior.
            quantized: ``inputs`` are code grids already.
            cond: conditioning grids for a prior with spatial conditioning, else ``None``.

        Returns:
            float32 ``[N, h, w]`` on the prior's device: ``-log2 p(code at (i, j) | codes before it)``.
        """
        if quantized:
            codes = prior.check_codes(inputs)
        else:
            if vqvae is None:
                raise ValueError("a VQ-VAE is needed to encode images (or pass code grids with quantized=True)")
            codes = encode_images(vqvae, inputs)
        codes = codes.to(_device(prior))
        with evaluating(prior):
            logits = prior(codes, labels=labels, cond=cond)
        return F.cross_entropy(logits.float(), codes, reduction="none") / math.log(2.0)
