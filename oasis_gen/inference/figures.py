"""Pictures of inference results: atypicality heat maps over the scan, montages, and the comparison picture.

Heat maps share one fixed scale, 0 to ``log2(K)`` bits per code (what a prior that knows nothing pays), so the
pictures of two scans compare at a glance; anything above it is drawn at full heat.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oasis_gen.utils.pictures import code_map_picture, tile, to_uint8

__all__ = ["code_map", "comparison", "heat_overlay", "montage", "picture_slices"]

# how much of the heat colour covers the scan at full heat (the scan stays visible under it)
HEAT_OPACITY = 0.7


def heat_colours(level: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white colours of levels in [0, 1], as 8-bit RGB ``[..., 3]``."""
    level = np.clip(level, 0.0, 1.0)[..., None]
    ramp = np.clip(3.0 * level - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)
    return (ramp * 255.0 + 0.5).astype(np.uint8)


def heat_overlay(image: np.ndarray, bits: np.ndarray, top: float) -> np.ndarray:
    """A slice in [0, 1] ``[H, W]`` under the heat colours of ``bits`` ``[H, W]`` scaled to ``[0, top]`` (RGB)."""
    level = np.clip(np.asarray(bits, dtype=np.float32) / max(float(top), 1e-6), 0.0, 1.0)
    gray = np.repeat(to_uint8(image)[..., None], 3, axis=2).astype(np.float32)
    alpha = HEAT_OPACITY * level[..., None]
    return (gray * (1.0 - alpha) + heat_colours(level).astype(np.float32) * alpha + 0.5).astype(np.uint8)


def code_map(codes: np.ndarray, num_embeddings: int, size: int) -> np.ndarray:
    """A code grid ``[h, w]`` coloured by code and enlarged (nearest) to ``size x size`` (RGB)."""
    coloured = code_map_picture(codes, num_embeddings, scale=1)
    rows = np.arange(size) * codes.shape[0] // size
    cols = np.arange(size) * codes.shape[1] // size
    return coloured[rows][:, cols]


def picture_slices(scored: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` plane indices evenly spread over the scored planes (the brain), for pictures."""
    kept = np.flatnonzero(scored)
    if len(kept) == 0:
        kept = np.arange(len(scored))
    picks = np.linspace(0, len(kept) - 1, num=max(1, min(int(count), len(kept)))).round().astype(int)
    return sorted({int(kept[p]) for p in picks})


def montage(pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Equally sized pictures in a near-square grid (one picture stays as it is)."""
    if len(pictures) == 1:
        return pictures[0]
    columns = int(np.ceil(np.sqrt(len(pictures))))
    return tile(list(pictures), columns=columns)


def comparison(inputs: np.ndarray, reconstructions: np.ndarray, codes: np.ndarray, num_embeddings: int,
               bits: np.ndarray | None = None, top: float = 1.0) -> np.ndarray:
    """
    One row per plane: input | reconstruction | code map | atypicality (when ``bits`` is given), at the model's
    size. ``inputs`` and ``reconstructions`` are ``[N, size, size]`` in [0, 1], ``codes`` ``[N, h, w]`` and
    ``bits`` ``[N, size, size]``.
    """
    size = int(inputs.shape[-1])
    cells = []
    for index in range(inputs.shape[0]):
        cells.append(np.repeat(to_uint8(inputs[index])[..., None], 3, axis=2))
        cells.append(np.repeat(to_uint8(reconstructions[index])[..., None], 3, axis=2))
        cells.append(code_map(codes[index], num_embeddings, size))
        if bits is not None:
            cells.append(heat_overlay(inputs[index], bits[index], top))
    return tile(cells, columns=3 if bits is None else 4)
