"""Does a generator copy its training slices? Each slice's nearest training slice, next to held-out real ones'."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from oasis_gen.metrics.image_sets import checked_images, resize_images

__all__ = ["memorisation", "nearest_train"]


def nearest_train(images: torch.Tensor, train: torch.Tensor, size: int = 64, batch_size: int = 256
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the mean absolute difference to its nearest training image and that image's index.

    Both sets are resized to ``size`` x ``size`` (area interpolation); distances are computed in blocks of
    ``batch_size`` x ``batch_size`` images, so memory stays bounded by the resized sets. Returns
    ``(distance [N] float64, index [N] int64)``.
    """
    query = resize_images(checked_images(images), size).flatten(1)
    pool = resize_images(checked_images(train, "train"), size).flatten(1)
    best = torch.full((len(query),), math.inf, dtype=torch.float64)
    index = torch.zeros(len(query), dtype=torch.int64)
    for q_start in range(0, len(query), batch_size):
        q = query[q_start:q_start + batch_size]
        for t_start in range(0, len(pool), batch_size):
            block = torch.cdist(q, pool[t_start:t_start + batch_size], p=1).double() / query.shape[1]
            value, where = block.min(dim=1)
            better = value < best[q_start:q_start + len(q)]
            best[q_start:q_start + len(q)] = torch.where(better, value, best[q_start:q_start + len(q)])
            index[q_start:q_start + len(q)] = torch.where(better, where + t_start, index[q_start:q_start + len(q)])
    return best.numpy(), index.numpy()


def memorisation(samples: torch.Tensor, train: torch.Tensor, reference: torch.Tensor | None = None,
                 threshold: float | None = None, quantile: float = 0.05, size: int = 64, batch_size: int = 256
                 ) -> dict[str, Any]:
    """How near each sample is to its nearest training slice, next to how near held-out real slices are.

    Args:
        samples: generated images ``[N, 1, H, W]``.
        train: the training images the generator learnt from.
        reference: held-out real images (subjects not in ``train``): the floor. Samples that are not copies are
            about as far from the training set as these are.
        threshold: distance below which a sample counts as a copy; None: the ``quantile`` of the reference's
            nearest distances (then a reference is needed, and about ``quantile`` of new real slices fall below).
        size: side both sets are compared at (mean absolute difference of the resized images).

    Returns a dict: ``nearest_distance`` and ``nearest_index`` (arrays ``[N]``: the distance to and index in
    ``train`` of each sample's nearest training slice), ``median`` and ``copy_share`` (share of samples below
    ``threshold``) and ``threshold``; with a reference also ``reference_nearest_distance``, ``median_reference``
    and ``copy_share_reference``.
    """
    if threshold is None and reference is None:
        raise ValueError("memorisation needs a threshold or a reference set to derive one from")
    distance, index = nearest_train(samples, train, size=size, batch_size=batch_size)
    result: dict[str, Any] = {"nearest_distance": distance, "nearest_index": index,
                              "median": float(np.median(distance))}
    if reference is not None:
        reference_distance, _ = nearest_train(reference, train, size=size, batch_size=batch_size)
        if threshold is None:
            threshold = float(np.quantile(reference_distance, quantile))
        result.update(reference_nearest_distance=reference_distance,
                      median_reference=float(np.median(reference_distance)),
                      copy_share_reference=float(np.mean(reference_distance < threshold)))
    result.update(threshold=float(threshold), copy_share=float(np.mean(distance < threshold)))
    return result
