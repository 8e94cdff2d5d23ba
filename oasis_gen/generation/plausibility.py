"""Do generated slices look like real ones? Plausibility figures, each with its real-vs-real floor.

A figure alone says little: a classifier accuracy of 0.6 or a Wasserstein distance of 0.02 is good or bad only
next to what two sets of *real* slices score. :func:`plausibility_report` therefore compares the generated
``samples`` with real ``reference`` slices (e.g. the test split), and in the same call, the same way and at
the same set size, a second real set ``floor`` of disjoint subjects (e.g. the validate split) with the same
reference. A figure for the samples near its floor means the samples cannot be told from real slices by it.

Images are float tensors ``[N, 1, H, W]`` in [0, 1] with 0 as background (MetaTensors are accepted).

Keys of :func:`plausibility_report` (all floats). No suffix: the samples (against the reference or the
training set); ``_floor``: the same figure for the floor set in place of the samples; ``_reference``: the
figure of the reference set itself.

- ``c2st_accuracy``, ``c2st_accuracy_floor``: held-out accuracy of a small CNN trained to tell the set from
  the reference (:func:`~oasis_gen.metrics.classifier_two_sample_test`); 0.5 means it cannot tell them apart, 1.0
  always can.
- ``intensity_distance``, ``intensity_distance_floor``: 1-D Wasserstein distance between the intensities of the
  non-black pixels of the set and those of the reference (:func:`~oasis_gen.metrics.intensity_distance`); 0 is
  best. It sees what a glance sees: dim, washed-out or nearly black samples are far from the reference in it.
- ``one_region_share`` (+ ``_floor``, ``_reference``): share of slices whose brain mask is one connected
  region (:func:`~oasis_gen.metrics.shape_statistics`); ``area``, ``mirror_iou``, ``solidity`` (+ ``_floor``,
  ``_reference``): means of the other mask statistics (brain area as a fraction of the image, IoU of the mask with
  its left-right mirror image, area over convex hull area).
- ``one_region_distance``, ``area_distance``, ``mirror_iou_distance``, ``solidity_distance`` (+ ``_floor``):
  1-D Wasserstein distance between the per-slice values of the set and those of the reference; 0 is best.
- Only when ``train`` is given (:func:`~oasis_gen.metrics.memorisation`): ``nn_distance_median`` (+ ``_floor``,
  ``_reference``): median over the set of the mean absolute difference to the nearest training slice (at 64x64);
  ``nn_copy_share`` (+ ``_floor``): share of the set nearer to a training slice than ``nn_copy_threshold``,
  the 5th percentile of the reference's nearest distances. Samples that copy training slices have a median far
  below the floor's and a share far above it (the floor's share is near 0.05, the threshold's percentile).
- Only when ``reconstruction`` is given: the C2ST accuracy, the intensity distance and the shape figures of the
  first stage's reconstructions of the floor slices, with the suffix ``_reconstruction``. They are the figures of a
  perfect prior with that first stage: samples cannot score better than its reconstructions, so the gap from the
  floor to them is the first stage's share of the samples' gap, and the rest is the prior's.
- ``diversity`` (+ ``_floor``, ``_reconstruction``, ``_reference``): 1 - the mean MS-SSIM between pairs of slices of
  the set (:func:`~oasis_gen.metrics.ms_ssim_diversity`): a prior that buys plausibility with collapse shows here.
- ``texture_distance`` (+ ``_floor``, ``_reconstruction``): mean absolute log10 difference between the radially
  averaged power spectra of the set and of the reference (:func:`~oasis_gen.metrics.spectrum_distance`): speckle
  raises it (power at high frequencies), and so does blur.
- Only when both reconstructions are given: ``c2st_prior_accuracy`` (+ ``_floor``): the classifier two-sample test
  of the samples against the first stage's reconstructions of the reference, and of the floor's reconstructions
  against them. A perfect prior scores its floor here whatever the first stage's blur: it is the prior's share of
  the gap, measured directly.
- ``n_samples``, ``n_floor``, ``n_reference`` (and ``n_train``): the set sizes used; samples and floor are cut
  to the same size, so both comparisons carry the same small-sample bias.

Reading them: the floor is itself an estimate. On the demo cohort the real-vs-real C2ST accuracy of 128 vs 128
slices ranged over 0.45-0.59 between random sets of subjects (subject folds; measured with the earlier network,
without the intensity summary), and that of 64 validate slices against the 192 test slices (6 subjects each)
over 0.34-0.54 between seeds (with few subjects, subject folds push it below 0.5 as often as not: a classifier
that learnt the training subjects' traits guesses the held-out ones against them), so a gap of a few hundredths
between samples and floor means nothing; pass subject ids (``reference_groups``, ``floor_groups``) so that no
subject's slices are both trained on and classified, and repeat with other seeds when a decision hangs on it.
The C2ST sees everything, trivial differences too: real slices have an exactly zero background, so samples with
faint background noise score high however good their anatomy; the shape statistics do not see such noise (they
threshold at 0.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from oasis_gen.metrics import (
    SHAPE_STATISTICS,
    classifier_two_sample_test,
    intensity_distance,
    memorisation,
    ms_ssim_diversity,
    nearest_train,
    shape_distance,
    shape_statistics,
    spectrum_distance,
)
from oasis_gen.metrics.image_sets import checked_groups, checked_images

__all__ = ["format_report", "plausibility_report"]

# pairs of slices whose MS-SSIM the diversity figure averages (drawn at random, seeded, from all pairs)
DIVERSITY_PAIRS = 1024
# the name of a statistic's mean in the report (one_region is 0 or 1, so its mean is a share)
_MEAN_NAMES = {"one_region": "one_region_share", "area": "area", "mirror_iou": "mirror_iou", "solidity": "solidity"}


def _subsample(count: int, total: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``count`` of ``total`` items chosen at random, in order (all of them when there are no more)."""
    if total <= count:
        return torch.arange(total)
    return torch.randperm(total, generator=generator)[:count].sort().values


def plausibility_report(reference: torch.Tensor, samples: torch.Tensor, floor: torch.Tensor,
                        train: torch.Tensor | None = None, seed: int = 0, folds: int = 5, epochs: int = 20,
                        reference_groups: Any = None, floor_groups: Any = None,
                        reconstruction: torch.Tensor | None = None,
                        reference_reconstruction: torch.Tensor | None = None) -> dict[str, float]:
    """Every plausibility figure for ``samples`` and its real-vs-real floor, as a flat dict (keys: module docstring).

    Args:
        reference: real slices, e.g. the test split.
        samples: generated slices.
        floor: real slices of subjects disjoint from the reference's, e.g. the validate split; it stands in for
            the samples in every comparison. Samples and floor are cut to the size of the smaller (chosen with
            the seed), so both comparisons have equal sizes.
        train: the training slices; when given, the memorisation figures are added.
        seed: seeds the subsampling and the classifier two-sample tests.
        folds: folds of the classifier two-sample tests.
        epochs: training epochs of the classifier two-sample tests.
        reference_groups: optional subject label per reference slice: the two-sample tests then keep a
            subject's slices in one fold (see :func:`classifier_two_sample_test`).
        floor_groups: likewise per floor slice.
        reconstruction: the first stage's reconstructions of ``floor``, one per floor slice in the same order; when
            given, the figures of a perfect prior (``_reconstruction`` keys) are added.
        reference_reconstruction: the first stage's reconstructions of ``reference``, one per reference slice; with
            ``reconstruction``, the prior's own two-sample test is added (``c2st_prior_accuracy``: samples against
            them; its floor: the floor's reconstructions against them).
    """
    reference, samples = checked_images(reference, "reference"), checked_images(samples, "samples")
    floor = checked_images(floor, "floor")
    if reconstruction is not None:
        reconstruction = checked_images(reconstruction, "reconstruction")
        if len(reconstruction) != len(floor):
            raise ValueError(f"reconstruction must hold one image per floor slice ({len(floor)}), "
                             f"got {len(reconstruction)}")
    reference_groups = checked_groups(reference_groups, len(reference), "reference_groups")
    floor_groups = checked_groups(floor_groups, len(floor), "floor_groups")
    sets = {"reference": reference, "samples": samples, "floor": floor}
    if train is not None:
        sets["train"] = train = checked_images(train, "train")
    if reconstruction is not None:
        sets["reconstruction"] = reconstruction
    if reference_reconstruction is not None:
        sets["reference_reconstruction"] = reference_reconstruction = checked_images(reference_reconstruction,
                                                                              "reference_reconstruction")
        if len(reference_reconstruction) != len(reference):
            raise ValueError(f"reference_reconstruction must hold one image per reference slice ({len(reference)}), "
                             f"got {len(reference_reconstruction)}")
    shapes = {name: tuple(images.shape[-2:]) for name, images in sets.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"all image sets must have the same height and width, got {shapes}")

    generator = torch.Generator().manual_seed(int(seed))
    count = min(len(samples), len(floor))
    samples = samples[_subsample(count, len(samples), generator)]
    keep = _subsample(count, len(floor), generator)
    floor = floor[keep]
    reconstruction = None if reconstruction is None else reconstruction[keep]
    floor_groups = None if floor_groups is None else floor_groups[keep.numpy()]
    report: dict[str, float] = {"n_samples": float(count), "n_floor": float(count),
                                "n_reference": float(len(reference))}

    # with the same seed both tests use the same reference slices in the same folds
    report["c2st_accuracy"] = classifier_two_sample_test(reference, samples, folds=folds, epochs=epochs, seed=seed,
                                                         groups_a=reference_groups)
    report["c2st_accuracy_floor"] = classifier_two_sample_test(reference, floor, folds=folds, epochs=epochs,
                                                               seed=seed, groups_a=reference_groups,
                                                               groups_b=floor_groups)

    if reconstruction is not None:
        # the same subjects and folds as the floor's test: only the first stage's rendering differs
        report["c2st_accuracy_reconstruction"] = classifier_two_sample_test(
            reference, reconstruction, folds=folds, epochs=epochs, seed=seed, groups_a=reference_groups,
            groups_b=floor_groups)

    if reconstruction is not None and reference_reconstruction is not None:
        # the prior alone: decoded samples against decoded real codes, where a perfect prior sits at its floor (the
        # decoded codes of other subjects) whatever the first stage's blur
        report["c2st_prior_accuracy"] = classifier_two_sample_test(
            reference_reconstruction, samples, folds=folds, epochs=epochs, seed=seed, groups_a=reference_groups)
        report["c2st_prior_accuracy_floor"] = classifier_two_sample_test(
            reference_reconstruction, reconstruction, folds=folds, epochs=epochs, seed=seed,
            groups_a=reference_groups, groups_b=floor_groups)

    stats_reference = shape_statistics(reference)
    compared = {"": samples, "_floor": floor, "_reconstruction": reconstruction}
    for suffix, images in compared.items():
        if images is None:
            continue
        report[f"intensity_distance{suffix}"] = intensity_distance(reference, images)
        report[f"texture_distance{suffix}"] = spectrum_distance(images, reference)
        report[f"diversity{suffix}"] = ms_ssim_diversity(images, max_pairs=DIVERSITY_PAIRS, seed=seed)
        distances = shape_distance(stats_reference, shape_statistics(images))
        for name in SHAPE_STATISTICS:
            report[f"{_MEAN_NAMES[name]}{suffix}"] = distances[f"{name}_mean_b"]
            report[f"{name}_distance{suffix}"] = distances[f"{name}_distance"]
    for name in SHAPE_STATISTICS:
        report[f"{_MEAN_NAMES[name]}_reference"] = float(stats_reference[name].mean())
    report["diversity_reference"] = ms_ssim_diversity(reference, max_pairs=DIVERSITY_PAIRS, seed=seed)

    if train is not None:
        copies = memorisation(samples, train, reference=reference)
        floor_distance, _ = nearest_train(floor, train)
        report.update(n_train=float(len(train)), nn_copy_threshold=copies["threshold"],
                      nn_distance_median=copies["median"], nn_distance_median_floor=float(np.median(floor_distance)),
                      nn_distance_median_reference=copies["median_reference"], nn_copy_share=copies["copy_share"],
                      nn_copy_share_floor=float(np.mean(floor_distance < copies["threshold"])))
    return report


# (key of the samples' figure, label); the floor's figure is the key + "_floor"
_ROWS = (
    ("c2st_accuracy", "C2ST accuracy (0.5 = indistinguishable)"),
    ("c2st_prior_accuracy", "C2ST against reconstructions of real slices (the prior alone; floor: reconstructions "
                            "of other subjects)"),
    ("intensity_distance", "non-black intensities, Wasserstein distance to reference"),
    ("diversity", "diversity, 1 - mean pairwise MS-SSIM"),
    ("texture_distance", "texture: radial power spectrum, mean log10 distance to reference"),
    *((_MEAN_NAMES[name], f"{_MEAN_NAMES[name].replace('_', ' ')}, mean") for name in SHAPE_STATISTICS),
    *((f"{name}_distance", f"{name.replace('_', ' ')}, Wasserstein distance to reference")
      for name in SHAPE_STATISTICS),
    ("nn_distance_median", "nearest-train distance, median"),
    ("nn_copy_share", "share nearer to train than the copy threshold"),
)


def format_report(report: dict[str, float]) -> str:
    """A markdown table of a :func:`plausibility_report`: figure | samples | real-vs-real floor, and a column of the
    first stage's reconstructions (a perfect prior) when the report has them."""
    suffixes = ["_floor"] + (["_reconstruction"] if "c2st_accuracy_reconstruction" in report else [])
    header = "| figure | samples | real-vs-real floor |" + (" reconstructions (perfect prior) |" if len(suffixes) > 1
                                                            else "")
    lines = [header, "| --- |" + " ---: |" * (1 + len(suffixes))]
    for key, label in _ROWS:
        if key not in report:
            continue
        reference = report.get(f"{key}_reference")
        if reference is not None:
            label = f"{label} (reference {reference:.3f})"
        others = [report.get(f"{key}{suffix}") for suffix in suffixes]
        cells = " | ".join("" if value is None else f"{value:.3f}" for value in others)
        lines.append(f"| {label} | {report[key]:.3f} | {cells} |")
    sizes = ", ".join(f"{name} {int(report[f'n_{name}'])}" for name in ("samples", "floor", "reference", "train")
                      if f"n_{name}" in report)
    if sizes:
        lines.append(f"\nImages: {sizes}.")
    if "nn_copy_threshold" in report:
        lines.append(f"Copy threshold: mean absolute difference {report['nn_copy_threshold']:.4f} at 64x64 "
                     "(5th percentile of the reference's nearest-train distances).")
    return "\n".join(lines)
