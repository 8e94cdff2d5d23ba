"""How a Gated PixelCNN reads a coarser code grid it is conditioned on (the top codes, for the bottom prior of a
two-level VQ-VAE).

The grid is fully given, so it is outside the raster order: its features may mix any of it (the stacks here are
non-causal). They come at the resolution of the modelled codes, ``factor`` times finer, and every layer of the
network adds them as a per-position bias of its gates (:meth:`GatedPixelCNNLayer.cond_bias
<oasis_gen.networks.pixelcnn_layers.GatedPixelCNNLayer.cond_bias>`). Two stacks:

* :class:`ConditioningStack` (``cond_layers >= 1``): dilated residual blocks at the grid's own resolution, then
  a learned enlargement;
* the local stack of earlier priors (``cond_layers = 0``, :func:`local_stack` and :func:`local_features`): the
  embedded grid enlarged (nearest) and two 3x3 convolutions at the modelled grid's resolution. Its embedding and
  convolutions stay attributes of the network itself (``cond_embedding``, ``cond_net``), so that the checkpoints
  of those priors load as before.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConditioningStack", "local_features", "local_stack"]


class ConditioningStack(nn.Module):
    """
    Features of a fully given conditioning code grid (the top codes of a two-level VQ-VAE) for every position of a
    ``factor`` times finer grid: embedding plus coordinate channels, ``num_blocks`` non-causal residual blocks
    (ReLU, dilated 3x3, ReLU, 1x1) at the grid's own resolution with dilations 1, 2, 4, 1, 2, 4, ..., and a
    transposed convolution that gives each of the ``factor x factor`` fine positions under a code its own features.

    Args:
        num_embeddings: codes of the conditioning grid.
        channels: feature channels.
        num_blocks: residual blocks; each widens the reach by its dilation (3 blocks: 7 codes to each side).
        factor: how many fine positions one conditioning code spans along each side.
    """

    def __init__(self, num_embeddings: int, channels: int, num_blocks: int, factor: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, channels)
        self.coordinates = nn.Conv2d(2, channels, kernel_size=1)
        self.dilations = [2 ** (i % 3) for i in range(num_blocks)]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=d, dilation=d), nn.ReLU(),
                          nn.Conv2d(channels, channels, 1))
            for d in self.dilations
        )
        self.enlarge = nn.ConvTranspose2d(channels, channels, kernel_size=factor, stride=factor)

    @property
    def reach(self) -> int:
        """How many conditioning codes to each side a feature sees."""
        return sum(self.dilations)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """Integer grids ``[B, h, w]`` -> features ``[B, channels, h * factor, w * factor]``."""
        features = self.embedding(cond).movedim(-1, 1)
        height, width = cond.shape[-2:]
        rows = torch.linspace(-1.0, 1.0, height, device=features.device, dtype=features.dtype)
        cols = torch.linspace(-1.0, 1.0, width, device=features.device, dtype=features.dtype)
        grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))[None]
        features = features + self.coordinates(grid)
        for block in self.blocks:
            features = features + block(features)
        return self.enlarge(F.relu(features))


def local_stack(num_embeddings: int, channels: int) -> tuple[nn.Embedding, nn.Sequential]:
    """The embedding and the two 3x3 convolutions of the local conditioning stack (``cond_layers = 0``)."""
    embedding = nn.Embedding(num_embeddings, channels)
    # non-causal: the conditioning grid is fully given, so each position may see its neighbours
    net = nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1),
    )
    return embedding, net


def local_features(embedding: nn.Embedding, net: nn.Sequential, cond: torch.Tensor, factor: int) -> torch.Tensor:
    """Features of the local stack (:func:`local_stack`): integer grids ``[B, h, w]`` -> ``[B, channels, h * factor,
    w * factor]``, the embedded grid enlarged (nearest) and run through ``net``."""
    embedded = embedding(cond).movedim(-1, 1)
    return net(F.interpolate(embedded, scale_factor=factor, mode="nearest"))
