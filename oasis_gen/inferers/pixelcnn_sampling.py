"""Sampling code grids from a :class:`~oasis_gen.networks.pixelcnn.GatedPixelCNN` prior.

A PixelCNN factorises ``p(codes)`` over raster order (row by row, left to right), so a grid is sampled one
position at a time, each from ``softmax(logits / temperature)`` given everything sampled before it (optionally
truncated to the most likely codes: :mod:`oasis_gen.inferers.pixelcnn_truncation`).

* :func:`sample_codes_naive` is the reference: for every position it runs the whole network on the whole grid.
  Cost: ``H * W`` full forward passes.
* :func:`sample_codes` is the fast sampler. Built on
  :class:`~oasis_gen.inferers.pixelcnn_incremental.IncrementalState`, it computes the vertical stack once per
  row (from cached rows above) and the horizontal stack once per position (from cached left neighbours), which
  is about the cost of a *single* forward pass plus Python overhead per position. Its logits equal the reference
  ones up to float rounding, so both samplers draw the same codes from the same :class:`torch.Generator`.

Completion (``initial`` + ``region``, or :func:`complete_codes`) resamples only the positions in ``region``
and keeps the others exactly. Each resampled position is conditioned on everything *before* it in raster order
-- the rows above and the codes to its left, whether given or resampled -- which is the PixelCNN's causal
context: codes below or to the right of a position (even if given) cannot inform it.

Images come in and go out through :class:`oasis_gen.inferers.pixelcnn_inferer.VQVAEPixelCNNInferer`.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from oasis_gen.inferers.pixelcnn_incremental import IncrementalState, check_grid, evaluating
from oasis_gen.inferers.pixelcnn_truncation import check_truncation, draw_codes
from oasis_gen.networks.pixelcnn import GatedPixelCNN
from oasis_gen.utils.config_values import check_positive_int

__all__ = ["complete_codes", "sample_codes", "sample_codes_naive"]


def sample_codes_naive(
    model: GatedPixelCNN,
    num_samples: int,
    grid: tuple[int, int],
    temperature: float = 1.0,
    labels: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    initial: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    cond: torch.Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Reference sampler: for each position in raster order, run the whole network on the whole grid and sample
    that position. Slow (``H * W`` forward passes); use :func:`sample_codes`, which draws the same codes.

    Args: as :func:`sample_codes` (without ``progress``).

    Returns:
        int64 code grids ``[num_samples, H, W]`` on the model's device.
    """
    codes, region, active = _prepare(model, num_samples, grid, temperature, initial, region)
    top_k, top_p = check_truncation(top_k, top_p)
    with evaluating(model):
        labels = model.check_labels(labels, num_samples)
        cond = model.check_cond(cond, num_samples, (codes.shape[1], codes.shape[2]))
        for i, j in active:
            logits = model(codes, labels, cond)[:, :, i, j]
            sampled = draw_codes(logits, temperature, generator, top_k, top_p)
            codes[:, i, j] = torch.where(region[:, i, j], sampled, codes[:, i, j])
    return codes


def sample_codes(
    model: GatedPixelCNN,
    num_samples: int,
    grid: tuple[int, int],
    temperature: float = 1.0,
    labels: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    initial: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
    progress: bool = False,
    cond: torch.Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Sample code grids from the prior with the incremental sampler (about the cost of one forward pass per
    grid).

    Args:
        model: the prior; put in eval mode for the call (then restored) and run without gradients.
        num_samples: number of grids ``N``.
        grid: ``(height, width)`` of the code grids (the VQ-VAE latent shape).
        temperature: ``> 0``; logits are divided by it before the softmax (``< 1`` sharper, ``> 1`` more
            diverse).
        labels: class labels ``[N]`` (or one ``int`` for all) for a conditional model, else ``None``.
        generator: random generator on the model's device, for reproducible samples.
        initial: for completion, the given code grids ``[N, H, W]``; requires ``region``.
        region: for completion, a bool mask ``[H, W]`` or ``[N, H, W]`` of the positions to resample; requires
            ``initial``. Positions outside it keep ``initial`` exactly. Positions inside are sampled in raster
            order, each conditioned on everything before it (rows above, codes to the left): the PixelCNN's
            causal context does not include what lies below or to the right, even where it is given.
        progress: show a tqdm progress bar over rows.
        cond: for a prior with spatial conditioning, the conditioning grids ``[N, H / cond_factor,
            W / cond_factor]`` (or one ``[h, w]`` for all), seen at every position; else ``None``.
        top_k: draw each code from the ``top_k`` most likely codes only (``None``: all).
        top_p: draw each code from the smallest set of most likely codes holding ``top_p`` of the probability
            (nucleus sampling; ``None``: all). Truncation trades diversity for typical codes.

    Returns:
        int64 code grids ``[num_samples, H, W]`` on the model's device.
    """
    codes, region, active = _prepare(model, num_samples, grid, temperature, initial, region)
    top_k, top_p = check_truncation(top_k, top_p)
    if not active:
        return codes
    last_row = active[-1][0]
    wanted = [[False] * codes.shape[2] for _ in range(last_row + 1)]
    for i, j in active:
        wanted[i][j] = True
    with evaluating(model):
        state = IncrementalState(model, num_samples, (codes.shape[1], codes.shape[2]), labels, cond)
        for i in tqdm(range(last_row + 1), desc="sampling codes", unit="row", disable=not progress):
            for j in range(codes.shape[2]):
                if wanted[i][j]:
                    sampled = draw_codes(state.step(), temperature, generator, top_k, top_p)
                    codes[:, i, j] = torch.where(region[:, i, j], sampled, codes[:, i, j])
                state.push(codes[:, i, j])
    return codes


def complete_codes(
    model: GatedPixelCNN,
    codes: torch.Tensor,
    region: torch.Tensor,
    temperature: float = 1.0,
    labels: torch.Tensor | int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    cond: torch.Tensor | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """
    Resample the positions of ``codes`` ``[N, H, W]`` in ``region`` (bool ``[H, W]`` or ``[N, H, W]``) and
    keep the others exactly; each resampled position is conditioned on what lies above it and to its left (see
    :func:`sample_codes`). Returns new int64 grids; ``codes`` is not modified.
    """
    if not isinstance(codes, torch.Tensor) or codes.dim() != 3:
        shape = tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a tensor of shape [batch, height, width], got {shape}")
    n, height, width = codes.shape
    return sample_codes(
        model,
        n,
        (height, width),
        temperature,
        labels,
        generator,
        initial=codes,
        region=region,
        progress=progress,
        cond=cond,
        top_k=top_k,
        top_p=top_p,
    )


def _prepare(
    model: GatedPixelCNN,
    num_samples: int,
    grid: tuple[int, int],
    temperature: float,
    initial: torch.Tensor | None,
    region: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """
    Validate the sampling arguments.

    Returns:
        ``(codes, region, active)``: the starting grids ``[N, H, W]`` (a copy of ``initial``, or zeros), the
        region to sample ``[N, H, W]`` (all ``True`` without completion), and the positions in raster order
        where at least one grid is to be sampled.
    """
    check_positive_int("num_samples", num_samples)
    height, width = check_grid(grid)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if not math.isfinite(temperature):
        raise ValueError(f"temperature must be finite, got {temperature!r}")
    if (initial is None) != (region is None):
        raise ValueError(
            "completion needs both initial (the given codes) and region (the positions to resample)"
        )

    device = model.embedding.weight.device
    shape = (num_samples, height, width)
    if initial is None or region is None:
        codes = torch.zeros(shape, dtype=torch.long, device=device)
        mask = torch.ones(shape, dtype=torch.bool, device=device)
    else:
        codes = model.check_codes(initial).to(device=device, copy=True)
        if codes.shape != shape:
            raise ValueError(
                f"initial must have shape {list(shape)} (num_samples, *grid), got {list(codes.shape)}"
            )
        if not isinstance(region, torch.Tensor) or region.dtype != torch.bool:
            raise TypeError("region must be a bool tensor marking the positions to resample")
        if region.shape not in (shape, shape[1:]):
            raise ValueError(
                f"region must have shape {list(shape[1:])} or {list(shape)}, got {list(region.shape)}"
            )
        mask = region.to(device).expand(shape)
    active = [(int(i), int(j)) for i, j in mask.any(dim=0).nonzero().tolist()]
    return codes, mask, active
