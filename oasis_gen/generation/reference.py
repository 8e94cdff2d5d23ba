"""Real slices to judge samples against: the splits of a dataset, loaded the way evaluation loads them.

The sampling run compares its samples with the test split (the reference), and as a real-vs-real floor the
validate split (other subjects) with the same reference; the training split serves the memorisation check.
Slices go through the evaluation transform chain (:func:`oasis_gen.data.transforms.eval_transforms`), so they are
exactly what the VQ-VAE was evaluated on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from tqdm import tqdm

from oasis_gen.data.transforms import decode_intensity, eval_transforms
from oasis_gen.generation.plausibility import plausibility_report

__all__ = ["split_slices", "sample_plausibility"]


def split_slices(records: Sequence[Mapping[str, Any]], image_size: int, max_count: int | None = None, seed: int = 0,
                 progress: bool = False, description: str = "slices") -> tuple[torch.Tensor, list[str]]:
    """Load (at most ``max_count``, chosen with ``seed``) slice records as float ``[N, 1, S, S]`` in [0, 1].

    Returns:
        the images and the subject of each (for subject-grouped folds).
    """
    records = list(records)
    if max_count is not None and len(records) > int(max_count):
        keep = torch.randperm(len(records), generator=torch.Generator().manual_seed(int(seed)))[:int(max_count)]
        records = [records[i] for i in sorted(keep.tolist())]  # sorted: a volume's slices are read in a row
    if not records:
        return torch.zeros(0, 1, int(image_size), int(image_size)), []
    loader = DataLoader(Dataset(records, eval_transforms(image_size)), batch_size=64, shuffle=False, num_workers=0)
    batches = [decode_intensity(torch.as_tensor(batch["image"]))
               for batch in tqdm(loader, desc=f"loading {description}", unit="batch", disable=not progress)]
    return torch.cat(batches), [str(r["subject"]) for r in records]


def sample_plausibility(samples: torch.Tensor, records: Mapping[str, Sequence[Mapping[str, Any]]], image_size: int,
                        seed: int = 0, max_reference: int = 256, max_train: int = 1024, folds: int = 5,
                        epochs: int = 20, progress: bool = False) -> dict[str, float]:
    """The plausibility figures of ``samples`` with their real-vs-real floors, from a dataset's splits.

    Args:
        samples: generated slices ``[N, 1, S, S]`` in [0, 1].
        records: slice records per split (``DataReport.usable()``): ``test`` is the reference, ``validate`` the
            floor (as many slices as samples), ``train`` the memorisation set.
        image_size: the side the real slices are brought to (the VQ-VAE's).
        max_reference: at most this many test slices; max_train likewise for the training slices.
        seed: seeds the choice of slices and the two-sample tests.
    """
    for split in ("test", "validate"):
        if not records.get(split):
            raise ValueError(f"the plausibility test needs real slices of the {split} split; the dataset has none")
    reference, reference_groups = split_slices(records["test"], image_size, max_reference, seed, progress,
                                               "test slices (reference)")
    floor, floor_groups = split_slices(records["validate"], image_size, len(samples), seed, progress,
                                       "validate slices (floor)")
    train = None
    if records.get("train"):
        train, _ = split_slices(records["train"], image_size, max_train, seed, progress, "train slices")
    folds = max(2, min(int(folds), len(samples), len(floor)))
    return plausibility_report(reference, samples.float().cpu(), floor, train=train, seed=seed, folds=folds,
                               epochs=epochs, reference_groups=reference_groups, floor_groups=floor_groups)
