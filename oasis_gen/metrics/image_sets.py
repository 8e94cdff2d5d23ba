"""The image sets the plausibility metrics take: checked and made plain, resized, and their group labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor

__all__ = ["checked_groups", "checked_images", "resize_images"]


def checked_images(images: Any, name: str = "images") -> torch.Tensor:
    """A plain float32 CPU tensor ``[N, 1, H, W]``, or ValueError naming the argument."""
    data = convert_to_tensor(images, track_meta=False)
    if data.dim() != 4 or data.shape[1] != 1 or data.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty tensor [N, 1, H, W], got {tuple(data.shape)}")
    return data.detach().float().cpu()


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images at ``size`` x ``size`` (area interpolation: an anti-aliased average when shrinking)."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="area")


def checked_groups(groups: Any, count: int, name: str) -> np.ndarray | None:
    """Group labels as an array of ``count`` items, or None."""
    if groups is None:
        return None
    labels = np.asarray(groups)
    if labels.shape != (count,):
        raise ValueError(f"{name} must hold one label per image ({count}), got shape {labels.shape}")
    return labels
