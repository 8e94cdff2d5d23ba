"""Texture of a set of slices: its radially averaged power spectrum, and the distance between two such spectra
(speckle adds power at high frequencies, blur removes it)."""

from __future__ import annotations

import torch
from monai.utils import convert_to_tensor

__all__ = ["radial_power_spectrum", "spectrum_distance"]


def radial_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """The mean radially averaged power spectrum of a set of slices ``[N, 1, H, W]``: one power per integer radial
    frequency ``0 .. min(H, W) // 2`` (cycles per image side), averaged over the set."""
    images = convert_to_tensor(images, track_meta=False).float()
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"need images [N, C, H, W], got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    power = torch.fft.fftshift(torch.fft.fft2(images), dim=(-2, -1)).abs().square().mean(dim=(0, 1))
    rows = torch.arange(height, dtype=torch.float32) - height // 2
    cols = torch.arange(width, dtype=torch.float32) - width // 2
    radius = torch.sqrt(rows[:, None] ** 2 + cols[None, :] ** 2).round().long().flatten()
    keep = radius <= min(height, width) // 2
    sums = torch.zeros(int(radius[keep].max()) + 1).index_add_(0, radius[keep], power.flatten()[keep])
    counts = torch.bincount(radius[keep]).float()
    return sums / counts


def spectrum_distance(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Texture distance of a set of slices from a reference set: the mean absolute difference of their radially
    averaged power spectra in log10, over the frequencies above zero. 0 for sets of the same texture; speckle
    (too much power at high frequencies) and blur (too little) both raise it."""
    a, b = radial_power_spectrum(images), radial_power_spectrum(reference)
    return float((torch.log10(a[1:] + 1e-12) - torch.log10(b[1:] + 1e-12)).abs().mean())
