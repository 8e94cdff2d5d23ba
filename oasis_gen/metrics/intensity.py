"""Intensities of the brain: how far the non-black pixels of two image sets are apart."""

from __future__ import annotations

import numpy as np
import torch

from oasis_gen.metrics.image_sets import checked_images

__all__ = ["intensity_distance"]


def intensity_distance(images_a: torch.Tensor, images_b: torch.Tensor, threshold: float = 0.5 / 255,
                       bins: int = 256) -> float:
    """1-D Wasserstein distance between the intensities of the non-black pixels of two image sets; 0 is best.

    Pixels above ``threshold`` (real slices' background is exactly 0) of each set are pooled into a histogram of
    ``bins`` equal bins on [0, 1], and the distance is taken between the two histograms (bin centres), which is
    exact to half a bin. A set without any such pixel counts as all black (one value, 0). In the units of the
    intensity: a copy of the reference at half brightness is about half its mean brain intensity away.
    """
    from scipy.stats import wasserstein_distance

    centres = (np.arange(bins) + 0.5) / bins
    weights = []
    for images in (checked_images(images_a, "images_a"), checked_images(images_b, "images_b")):
        values = images[images > threshold].clamp(0.0, 1.0)
        if values.numel() == 0:
            weights.append(np.zeros(bins))
            weights[-1][0] = 1.0
            continue
        weights.append(torch.histc(values, bins=bins, min=0.0, max=1.0).double().numpy())
    return float(wasserstein_distance(centres, centres, weights[0], weights[1]))

