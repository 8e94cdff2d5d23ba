"""A published-style VQ-VAE baseline, written here from its description, trained by a plain loop for a wall time.

The reference point for ``reconstruction_ixi.py``: the classic small VQ-VAE (van den Oord et al. 2017, sized down to
64 channels) that tutorials train on slices of this size.

- encoder: two 4x4 stride-2 convolutions (64 channels, each followed by a ReLU), then two residual blocks at the code
  resolution (128x128 in, 32x32 codes out);
- quantizer: K=512 codes of D=64, initialised uniformly in [-1/K, 1/K], straight-through gradient, codebook loss
  ``|sg[z] - e|^2`` plus 0.25 times the commitment loss ``|z - sg[e]|^2``;
- decoder: the mirror, two residual blocks then two 4x4 stride-2 transposed convolutions;
- MSE reconstruction loss, Adam at 2e-3, batch 16, constant learning rate.

A residual block is ``x + conv1x1(relu(bn(conv3x3(x))))``. The description does not fix the block's inner width;
this module uses 32 (``res_channels``, the width DeepMind's reference model gives its residual blocks), which puts
the model at 0.25 M parameters, near the ~0.26 M the description states (an inner width of 64 would make it 0.33 M).

This is deliberately not the project's code path (the bundle is the only trainer of the project's models): it is
the yardstick the project's VQ-VAE is held against, trained on the same slices for the same wall time. A module,
not a script: reconstruction_ixi.py trains it and reconstruction_levers.py scores with its ``evaluate``; it writes
no result file.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.metrics import PSNRMetric, SSIMMetric
from torch import nn

from oasis_gen.data.transforms import decode_intensity


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(bn(conv3x3(x))))``, keeping the channel count."""

    def __init__(self, channels: int, inner: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, inner, 3, padding=1),
            nn.BatchNorm2d(inner),
            nn.ReLU(),
            nn.Conv2d(inner, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Quantizer(nn.Module):
    """Nearest-code quantisation with a straight-through gradient and the codebook and commitment losses."""

    def __init__(self, num_embeddings: int = 512, embedding_dim: int = 64, commitment_cost: float = 0.25):
        super().__init__()
        self.commitment_cost = float(commitment_cost)
        self.codebook = nn.Embedding(num_embeddings, embedding_dim)
        bound = 1.0 / num_embeddings
        nn.init.uniform_(self.codebook.weight, -bound, bound)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise (B, D, H, W) encodings; return the quantised tensor, the loss and the (B, H, W) indices."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        weight = self.codebook.weight
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ weight.t() + weight.pow(2).sum(1)
        indices = distances.argmin(dim=1)
        quantized = self.codebook(indices).view(b, h, w, d).permute(0, 3, 1, 2)
        codebook_loss = F.mse_loss(quantized, z.detach())
        commitment_loss = F.mse_loss(z, quantized.detach())
        loss = codebook_loss + self.commitment_cost * commitment_loss
        # straight-through: the decoder's gradient flows to the encoder as if quantisation were the identity
        quantized = z + (quantized - z).detach()
        return quantized, loss, indices.view(b, h, w)


class BaselineVQVAE(nn.Module):
    """The baseline VQ-VAE: returns ``(reconstruction, quantisation loss)`` like MONAI's VQVAE."""

    def __init__(self, in_channels: int = 1, channels: int = 64, res_channels: int = 32, num_res_blocks: int = 2,
                 num_embeddings: int = 512, embedding_dim: int = 64, commitment_cost: float = 0.25):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            *[ResidualBlock(channels, res_channels) for _ in range(num_res_blocks)],
            # only when D differs from the width (the quick mode's tiny model): at 64 = 64 it is the identity
            nn.Conv2d(channels, embedding_dim, 1) if embedding_dim != channels else nn.Identity(),
        )
        self.quantizer = Quantizer(num_embeddings, embedding_dim, commitment_cost)
        self.decoder = nn.Sequential(
            nn.Conv2d(embedding_dim, channels, 1) if embedding_dim != channels else nn.Identity(),
            *[ResidualBlock(channels, res_channels) for _ in range(num_res_blocks)],
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, in_channels, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous encodings (B, D, H/4, W/4)."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        quantized, loss, _ = self.quantizer(self.encode(x))
        return self.decoder(quantized), loss


def parameter_count(network: nn.Module) -> int:
    """Trainable parameters of a network."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


@dataclass
class TrainResult:
    """What a timed training run reached."""

    steps: int
    epochs: float
    seconds: float
    images: int
    last_loss: float

    @property
    def images_per_s(self) -> float:
        """Training images seen per second of the budget."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_for(network: BaselineVQVAE, images: torch.Tensor, seconds: float, batch_size: int = 16,
              learning_rate: float = 2e-3, seed: int = 0) -> TrainResult:
    """Train on encoded (N, 1, H, W) images (uint8 as cached) with MSE + VQ loss until seconds of wall time pass."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    network.train()
    count = images.shape[0]
    steps_per_epoch = math.ceil(count / batch_size)
    steps = seen = 0
    loss_value = math.nan
    start = time.perf_counter()
    while True:
        order = torch.randperm(count, generator=generator)
        for first in range(0, count, batch_size):
            batch = decode_intensity(images[order[first:first + batch_size]])
            reconstruction, vq_loss = network(batch)
            loss = F.mse_loss(reconstruction, batch) + vq_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
            seen += batch.shape[0]
            loss_value = float(loss.detach())
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                return TrainResult(steps=steps, epochs=steps / steps_per_epoch, seconds=elapsed, images=seen,
                                   last_loss=loss_value)


@torch.no_grad()
def evaluate(network: nn.Module, images: torch.Tensor, batch_size: int = 32) -> dict[str, list[float]]:
    """Per-image SSIM and PSNR of clamped reconstructions, with the metric settings evaluate.yaml uses."""
    network.eval()
    ssim_metric = SSIMMetric(spatial_dims=2, data_range=1.0)
    psnr_metric = PSNRMetric(max_val=1.0)
    ssim: list[float] = []
    psnr: list[float] = []
    for first in range(0, images.shape[0], batch_size):
        batch = decode_intensity(images[first:first + batch_size])
        reconstruction, _ = network(batch)
        reconstruction = reconstruction.float().clamp(0.0, 1.0)  # as ReconstructionInferer does
        # each call returns one value per image and channel; a slice has one channel
        ssim += ssim_metric(reconstruction, batch).reshape(batch.shape[0], -1).mean(dim=1).tolist()
        psnr += psnr_metric(reconstruction, batch).reshape(batch.shape[0], -1).mean(dim=1).tolist()
    return {"ssim": ssim, "psnr": psnr}
