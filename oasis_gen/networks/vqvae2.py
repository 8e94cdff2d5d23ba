"""A two-level VQ-VAE (VQ-VAE-2, Razavi et al. 2019) composed from MONAI's VQ-VAE blocks.

A coarse top grid of codes carries the global layout; the fine bottom grid, quantized with the upsampled top codes
at hand, carries the detail. The image decoder sees both levels, so a prior over the small top grid sees the whole
slice while reconstruction keeps the detail of the bottom grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Act
from monai.networks.layers.vector_quantizer import VectorQuantizer
from monai.networks.nets.vqvae import Decoder, Encoder
from torch import nn

from oasis_gen.networks.quantizer import IndexedEMAQuantizer

__all__ = ["TwoLevelVQVAE"]


def _quantizer(spatial_dims: int, num_embeddings: int, embedding_dim: int, commitment_cost: float, decay: float,
               epsilon: float, ddp_sync: bool) -> VectorQuantizer:
    return VectorQuantizer(IndexedEMAQuantizer(spatial_dims=spatial_dims, num_embeddings=num_embeddings,
                                               embedding_dim=embedding_dim, commitment_cost=commitment_cost,
                                               decay=decay, epsilon=epsilon, ddp_sync=ddp_sync))


class TwoLevelVQVAE(nn.Module):
    """
    Two-level VQ-VAE with MONAI's VQVAE API, each level's value in a ``(top, bottom)`` tuple.

    image -> bottom encoder -> features on the bottom grid (``image_size / 2**len(channels)``) -> top encoder
    (``top_downsamplings`` more stride-2 levels) -> ``top_z`` -> top codebook -> ``top_q`` -> top decoder (back to
    the bottom grid) -> ``top_up``; ``bottom_z`` = 1x1 projection of concat(features, ``top_up``) -> bottom codebook
    -> ``bottom_q``; image decoder(concat(``bottom_q``, ``top_up``)) -> reconstruction.

    Both codebooks are MONAI's EMA quantizers gathering their statistics by code index
    (:class:`~oasis_gen.networks.quantizer.IndexedEMAQuantizer`; ``ddp_sync`` all-reduces them under DDP, as in
    the single-level VQVAE). ``forward`` returns ``(reconstruction, quantization_loss)`` like MONAI's VQVAE, the loss
    being the sum of the two levels' commitment losses and, in training with ``top_image_weight`` > 0, the top
    image term (below).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels.
        out_channels: reconstruction channels.
        channels: width of each downsampling level of the bottom encoder (and, reversed, of the image decoder).
        num_res_layers: residual units per level.
        num_res_channels: residual width of each bottom level.
        top_downsamplings: stride-2 levels from the bottom grid to the top grid (at least 1).
        num_embeddings: bottom codebook size.
        top_num_embeddings: top codebook size.
        embedding_dim: size of every code vector, both levels.
        commitment_cost, decay, epsilon, ddp_sync: as MONAI's EMAQuantizer (both levels).
        downsample_parameters: (stride, kernel, dilation, padding) of every downsampling.
        upsample_parameters: (stride, kernel, dilation, padding, output_padding) of every upsampling.
        act: activation; output_act: activation of the reconstruction (None: none).
        top_only_rate: in training, the share of images decoded from their top codes alone (their bottom codes
            zeroed at the decoder's input), which pushes the coarse image into the top grid. Unreliable so far: on
            the demo its top-only decoding trained in 1 of 3 runs; in the others the decoder learnt to return
            black for a zeroed bottom input.
        top_negative_slope: > 0: the top encoder and decoder use LeakyReLU with this slope instead of ``act``. With
            ReLU a top encoder layer died (every unit negative for every image) in both demo runs of the former
            default and in 2 of 4 runs with top-only decoding; the top codes are then one map of position for
            every slice, which no gradient revives and which gives the top prior nothing to draw.
        top_image_weight: > 0: a 1x1 convolution (``top_image_head``) reads the image, averaged over each bottom
            cell, from the decoded top codes alone, and in training its L1 error times this weight is added to the
            returned loss (``last_terms["top_image_loss"]`` keeps it unweighted). Without it the bottom level can
            carry the whole image and the top encoder's output drifts to a constant (top codebook perplexity 1) on
            real scans; the term gives the top level a job of its own, the coarse layout. 0: no head (checkpoints
            saved before it existed).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int],
        num_res_layers: int,
        num_res_channels: Sequence[int],
        top_downsamplings: int,
        num_embeddings: int,
        top_num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        ddp_sync: bool = True,
        downsample_parameters: tuple[int, int, int, int] = (2, 4, 1, 1),
        upsample_parameters: tuple[int, int, int, int, int] = (2, 4, 1, 1, 0),
        act: tuple | str | None = Act.RELU,
        output_act: tuple | str | None = None,
        top_only_rate: float = 0.0,
        top_negative_slope: float = 0.0,
        top_image_weight: float = 0.0,
    ):
        super().__init__()
        if int(top_downsamplings) < 1:
            raise ValueError(f"top_downsamplings must be at least 1, not {top_downsamplings}")
        if not 0.0 <= float(top_only_rate) < 1.0:
            raise ValueError(f"top_only_rate must be in [0, 1), not {top_only_rate}")
        if float(top_image_weight) < 0:
            raise ValueError(f"top_image_weight must be 0 or more, not {top_image_weight}")
        levels, top_levels = len(channels), int(top_downsamplings)
        width, res_width = int(channels[-1]), int(num_res_channels[-1])
        self.spatial_dims = spatial_dims
        self.embedding_dim = int(embedding_dim)
        self.top_downsamplings = top_levels
        self.top_only_rate = float(top_only_rate)
        self.top_image_weight = float(top_image_weight)
        self.last_terms: dict[str, torch.Tensor] = {}
        common = {"spatial_dims": spatial_dims, "num_res_layers": num_res_layers, "dropout": 0.0, "act": act}
        self.bottom_encoder = Encoder(in_channels=in_channels, out_channels=width, channels=tuple(channels),
                                      num_res_channels=tuple(num_res_channels),
                                      downsample_parameters=(tuple(downsample_parameters),) * levels, **common)
        top_widths, top_res = (width,) * top_levels, (res_width,) * top_levels
        top_common = {**common, "act": (Act.LEAKYRELU, {"negative_slope": float(top_negative_slope)})
                      if top_negative_slope else act}
        self.top_encoder = Encoder(in_channels=width, out_channels=embedding_dim, channels=top_widths,
                                   num_res_channels=top_res,
                                   downsample_parameters=(tuple(downsample_parameters),) * top_levels, **top_common)
        self.top_decoder = Decoder(in_channels=embedding_dim, out_channels=embedding_dim, channels=top_widths,
                                   num_res_channels=top_res, output_act=None,
                                   upsample_parameters=(tuple(upsample_parameters),) * top_levels, **top_common)
        self.bottom_projection = Convolution(spatial_dims, width + embedding_dim, embedding_dim, kernel_size=1,
                                             conv_only=True)
        self.decoder = Decoder(in_channels=2 * embedding_dim, out_channels=out_channels, channels=tuple(channels),
                               num_res_channels=tuple(num_res_channels), output_act=output_act,
                               upsample_parameters=(tuple(upsample_parameters),) * levels, **common)
        quantizer = {"spatial_dims": spatial_dims, "embedding_dim": embedding_dim, "commitment_cost": commitment_cost,
                     "decay": decay, "epsilon": epsilon, "ddp_sync": ddp_sync}
        self.top_quantizer = _quantizer(num_embeddings=top_num_embeddings, **quantizer)
        self.bottom_quantizer = _quantizer(num_embeddings=num_embeddings, **quantizer)
        self.top_image_head = Convolution(spatial_dims, embedding_dim, out_channels, kernel_size=1, conv_only=True
                                          ) if self.top_image_weight > 0 else None

    @property
    def quantizers(self) -> tuple[VectorQuantizer, VectorQuantizer]:
        """The (top, bottom) MONAI VectorQuantizer modules (each wraps an IndexedEMAQuantizer as ``.quantizer``)."""
        return self.top_quantizer, self.bottom_quantizer

    def _nearest(self, quantizer: VectorQuantizer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes of ``z`` and their vectors (straight-through), without touching the EMA statistics."""
        codes = quantizer.quantizer.nearest(z)[2]
        vectors = quantizer.embed(codes)
        return codes, z + (vectors - z).detach()

    def _bottom_z(self, features: torch.Tensor, top_up: torch.Tensor) -> torch.Tensor:
        return self.bottom_projection(torch.cat([features, top_up], dim=1))

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The two quantizers' inputs ``(top_z, bottom_z)``.

        ``bottom_z`` depends on the quantized top: it is computed from the top codes nearest to ``top_z`` (a lookup
        that leaves the EMA codebook as it is; :meth:`quantize` then updates it in training mode).
        """
        features = self.bottom_encoder(images)
        top_z = self.top_encoder(features)
        _, top_q = self._nearest(self.top_quantizer, top_z)
        return top_z, self._bottom_z(features, self.top_decoder(top_q))

    def quantize(self, encodings: tuple[torch.Tensor, torch.Tensor]
                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Quantize ``(top_z, bottom_z)`` to ``((top_q, bottom_q), loss)``, loss summed over the levels."""
        top_z, bottom_z = encodings
        top_loss, top_q = self.top_quantizer(top_z)
        bottom_loss, bottom_q = self.bottom_quantizer(bottom_z)
        return (top_q, bottom_q), top_loss + bottom_loss

    def _decode(self, bottom_q: torch.Tensor, top_up: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([bottom_q, top_up], dim=1))

    def decode(self, quantizations: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Image from the quantized ``(top_q, bottom_q)``."""
        top_q, bottom_q = quantizations
        return self._decode(bottom_q, self.top_decoder(top_q))

    def index_quantize(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Code indices ``(top [B, h, w], bottom [B, H, W])`` of images (int64; EMA statistics untouched)."""
        features = self.bottom_encoder(images)
        top_codes, top_q = self._nearest(self.top_quantizer, self.top_encoder(features))
        bottom_codes, _ = self._nearest(self.bottom_quantizer, self._bottom_z(features, self.top_decoder(top_q)))
        return top_codes, bottom_codes

    def decode_samples(self, embedding_indices: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Image from code indices ``(top [B, h, w], bottom [B, H, W])``."""
        top_codes, bottom_codes = embedding_indices
        return self.decode((self.top_quantizer.embed(top_codes), self.bottom_quantizer.embed(bottom_codes)))

    def decode_top_only(self, top_codes: torch.Tensor) -> torch.Tensor:
        """Image from top code indices ``[B, h, w]`` alone, the bottom input zeroed as ``top_only_rate`` trains it."""
        top_up = self.top_decoder(self.top_quantizer.embed(top_codes))
        zeros = top_up.new_zeros((top_up.shape[0], self.embedding_dim, *top_up.shape[2:]))
        return self._decode(zeros, top_up)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        ``(reconstruction, quantization_loss)``, as MONAI's VQVAE returns them.

        In training mode a ``top_only_rate`` share of the images is decoded from the top level alone, and the top
        image term (``top_image_weight``) is added to the loss.
        """
        features = self.bottom_encoder(images)
        top_loss, top_q = self.top_quantizer(self.top_encoder(features))
        top_up = self.top_decoder(top_q)  # computed once: it conditions the bottom codes and feeds the decoder
        bottom_loss, bottom_q = self.bottom_quantizer(self._bottom_z(features, top_up))
        loss = top_loss + bottom_loss
        if self.training and self.top_image_head is not None:
            top_image_loss = self.top_image_loss(images, top_up)
            self.last_terms = {"top_image_loss": top_image_loss.detach()}
            loss = loss + self.top_image_weight * top_image_loss
        if self.training and self.top_only_rate > 0:
            shape = (bottom_q.shape[0],) + (1,) * (bottom_q.dim() - 1)
            keep = torch.rand(shape, device=bottom_q.device) >= self.top_only_rate
            bottom_q = bottom_q * keep.to(bottom_q.dtype)  # dropped images are decoded from the top level alone
        return self._decode(bottom_q, top_up), loss

    def top_image_loss(self, images: torch.Tensor, top_up: torch.Tensor) -> torch.Tensor:
        """L1 error of the image read from the decoded top codes ``top_up``, against the images averaged per cell."""
        if self.top_image_head is None:
            raise RuntimeError("this VQ-VAE has no top image head (top_image_weight 0)")
        coarse = F.interpolate(images.float(), size=top_up.shape[2:], mode="area")
        return F.l1_loss(self.top_image_head(top_up).float(), coarse)
