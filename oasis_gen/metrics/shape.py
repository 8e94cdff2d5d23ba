"""Shape of the brain in each slice: its mask, per-slice statistics of the mask, and the distance between two sets'
statistics. The threshold of the mask (0.1) keeps faint background noise out of every figure."""

from __future__ import annotations

import numpy as np
import torch

from oasis_gen.metrics.image_sets import checked_images

__all__ = ["SHAPE_STATISTICS", "foreground_mask", "shape_distance", "shape_statistics"]

# the per-slice statistics of shape_statistics, in report order
SHAPE_STATISTICS: tuple[str, ...] = ("one_region", "area", "mirror_iou", "solidity")

# 8-connected neighbourhood: pixels touching at a corner belong to one component
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def foreground_mask(images: torch.Tensor, threshold: float = 0.1, min_fraction: float = 0.01) -> np.ndarray:
    """Brain masks ``[N, H, W]`` (bool): intensity above ``threshold``, holes filled, specks removed.

    Args:
        images: ``[N, 1, H, W]`` in [0, 1].
        threshold: intensity cut-off, as a fraction of the [0, 1] range (absolute, not per image, so that a dim
            noisy image does not pass for a brain).
        min_fraction: connected components (8-connected) smaller than this fraction of the image are dropped.
    """
    from scipy import ndimage

    data = checked_images(images).numpy()[:, 0]
    min_size = max(1, int(round(min_fraction * data.shape[1] * data.shape[2])))
    masks = np.zeros(data.shape, dtype=bool)
    for i, image in enumerate(data):
        # Ventricles and sulcal CSF are dark enough to fall below the threshold, yet they are inside the brain's
        # outline, which is what the statistics describe: filling holes keeps them in. Isolated bright pixels
        # (noise, a sampler's stray codes) would count as extra regions and stretch the convex hull: dropping
        # small components keeps them from deciding one_region and solidity.
        # (scipy's label and a count rather than skimage's remove_small_objects, whose size argument changed
        # meaning in scikit-image 0.26 while the project allows 0.22.)
        labels, _ = ndimage.label(ndimage.binary_fill_holes(image > threshold), structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel())
        masks[i] = (sizes >= min_size)[labels] & (labels > 0)
    return masks


def _mask_statistics(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(one_region, area, mirror_iou, solidity) of one 2-D bool mask; all 0 for an empty mask."""
    from scipy import ndimage
    from skimage.morphology import convex_hull_image

    area = int(mask.sum())
    if area == 0:
        return 0.0, 0.0, 0.0, 0.0
    regions = int(ndimage.label(mask, structure=_EIGHT_CONNECTED)[1])
    mirror = mask[:, ::-1]  # mirrored about the centre column of the image, not of the mask
    mirror_iou = float((mask & mirror).sum() / (mask | mirror).sum())
    solidity = area / max(int(convex_hull_image(mask).sum()), area)
    return float(regions == 1), area / mask.size, mirror_iou, float(solidity)


def shape_statistics(images: torch.Tensor, threshold: float = 0.1, min_fraction: float = 0.01
                     ) -> dict[str, np.ndarray]:
    """Per-image statistics of the brain mask (:func:`foreground_mask`), each an array ``[N]`` of float64.

    ``one_region``: 1 if the mask is one connected component (after dropping components under ``min_fraction``
    of the image), else 0; ``area``: mask area as a fraction of the image; ``mirror_iou``: IoU of the mask and
    its left-right mirror image about the image's centre column (a centred, symmetric brain scores near 1);
    ``solidity``: mask area over the area of its convex hull (ragged or fragmented outlines score low). An empty
    mask gives 0 for every statistic.
    """
    masks = foreground_mask(images, threshold=threshold, min_fraction=min_fraction)
    values = np.array([_mask_statistics(mask) for mask in masks], dtype=np.float64).reshape(-1, 4)
    return {name: values[:, k] for k, name in enumerate(SHAPE_STATISTICS)}


def shape_distance(stats_a: dict[str, np.ndarray], stats_b: dict[str, np.ndarray]) -> dict[str, float]:
    """Per statistic: ``<name>_distance``, the 1-D Wasserstein distance between the two sets' values, and
    ``<name>_mean_a``, ``<name>_mean_b``, the means of each set (statistics present in both dicts)."""
    from scipy.stats import wasserstein_distance

    result = {}
    for name in [key for key in stats_a if key in stats_b]:
        values_a, values_b = np.asarray(stats_a[name], float), np.asarray(stats_b[name], float)
        if values_a.size == 0 or values_b.size == 0:
            raise ValueError(f"statistic {name!r} has no values in one of the sets")
        result[f"{name}_distance"] = float(wasserstein_distance(values_a, values_b))
        result[f"{name}_mean_a"] = float(values_a.mean())
        result[f"{name}_mean_b"] = float(values_b.mean())
    return result
