"""CacheDataset factories: records in, decoded, resized, compactly encoded tensors cached once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.data import CacheDataset
from monai.transforms import Compose

from oasis_gen.errors import DataError


def build_cache_dataset(
    records: Sequence[dict],
    transform: Compose,
    cache_rate: float = 1.0,
    num_workers: int | None = None,
    progress: bool = True,
    name: str = "dataset",
) -> CacheDataset:
    """Cache the deterministic part of transform for every record (a progress bar shows the caching)."""
    if not records:
        raise DataError(name, "no slices to build a dataset from")
    return CacheDataset(data=list(records), transform=transform, cache_rate=cache_rate,
                        num_workers=num_workers, progress=progress, copy_cache=False)


def cache_nbytes(dataset: CacheDataset) -> int:
    """Bytes held by the tensors in a CacheDataset's cache (pixel data of every cached item)."""
    total = 0
    for item in dataset._cache:  # MONAI keeps the cache as a list of transformed items
        for value in (item.values() if isinstance(item, dict) else [item]):
            if isinstance(value, torch.Tensor):
                total += value.element_size() * value.nelement()
    return total
