"""A VQ-VAE and its Gated PixelCNN prior as one MONAI inferer: training forward pass, sampling, likelihood.

Shaped like MONAI's :class:`monai.inferers.VQVAETransformerInferer`, with the PixelCNN in place of the
transformer: the code grid is kept 2D (the network is convolutional, raster order is built in), so no
``Ordering`` and no begin-of-sequence token are needed, and sampling uses the incremental sampler of
:mod:`oasis_gen.inferers.pixelcnn_sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from torch import nn

from oasis_gen.inferers.pixelcnn_incremental import evaluating
from oasis_gen.inferers.pixelcnn_sampling import complete_codes, sample_codes
from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.networks.vqvae import named_quantizers

__all__ = [
    "Codes", "PerLevel", "PriorCodeBits", "TwoLevelPrior", "VQVAEPixelCNNInferer", "decode_codes", "encode_images",
    "level_setting",
]


# the codes of one slice batch: a grid [N, h, w] for a single-level VQ-VAE, (top, bottom) grids for a two-level one
Codes = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
# a sampling setting for every level, or one per level of a two-level prior: {"top": ..., "bottom": ...}
PerLevel = Any


def level_setting(value: PerLevel, level: str) -> Any:
    """The setting of one level (``top`` or ``bottom``) of a value given for every level or as a per-level mapping
    (a level the mapping leaves out gets ``None``: no truncation)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"top", "bottom"})
        if unknown:
            raise ValueError(f"per-level sampling settings take the keys 'top' and 'bottom', got {unknown}")
        return value.get(level)
    return value


def _device(network: torch.nn.Module) -> torch.device:
    return next(network.parameters()).device


def _cat(parts: list[Codes]) -> Codes:
    if parts and isinstance(parts[0], tuple):
        return tuple(torch.cat([part[level] for part in parts]).long() for level in range(2))  # type: ignore[return-value]
    return torch.cat(parts).long()  # type: ignore[arg-type]


def encode_images(vqvae: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> Codes:
    """
    Code indices of images ``[N, 1, H, W]`` in [0, 1], on the VQ-VAE's device: int64 ``[N, h, w]``, or
    ``(top, bottom)`` grids for a two-level VQ-VAE.

    Runs in eval mode without gradients (in train mode MONAI's EMA quantizer would update its codebook).
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor of shape [N, 1, H, W], got {shape}")
    device = _device(vqvae)
    with evaluating(vqvae):
        parts = [vqvae.index_quantize(images[start:start + batch_size].to(device).float())
                 for start in range(0, images.shape[0], batch_size)]
    return _cat(parts)


def _check_level(codes: Any, num_embeddings: int, name: str) -> torch.Tensor:
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"{name} must be a tensor of shape [N, h, w], got {shape}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= num_embeddings):
        raise ValueError(f"{name} must lie in [0, {num_embeddings}) for this VQ-VAE, "
                         f"got values in [{int(codes.min())}, {int(codes.max())}]")
    return codes.long()


def decode_codes(vqvae: torch.nn.Module, codes: Codes, batch_size: int = 64) -> torch.Tensor:
    """
    Slices of code grids (``[N, h, w]``, or ``(top, bottom)`` for a two-level VQ-VAE): float32 ``[N, 1, H, W]``
    clamped to [0, 1], on the VQ-VAE's device.

    Runs in eval mode without gradients.
    """
    quantizers = named_quantizers(vqvae)
    if "top" in quantizers:
        if not isinstance(codes, (tuple, list)) or len(codes) != 2:
            raise ValueError("a two-level VQ-VAE decodes (top, bottom) code grids, got "
                             f"{type(codes).__name__}")
        top = _check_level(codes[0], int(quantizers["top"].num_embeddings), "top codes")
        bottom = _check_level(codes[1], int(quantizers[""].num_embeddings), "bottom codes")
        if len(top) != len(bottom):
            raise ValueError(f"top and bottom codes hold {len(top)} and {len(bottom)} grids")
        batches = [(top[i:i + batch_size], bottom[i:i + batch_size]) for i in range(0, len(bottom), batch_size)]
    else:
        codes = _check_level(codes, int(quantizers[""].num_embeddings), "codes")
        batches = [codes[i:i + batch_size] for i in range(0, codes.shape[0], batch_size)]
    device = _device(vqvae)
    with evaluating(vqvae):
        parts = [vqvae.decode_samples(batch.to(device) if isinstance(batch, torch.Tensor)
                                      else tuple(level.to(device) for level in batch)) for batch in batches]
    return torch.cat(parts).float().clamp_(0.0, 1.0)


class TwoLevelPrior(nn.Module):
    """
    The two priors of a two-level VQ-VAE, used together: ``top`` models the top code grid, ``bottom`` the bottom
    grid given the whole top grid (its spatial conditioning). They are trained apart (``train_prior.yaml`` with
    ``level: top`` and ``level: bottom``) and composed here for sampling, completion and likelihood.
    """

    def __init__(self, top: GatedPixelCNN, bottom: GatedPixelCNN) -> None:
        super().__init__()
        if bottom.cond_num_embeddings is None:
            raise ValueError("the bottom prior of a two-level VQ-VAE must be conditioned on the top codes "
                             "(cond_num_embeddings)")
        if bottom.cond_num_embeddings != top.num_embeddings:
            raise ValueError(f"the bottom prior is conditioned on K={bottom.cond_num_embeddings} top codes, but "
                             f"the top prior models K={top.num_embeddings}")
        if (top.num_classes is None) != (bottom.num_classes is None):
            raise ValueError("the top and bottom priors must both be conditioned on the slice position, or neither")
        self.top, self.bottom = top, bottom

    @property
    def factor(self) -> int:
        """How many bottom positions a top position spans along each side."""
        return int(self.bottom.cond_factor)

    @property
    def num_classes(self) -> int | None:
        return self.bottom.num_classes

    def top_grid(self, grid: tuple[int, int]) -> tuple[int, int]:
        """The top grid of a bottom grid ``(h, w)``."""
        return grid[0] // self.factor, grid[1] // self.factor

    def top_region(self, region: torch.Tensor) -> torch.Tensor:
        """The top positions above any bottom position of ``region`` (bool ``[h, w]`` or ``[N, h, w]``)."""
        pooled = F.max_pool2d(region.float().reshape(-1, 1, *region.shape[-2:]), self.factor)
        return pooled.reshape(*region.shape[:-2], *pooled.shape[-2:]) > 0


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
        prior: GatedPixelCNN | TwoLevelPrior,
        num_samples: int,
        grid: tuple[int, int],
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
        progress: bool = False,
        cond: torch.Tensor | None = None,
        top_k: PerLevel = None,
        top_p: PerLevel = None,
    ) -> tuple[torch.Tensor, Codes]:
        """
        Draw new images: code grids from the prior (incremental sampler), decoded by the VQ-VAE.

        Args:
            vqvae: the first stage, which decodes the codes.
            prior: the Gated PixelCNN, or a :class:`TwoLevelPrior` (top codes first, then the bottom codes given
                them).
            num_samples: number of images ``N``.
            grid: ``(h, w)`` of the (bottom) code grids (the networks are convolutional: they cannot tell it).
            temperature: ``> 0``; logits are divided by it before the softmax.
            generator: random generator on the prior's device, for reproducible samples.
            labels: class labels ``[N]`` (or one ``int``) for a conditional prior.
            progress: show a progress bar over code rows.
            cond: conditioning grids ``[N, h / cond_factor, w / cond_factor]`` (or one) for a prior with
                spatial conditioning: the top codes of a two-level VQ-VAE, for its bottom prior alone (the images
                then decode both levels, and the codes returned are ``(top, bottom)``).
            top_k: draw each code from the k most likely only (``None``: all); one value for every level, or
                ``{"top": k, "bottom": k}`` per level of a two-level prior.
            top_p: draw each code from the smallest set of most likely codes holding p of the probability
                (``None``: all); per level as ``top_k``.

        Returns:
            ``(images, codes)``: float32 ``[N, 1, H, W]`` in [0, 1] and int64 ``[N, h, w]`` codes (``(top,
            bottom)`` for a two-level prior).
        """
        if isinstance(prior, TwoLevelPrior):
            top = sample_codes(prior.top, num_samples, prior.top_grid(tuple(grid)), temperature, labels, generator,
                               progress=progress, **_truncation(top_k, top_p, "top"))
            codes: Codes = (top, sample_codes(prior.bottom, num_samples, tuple(grid), temperature, labels, generator,
                                              progress=progress, cond=top, **_truncation(top_k, top_p, "bottom")))
        else:
            codes = sample_codes(prior, num_samples, tuple(grid), temperature, labels, generator, progress=progress,
                                 cond=cond, **_truncation(top_k, top_p, "bottom"))
            if cond is not None and "top" in named_quantizers(vqvae):  # a bottom prior given top codes
                codes = (cond.to(codes.device).long().expand(num_samples, *cond.shape[-2:]), codes)
        return decode_codes(vqvae, codes), codes

    def get_likelihood(
        self,
        inputs: torch.Tensor,
        vqvae: torch.nn.Module | None,
        prior: GatedPixelCNN | TwoLevelPrior,
        labels: torch.Tensor | int | None = None,
        quantized: bool = False,
        cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The prior's negative log-likelihood of each code, in bits, given the codes before it in raster order.

        Args:
            inputs: images ``[N, 1, H, W]`` in [0, 1], or code grids ``[N, h, w]`` (``(top, bottom)`` for a
                two-level prior) with ``quantized``.
            vqvae: the first stage that encodes the images (unused, may be ``None``, with ``quantized``).
            prior: the Gated PixelCNN (one teacher-forced forward pass, eval mode, no gradients).
            labels: class labels ``[N]`` (or one ``int``) for a conditional prior.
            quantized: ``inputs`` are code grids already.
            cond: conditioning grids for a prior with spatial conditioning, else ``None``.

        Returns:
            float32 ``[N, h, w]`` on the prior's device: ``-log2 p(code at (i, j) | codes before it)``. For a
            two-level prior, at the bottom grid: the bottom code's bits given the top grid, plus an even share of
            the bits of the top code above it, so that the map sums to the slice's total bits.
        """
        if not quantized:
            if vqvae is None:
                raise ValueError("a VQ-VAE is needed to encode images (or pass code grids with quantized=True)")
            inputs = encode_images(vqvae, inputs)
        if isinstance(prior, TwoLevelPrior):
            if not isinstance(inputs, (tuple, list)) or len(inputs) != 2:
                raise ValueError("a two-level prior scores (top, bottom) code grids")
            top = _bits(prior.top, inputs[0], labels)
            bottom = _bits(prior.bottom, inputs[1], labels, cond=inputs[0].to(_device(prior.bottom)).long())
            f = prior.factor  # each top code's bits, shared evenly by the f x f bottom positions under it
            return bottom + top.repeat_interleave(f, dim=1).repeat_interleave(f, dim=2) / (f * f)
        return _bits(prior, inputs, labels, cond)

    def complete(
        self,
        vqvae: torch.nn.Module,
        prior: GatedPixelCNN | TwoLevelPrior,
        codes: Codes,
        region: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
        progress: bool = False,
        top_k: PerLevel = None,
        top_p: PerLevel = None,
    ) -> tuple[torch.Tensor, Codes]:
        """
        Resample the codes in ``region`` and keep the others; decode the result.

        Args:
            codes: the codes to complete, ``[N, h, w]`` or ``(top, bottom)`` for a two-level prior.
            region: bool ``[h, w]`` or ``[N, h, w]`` at the (bottom) grid; for a two-level prior the top
                positions above it are resampled first (:meth:`TwoLevelPrior.top_region`), then the bottom ones
                given the completed top grid.
            top_k, top_p: truncation of sampling, per level as in :meth:`sample`.

        Returns:
            ``(images, codes)`` as :meth:`sample`.
        """
        if isinstance(prior, TwoLevelPrior):
            top = complete_codes(prior.top, codes[0], prior.top_region(region), temperature, labels, generator,
                                 progress=progress, **_truncation(top_k, top_p, "top"))
            completed: Codes = (top, complete_codes(prior.bottom, codes[1], region, temperature, labels, generator,
                                                    progress=progress, cond=top, **_truncation(top_k, top_p, "bottom")))
        else:
            completed = complete_codes(prior, codes, region, temperature, labels, generator, progress=progress,
                                       **_truncation(top_k, top_p, "bottom"))
        return decode_codes(vqvae, completed), completed


def _truncation(top_k: PerLevel, top_p: PerLevel, level: str) -> dict[str, Any]:
    """The truncation keyword arguments of one level's sampler."""
    return {"top_k": level_setting(top_k, level), "top_p": level_setting(top_p, level)}


def _bits(prior: GatedPixelCNN, codes: torch.Tensor, labels: torch.Tensor | int | None = None,
          cond: torch.Tensor | None = None) -> torch.Tensor:
    """``-log2 p(code | codes before it)`` of every position, one teacher-forced pass (eval mode, no gradients)."""
    codes = prior.check_codes(codes).to(_device(prior))
    with evaluating(prior):
        logits = prior(codes, labels=labels, cond=cond)
    return F.cross_entropy(logits.float(), codes, reduction="none") / math.log(2.0)


class PriorCodeBits(nn.Module):
    """
    A prior as a network of one tensor in and one out, for an MLflow model's signature: integer planes
    ``[N, C, h, w]`` -> the prior's negative log-likelihood of each code in bits, float32 ``[N, h, w]`` (given the
    codes before it in raster order, as :meth:`VQVAEPixelCNNInferer.get_likelihood` scores it).

    Plane 0 holds the codes; a prior conditioned on the slice position takes its label as the next plane (the
    label everywhere); a bottom prior conditioned on the top codes takes the top grid as the last plane, each top
    code repeated over the ``cond_factor x cond_factor`` codes under it.
    """

    def __init__(self, prior: GatedPixelCNN) -> None:
        super().__init__()
        self.prior = prior

    @staticmethod
    def planes(prior: GatedPixelCNN) -> int:
        """``C``: the number of planes the prior takes (codes, then its conditions)."""
        return 1 + (prior.num_classes is not None) + (prior.cond_num_embeddings is not None)

    def forward(self, planes: torch.Tensor) -> torch.Tensor:
        planes = planes.long()
        codes, at, labels, cond = planes[:, 0], 1, None, None
        if self.prior.num_classes is not None:
            labels, at = planes[:, at, 0, 0], at + 1
        if self.prior.cond_num_embeddings is not None:
            factor = int(self.prior.cond_factor)
            cond = planes[:, at, ::factor, ::factor]
        return _bits(self.prior, codes, labels, cond)
