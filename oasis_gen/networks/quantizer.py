"""MONAI's EMA vector quantizer with its training statistics gathered by code index instead of a one-hot matrix.

MONAI's ``EMAQuantizer`` builds a one-hot matrix ``[positions, K]`` at every step (an int64 tensor of 16 MiB for a
batch of eight 32x32 grids and K=256) and sums it and multiplies it with the inputs to update its moving averages.
On a CPU the fresh allocation and filling of that matrix took about a third of the whole VQ-VAE training step
(``benchmarks/quantizer_speed.py``). The same sums come from ``torch.bincount`` and ``index_add_`` on the code
indices, and the nearest code from one ``addmm`` (the squared norm every code shares is left out).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.layers.vector_quantizer import EMAQuantizer

__all__ = ["IndexedEMAQuantizer", "quantizer_copy"]


class IndexedEMAQuantizer(EMAQuantizer):
    """
    ``EMAQuantizer`` (same arguments, parameters, buffers and state-dict keys) whose forward pass finds codes and
    updates the codebook's moving averages from code indices, without MONAI's one-hot matrix. ``quantize`` keeps
    MONAI's contract (its second value is the one-hot matrix) for callers outside this project; :meth:`nearest`
    is the cheap search.
    """

    def nearest(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        The nearest code of every input vector.

        Args:
            inputs: encoder outputs ``[B, D, H, W]`` (or ``[B, D, H, W, Z]``).

        Returns:
            The inputs flattened to ``[positions, D]`` (float32), their codes ``[positions]`` and the codes shaped
            ``[B, H, W]`` (or ``[B, H, W, Z]``).
        """
        with torch.autocast("cuda", enabled=False):
            grid = list(inputs.shape)
            del grid[1]
            flat_input = inputs.float().permute(self.flatten_permutation).contiguous().view(-1, self.embedding_dim)
            weight = self.embedding.weight
            # |x - e|^2 less |x|^2, which every code shares: the same nearest code from one matrix product
            distances = torch.addmm((weight**2).sum(dim=1), flat_input, weight.t(), alpha=-2.0)
            flat_codes = distances.argmin(dim=1)
            return flat_input, flat_codes, flat_codes.view(grid)

    def quantize(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MONAI's ``quantize``: flattened inputs, their one-hot codes ``[positions, K]`` and the codes."""
        flat_input, flat_codes, codes = self.nearest(inputs)
        return flat_input, F.one_hot(flat_codes, self.num_embeddings).float(), codes

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As ``EMAQuantizer.forward``: straight-through quantized inputs, commitment loss, codes."""
        flat_input, flat_codes, codes = self.nearest(inputs)
        quantized = self.embed(codes)
        if self.training:
            with torch.no_grad():
                encodings_sum = torch.bincount(flat_codes, minlength=self.num_embeddings).to(flat_input.dtype)
                dw = torch.zeros_like(self.ema_w).index_add_(0, flat_codes, flat_input)
                if self.ddp_sync:
                    self.distributed_synchronization(encodings_sum, dw)
                self.ema_cluster_size.data.mul_(self.decay).add_(encodings_sum, alpha=1 - self.decay)
                # Laplace smoothing of the cluster sizes, as MONAI's
                n = self.ema_cluster_size.sum()
                weights = (self.ema_cluster_size + self.epsilon) / (n + self.num_embeddings * self.epsilon) * n
                self.ema_w.data.mul_(self.decay).add_(dw, alpha=1 - self.decay)
                self.embedding.weight.data.copy_(self.ema_w / weights.unsqueeze(1))
        loss = self.commitment_cost * F.mse_loss(quantized.detach(), inputs)
        quantized = inputs + (quantized - inputs).detach()  # straight-through estimator
        return quantized, loss, codes


def quantizer_copy(quantizer: EMAQuantizer, kind: type[EMAQuantizer] = IndexedEMAQuantizer) -> EMAQuantizer:
    """A quantizer of class ``kind`` (default :class:`IndexedEMAQuantizer`) with ``quantizer``'s settings and state
    (codebook and moving averages); ``kind=EMAQuantizer`` gives MONAI's back."""
    with torch.random.fork_rng(devices=[]):  # its throw-away initial codebook leaves the caller's seed sequence alone
        copy = kind(spatial_dims=quantizer.spatial_dims, num_embeddings=quantizer.num_embeddings,
                    embedding_dim=quantizer.embedding_dim, commitment_cost=quantizer.commitment_cost,
                    decay=quantizer.decay, epsilon=quantizer.epsilon, ddp_sync=quantizer.ddp_sync)
    copy.load_state_dict(quantizer.state_dict())
    return copy.to(quantizer.embedding.weight.device)
