"""Drawing one code per position from a PixelCNN's logits, optionally truncated to the most likely codes.

:func:`truncate_logits` keeps the ``top_k`` most likely codes and/or the nucleus holding ``top_p`` of the
probability; :func:`draw_codes` samples from ``softmax(logits / temperature)`` over what is kept; both samplers of
:mod:`oasis_gen.inferers.pixelcnn_sampling` draw through it, so they draw the same codes from the same generator.
:func:`check_truncation` validates the two settings.
"""

from __future__ import annotations

import math

import torch

from oasis_gen.utils.config_values import check_positive_int

__all__ = ["check_truncation", "draw_codes", "truncate_logits"]


def truncate_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """
    ``logits`` ``[N, K]`` with every code outside the kept set at ``-inf``: the ``top_k`` most likely codes of
    each row, then of those the smallest set of most likely codes that holds at least ``top_p`` of the
    probability (nucleus sampling). ``None`` keeps all; the most likely code is always kept.
    """
    logits = logits.float()
    if top_k is not None and top_k < logits.shape[-1]:
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~kept, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # a code is kept while the mass of the codes more likely than it is still short of top_p
        dropped_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        dropped = torch.zeros_like(dropped_sorted).scatter_(-1, order, dropped_sorted)
        logits = logits.masked_fill(dropped, -math.inf)
    return logits


def draw_codes(logits: torch.Tensor, temperature: float, generator: torch.Generator | None,
               top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """One code per row of ``logits`` ``[N, K]`` from ``softmax(logits / temperature)``, truncated to ``top_k`` /
    ``top_p`` (:func:`truncate_logits`)."""
    probs = torch.softmax(truncate_logits(logits.float() / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def check_truncation(top_k: int | None = None, top_p: float | None = None) -> tuple[int | None, float | None]:
    """Validate the truncation of sampling: ``top_k`` an integer >= 1 or None, ``top_p`` in (0, 1] or None."""
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
        top_p = float(top_p)
    return top_k, top_p
