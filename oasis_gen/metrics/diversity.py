"""How varied a set of generated slices is: 1 - the mean MS-SSIM over pairs of its slices."""

from __future__ import annotations

import torch
from monai.utils import convert_to_tensor

__all__ = ["MS_SSIM_WEIGHTS", "ms_ssim_diversity", "ms_ssim_settings"]

# Wang, Simoncelli and Bovik (2003), "Multiscale structural similarity for image quality assessment": the
# weight of each scale, finest first (MONAI's defaults)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(size: int, scales: int = 3, kernel_size: int = 7) -> tuple[int, int]:
    """The most MS-SSIM scales (up to ``scales``) and the widest odd Gaussian kernel (up to ``kernel_size``) that
    an image side of ``size`` allows under MONAI's rule ``size // (scales - 1) ** 2 > kernel_size - 1``.

    The defaults fit 128x128 slices (128 // 4 = 32 > 6) and still 32x32 (8 > 6); MONAI's own defaults (5 scales,
    kernel 11) need more than 160 pixels. Smaller images get a narrower kernel first, then fewer scales.
    """
    for count in range(max(int(scales), 1), 0, -1):
        divisor = max(1, count - 1) ** 2
        for kernel in range(int(kernel_size) - (1 - int(kernel_size) % 2), 2, -2):
            if size // divisor > kernel - 1:
                return count, kernel
    raise ValueError(f"images of side {size} are too small for MS-SSIM (need at least 3 pixels)")


def ms_ssim_diversity(images: torch.Tensor, scales: int = 3, kernel_size: int = 7, max_pairs: int | None = 4096,
                      batch_size: int = 128, seed: int = 0) -> float:
    """Diversity of a set of slices ``[N, 1, H, W]`` in [0, 1]: 1 - the mean MS-SSIM over pairs of different
    slices (monai.metrics.MultiScaleSSIMMetric). 0: all identical; higher: more varied.

    MS-SSIM uses 3 scales and a 7-pixel Gaussian kernel (sigma 1.5) by default, sized for 128x128 slices (see
    :func:`ms_ssim_settings`, which narrows them for smaller images), with the first weights of Wang et al.
    rescaled to sum to 1. Every pair is used, or ``max_pairs`` pairs drawn at random (seeded) when there are more.
    Brain slices share a black background and an overall shape, so compare the figure with that of real slices
    rather than with 1.
    """
    from monai.metrics import MultiScaleSSIMMetric

    images = convert_to_tensor(images, track_meta=False).float().clamp(0.0, 1.0)
    if images.dim() != 4 or images.shape[0] < 2:
        raise ValueError(f"need at least 2 images [N, C, H, W], got {tuple(images.shape)}")
    count, kernel = ms_ssim_settings(min(images.shape[-2:]), scales, kernel_size)
    weights = MS_SSIM_WEIGHTS[:count]
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=kernel,
                                  weights=tuple(w / sum(weights) for w in weights))
    first, second = torch.triu_indices(images.shape[0], images.shape[0], offset=1)
    if max_pairs is not None and first.numel() > max_pairs:
        pick = torch.randperm(first.numel(), generator=torch.Generator().manual_seed(seed))[:max_pairs]
        first, second = first[pick], second[pick]
    for start in range(0, first.numel(), batch_size):
        metric(y_pred=images[first[start:start + batch_size]], y=images[second[start:start + batch_size]])
    return 1.0 - float(metric.aggregate())
