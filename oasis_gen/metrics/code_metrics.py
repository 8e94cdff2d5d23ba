"""How well a prior predicts held-out codes: MONAI metrics that plug into ignite handlers
(``IgniteMetricHandler``), e.g. ``metric_fn: {_target_: oasis_gen.metrics.CodeNLL}`` in a bundle config."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CumulativeIterationMetric
from monai.utils import convert_to_tensor

__all__ = ["CodeAccuracy", "CodeNLL"]


class _CodeMetric(CumulativeIterationMetric):
    """Base of the per-code metrics of a prior: logits ``[B, K, H, W]`` against codes ``[B, H, W]``.

    Accepts batch-first tensors or lists of channel-first items (what MONAI evaluators pass after decollating:
    logits ``[K, H, W]``, codes ``[H, W]``); codes may carry a channel dimension of 1. Each image adds its mean
    over its grid to the buffer (``[N, 1]``, the per-image details); :meth:`aggregate` averages them. Every grid
    of a VQ-VAE has the same size, so that is the mean over all codes seen.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the true codes (y)")
        logits, codes = convert_to_tensor(y_pred, track_meta=False).float(), convert_to_tensor(y, track_meta=False)
        if codes.dim() == logits.dim():  # [B, 1, H, W]
            codes = codes.squeeze(1)
        if logits.dim() != 4 or codes.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"{type(self).__name__} takes logits [B, K, H, W] and codes [B, H, W], got "
                             f"{tuple(logits.shape)} and {tuple(codes.shape)}")
        return self.per_code(logits, codes.long().to(logits.device)).flatten(1).mean(dim=1, keepdim=True)

    def per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The metric at every position, ``[B, H, W]``."""
        raise NotImplementedError

    def aggregate(self) -> torch.Tensor:
        """The mean over every image (hence every code) seen since the last reset, as a 0-d tensor."""
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            raise ValueError(f"{type(self).__name__} has seen no codes to aggregate")
        return buffer.float().mean()


class CodeNLL(_CodeMetric):
    """Negative log-likelihood of the true codes under the prior, in bits per code (cross-entropy / ln 2).

    A uniform prior over K codes scores ``log2(K)``; lower is better.
    """

    def per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, codes, reduction="none") / math.log(2.0)


class CodeAccuracy(_CodeMetric):
    """Fraction of codes the prior ranks first (top-1 accuracy of the argmax of its logits); higher is better."""

    def per_code(self, logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return (logits.argmax(dim=1) == codes).float()
