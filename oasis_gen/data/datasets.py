"""CacheDataset factories: records in, decoded, resized, compactly encoded tensors cached once."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from monai.data import CacheDataset
from monai.transforms import Compose

from oasis_gen.utils.errors import DataError


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
    dataset = CacheDataset(data=list(records), transform=transform, cache_rate=cache_rate,
                           num_workers=num_workers, progress=progress, copy_cache=False)
    release_freed_memory()
    return dataset


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only; elsewhere nothing happens).

    Caching interleaves each kept uint8 slice with the float32 temporaries that produced it, so glibc cannot
    return the freed pages by itself: measured on 2,000 slices at 256x256, the process held 428 MB for 131 MB of
    cached pixels before the trim and 148 MB after it.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cache_nbytes(dataset: CacheDataset) -> int:
    """Bytes held by the tensors in a CacheDataset's cache (pixel data of every cached item)."""
    total = 0
    for item in dataset._cache:  # MONAI keeps the cache as a list of transformed items
        for value in (item.values() if isinstance(item, dict) else [item]):
            if isinstance(value, torch.Tensor):
                total += value.element_size() * value.nelement()
    return total
