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
from oasis_gen.generation.codes import slice_labels
from oasis_gen.generation.plausibility import plausibility_report
from oasis_gen.inferers.pixelcnn_inferer import TwoLevelPrior, VQVAEPixelCNNInferer, decode_codes, encode_images
from oasis_gen.networks.pixelcnn import GatedPixelCNN

__all__ = ["heldout_nll", "sample_plausibility", "split_slices"]


def _choose(records: Sequence[Mapping[str, Any]], max_count: int | None, seed: int) -> list[Mapping[str, Any]]:
    """At most ``max_count`` records chosen with ``seed``, in their order (a volume's slices are read in a row)."""
    records = list(records)
    if max_count is not None and len(records) > int(max_count):
        keep = torch.randperm(len(records), generator=torch.Generator().manual_seed(int(seed)))[:int(max_count)]
        records = [records[i] for i in sorted(keep.tolist())]
    return records


def split_slices(records: Sequence[Mapping[str, Any]], image_size: int, max_count: int | None = None, seed: int = 0,
                 progress: bool = False, description: str = "slices") -> tuple[torch.Tensor, list[str]]:
    """Load (at most ``max_count``, chosen with ``seed``) slice records as float ``[N, 1, S, S]`` in [0, 1].

    Returns:
        the images and the subject of each (for subject-grouped folds).
    """
    records = _choose(records, max_count, seed)
    if not records:
        return torch.zeros(0, 1, int(image_size), int(image_size)), []
    loader = DataLoader(Dataset(records, eval_transforms(image_size)), batch_size=64, shuffle=False, num_workers=0)
    batches = [decode_intensity(torch.as_tensor(batch["image"]))
               for batch in tqdm(loader, desc=f"loading {description}", unit="batch", disable=not progress)]
    return torch.cat(batches), [str(r["subject"]) for r in records]


def sample_plausibility(samples: torch.Tensor, records: Mapping[str, Sequence[Mapping[str, Any]]], image_size: int,
                        seed: int = 0, max_reference: int = 256, max_train: int = 1024, folds: int = 5,
                        epochs: int = 20, progress: bool = False, vqvae: torch.nn.Module | None = None
                        ) -> dict[str, float]:
    """The plausibility figures of ``samples`` with their real-vs-real floors, from a dataset's splits.

    Args:
        samples: generated slices ``[N, 1, S, S]`` in [0, 1].
        records: slice records per split (``DataReport.usable()``): ``test`` is the reference, ``validate`` the
            floor (as many slices as samples), ``train`` the memorisation set.
        image_size: the side the real slices are brought to (the VQ-VAE's).
        max_reference: at most this many test slices; max_train likewise for the training slices.
        seed: seeds the choice of slices and the two-sample tests.
        vqvae: the first stage that decodes the samples; when given, its reconstructions of the floor slices are
            scored too (the figures of a perfect prior, ``_reconstruction`` keys of the report), and the samples
            are tested against its reconstructions of the reference (``c2st_prior_accuracy``: the prior alone).
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
    reconstruction = reference_reconstruction = None
    if vqvae is not None:
        reconstruction = decode_codes(vqvae, encode_images(vqvae, floor)).cpu()
        reference_reconstruction = decode_codes(vqvae, encode_images(vqvae, reference)).cpu()
    folds = max(2, min(int(folds), len(samples), len(floor)))
    # a subject's slices share a fold, where a split has subjects enough for the folds (tiny datasets may not)
    reference_groups = reference_groups if len(set(reference_groups)) >= folds else None
    floor_groups = floor_groups if len(set(floor_groups)) >= folds else None
    return plausibility_report(reference, samples.float().cpu(), floor, train=train, seed=seed, folds=folds,
                               epochs=epochs, reference_groups=reference_groups, floor_groups=floor_groups,
                               reconstruction=reconstruction, reference_reconstruction=reference_reconstruction)


def heldout_nll(prior: GatedPixelCNN | TwoLevelPrior, vqvae: torch.nn.Module, records: Sequence[Mapping[str, Any]],
                image_size: int, max_count: int | None = 256, seed: int = 0, batch_size: int = 32
                ) -> dict[str, float]:
    """The prior's negative log-likelihood of held-out slices' codes, in bits per code and bits per slice.

    Bits per slice add up every level's codes, so they compare priors over different grids and codebooks (a
    coarser grid has fewer codes, each carrying more bits); bits per code are the same total over the number of
    codes. A conditional prior scores each slice under its own slice-position bucket.
    """
    records = _choose(records, max_count, seed)
    if not records:
        return {}
    images, _ = split_slices(records, image_size)
    labels = None
    if prior.num_classes is not None:
        labels = torch.tensor(slice_labels(records, prior.num_classes))
    inferer = VQVAEPixelCNNInferer()
    device = next(prior.parameters()).device
    totals = []
    for start in range(0, len(images), batch_size):
        batch_labels = None if labels is None else labels[start:start + batch_size].to(device)
        bits = inferer.get_likelihood(images[start:start + batch_size], vqvae, prior, labels=batch_labels)
        totals.append(bits.flatten(1).sum(1).cpu())
    per_slice = torch.cat(totals)
    codes = bits.shape[-2] * bits.shape[-1]
    if isinstance(prior, TwoLevelPrior):
        codes += codes // prior.factor ** 2  # the top grid's codes
    return {"nll_bits_per_slice": float(per_slice.mean()), "nll_bits_per_code": float(per_slice.mean()) / codes,
            "nll_codes_per_slice": float(codes), "nll_slices": float(len(per_slice))}
