"""Pictures people would rather look at than read: image grids, reconstruction comparisons, code maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from oasis_gen.utils.files import atomic_path


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Turn a (H, W) or (1, H, W) image in [0, 1] into 8-bit pixels."""
    array = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    array = np.squeeze(array)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tile(images: Sequence[np.ndarray], columns: int, gap: int = 2, background: int = 255) -> np.ndarray:
    """Arrange equally sized 8-bit images (gray or RGB) in a grid with gaps between them."""
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape[:2]
    channels = images[0].shape[2:] if images[0].ndim == 3 else ()
    rows = (len(images) + columns - 1) // columns
    canvas = np.full((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, *channels), background,
                     dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = image
    return canvas


def reconstruction_grid(originals: torch.Tensor, reconstructions: torch.Tensor, gain: float = 4.0) -> np.ndarray:
    """One row per image: original | reconstruction | absolute difference (amplified by gain)."""
    cells = []
    for original, reconstruction in zip(originals, reconstructions, strict=True):
        difference = (original.float() - reconstruction.float()).abs() * gain
        cells.extend([to_uint8(original), to_uint8(reconstruction), to_uint8(difference)])
    return tile(cells, columns=3)


def code_map_picture(codes: torch.Tensor | np.ndarray, num_embeddings: int, scale: int = 4) -> np.ndarray:
    """Colour a (H, W) grid of code indices with a fixed palette (same code, same colour), enlarged by scale."""
    codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes, dtype=np.int64)
    palette = np.random.default_rng(12345).integers(40, 256, size=(max(int(num_embeddings), 1), 3), dtype=np.uint8)
    coloured = palette[np.clip(codes, 0, len(palette) - 1)]
    return np.repeat(np.repeat(coloured, scale, axis=0), scale, axis=1)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write an 8-bit array as a PNG through a temporary file, so a crash never leaves half a picture."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return Path(path)
